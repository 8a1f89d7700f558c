"""Flat parameter vectors: the currency that nodes train, exchange and aggregate.

A model's parameters, in ``model.parameters()`` order, concatenate into one ``Tensor[d]``
(:func:`torch.nn.utils.parameters_to_vector`). The aggregation rules and attacks work on
such vectors only, so a node's state is plain tensors and the architecture is needed only
to turn a vector into predictions. The models here have no buffers, so the vector is the
whole model state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def default_device() -> torch.device:
    """``cuda`` when a CUDA device is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parameter_count(model: nn.Module) -> int:
    """The number of scalar parameters ``d`` of ``model`` (the flat vector's length)."""
    return sum(p.numel() for p in model.parameters())


def _first_parameter(model: nn.Module) -> Tensor:
    try:
        return next(model.parameters())
    except StopIteration:
        raise ValueError(f"model {type(model).__name__} has no parameters") from None


def flatten_parameters(model: nn.Module) -> Tensor:
    """The parameters of ``model`` as one ``Tensor[d]``: a detached copy, on the model's
    device and dtype, that later training of the model does not change."""
    _first_parameter(model)
    return parameters_to_vector(model.parameters()).detach().clone()


def check_vector(model: nn.Module, vector: Tensor, *, finite: bool = True) -> None:
    """Raise ``ValueError`` unless ``vector`` is a 1-D tensor of ``parameter_count(model)``
    entries (the message names both sizes) and, when ``finite``, holds no NaN or Inf."""
    if not isinstance(vector, Tensor):
        raise ValueError(f"expected a torch.Tensor parameter vector, got {type(vector).__name__}")
    expected = parameter_count(model)
    if vector.dim() != 1 or vector.numel() != expected:
        raise ValueError(
            f"parameter vector has shape {tuple(vector.shape)} ({vector.numel()} entries) but "
            f"model {type(model).__name__} has d = {expected} parameters"
        )
    if not vector.is_floating_point():
        raise ValueError(f"parameter vector must be floating point, got {vector.dtype}")
    if finite and not bool(torch.isfinite(vector).all()):
        bad = int((~torch.isfinite(vector)).sum())
        raise ValueError(f"parameter vector holds {bad} non-finite (NaN/Inf) of {expected} entries")


def bind_vector(model: nn.Module, vector: Tensor) -> None:
    """Make ``model``'s parameters views into ``vector`` (no copy, no checks).

    :func:`torch.nn.utils.vector_to_parameters` assigns ``param.data`` to slices of the
    vector, so later in-place changes of ``vector`` are changes of the model. Internal
    helper of the training loop, which owns the vector it binds; use
    :func:`load_flat_parameters` for a safe copy.
    """
    vector_to_parameters(vector, model.parameters())


def load_flat_parameters(model: nn.Module, vector: Tensor) -> None:
    """Set ``model``'s parameters, in place, from the flat ``vector``.

    The vector is copied (converted to the model's dtype and moved to its device), so the
    model and the caller's tensor never share memory. ``ValueError`` naming both sizes when
    the length differs from ``parameter_count(model)``; ``ValueError`` when the vector holds
    NaN or Inf (a poisoned or diverged vector must not silently become a model).
    """
    reference = _first_parameter(model)
    check_vector(model, vector, finite=True)
    copy = vector.detach().to(device=reference.device, dtype=reference.dtype, copy=True)
    bind_vector(model, copy)
