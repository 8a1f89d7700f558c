"""Models: architectures, exact parameter counts, seeded construction, flat vectors, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flwr_tempered.models import (
    available_models,
    build_model,
    default_device,
    flatten_parameters,
    get_model,
    load_flat_parameters,
    logistic_regression,
    mnist_cnn,
    model_parameters,
    parameter_count,
    small_cnn,
    vgg11_no_bn,
)


# ------------------------------------------------------------------ shapes and sizes
@pytest.mark.parametrize(
    ("name", "params", "input_shape", "classes"),
    [
        ("mnist_cnn", {}, (3, 1, 28, 28), 10),
        ("mnist_cnn", {"num_classes": 7}, (2, 1, 28, 28), 7),
        ("small_cnn", {}, (3, 1, 28, 28), 10),
        ("small_cnn", {"image_size": 8}, (3, 1, 8, 8), 10),
        ("small_cnn", {"image_size": 10, "num_classes": 4}, (2, 1, 10, 10), 4),
        ("small_cnn", {"in_channels": 3, "image_size": 32}, (2, 3, 32, 32), 10),
        ("vgg11_no_bn", {}, (2, 3, 32, 32), 10),
        ("vgg11_no_bn", {"num_classes": 100, "in_channels": 1}, (1, 1, 32, 32), 100),
        ("logistic_regression", {"in_features": 64, "num_classes": 10}, (4, 1, 8, 8), 10),
    ],
)
def test_every_model_maps_its_input_to_one_logit_per_class(
    name: str, params: dict[str, int], input_shape: tuple[int, ...], classes: int
) -> None:
    model = get_model(name, **params).eval()
    with torch.no_grad():
        out = model(torch.rand(input_shape))
    assert out.shape == (input_shape[0], classes)
    assert torch.isfinite(out).all()


def test_mnist_cnn_has_exactly_the_spec_parameter_count() -> None:
    # conv1 32*1*3*3+32, conv2 64*32*3*3+64, fc1 9216*128+128, fc2 128*10+10
    by_hand = (32 * 9 + 32) + (64 * 32 * 9 + 64) + (9216 * 128 + 128) + (128 * 10 + 10)
    assert by_hand == 1_199_882
    assert parameter_count(mnist_cnn()) == 1_199_882
    assert parameter_count(mnist_cnn(num_classes=2)) == 1_199_882 - 8 * 129


def test_mnist_cnn_has_the_spec_layer_sequence() -> None:
    layers = list(mnist_cnn().children())
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Dropout", "Flatten",
        "Linear", "ReLU", "Dropout", "Linear",
    ]
    dropouts = [layer.p for layer in layers if isinstance(layer, nn.Dropout)]
    assert dropouts == [0.25, 0.5]
    linear = [layer for layer in layers if isinstance(layer, nn.Linear)]
    assert (linear[0].in_features, linear[0].out_features) == (9216, 128)


def test_mnist_cnn_uses_dropout_only_in_train_mode() -> None:
    model = build_model("mnist_cnn", seed=0)
    batch = torch.rand(4, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))
        model.train()
        assert not torch.equal(model(batch), model(batch))


def test_parameter_counts_of_the_other_models_match_hand_counts() -> None:
    conv = (8 * 1 * 25 + 8) + (16 * 8 * 25 + 16)
    head = 32 * 10 + 10
    assert parameter_count(small_cnn()) == conv + (16 * 7 * 7 * 32 + 32) + head == 28_874
    assert parameter_count(small_cnn(image_size=8)) == conv + (16 * 2 * 2 * 32 + 32) + head
    assert parameter_count(small_cnn(image_size=8)) == 5_834
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
             (512, 512)]
    vgg = sum(c_in * c_out * 9 + c_out for c_in, c_out in convs) + 512 * 10 + 10
    assert parameter_count(vgg11_no_bn()) == vgg == 9_225_610
    assert parameter_count(logistic_regression(784, 10)) == 7_850


def test_vgg11_has_eight_convolutions_five_poolings_and_no_batch_norm() -> None:
    modules = list(vgg11_no_bn().modules())
    assert sum(isinstance(m, nn.Conv2d) for m in modules) == 8
    assert sum(isinstance(m, nn.MaxPool2d) for m in modules) == 5
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    assert [m.out_channels for m in modules if isinstance(m, nn.Conv2d)] == [
        64, 128, 256, 256, 512, 512, 512, 512,
    ]


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        (small_cnn, {"image_size": 3}),
        (small_cnn, {"num_classes": 0}),
        (mnist_cnn, {"num_classes": -1}),
        (vgg11_no_bn, {"in_channels": 0}),
        (logistic_regression, {"in_features": 0, "num_classes": 10}),
    ],
)
def test_bad_architecture_sizes_raise_value_error(factory: object, params: dict[str, int]) -> None:
    assert callable(factory)
    with pytest.raises(ValueError, match=next(iter(params))):
        factory(**params)


# ------------------------------------------------------------------ seeded construction
def test_build_model_with_the_same_seed_gives_identical_parameters() -> None:
    a = flatten_parameters(build_model("small_cnn", seed=3))
    b = flatten_parameters(build_model("small_cnn", seed=3))
    assert torch.equal(a, b)


def test_build_model_with_different_seeds_gives_different_parameters() -> None:
    a = flatten_parameters(build_model("small_cnn", seed=3))
    b = flatten_parameters(build_model("small_cnn", seed=4))
    assert not torch.equal(a, b)


def test_build_model_leaves_the_global_rng_state_unchanged() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    expected = torch.rand(5)
    torch.set_rng_state(state)
    build_model("mnist_cnn", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_build_model_does_not_depend_on_the_global_rng_state() -> None:
    torch.manual_seed(1)
    a = flatten_parameters(build_model("logistic_regression", seed=0, in_features=4,
                                       num_classes=3))
    torch.manual_seed(2)
    b = flatten_parameters(build_model("logistic_regression", seed=0, in_features=4,
                                       num_classes=3))
    assert torch.equal(a, b)


# ------------------------------------------------------------------ flat vectors
def test_flatten_then_load_round_trips_between_models() -> None:
    source = build_model("small_cnn", seed=0, image_size=8)
    target = build_model("small_cnn", seed=1, image_size=8)
    vector = flatten_parameters(source)
    assert vector.shape == (parameter_count(source),)
    load_flat_parameters(target, vector)
    assert torch.equal(flatten_parameters(target), vector)
    batch = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(source(batch), target(batch))


def test_flatten_returns_a_detached_copy() -> None:
    model = build_model("logistic_regression", seed=0, in_features=4, num_classes=2)
    vector = flatten_parameters(model)
    assert not vector.requires_grad
    before = vector.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(vector, before)


def test_load_copies_the_vector_so_later_changes_do_not_reach_the_model() -> None:
    model = build_model("logistic_regression", seed=0, in_features=4, num_classes=2)
    vector = torch.arange(10, dtype=torch.float32)
    load_flat_parameters(model, vector)
    vector.zero_()
    assert torch.equal(flatten_parameters(model), torch.arange(10, dtype=torch.float32))


def test_load_converts_the_dtype_to_the_models() -> None:
    model = build_model("logistic_regression", seed=0, in_features=4, num_classes=2)
    load_flat_parameters(model, torch.linspace(-1, 1, 10, dtype=torch.float64))
    flat = flatten_parameters(model)
    assert flat.dtype == torch.float32
    assert torch.allclose(flat, torch.linspace(-1, 1, 10))
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())


def test_load_with_the_wrong_length_names_both_sizes() -> None:
    model = build_model("logistic_regression", seed=0, in_features=4, num_classes=2)
    with pytest.raises(ValueError, match=r"11.*10"):
        load_flat_parameters(model, torch.zeros(11))
    with pytest.raises(ValueError, match="10"):
        load_flat_parameters(model, torch.zeros(2, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_load_rejects_non_finite_vectors_and_keeps_the_model(bad: float) -> None:
    model = build_model("logistic_regression", seed=0, in_features=4, num_classes=2)
    before = flatten_parameters(model)
    vector = torch.zeros(10)
    vector[3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        load_flat_parameters(model, vector)
    assert torch.equal(flatten_parameters(model), before)


# ------------------------------------------------------------------ registry
def test_available_models_lists_the_four_architectures() -> None:
    assert available_models() == ["logistic_regression", "mnist_cnn", "small_cnn", "vgg11_no_bn"]


def test_get_model_builds_the_named_architecture() -> None:
    assert parameter_count(get_model("mnist_cnn")) == 1_199_882
    assert parameter_count(get_model("small_cnn", image_size=8, num_classes=3)) == (
        parameter_count(small_cnn(image_size=8, num_classes=3))
    )
    assert set(model_parameters("small_cnn")) == {"in_channels", "num_classes", "image_size"}


def test_a_misspelt_model_name_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"mnist_cn\b.*logistic_regression.*mnist_cnn"):
        get_model("mnist_cn")
    with pytest.raises(ValueError, match="small_cnn"):
        build_model("smal_cnn", seed=0)


def test_a_misspelt_or_missing_parameter_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"num_class\b.*in_channels, num_classes, image_size"):
        get_model("small_cnn", num_class=3)
    with pytest.raises(ValueError, match="in_features"):
        get_model("logistic_regression", num_classes=3)


def test_default_device_is_cuda_exactly_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
