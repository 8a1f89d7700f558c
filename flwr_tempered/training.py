"""The local training step of the reproduction spec (§1), on flat parameter vectors.

A node's training state is two ``Tensor[d]`` — its parameters ``x`` and its heavy-ball
momentum ``m`` — plus a :class:`BatchSampler`. :func:`local_sgd` runs
``config.local_steps`` steps of

    g = grad of the mini-batch cross-entropy at x   (+ weight_decay * x when > 0)
    m <- beta * m + g                               (no dampening; m = 0 initially, so m = g)
    x <- x - lr * m

and returns new tensors, so aggregation rules, attacks and the runtime only ever handle
tensors and the ``nn.Module`` is a scratch evaluator. Everything runs on ``params.device``
(CPU or CUDA); the caller moves a node's images there once.

Two training options of the published CIFAR-10 setting live here too: :func:`step_lr`
(the learning rate multiplied by ``gamma`` at given rounds) and :class:`CropFlip` (random
crop of the zero-padded image, then a random horizontal flip, on every training batch,
drawn from the augmenter's own seeded generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.nn.utils import parameters_to_vector

from flwr_tempered.models import bind_vector, check_vector

#: A data-poisoning hook: ``(images, labels) -> (images, labels)`` applied to every batch.
BatchTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

#: The training-batch augmentations :class:`~flwr_tempered.node.RunConfig` accepts.
AUGMENTATIONS = ("none", "crop_flip")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class SGDConfig:
    """Hyper-parameters of a node's local SGD (heavy-ball momentum, spec §1).

    ``lr`` > 0 the step size; ``momentum`` in [0, 1) the heavy-ball coefficient beta
    (0.9 in the papers); ``batch_size`` >= 1; ``local_steps`` >= 1 steps per round;
    ``weight_decay`` >= 0 adds ``weight_decay * x`` to the gradient (the papers use 0).
    Bad values raise ``ValueError`` naming each of them.
    """

    lr: float
    momentum: float = 0.9
    batch_size: int = 32
    local_steps: int = 1
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not _is_real(self.lr) or self.lr <= 0:
            problems.append(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            problems.append(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not _is_int(self.local_steps) or self.local_steps < 1:
            problems.append(f"local_steps must be an integer >= 1, got {self.local_steps!r}")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if problems:
            raise ValueError("SGDConfig: " + "; ".join(problems))


class BatchSampler:
    """Mini-batches of indices into a node's ``num_samples`` training samples.

    Each epoch is a fresh random permutation drawn from the sampler's own
    ``torch.Generator`` (seeded with ``seed``; the global RNG is never used); batches are
    consecutive slices of it, so within an epoch every index appears exactly once. The last
    batch of an epoch is shorter when ``batch_size`` does not divide ``num_samples`` (and a
    node with fewer than ``batch_size`` samples gets all of them in every batch). The next
    epoch's permutation is drawn as soon as the current one is used up, so
    :meth:`peek_batch` never touches the generator.

    :meth:`state_dict` / :meth:`load_state_dict` persist the position between rounds: a
    sampler restored from a state continues with exactly the batches the original would
    have drawn. The state is a flat dict of ints and CPU tensors.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0) -> None:
        problems = [
            f"{name} must be an integer >= 1, got {value!r}"
            for name, value in (("num_samples", num_samples), ("batch_size", batch_size))
            if not _is_int(value) or value < 1
        ]
        if not _is_int(seed):
            problems.append(f"seed must be an integer, got {seed!r}")
        if problems:
            raise ValueError("BatchSampler: " + "; ".join(problems))
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)
        self._order = self._permutation()
        self._position = 0

    def _permutation(self) -> Tensor:
        return torch.randperm(self.num_samples, generator=self._generator)

    def peek_batch(self) -> Tensor:
        """The indices :meth:`next_batch` will return next, without advancing."""
        return self._order[self._position : self._position + self.batch_size].clone()

    def next_batch(self) -> Tensor:
        """The next mini-batch: a 1-D ``int64`` tensor of distinct indices in
        ``[0, num_samples)`` (``min(batch_size, remaining in the epoch)`` of them)."""
        batch = self.peek_batch()
        self._position += batch.numel()
        if self._position >= self.num_samples:
            self._order = self._permutation()
            self._position = 0
            self.epoch += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the stream: sizes, seed, epoch, position, the
        current permutation and the generator state (ints and CPU tensors only)."""
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self._position,
            "order": self._order.clone(),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (tensors may come back as numpy arrays).

        ``ValueError`` when the state is for a different ``num_samples`` or ``batch_size``
        or is malformed.
        """
        missing = sorted(
            {"num_samples", "batch_size", "epoch", "position", "order", "generator"} - set(state)
        )
        if missing:
            raise ValueError(f"BatchSampler state lacks {', '.join(missing)}")
        if int(state["num_samples"]) != self.num_samples or int(
            state["batch_size"]
        ) != self.batch_size:
            raise ValueError(
                f"BatchSampler state is for num_samples={state['num_samples']}, "
                f"batch_size={state['batch_size']}; this sampler has "
                f"num_samples={self.num_samples}, batch_size={self.batch_size}"
            )
        order = torch.as_tensor(np.asarray(state["order"]), dtype=torch.int64)
        position = int(state["position"])
        if order.shape != (self.num_samples,) or not 0 <= position < self.num_samples:
            raise ValueError(
                f"BatchSampler state malformed: order shape {tuple(order.shape)}, "
                f"position {position}, expected ({self.num_samples},) and [0, {self.num_samples})"
            )
        generator = torch.as_tensor(np.asarray(state["generator"]), dtype=torch.uint8)
        self._generator.set_state(generator.clone())
        self._order = order.clone()
        self._position = position
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))


