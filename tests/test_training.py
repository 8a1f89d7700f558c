"""The local step of reproduction spec §1 on flat vectors: heavy-ball SGD, the batch
sampler, evaluation, a convergence check on scikit-learn's digits, and the CIFAR-10
training options (step learning-rate schedule, crop+flip augmentation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from flwr_tempered.models import build_model, flatten_parameters, load_flat_parameters
from flwr_tempered.training import (
    BatchSampler,
    CropFlip,
    SGDConfig,
    crop_flip,
    evaluate,
    local_sgd,
    loss_on_batch,
    step_lr,
)

IN, OUT, N = 3, 2, 6


def _tiny() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A 3 -> 2 logistic regression (d = 8) with fixed parameters and six samples."""
    model = build_model("logistic_regression", seed=0, in_features=IN, num_classes=OUT)
    g = torch.Generator().manual_seed(7)
    params = torch.randn(OUT * IN + OUT, generator=g)
    images = torch.randn(N, IN, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    return model, params, images, labels


def _closed_form_grad(params: Tensor, images: Tensor, labels: Tensor) -> Tensor:
    """Gradient of the mean softmax cross-entropy of a linear model, by hand, in float64:
    dL/dW = (p - onehot)^T X / B, dL/db = mean(p - onehot); flattened W then b."""
    p = params.double()
    W, b = p[: OUT * IN].reshape(OUT, IN), p[OUT * IN :]
    X = images.double()
    probs = torch.softmax(X @ W.T + b, dim=1)
    delta = probs - functional.one_hot(labels, OUT).double()
    return torch.cat([(delta.T @ X / len(X)).reshape(-1), delta.mean(0)])


def _full_batch(config: dict[str, Any]) -> tuple[SGDConfig, BatchSampler]:
    """A config whose batches are the whole data set (the gradient is order-free)."""
    return SGDConfig(batch_size=N, **config), BatchSampler(N, N, seed=0)


# ------------------------------------------------------------------ SGDConfig
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0), ("lr", -1.0), ("lr", float("nan")), ("momentum", 1.0),
        ("momentum", -0.1), ("batch_size", 0), ("batch_size", 2.5), ("local_steps", 0),
        ("weight_decay", -1e-4), ("weight_decay", float("inf")),
    ],
)
def test_sgd_config_rejects_bad_values_naming_them(field: str, value: float) -> None:
    params: dict[str, Any] = {"lr": 0.1, field: value}
    with pytest.raises(ValueError, match=field):
        SGDConfig(**params)


def test_sgd_config_defaults_are_the_papers() -> None:
    config = SGDConfig(lr=0.01)
    assert (config.momentum, config.batch_size, config.local_steps, config.weight_decay) == (
        0.9, 32, 1, 0.0,
    )


# ------------------------------------------------------------------ the update rule
def test_one_step_from_zero_momentum_is_plain_sgd_with_m_equal_to_g() -> None:
    model, params, images, labels = _tiny()
    config, sampler = _full_batch({"lr": 0.3, "momentum": 0.9})
    new_params, new_m, loss = local_sgd(
        model, params, torch.zeros_like(params), images, labels, sampler, config
    )
    g = _closed_form_grad(params, images, labels)
    assert torch.allclose(new_m.double(), g, atol=1e-6)
    assert torch.allclose(new_params.double(), params.double() - 0.3 * g, atol=1e-6)
    W, b = params[: OUT * IN].reshape(OUT, IN), params[OUT * IN :]
    assert loss == pytest.approx(float(functional.cross_entropy(images @ W.T + b, labels)),
                                 rel=1e-5)


def test_momentum_follows_the_heavy_ball_recursion_over_three_steps() -> None:
    model, params, images, labels = _tiny()
    lr, beta = 0.2, 0.9
    m0 = torch.linspace(-0.5, 0.5, params.numel())
    config, sampler = _full_batch({"lr": lr, "momentum": beta, "local_steps": 3})
    new_params, new_m, _ = local_sgd(model, params, m0, images, labels, sampler, config)
    x, m = params.double(), m0.double()
    for _ in range(3):
        m = beta * m + _closed_form_grad(x, images, labels)
        x = x - lr * m
    assert torch.allclose(new_m.double(), m, atol=1e-5)
    assert torch.allclose(new_params.double(), x, atol=1e-5)


