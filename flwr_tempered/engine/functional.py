"""The run's model as a function of flat parameter rows, stepped for many nodes at once.

Two ways to take a local SGD step for a block of nodes (reproduction spec §1):

- ``vmap``: one ``torch.func.vmap(grad_and_value(loss))`` call over the stacked
  parameter rows, each node with its own batch. Fast on a GPU, and on a CPU for models
  without convolutions (logistic regression, MLPs).
- ``loop``: node after node, the model's parameters bound as views into the node's row
  (no copy), plain autograd. On a CPU a convolution's backward under vmap becomes a
  grouped convolution that runs many times slower than a loop of ordinary ones.

Both give each node the step its :func:`~flwr_tempered.training.local_sgd` would give,
up to float rounding: the mean cross-entropy of the node's batch (a short batch at an
epoch's end is padded and masked), ``m <- beta m + g``, ``x <- x - lr m``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional

from flwr_tempered.models import bind_vector

#: How local steps are taken: ``vmap``, ``loop``, or ``auto`` (see :func:`choose_step_mode`).
STEP_MODES = ("auto", "vmap", "loop")

#: Layers whose backward under vmap is slow on a CPU (grouped convolutions).
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def choose_step_mode(model: nn.Module, device: torch.device, requested: str = "auto") -> str:
    """``requested`` unless ``auto``: then ``vmap`` on CUDA and on a CPU for models
    without convolutions, ``loop`` for convolutional models on a CPU (measured there:
    vmap over conv2d backward is about 20x slower than a loop of plain calls)."""
    if requested not in STEP_MODES:
        raise ValueError(f"step mode must be one of {', '.join(STEP_MODES)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "vmap"
    has_conv = any(isinstance(m, _CONVOLUTIONS) for m in model.modules())
    return "loop" if has_conv else "vmap"


class FlatModel:
    """``model`` evaluated at flat parameter vectors (the package's vector layout:
    ``model.parameters()`` order, :func:`torch.nn.utils.parameters_to_vector`)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model.to(device)
        self.device = device
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [p.shape for p in model.parameters()]
        self.sizes = [p.numel() for p in model.parameters()]
        self.dimension = sum(self.sizes)
        self.has_dropout = any(isinstance(m, nn.Dropout | nn.Dropout2d) for m in model.modules())

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """The named parameter tensors of one flat row (views, no copy)."""
        pieces = torch.split(flat, self.sizes)
        return {name: piece.view(shape)
                for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)}

    def logits(self, flat: Tensor, images: Tensor) -> Tensor:
        """The model's output at ``flat`` for ``images``."""
        out: Tensor = functional_call(self.model, self.unflatten(flat), (images,))
        return out

    def masked_loss(self, flat: Tensor, images: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Mean cross-entropy over the entries of the batch that ``mask`` keeps."""
        losses = functional.cross_entropy(self.logits(flat, images), labels, reduction="none")
        weights = mask.to(losses.dtype)
        return (losses * weights).sum() / weights.sum()

    # ------------------------------------------------------------------ training
    def gradients(self, params: Tensor, images: Tensor, labels: Tensor, mask: Tensor,
                  mode: str, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Gradients ``[R, d]`` and losses ``[R]`` of each row of ``params`` on its own
        batch (``images [R, B, ...]``, ``labels`` and ``mask`` ``[R, B]``), in train
        mode (dropout on: each node draws its own dropout masks)."""
        self.model.train()
        if mode == "vmap":
            step = vmap(grad_and_value(self.masked_loss), randomness="different",
                        chunk_size=chunk_size)
            grads, losses = step(params, images, labels, mask)
            return grads, losses.detach()
        return self._loop_gradients(params, images, labels, mask)

    def _loop_gradients(self, params: Tensor, images: Tensor, labels: Tensor, mask: Tensor
                        ) -> tuple[Tensor, Tensor]:
        grads = torch.empty_like(params)
        losses = torch.empty(params.shape[0], dtype=params.dtype, device=params.device)
        weights = list(self.model.parameters())
        for row in range(params.shape[0]):
            work = params[row].detach().clone()
            bind_vector(self.model, work)
            keep = mask[row]
            loss = functional.cross_entropy(self.model(images[row][keep]), labels[row][keep])
            parts = torch.autograd.grad(loss, weights)
            torch.cat([p.reshape(-1) for p in parts], out=grads[row])
            losses[row] = loss.detach()
        return grads, losses

    # ---------------------------------------------------------------- evaluation
    def predictions(self, params: Tensor, images: Tensor, mode: str, *,
                    batch_size: int = 1000, chunk_size: int | None = None) -> Tensor:
        """Predicted classes ``[R, M]`` of each row of ``params`` on the shared
        ``images [M, ...]``, in eval mode (no dropout), in batches of ``batch_size``."""
        self.model.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                block = images[start:start + batch_size]
                if mode == "vmap":
                    outputs.append(vmap(self._classes, in_dims=(0, None),
                                        chunk_size=chunk_size)(params, block))
                else:
                    outputs.append(torch.stack([
                        self.logits(params[row], block).argmax(dim=1)
                        for row in range(params.shape[0])]))
        self.model.train()
        return torch.cat(outputs, dim=1)

    def _classes(self, flat: Tensor, images: Tensor) -> Tensor:
        return self.logits(flat, images).argmax(dim=1)

    def batch_losses(self, params: Tensor, images: Tensor, labels: Tensor, mask: Tensor,
                     mode: str) -> Tensor:
        """Eval-mode mean cross-entropy ``[R]`` of each row of ``params`` on its own batch
        (MOZI's check, as :func:`~flwr_tempered.training.loss_on_batch`)."""
        self.model.eval()
        with torch.no_grad():
            if mode == "vmap":
                losses = vmap(self.masked_loss)(params, images, labels, mask)
            else:
                losses = torch.stack([
                    self.masked_loss(params[row], images[row], labels[row], mask[row])
                    for row in range(params.shape[0])])
        self.model.train()
        return losses