def step_lr(lr: float, round: int, milestones: Sequence[int], gamma: float) -> float:
    """The step schedule: ``lr * gamma ** k`` with ``k`` the number of ``milestones``
    that are ``<= round``. So with milestones ``(80, 120)`` and ``gamma = 0.1`` rounds
    0..79 use ``lr``, rounds 80..119 ``0.1 * lr`` and rounds from 120 on ``0.01 * lr``."""
    return float(lr) * float(gamma) ** sum(1 for m in milestones if m <= round)


def crop_flip(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop then random horizontal flip of each image of a batch, as torchvision's
    ``RandomCrop(size, padding=pad)`` followed by ``RandomHorizontalFlip(0.5)``.

    ``images`` is ``[B, C, H, W]`` (or ``[B, H, W]``). Each image is zero-padded by
    ``pad`` pixels on every side and an ``H x W`` window is cut at a uniformly random
    offset in ``[0, 2 * pad]`` along each axis (so the content shifts by up to ``pad``
    pixels, the uncovered border being zeros); then, with probability 1/2, the window is
    mirrored left-right. ``pad = 4`` is the CIFAR-10 setting (1/8 of 32 pixels); it is
    kept fixed for other image sizes. All draws come from ``generator`` (a CPU
    ``torch.Generator``; three draws per call: row offsets, column offsets, flips), never
    from the global RNG. Returns a new tensor of the input's shape, dtype and device;
    ``images`` is not modified.
    """
    if images.dim() not in (3, 4):
        raise ValueError(f"crop_flip: images must be [B, C, H, W] or [B, H, W], "
                         f"got shape {tuple(images.shape)}")
    if not _is_int(pad) or pad < 0:
        raise ValueError(f"crop_flip: pad must be an integer >= 0, got {pad!r}")
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    rows0 = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    cols0 = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    device = images.device
    rows = (rows0[:, None] + torch.arange(height)).to(device)            # [B, H]
    cols = cols0[:, None] + torch.arange(width)                         # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(device)
    four_d = images.unsqueeze(1) if images.dim() == 3 else images
    padded = functional.pad(four_d, (pad, pad, pad, pad))                # [B, C, H+2p, W+2p]
    samples = torch.arange(batch, device=device)[:, None, None, None]
    channels = torch.arange(four_d.shape[1], device=device)[None, :, None, None]
    out = padded[samples, channels, rows[:, None, :, None], cols[:, None, None, :]]
    return out.squeeze(1) if images.dim() == 3 else out                # [B, C, H, W]


class CropFlip:
    """:func:`crop_flip` as a batch transform with its own ``torch.Generator``.

    Called as ``augment(images, labels) -> (augmented images, labels)`` (labels are
    passed through), so it composes with a data-poisoning :data:`BatchTransform`. The
    generator is seeded with ``seed``; :meth:`state_dict` / :meth:`load_state_dict`
    persist it, so an augmenter restored from a state draws exactly the crops and flips
    the original would have drawn.
    """

    def __init__(self, seed: int = 0, pad: int = 4) -> None:
        if not _is_int(seed):
            raise ValueError(f"CropFlip: seed must be an integer, got {seed!r}")
        if not _is_int(pad) or pad < 0:
            raise ValueError(f"CropFlip: pad must be an integer >= 0, got {pad!r}")
        self.seed = int(seed)
        self.pad = int(pad)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return crop_flip(images, self._generator, self.pad), labels

    def state_dict(self) -> dict[str, Any]:
        """The seed and the generator state (a CPU ``uint8`` tensor)."""
        return {"seed": self.seed, "generator": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (the tensor may come back as a numpy
        array). ``ValueError`` when the generator state is missing."""
        if "generator" not in state:
            raise ValueError("CropFlip state lacks generator")
        generator = torch.as_tensor(np.asarray(state["generator"]), dtype=torch.uint8)
        self._generator.set_state(generator.clone())
        self.seed = int(state.get("seed", self.seed))


def _bind_copy(model: nn.Module, params: Tensor) -> Tensor:
    """Check ``params``' length, move ``model`` to ``params.device`` and make its
    parameters views into a private copy of ``params`` in the model's dtype; returns that
    copy. Non-finite entries are allowed here: a diverged model is a result to report
    (loss NaN), not a programming error."""
    check_vector(model, params, finite=False)
    model.to(params.device)
    dtype = next(model.parameters()).dtype
    work = params.detach().to(dtype=dtype, copy=True)
    bind_vector(model, work)
    return work


def local_sgd(
    model: nn.Module,
    params: Tensor,
    momentum: Tensor,
    images: Tensor,
    labels: Tensor,
    sampler: BatchSampler,
    config: SGDConfig,
    transform: BatchTransform | None = None,
) -> tuple[Tensor, Tensor, float]:
    """``config.local_steps`` heavy-ball SGD steps from ``params`` (spec §1, step 2).

    Per step: draw a batch from ``sampler``, apply ``transform`` (a data-poisoning hook)
    if given, compute the mean cross-entropy in train mode (dropout on), its gradient ``g``
    as one flat vector (plus ``weight_decay * x``), then ``m <- beta*m + g`` and
    ``x <- x - lr*m``. ``model`` is only a scratch evaluator: it is moved to
    ``params.device``, its parameters are overwritten, and its train/eval mode restored.

    Returns ``(new_params, new_momentum, mean_loss)``: fresh tensors in the dtypes and on the
    device of the inputs (computation in the model's dtype), and the mean of the batch
    losses before each update. ``params`` and ``momentum`` are not modified.
    ``ValueError`` when either is not a ``Tensor[d]`` of the model's size.
    """
    check_vector(model, momentum, finite=False)
    if momentum.device != params.device:
        raise ValueError(
            f"params are on {params.device} but momentum is on {momentum.device}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length"
        )
    if sampler.num_samples != images.shape[0]:
        raise ValueError(
            f"sampler draws from {sampler.num_samples} samples but {images.shape[0]} were given"
        )
    x = _bind_copy(model, params)
    m = momentum.detach().to(dtype=x.dtype, copy=True)
    weights = list(model.parameters())
    device = params.device
    lr, beta, wd = float(config.lr), float(config.momentum), float(config.weight_decay)
    was_training = model.training
    model.train()
    losses: list[Tensor] = []
    try:
        for _ in range(config.local_steps):
            batch = sampler.next_batch().to(images.device)
            xb, yb = images[batch], labels[batch]
            if transform is not None:
                xb, yb = transform(xb, yb)
            xb = xb.to(device=device, dtype=x.dtype)
            yb = yb.to(device=device, dtype=torch.long)
            loss = functional.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, weights)
            with torch.no_grad():
                g = parameters_to_vector(grads)
                if wd > 0:
                    g.add_(x, alpha=wd)
                m.mul_(beta).add_(g)
                x.add_(m, alpha=-lr)  # the model's parameters are views of x
            losses.append(loss.detach())
    finally:
        model.train(was_training)
    mean_loss = float(torch.stack(losses).mean())
    new_params = x.to(dtype=params.dtype, copy=True)
    new_momentum = m.to(dtype=momentum.dtype, copy=True)
    return new_params, new_momentum, mean_loss