def test_three_calls_of_one_step_equal_one_call_of_three_steps() -> None:
    model, params, images, labels = _tiny()
    one = SGDConfig(lr=0.1, batch_size=2)
    three = SGDConfig(lr=0.1, batch_size=2, local_steps=3)
    x, m = params, torch.zeros_like(params)
    sampler = BatchSampler(N, 2, seed=5)
    losses = []
    for _ in range(3):
        x, m, loss = local_sgd(model, x, m, images, labels, sampler, one)
        losses.append(loss)
    x3, m3, loss3 = local_sgd(model, params, torch.zeros_like(params), images, labels,
                              BatchSampler(N, 2, seed=5), three)
    assert torch.allclose(x, x3, atol=1e-6)
    assert torch.allclose(m, m3, atol=1e-6)
    assert loss3 == pytest.approx(sum(losses) / 3, rel=1e-5)


def test_weight_decay_adds_wd_times_params_to_the_gradient() -> None:
    model, params, images, labels = _tiny()
    zeros = torch.zeros_like(params)
    plain_cfg, plain_sampler = _full_batch({"lr": 0.1})
    decay_cfg, decay_sampler = _full_batch({"lr": 0.1, "weight_decay": 0.05})
    _, m_plain, _ = local_sgd(model, params, zeros, images, labels, plain_sampler, plain_cfg)
    x_decay, m_decay, _ = local_sgd(model, params, zeros, images, labels, decay_sampler,
                                    decay_cfg)
    assert torch.allclose(m_decay - m_plain, 0.05 * params, atol=1e-6)
    assert torch.allclose(x_decay, params - 0.1 * m_decay, atol=1e-6)


def test_local_sgd_leaves_its_inputs_untouched_and_shares_no_memory() -> None:
    model, params, images, labels = _tiny()
    momentum = torch.ones_like(params)
    saved = [t.clone() for t in (params, momentum, images, labels)]
    config = SGDConfig(lr=0.5, batch_size=3, local_steps=2)
    new_params, new_m, _ = local_sgd(model, params, momentum, images, labels,
                                     BatchSampler(N, 3), config)
    for before, after in zip(saved, (params, momentum, images, labels), strict=True):
        assert torch.equal(before, after)
    assert not torch.equal(new_params, params)
    returned = new_params.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(new_params, returned)
    assert new_params.data_ptr() != params.data_ptr()
    assert new_m.data_ptr() != momentum.data_ptr()


def test_local_sgd_returns_the_inputs_dtype_and_restores_the_model_mode() -> None:
    model, params, images, labels = _tiny()
    model.eval()
    config, sampler = _full_batch({"lr": 0.1})
    x, m, _ = local_sgd(model, params.double(), torch.zeros(8, dtype=torch.float64), images,
                        labels, sampler, config)
    assert x.dtype == m.dtype == torch.float64
    assert not model.training


def test_local_sgd_rejects_vectors_of_the_wrong_size() -> None:
    model, params, images, labels = _tiny()
    config, sampler = _full_batch({"lr": 0.1})
    with pytest.raises(ValueError, match=r"9.*8"):
        local_sgd(model, torch.zeros(9), torch.zeros(9), images, labels, sampler, config)
    with pytest.raises(ValueError, match=r"7.*8"):
        local_sgd(model, params, torch.zeros(7), images, labels, sampler, config)


