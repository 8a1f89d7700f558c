"""Models for the reproductions and the flat parameter vectors that nodes exchange.

::

    model = build_model("mnist_cnn", seed=0)            # reproducible initialisation
    x = flatten_parameters(model)                        # Tensor[d], d = 1,199,882
    load_flat_parameters(model, x)                       # back into the model (copied)

Architectures: ``mnist_cnn`` (the spec's MNIST CNN), ``small_cnn`` (CPU presets, any
square input >= 4 pixels), ``vgg11_no_bn`` (CIFAR-10), ``logistic_regression``.
"""

from .architectures import (
    SMALL_CNN_HIDDEN,
    VGG11_CONFIG,
    logistic_regression,
    mnist_cnn,
    small_cnn,
    vgg11_no_bn,
)
from .flat import (
    bind_vector,
    check_vector,
    default_device,
    flatten_parameters,
    load_flat_parameters,
    parameter_count,
)
from .registry import MODELS, available_models, build_model, get_model, model_parameters

__all__ = [
    "MODELS",
    "SMALL_CNN_HIDDEN",
    "VGG11_CONFIG",
    "available_models",
    "bind_vector",
    "build_model",
    "check_vector",
    "default_device",
    "flatten_parameters",
    "get_model",
    "load_flat_parameters",
    "logistic_regression",
    "mnist_cnn",
    "model_parameters",
    "parameter_count",
    "small_cnn",
    "vgg11_no_bn",
]
