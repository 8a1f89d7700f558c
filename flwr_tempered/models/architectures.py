"""The network architectures of the reproductions, as plain ``torch.nn`` modules.

* :func:`mnist_cnn` — the MNIST CNN of the ClippedGossip experiments (reproduction spec §5).
* :func:`small_cnn` — a cheap CNN for the CPU presets (spec §6 allows a smaller model).
* :func:`vgg11_no_bn` — VGG-11 without batch norm for CIFAR-10 (the ``dumbbell_CIFAR`` run).
* :func:`logistic_regression` — a linear baseline.

None of them has buffers (no batch norm), so a model's whole state is its flat parameter
vector: that is what nodes train, exchange and aggregate.
"""

from __future__ import annotations

from torch import nn


def _check_positive(model: str, **values: int) -> None:
    """Raise ``ValueError`` naming every argument of ``model`` that is not an int >= 1."""
    bad = {
        k: v for k, v in values.items()
        if isinstance(v, bool) or not isinstance(v, int) or v < 1
    }
    if bad:
        listed = ", ".join(f"{k}={v!r}" for k, v in bad.items())
        raise ValueError(f"{model}: expected positive integers, got {listed}")


def mnist_cnn(num_classes: int = 10) -> nn.Sequential:
    """The MNIST CNN of the reproduction spec, for input ``[B, 1, 28, 28]``.

    conv(1->32, 3x3) - ReLU - conv(32->64, 3x3) - ReLU - maxpool 2 - dropout 0.25 - flatten -
    fc(9216->128) - ReLU - dropout 0.5 - fc(128->num_classes). The convolutions are unpadded
    (28 -> 26 -> 24, pooled to 12; 64 * 12 * 12 = 9216). 1,199,882 parameters for 10 classes.
    Returns logits.
    """
    _check_positive("mnist_cnn", num_classes=num_classes)
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )


#: Width of the hidden fully connected layer of :func:`small_cnn`.
SMALL_CNN_HIDDEN = 32


def small_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """A small CNN for the CPU presets, for square input ``[B, in_channels, S, S]``.

    conv(in->8, 5x5, padding 2) - ReLU - maxpool 2 - conv(8->16, 5x5, padding 2) - ReLU -
    maxpool 2 - flatten - fc(16 * (S//4)^2 -> 32) - ReLU - fc(32 -> num_classes).
    The "same" padding keeps small inputs usable: 28x28 MNIST gives 7x7 maps (28,874
    parameters), 8x8 scikit-learn digits 2x2 maps (5,834 parameters). ``image_size`` must be
    at least 4. Returns logits.
    """
    _check_positive(
        "small_cnn", in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )
    if image_size < 4:
        raise ValueError(f"small_cnn: image_size must be >= 4 (two 2x2 poolings), got {image_size}")
    side = (image_size // 2) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, SMALL_CNN_HIDDEN),
        nn.ReLU(),
        nn.Linear(SMALL_CNN_HIDDEN, num_classes),
    )


#: VGG configuration "A" (VGG-11) of Simonyan & Zisserman, "Very Deep Convolutional Networks
#: for Large-Scale Image Recognition", ICLR 2015, Table 1: output channels of the 3x3
#: convolutions, ``"M"`` a 2x2 max pooling.
VGG11_CONFIG: tuple[int | str, ...] = (
    64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M",
)


def vgg11_no_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """VGG-11 (configuration A) without batch norm, for 32x32 CIFAR-10 input.

    Features: the eight 3x3 convolutions of :data:`VGG11_CONFIG` (padding 1, each followed by
    ReLU) and five 2x2 max poolings, which take 32x32 down to 1x1x512. Classifier: the common
    CIFAR variant, a single linear layer 512 -> ``num_classes`` (ImageNet's three 4096-wide
    layers are sized for 224x224 input). No batch norm, as in the ClippedGossip CIFAR run:
    batch statistics are not parameters and would not be exchanged or aggregated.
    9,225,610 parameters for 10 classes. PyTorch's default initialisation.
    """
    _check_positive("vgg11_no_bn", num_classes=num_classes, in_channels=in_channels)
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG11_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
            channels = item
    layers += [nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def logistic_regression(in_features: int, num_classes: int) -> nn.Sequential:
    """Multinomial logistic regression: flatten the input, one linear layer to logits
    (softmax is in the cross-entropy loss). ``in_features`` = product of the input shape."""
    _check_positive("logistic_regression", in_features=in_features, num_classes=num_classes)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