def test_transform_hook_sees_the_drawn_batch_and_its_output_is_trained_on() -> None:
    model, params, images, labels = _tiny()
    seen: list[tuple[Tensor, Tensor]] = []

    def flip(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        seen.append((x.clone(), y.clone()))
        return x, 1 - y

    config = SGDConfig(lr=0.1, batch_size=4)
    sampler = BatchSampler(N, 4, seed=3)
    batch = sampler.peek_batch()
    zeros = torch.zeros_like(params)
    x_clean, _, loss_clean = local_sgd(model, params, zeros, images, labels,
                                       BatchSampler(N, 4, seed=3), config)
    x_flip, _, loss_flip = local_sgd(model, params, zeros, images, labels, sampler, config,
                                     transform=flip)
    assert len(seen) == 1
    assert torch.equal(seen[0][0], images[batch]) and torch.equal(seen[0][1], labels[batch])
    assert loss_flip != pytest.approx(loss_clean)
    W, b = params[: OUT * IN].reshape(OUT, IN), params[OUT * IN :]
    flipped = functional.cross_entropy(images[batch] @ W.T + b, 1 - labels[batch])
    assert loss_flip == pytest.approx(float(flipped), rel=1e-5)
    assert not torch.allclose(x_clean, x_flip)


# ------------------------------------------------------------------ BatchSampler
def test_sampler_covers_every_index_once_per_epoch_and_reshuffles() -> None:
    sampler = BatchSampler(10, 3, seed=0)
    epochs = []
    for _ in range(4):
        batches = [sampler.next_batch() for _ in range(4)]
        assert [len(b) for b in batches] == [3, 3, 3, 1]
        order = torch.cat(batches)
        assert sorted(order.tolist()) == list(range(10))
        epochs.append(order.tolist())
    assert sampler.epoch == 4
    assert len({tuple(e) for e in epochs}) > 1


def test_sampler_with_fewer_samples_than_batch_size_returns_all_of_them() -> None:
    sampler = BatchSampler(5, 32, seed=0)
    for _ in range(3):
        assert sorted(sampler.next_batch().tolist()) == [0, 1, 2, 3, 4]


def test_sampler_stream_is_fixed_by_its_seed_and_ignores_the_global_rng() -> None:
    torch.manual_seed(0)
    a = BatchSampler(50, 8, seed=11).next_batch()
    torch.manual_seed(99)
    assert torch.equal(BatchSampler(50, 8, seed=11).next_batch(), a)
    s1, s2 = BatchSampler(50, 8, seed=11), BatchSampler(50, 8, seed=11)
    s3 = BatchSampler(50, 8, seed=12)
    stream1 = torch.cat([s1.next_batch() for _ in range(20)])
    stream2 = torch.cat([s2.next_batch() for _ in range(20)])
    stream3 = torch.cat([s3.next_batch() for _ in range(20)])
    assert torch.equal(stream1, stream2)
    assert not torch.equal(stream1, stream3)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_sampler_resumes_the_same_stream_from_its_state_dict(as_numpy: bool) -> None:
    original = BatchSampler(23, 5, seed=4)
    for _ in range(7):  # mid-epoch, second epoch
        original.next_batch()
    state = original.state_dict()
    if as_numpy:  # how the runtime stores it: tensors become numpy arrays
        state = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in state.items()}
    resumed = BatchSampler(23, 5, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.peek_batch(), original.peek_batch())
    for _ in range(15):
        assert torch.equal(resumed.next_batch(), original.next_batch())
    assert resumed.epoch == original.epoch


def test_sampler_state_for_other_sizes_is_rejected() -> None:
    state = BatchSampler(23, 5).state_dict()
    with pytest.raises(ValueError, match="num_samples=23"):
        BatchSampler(24, 5).load_state_dict(state)
    with pytest.raises(ValueError, match="generator"):
        BatchSampler(23, 5).load_state_dict({k: v for k, v in state.items() if k != "generator"})


def test_peek_batch_does_not_advance_the_sampler() -> None:
    sampler = BatchSampler(9, 3, seed=1)
    for _ in range(5):
        peeked = sampler.peek_batch()
        assert torch.equal(sampler.peek_batch(), peeked)
        assert torch.equal(sampler.next_batch(), peeked)


