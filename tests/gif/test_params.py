"""ParamSpace: the flat θ of method.md's notation, its selections and updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gif.params import ParamSpace, apply_update, scatter
from tests.gif.helpers import tiny_cnn


def _frozen_first_layer_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    return model


def test_layout_follows_named_parameters_and_skips_frozen_ones():
    model = _frozen_first_layer_model()
    space = ParamSpace.from_model(model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert space.names == tuple(n for n, _ in trainable)
    assert "0.bias" not in space.names
    assert space.size == sum(p.numel() for _, p in trainable)
    offset = 0
    for name, param in trainable:
        assert space.slice_of(name) == slice(offset, offset + param.numel())
        offset += param.numel()


def test_flatten_matches_parameters_to_vector_and_unflatten_inverts_it():
    model = tiny_cnn()
    space = ParamSpace.from_model(model)
    params = dict(model.named_parameters())
    flat = space.flatten(params)
    assert torch.equal(flat, nn.utils.parameters_to_vector(model.parameters()))
    back = space.unflatten(flat)
    assert list(back) == list(params)
    for name, value in back.items():
        assert torch.equal(value, params[name])


def test_unflatten_is_differentiable():
    space = ParamSpace.from_shapes({"a": (2, 2), "b": (3,)})
    theta = torch.arange(7.0, requires_grad=True)
    parts = space.unflatten(theta)
    (parts["a"].sum() * 2 + parts["b"].pow(2).sum()).backward()
    assert torch.equal(theta.grad, torch.tensor([2.0, 2, 2, 2, 8, 10, 12]))


def test_indices_select_exactly_the_masked_entries():
    space = ParamSpace.from_shapes({"w": (2, 3), "skipped": (4,), "b": (2,)})
    masks = {
        "w": torch.tensor([[True, False, False], [False, False, True]]),
        "b": torch.tensor([False, True]),
    }
    indices = space.indices(masks)
    assert indices.dtype == torch.long
    # w occupies 0..5 (row-major), skipped 6..9, b 10..11.
    assert indices.tolist() == [0, 5, 11]
    round_trip = space.masks(indices)
    assert torch.equal(round_trip["w"], masks["w"])
    assert not round_trip["skipped"].any()
    assert torch.equal(round_trip["b"], masks["b"])


def test_indices_reject_bad_masks():
    space = ParamSpace.from_shapes({"w": (2, 3)})
    with pytest.raises(ValueError, match="shape"):
        space.indices({"w": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool"):
        space.indices({"w": torch.ones(2, 3)})
    with pytest.raises(KeyError, match="nope"):
        space.indices({"nope": torch.ones(1, dtype=torch.bool)})
    assert space.indices({}).numel() == 0


def test_scatter_pads_with_zeros():
    padded = scatter(torch.tensor([5.0, 7.0]), torch.tensor([1, 3]), 5)
    assert padded.tolist() == [0.0, 5.0, 0.0, 7.0, 0.0]


def test_apply_update_moves_only_the_selected_entries_and_keeps_the_input():
    model = tiny_cnn()
    space = ParamSpace.from_model(model)
    state = model.state_dict()
    original = {k: v.clone() for k, v in state.items()}
    indices = torch.tensor([0, 3, space.size - 1])
    delta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    edited = apply_update(state, space, indices, delta, alpha=0.5)

    for key, value in state.items():
        assert torch.equal(value, original[key]), f"input {key} was mutated"
    expected = space.flatten(original).clone()
    expected[indices] += 0.5 * delta
    assert torch.equal(space.flatten(edited), expected)
    assert set(edited) == set(state)
    for key in ("norm.running_mean", "norm.running_var", "norm.num_batches_tracked"):
        assert torch.equal(edited[key], original[key])
        assert edited[key].data_ptr() != state[key].data_ptr()
