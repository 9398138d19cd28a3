"""E6: gradients and Hessian-vector products against dense float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gif.errors import Cancelled, NonFinite
from gif.hvp import make_hvp, mean_loss_grad
from tests.gif.helpers import (
    DTYPE,
    classification_data,
    dense_grad,
    dense_hessian,
    flat_params,
    relative_error,
    tiny_cnn,
    tiny_mlp,
)

MODELS = {"mlp": (tiny_mlp, (4,)), "cnn_batchnorm": (tiny_cnn, (1, 6, 6))}


def _setup(name: str, n: int = 30):
    build, shape = MODELS[name]
    model = build()
    x, y = classification_data(n, shape)
    return model, x, y


@pytest.mark.parametrize("mode", ["jvp", "double_backward"])
@pytest.mark.parametrize("name", list(MODELS))
def test_hvp_matches_dense_hessian(name, mode):
    model, x, y = _setup(name)
    hessian = dense_hessian(model, x, y)
    hvp = make_hvp(model, x, y, batch_size=7, mode=mode)  # 30 = 4·7 + 2: uneven last batch
    assert hvp.mode == mode
    generator = torch.Generator().manual_seed(5)
    for _ in range(2):
        vector = torch.randn(hessian.shape[0], generator=generator, dtype=DTYPE)
        assert relative_error(hvp(vector), hessian @ vector) < 1e-10
    assert hvp.calls == 2


@pytest.mark.parametrize("mode", ["jvp", "double_backward"])
def test_micro_batching_equals_one_batch(mode):
    model, x, y = _setup("cnn_batchnorm", n=20)
    vector = torch.randn(flat_params(model).numel(), dtype=DTYPE)
    whole = make_hvp(model, x, y, batch_size=20, mode=mode)(vector)
    pieces = make_hvp(model, x, y, batch_size=3, mode=mode)(vector)
    assert relative_error(pieces, whole) < 1e-12


@pytest.mark.parametrize("name", list(MODELS))
def test_mean_loss_grad_matches_autograd(name):
    model, x, y = _setup(name)
    assert (
        relative_error(mean_loss_grad(model, x, y, batch_size=4), dense_grad(model, x, y)) < 1e-12
    )


def test_mean_loss_grad_at_other_parameters():
    model, x, y = _setup("mlp")
    moved = tiny_mlp(seed=7)
    named = {n: p.detach() for n, p in moved.named_parameters()}
    expected = dense_grad(moved, x, y)
    assert relative_error(mean_loss_grad(model, x, y, params=named), expected) < 1e-12
    assert relative_error(mean_loss_grad(model, x, y, params=flat_params(moved)), expected) < 1e-12


def test_squared_error_loss_hessian():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DTYPE)
    x = torch.randn(12, 3, dtype=DTYPE)
    y = torch.randn(12, 2, dtype=DTYPE)
    hessian = dense_hessian(model, x, y, loss="mse")
    vector = torch.randn(hessian.shape[0], dtype=DTYPE)
    for mode in ("jvp", "double_backward"):
        product = make_hvp(model, x, y, loss="mse", batch_size=5, mode=mode)(vector)
        assert relative_error(product, hessian @ vector) < 1e-10
    gradient = mean_loss_grad(model, x, y, loss="mse", batch_size=5)
    assert relative_error(gradient, dense_grad(model, x, y, loss="mse")) < 1e-12


def test_train_mode_model_is_evaluated_in_eval_mode_and_left_untouched():
    model, x, y = _setup("cnn_batchnorm")
    hessian_eval = dense_hessian(model, x, y)  # the reference evaluates in eval mode
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    vector = torch.randn(hessian_eval.shape[0], dtype=DTYPE)
    for mode in ("jvp", "double_backward"):
        assert (
            relative_error(make_hvp(model, x, y, mode=mode)(vector), hessian_eval @ vector) < 1e-10
        )
    assert relative_error(mean_loss_grad(model, x, y), dense_grad(model, x, y)) < 1e-12
    assert model.training and model.norm.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), f"{key} changed"


def test_auto_mode_respects_the_memory_budget():
    model, x, y = _setup("mlp")
    roomy = make_hvp(model, x, y, mode="auto", memory_budget_bytes=1 << 30)
    assert roomy.mode == "double_backward"
    assert roomy.graph_bytes > 0
    tight = make_hvp(model, x, y, mode="auto", memory_budget_bytes=roomy.graph_bytes - 1)
    assert tight.mode == "jvp"
    vector = torch.randn(flat_params(model).numel(), dtype=DTYPE)
    assert relative_error(tight(vector), roomy(vector)) < 1e-12


def test_float32_model_is_accurate_to_single_precision():
    model, x, y = _setup("cnn_batchnorm")
    hessian = dense_hessian(model, x, y)
    vector = torch.randn(hessian.shape[0], dtype=DTYPE)
    model32 = model.float()
    for mode in ("jvp", "double_backward"):
        product = make_hvp(model32, x.float(), y, mode=mode)(vector.float())
        assert product.dtype == torch.float32
        assert relative_error(product.double(), hessian @ vector) < 1e-4


def test_scaled_loss_scales_the_hessian():
    model, x, y = _setup("mlp")
    vector = torch.randn(flat_params(model).numel(), dtype=DTYPE)
    plain = make_hvp(model, x, y, loss="cross_entropy")(vector)
    scaled = make_hvp(
        model, x, y, loss=lambda out, target: 3.5 * nn.functional.cross_entropy(out, target)
    )(vector)
    assert relative_error(scaled, 3.5 * plain) < 1e-12


def test_non_finite_values_raise():
    model, x, y = _setup("mlp")
    bad_x = x.clone()
    bad_x[3, 0] = float("inf")
    with pytest.raises(NonFinite):
        mean_loss_grad(model, bad_x, y)
    with pytest.raises(NonFinite):
        make_hvp(model, bad_x, y, mode="double_backward")
    hvp = make_hvp(model, bad_x, y, mode="jvp")
    with pytest.raises(NonFinite):
        hvp(torch.ones(flat_params(model).numel(), dtype=DTYPE))


def test_bad_arguments_are_rejected():
    model, x, y = _setup("mlp")
    with pytest.raises(ValueError, match="mode"):
        make_hvp(model, x, y, mode="finite_differences")
    with pytest.raises(ValueError, match="loss"):
        make_hvp(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="length"):
        make_hvp(model, x, y, mode="jvp")(torch.ones(3, dtype=DTYPE))
    with pytest.raises(ValueError, match="targets"):
        mean_loss_grad(model, x, y[:-1])


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["jvp", "double_backward"])
def test_hvp_on_cuda_matches_cpu(mode):
    model, x, y = _setup("cnn_batchnorm")
    hessian = dense_hessian(model, x, y)
    vector = torch.randn(hessian.shape[0], dtype=DTYPE)
    product = make_hvp(model.cuda(), x, y, mode=mode)(vector)
    assert product.device.type == "cuda"
    assert relative_error(product.cpu(), hessian @ vector) < 1e-10


def test_frozen_parameters_are_outside_theta_but_still_used():
    model, x, y = _setup("mlp")
    model[0].bias.requires_grad_(False)
    with torch.no_grad():
        model[0].bias.add_(0.5)  # the frozen value must be the one evaluated
    hessian = dense_hessian(model, x, y)  # over the trainable parameters only
    p = flat_params(model).numel()
    assert p == 51 - 6
    vector = torch.randn(p, dtype=DTYPE)
    for mode in ("jvp", "double_backward"):
        hvp = make_hvp(model, x, y, mode=mode)
        assert hvp.size == p
        assert relative_error(hvp(vector), hessian @ vector) < 1e-10
    assert relative_error(mean_loss_grad(model, x, y), dense_grad(model, x, y)) < 1e-12


def _stop_after(polls: int):
    """A ``should_stop`` that says stop at its ``polls + 1``-th call; counts its calls."""
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > polls

    return should_stop, calls


def test_a_gradient_build_stops_between_micro_batches():
    model, x, y = _setup("mlp")  # 30 points: 6 micro-batches of 5
    should_stop, calls = _stop_after(2)
    with pytest.raises(Cancelled) as caught:
        mean_loss_grad(model, x, y, batch_size=5, should_stop=should_stop)
    assert caught.value.details == {
        "phase": "the loss gradient", "micro_batches_done": 2, "micro_batches": 6,
    }
    assert len(calls) == 3  # polled before every micro-batch, no further
    never, polls = _stop_after(10**6)
    gradient = mean_loss_grad(model, x, y, batch_size=5, should_stop=never)
    assert len(polls) == 6
    assert relative_error(gradient, dense_grad(model, x, y)) < 1e-12


def test_the_double_backward_build_and_each_jvp_product_stop_between_micro_batches():
    model, x, y = _setup("cnn_batchnorm")
    should_stop, _ = _stop_after(3)
    with pytest.raises(Cancelled) as caught:
        make_hvp(model, x, y, batch_size=4, mode="double_backward", should_stop=should_stop)
    assert caught.value.details["phase"] == "the Hessian's gradient graph"
    assert caught.value.details["micro_batches_done"] == 3
    stop = {"now": False}
    hvp = make_hvp(model, x, y, batch_size=4, mode="jvp", should_stop=lambda: stop["now"])
    vector = torch.randn(flat_params(model).numel(), dtype=DTYPE)
    assert relative_error(hvp(vector), dense_hessian(model, x, y) @ vector) < 1e-10
    stop["now"] = True
    with pytest.raises(Cancelled) as caught:
        hvp(vector)
    assert caught.value.details["phase"] == "a Hessian-vector product"