@pytest.mark.parametrize("bad", [{"num_samples": 0}, {"batch_size": 0}, {"seed": 1.5}])
def test_sampler_rejects_bad_arguments(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {"num_samples": 10, "batch_size": 2, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        BatchSampler(**args)


# ------------------------------------------------------------------ evaluation
def test_evaluate_matches_a_manual_accuracy_and_loss_in_any_chunk_size() -> None:
    model = build_model("small_cnn", seed=0, image_size=8)
    params = flatten_parameters(model)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(53, 1, 8, 8, generator=g)
    labels = torch.randint(0, 10, (53,), generator=g)
    load_flat_parameters(model, params)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    loss = float(functional.cross_entropy(logits, labels))
    for chunk in (7, 1000):
        result = evaluate(model, params, images, labels, batch_size=chunk)
        assert result["accuracy"] == pytest.approx(accuracy)
        assert result["loss"] == pytest.approx(loss, rel=1e-5)
    # a model that predicts class 0 everywhere: accuracy = share of zeros
    bias_only = torch.zeros_like(params)
    bias_only[-10] = 5.0
    assert evaluate(model, bias_only, images, labels)["accuracy"] == pytest.approx(
        float((labels == 0).float().mean()))


def test_evaluate_runs_in_eval_mode_and_restores_train_mode() -> None:
    model = build_model("mnist_cnn", seed=0)
    params = flatten_parameters(model)
    images, labels = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
    model.train()
    first = evaluate(model, params, images, labels)
    assert evaluate(model, params, images, labels) == first  # no dropout noise
    assert model.training


def test_loss_on_batch_is_the_mean_cross_entropy_without_dropout() -> None:
    model = build_model("mnist_cnn", seed=1)
    params = flatten_parameters(model)
    images, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    model.eval()
    with torch.no_grad():
        expected = float(functional.cross_entropy(model(images), labels))
    model.train()
    assert loss_on_batch(model, params, images, labels) == pytest.approx(expected, rel=1e-5)
    assert loss_on_batch(model, params, images, labels) == pytest.approx(expected, rel=1e-5)


def test_evaluate_reports_a_diverged_model_instead_of_raising() -> None:
    model, params, images, labels = _tiny()
    params[0] = float("nan")
    result = evaluate(model, params, images, labels)
    assert np.isnan(result["loss"])


# ------------------------------------------------------------------ convergence
def test_small_cnn_with_local_sgd_learns_sklearn_digits_quickly() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # [0, 1]
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test, train = order[: len(labels) // 5], order[len(labels) // 5 :]
    model = build_model("small_cnn", seed=0, image_size=8)
    params = flatten_parameters(model)
    before = evaluate(model, params, images[test], labels[test])["accuracy"]
    params, _, loss = local_sgd(
        model, params, torch.zeros_like(params), images[train], labels[train],
        BatchSampler(len(train), 32, seed=0), SGDConfig(lr=0.05, local_steps=300),
    )
    after = evaluate(model, params, images[test], labels[test])["accuracy"]
    assert before < 0.3
    assert after > 0.85, after
    assert loss < np.log(10)  # the mean training loss fell below chance level


# ------------------------------------------------------------------ lr schedule
@pytest.mark.parametrize(
    ("round_", "expected"),
    [(0, 0.1), (79, 0.1), (80, 0.01), (81, 0.01), (119, 0.01), (120, 0.001), (500, 0.001)],
)
def test_step_lr_multiplies_by_gamma_from_each_milestone_on(round_: int, expected: float
                                                             ) -> None:
    assert step_lr(0.1, round_, (80, 120), 0.1) == pytest.approx(expected, rel=1e-12)


def test_step_lr_without_milestones_or_with_gamma_one_is_constant() -> None:
    assert [step_lr(0.05, t, (), 0.1) for t in (0, 10, 1000)] == [0.05] * 3
    assert [step_lr(0.05, t, (1, 2), 1.0) for t in (0, 1, 2, 3)] == [0.05] * 4


# ------------------------------------------------------------------ crop + flip
def _windows(image: Tensor, pad: int) -> dict[tuple[int, int, bool], Tensor]:
    """Every crop (row offset, column offset, flipped) of ``image`` [C, H, W] zero-padded
    by ``pad``, built with plain slicing (the reference for :func:`crop_flip`)."""
    channels, height, width = image.shape
    padded = torch.zeros(channels, height + 2 * pad, width + 2 * pad, dtype=image.dtype)
    padded[:, pad : pad + height, pad : pad + width] = image
    windows = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy : dy + height, dx : dx + width]
            windows[(dy, dx, False)] = window
            windows[(dy, dx, True)] = window.flip(-1)
    return windows


def _match(output: Tensor, windows: dict[tuple[int, int, bool], Tensor]) -> tuple[int, int, bool]:
    found = [key for key, window in windows.items() if torch.equal(output, window)]
    assert len(found) == 1, found  # every window of a distinct-valued image is unique
    return found[0]


def test_crop_flip_outputs_a_padded_window_of_each_image_with_every_offset_and_flip() -> None:
    """Images with distinct nonzero pixels identify the window each output was cut from:
    all (2*4+1)^2 offsets and both orientations occur, flips about half the time, and the
    shifted content leaves zeros (the padding) on the uncovered border."""
    size, batch = 6, 3000
    image = torch.arange(1, 2 * size * size + 1, dtype=torch.float32).reshape(2, size, size)
    images = image.expand(batch, -1, -1, -1).clone()
    before = images.clone()
    out = crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.stride() == images.contiguous().stride()  # plain layout, as conv weights need
    assert torch.equal(images, before)  # the input is not modified
    windows = _windows(image, pad=4)
    keys = [_match(o, windows) for o in out]
    assert {(dy, dx) for dy, dx, _ in keys} == {(dy, dx) for dy in range(9) for dx in range(9)}
    flips = sum(flipped for _, _, flipped in keys) / batch
    assert 0.45 < flips < 0.55, flips
    centred = sum((dy, dx) == (4, 4) for dy, dx, _ in keys) / batch
    assert 0.5 / 81 < centred < 2 / 81  # uniform offsets: the identity crop is rare
    shifted = next(i for i, (dy, dx, f) in enumerate(keys) if (dy, dx, f) == (0, 8, False))
    # window starting at padded row 0, column 8: content moved down 4 and left 4
    assert torch.equal(out[shifted, :, :4], torch.zeros(2, 4, size))
    assert torch.equal(out[shifted, :, :, 2:], torch.zeros(2, size, 4))
    assert torch.equal(out[shifted, :, 4:, :2], image[:, :2, 4:])


def test_crop_flip_without_padding_only_flips_about_half_the_images() -> None:
    images = torch.rand(4000, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    out = crop_flip(images, torch.Generator().manual_seed(2), pad=0)
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same ^ flipped).all())
    assert 0.47 < float(flipped.float().mean()) < 0.53


def test_crop_flip_works_on_any_square_size_and_on_channel_less_batches() -> None:
    g = torch.Generator().manual_seed(3)
    for shape in ((5, 3, 32, 32), (4, 1, 8, 8), (2, 1, 28, 28), (6, 8, 8)):
        images = torch.rand(*shape, generator=g)
        out = crop_flip(images, g)
        assert out.shape == images.shape
        assert out.stride() == images.stride()
    three_d = torch.rand(7, 8, 8, generator=g)
    state = g.get_state()
    as_3d = crop_flip(three_d, g)
    g.set_state(state)
    assert torch.equal(as_3d, crop_flip(three_d.unsqueeze(1), g).squeeze(1))


def test_crop_flip_is_fixed_by_the_generator_and_ignores_the_global_rng() -> None:
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    first = crop_flip(images, torch.Generator().manual_seed(9))
    torch.manual_seed(123)
    assert torch.equal(crop_flip(images, torch.Generator().manual_seed(9)), first)
    assert not torch.equal(crop_flip(images, torch.Generator().manual_seed(10)), first)


@pytest.mark.parametrize("bad", [{"images": torch.zeros(3, 3)}, {"pad": -1}, {"pad": 1.5}])
def test_crop_flip_rejects_bad_arguments(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {"images": torch.zeros(2, 1, 4, 4),
                            "generator": torch.Generator(), **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        crop_flip(**args)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_crop_flip_augmenter_resumes_its_stream_from_its_state_dict(as_numpy: bool) -> None:
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(16)
    original = CropFlip(seed=21)
    for _ in range(3):
        original(images, labels)
    state = original.state_dict()
    if as_numpy:  # how the runtime stores it
        state = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in state.items()}
    resumed = CropFlip(seed=0)
    resumed.load_state_dict(state)
    assert resumed.seed == 21
    for _ in range(3):
        (a, la), (b, lb) = resumed(images, labels), original(images, labels)
        assert torch.equal(a, b) and la is labels and lb is labels
    fresh_a, fresh_b = CropFlip(seed=21)(images, labels)[0], CropFlip(seed=22)(images, labels)[0]
    assert not torch.equal(fresh_a, fresh_b)
    with pytest.raises(ValueError, match="generator"):
        CropFlip().load_state_dict({"seed": 1})


# Defined only where CUDA exists (no skip markers: CPU machines simply lack the case).
if torch.cuda.is_available():

    def test_local_sgd_and_evaluate_run_on_cuda_and_match_cpu() -> None:
        model, params, images, labels = _tiny()
        config, sampler = _full_batch({"lr": 0.1, "local_steps": 2})
        x_cpu, m_cpu, _ = local_sgd(model, params, torch.zeros_like(params), images, labels,
                                    sampler, config)
        cuda = torch.device("cuda")
        x_gpu, m_gpu, _ = local_sgd(model, params.to(cuda), torch.zeros(8, device=cuda),
                                    images.to(cuda), labels.to(cuda), BatchSampler(N, N), config)
        assert x_gpu.device.type == "cuda" and m_gpu.device.type == "cuda"
        assert torch.allclose(x_gpu.cpu(), x_cpu, atol=1e-5)
        assert torch.allclose(m_gpu.cpu(), m_cpu, atol=1e-5)
        on_gpu = evaluate(model, x_gpu, images.to(cuda), labels.to(cuda))
        assert on_gpu["accuracy"] == pytest.approx(evaluate(model, x_cpu.cuda(), images.cuda(),
                                                             labels.cuda())["accuracy"])
        assert loss_on_batch(model, x_gpu, images, labels) == pytest.approx(
            loss_on_batch(model.cpu(), x_cpu, images, labels), rel=1e-5)

    def test_crop_flip_on_cuda_matches_cpu_and_stays_there() -> None:
        images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(6))
        on_cpu = crop_flip(images, torch.Generator().manual_seed(1))
        on_gpu = crop_flip(images.cuda(), torch.Generator().manual_seed(1))
        assert on_gpu.device.type == "cuda"
        assert torch.equal(on_gpu.cpu(), on_cpu)