def evaluate(
    model: nn.Module, params: Tensor, images: Tensor, labels: Tensor, batch_size: int = 1000
) -> dict[str, float]:
    """Test metrics of the model with parameters ``params``: ``accuracy`` (fraction in
    [0, 1]) and ``loss`` (mean cross-entropy), in eval mode (no dropout) under
    ``torch.no_grad()``, in chunks of ``batch_size`` samples on ``params.device``.

    A non-finite ``params`` gives ``loss`` NaN/Inf rather than an error (a diverged model is
    a result). ``ValueError`` for an empty set or a wrong vector length.
    """
    n = int(labels.shape[0])
    if n == 0 or images.shape[0] != n:
        raise ValueError(
            f"evaluate needs a non-empty set, got {images.shape[0]} images and {n} labels"
        )
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be an integer >= 1, got {batch_size!r}")
    x = _bind_copy(model, params)
    device = params.device
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                xb = images[start : start + batch_size].to(device=device, dtype=x.dtype)
                yb = labels[start : start + batch_size].to(device=device, dtype=torch.long)
                logits = model(xb)
                total_loss += functional.cross_entropy(logits, yb, reduction="sum").double()
                correct += (logits.argmax(dim=1) == yb).sum()
    finally:
        model.train(was_training)
    return {"accuracy": int(correct) / n, "loss": float(total_loss) / n}


def loss_on_batch(model: nn.Module, params: Tensor, images: Tensor, labels: Tensor) -> float:
    """Mean cross-entropy of the model with parameters ``params`` on one batch, in eval
    mode (deterministic: no dropout) under ``torch.no_grad()``.

    MOZI/UBAR's performance check compares this loss for the node's own model and each
    candidate neighbour model on the same batch, so dropout noise must not decide it.
    """
    if images.shape[0] == 0 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"loss_on_batch needs a non-empty batch, got {images.shape[0]} images and "
            f"{labels.shape[0]} labels"
        )
    x = _bind_copy(model, params)
    device = params.device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images.to(device=device, dtype=x.dtype))
            loss = functional.cross_entropy(logits, labels.to(device=device, dtype=torch.long))
    finally:
        model.train(was_training)
    return float(loss)
