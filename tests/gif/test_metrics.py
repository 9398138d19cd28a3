"""gif.metrics against values computed by hand (numpy, float64) on tiny constructed models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gif.metrics import (
    MIA_METHOD,
    evaluate,
    harmonic_mean,
    membership_inference,
    retained_grad_norm,
    score,
    true_class_confidence,
)


def _fixed_linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


@pytest.fixture()
def three_class_case():
    # Logits = x @ W^T + b with W = I (3 classes, 3 features), b = 0: the predicted class is
    # the argmax of x, so correctness per row is known by construction.
    model = _fixed_linear([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
    x = torch.tensor(
        [
            [2.0, 0.0, 0.0],  # label 0, predicted 0: right
            [0.0, 1.0, 3.0],  # label 1, predicted 2: wrong
            [0.0, 2.0, 0.0],  # label 1, predicted 1: right
            [1.0, 0.0, 0.5],  # label 0, predicted 0: right
            [0.0, 0.0, 1.0],  # label 1, predicted 2: wrong
        ]
    )
    y = torch.tensor([0, 1, 1, 0, 1])
    return model, x, y


def _cross_entropy_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


def test_evaluate_matches_hand_computed_values(three_class_case):
    model, x, y = three_class_case
    got = evaluate(model, x, y, batch_size=2, num_classes=4)
    assert got["count"] == 5
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["loss"] == pytest.approx(_cross_entropy_by_hand(x.double().numpy(), y.numpy()),
                                        rel=1e-6)
    # Class 0: 2/2 right; class 1: 1/3 right; classes 2 and 3 absent -> None, not 0.
    assert got["per_class_accuracy"][0] == pytest.approx(1.0)
    assert got["per_class_accuracy"][1] == pytest.approx(1 / 3)
    assert got["per_class_accuracy"][2:] == [None, None]
    assert "accuracy_removed_class" not in got


def test_evaluate_splits_removed_class(three_class_case):
    model, x, y = three_class_case
    got = evaluate(model, x, y, batch_size=3, num_classes=3, removed_class=1)
    assert got["accuracy_removed_class"] == pytest.approx(1 / 3)
    assert got["accuracy_remaining_classes"] == pytest.approx(1.0)


def test_evaluate_restores_training_mode(three_class_case):
    model, x, y = three_class_case
    model.train()
    evaluate(model, x, y, batch_size=8, num_classes=3)
    assert model.training


def test_harmonic_score_closed_forms():
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert harmonic_mean(0.0, 0.9) == 0.0
    # Removal: forget accuracy 0.2 -> 1 - 0.2 = 0.8 against retained 0.9.
    assert score("remove_class", 0.2, 0.9) == pytest.approx(2 * 0.8 * 0.9 / 1.7)
    assert score("remove_samples", 1.0, 0.9) == 0.0
    # Relabel: corrected-label accuracy is used as is.
    assert score("relabel", 0.6, 0.9) == pytest.approx(2 * 0.6 * 0.9 / 1.5)
    with pytest.raises(ValueError, match="unknown edit kind"):
        score("shuffle", 0.5, 0.5)


def test_true_class_confidence_is_softmax_of_label(three_class_case):
    model, x, y = three_class_case
    got = true_class_confidence(model, x, y, batch_size=2).numpy()
    logits = x.double().numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, probs[np.arange(len(y)), y.numpy()], rtol=1e-6)


def test_membership_inference_separates_members_from_clearly_different_points():
    # A 2-class model whose confidence in the label is a known function of the input:
    # logits = [x, -x], label 0, so confidence = sigmoid(2x). Members sit at high confidence
    # (x large), non-members at chance (x near 0).
    model = _fixed_linear([[1.0], [-1.0]], [0.0, 0.0])
    generator = torch.Generator().manual_seed(1)

    def points(centre: float, n: int):
        x = centre + 0.2 * torch.randn(n, 1, generator=generator)
        return x, torch.zeros(n, dtype=torch.long)

    members, non_members = points(3.0, 200), points(0.0, 200)
    remembered, forgotten = points(3.0, 50), points(0.0, 50)

    def efficacy(targets):
        return membership_inference(
            model, members=members, non_members=non_members, targets=targets, batch_size=64, seed=0
        )

    still_known = efficacy(remembered)
    unlearned = efficacy(forgotten)
    assert still_known["method"] == MIA_METHOD
    assert still_known["efficacy"] < 0.1  # points that look like members are judged members
    assert unlearned["efficacy"] > 0.9  # points that look unseen are judged non-members
    assert unlearned["targets"] == 50 and unlearned["fit_samples_per_class"] == 200


def test_membership_inference_refuses_empty_targets(three_class_case):
    model, x, y = three_class_case
    with pytest.raises(ValueError, match="at least"):
        membership_inference(model, members=(x, y), non_members=(x, y),
                             targets=(x[:0], y[:0]), batch_size=4)


def test_retained_grad_norm_matches_softmax_regression_closed_form():
    # For logits = W x + c and mean cross-entropy, ∇W = mean((p - onehot(y)) xᵀ) and
    # ∇c = mean(p - onehot(y)): computed here in numpy float64, independently of autograd.
    generator = torch.Generator().manual_seed(3)
    model = nn.Linear(4, 3).double()
    x = torch.randn(37, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (37,), generator=generator)
    w, c = model.weight.detach().numpy(), model.bias.detach().numpy()
    logits = x.numpy() @ w.T + c
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    residual = p - np.eye(3)[y.numpy()]
    grad_w, grad_c = residual.T @ x.numpy() / 37, residual.mean(axis=0)
    expected = math.sqrt((grad_w**2).sum() + (grad_c**2).sum())
    got = retained_grad_norm(model, x, y, batch_size=10)  # 4 micro-batches, unequal sizes
    assert got == pytest.approx(expected, rel=1e-10)
