"""The model registry: how run configs say ``model = "small_cnn"``, and seeded construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flwr_tempered.registry import Registry

from .architectures import logistic_regression, mnist_cnn, small_cnn, vgg11_no_bn

#: Model name -> constructor ``(**params) -> nn.Module``.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.add("mnist_cnn", mnist_cnn)
MODELS.add("small_cnn", small_cnn)
MODELS.add("vgg11_no_bn", vgg11_no_bn)
MODELS.add("logistic_regression", logistic_regression)


def available_models() -> list[str]:
    """Sorted names accepted by :func:`get_model` and :func:`build_model`."""
    return MODELS.names()


def model_parameters(name: str) -> dict[str, Any]:
    """The constructor parameters of model ``name`` with their defaults
    (``inspect.Parameter.empty`` when required)."""
    return MODELS.parameters(name)


def get_model(name: str, **params: Any) -> nn.Module:
    """Build the model registered as ``name`` with PyTorch's default (global-RNG) init.

    A misspelt name or parameter, or a missing required one, raises ``ValueError`` listing
    the valid ones. Use :func:`build_model` for a reproducible initialisation.
    """
    model: nn.Module = MODELS.build(name, **params)
    return model


def build_model(name: str, seed: int, **params: Any) -> nn.Module:
    """Build model ``name`` with an initialisation fixed by ``seed``, on the CPU.

    Two calls with the same ``seed`` (and parameters) give identical parameters; the
    global RNG state is left as it was (the construction runs inside
    :func:`torch.random.fork_rng` and seeds only the forked CPU generator, so CUDA
    generators are not touched either). Every node of a run starts from this model.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"build_model: seed must be an int, got {seed!r}")
    MODELS.factory(name)  # unknown names fail before any RNG work
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return get_model(name, **params)
