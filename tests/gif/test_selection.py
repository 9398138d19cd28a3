"""Paper §4 parameter selection: method.md check 4 and each criterion on known answers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gif.errors import InvalidRequest, NonFinite
from gif.selection import (
    CRITERIA,
    eligible_layers,
    gradient_scores,
    layer_budget,
    output_scores,
    select_parameters,
)

torch.set_num_threads(1)


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 9), nn.ReLU(inplace=True), nn.Linear(9, 7), nn.ReLU(),
                         nn.Linear(7, 3))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 4, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.norm(x.flatten(1)))


def _cnn() -> nn.Module:
    torch.manual_seed(2)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BN statistics, so eval vs train mode differs
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def _data(model_name: str, n: int = 10):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g) if model_name == "mlp" else torch.randn(
        n, 2, 4, 4, generator=g)
    return x, torch.randint(0, 3, (n,), generator=g)


MODELS = {"mlp": _mlp, "cnn": _cnn}
NORM_PARAMS = {"mlp": [], "cnn": ["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias",
                                  "norm.weight", "norm.bias"]}
# (numerator, denominator) of each ratio: the budget is computed here in exact integers.
RATIOS = {0.1: (1, 10), 0.29: (29, 100), 0.5: (1, 2), 1.0: (1, 1)}


def _select(model, x, y, criterion, ratio, seed=0, **kw):
    threshold = kw.pop("threshold", 0.05 if criterion == "threshold" else None)
    return select_parameters(model, x, y, criterion=criterion, ratio=ratio, threshold=threshold,
                             seed=seed, batch_size=kw.pop("batch_size", 4), **kw)


# --- method.md check 4 ------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("ratio", list(RATIOS))
def test_each_layer_gets_exactly_its_budget_and_norms_are_never_selected(
        model_name, criterion, ratio):
    model = MODELS[model_name]()
    x, y = _data(model_name)
    selection = _select(model, x, y, criterion, ratio)
    num, den = RATIOS[ratio]
    params = dict(model.named_parameters())
    assert set(selection.masks) == set(params)
    for name, mask in selection.masks.items():
        assert mask.dtype == torch.bool and mask.shape == params[name].shape
    for name in NORM_PARAMS[model_name]:
        assert not selection.masks[name].any(), name
    for entry in selection.per_layer:
        prefix = f"{entry['layer']}." if entry["layer"] else ""
        n_l = sum(p.numel() for k, p in params.items()
                  if k in (prefix + "weight", prefix + "bias"))
        k_l = (num * n_l) // den
        selected = sum(int(m.sum()) for k, m in selection.masks.items()
                       if k in (prefix + "weight", prefix + "bias"))
        assert entry["num_params"] == n_l and entry["num_selected"] == k_l == selected
    assert selection.num_selected == sum(int(m.sum()) for m in selection.masks.values())


def test_eligible_layers_are_linear_and_conv_only():
    model = nn.ModuleDict({
        "c1": nn.Conv1d(2, 3, 3), "c2": nn.Conv2d(2, 3, 3), "c3": nn.Conv3d(2, 3, 3),
        "lin": nn.Linear(4, 5), "emb": nn.Embedding(10, 4), "ln": nn.LayerNorm(4),
        "bn": nn.BatchNorm1d(4), "gn": nn.GroupNorm(1, 4), "tconv": nn.ConvTranspose2d(2, 3, 3),
        "frozen": nn.Linear(4, 4),
    })
    model["frozen"].requires_grad_(False)
    layers = {layer.name: layer for layer in eligible_layers(model)}
    assert sorted(layers) == ["c1", "c2", "c3", "lin"]
    assert (layers["c3"].fan_in, layers["c3"].num_units, layers["c3"].unit_size) == (54, 3, 55)
    assert layers["lin"].num_params == 25


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_identical_seeds_give_identical_selections(model_name, criterion):
    x, y = _data(model_name)
    first = _select(MODELS[model_name](), x, y, criterion, 0.29, seed=11)
    second = _select(MODELS[model_name](), x, y, criterion, 0.29, seed=11)
    for name in first.masks:
        assert torch.equal(first.masks[name], second.masks[name]), name
    assert first.to_dict() == second.to_dict()


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_different_seeds_give_different_random_selections(model_name):
    x, y = _data(model_name)
    model = MODELS[model_name]()
    a = _select(model, x, y, "random", 0.29, seed=1)
    b = _select(model, x, y, "random", 0.29, seed=2)
    assert any(not torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.num_selected == b.num_selected


def test_budget_uses_the_decimal_ratio():
    assert layer_budget(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in floats
    assert layer_budget(0.1, 9) == 0 and layer_budget(1.0, 7) == 7
    layer = nn.Linear(9, 10)  # 100 parameters
    sel = select_parameters(layer, torch.randn(3, 9), torch.zeros(3).long(),
                            criterion="topk_outputs", ratio=0.29, seed=0, batch_size=2)
    assert sel.num_selected == 29 and sel.per_layer[0]["layer"] == ""
    assert sel.per_layer[0]["units_selected"] == 3  # two whole units + 9 entries of a third


# --- criteria on constructed cases ----------------------------------------------------------


def _bias_driven_linear(bias: list[float], fan_in: int = 3) -> nn.Linear:
    layer = nn.Linear(fan_in, len(bias))
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(bias))
    return layer


def _selected_units(selection, layer_name: str = "") -> dict[int, int]:
    prefix = f"{layer_name}." if layer_name else ""
    weight = selection.masks[prefix + "weight"].reshape(
        selection.masks[prefix + "weight"].shape[0], -1)
    counts = weight.sum(dim=1) + selection.masks[prefix + "bias"].long()
    return {j: int(c) for j, c in enumerate(counts) if c}


def test_topk_outputs_takes_whole_top_units_then_fills_from_the_next():
    layer = _bias_driven_linear([0.1, -5.0, 2.0, 0.3, -0.2])  # |mean output| = |bias|
    sel = select_parameters(layer, torch.randn(6, 3), torch.zeros(6).long(),
                            criterion="topk_outputs", ratio=0.5, seed=0, batch_size=4)
    # 20 entries, k = 10, unit size 4: units 1 and 2 whole, then 2 entries of unit 3.
    assert _selected_units(sel) == {1: 4, 2: 4, 3: 2}


def test_topk_outputs_ranks_by_mean_output_of_a_conv_layer_against_a_direct_computation():
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 6, 3)
    x = torch.randn(7, 2, 5, 5)
    expected_scores = F.conv2d(x.double(), conv.weight.double(), conv.bias.double()).mean(
        dim=(0, 2, 3)).abs()
    scores = output_scores(conv, eligible_layers(conv), x, batch_size=3)[""]
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-7)
    unit_size = 2 * 9 + 1
    sel = select_parameters(conv, x, torch.zeros(7).long(), criterion="topk_outputs",
                            ratio=(3 * unit_size) / (6 * unit_size), seed=0, batch_size=3)
    top3 = set(torch.argsort(expected_scores, descending=True)[:3].tolist())
    assert _selected_units(sel) == dict.fromkeys(top3, unit_size)


def test_topk_gradients_match_hand_computed_output_gradients_through_inplace_relu():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    x, y = torch.randn(9, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    w1, b1 = model[0].weight.double(), model[0].bias.double()
    w2, b2 = model[2].weight.double(), model[2].bias.double()
    pre = x.double() @ w1.T + b1
    logits = pre.clamp(min=0) @ w2.T + b2
    d_logits = (torch.softmax(logits, 1) - F.one_hot(y, 3).double()) / len(x)  # ∂ mean CE
    d_pre = (d_logits @ w2) * (pre > 0)
    scores = gradient_scores(model, eligible_layers(model), x, y, batch_size=4,
                             loss="cross_entropy")
    torch.testing.assert_close(scores["2"], d_logits.mean(0).abs(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(scores["0"], d_pre.mean(0).abs(), rtol=1e-5, atol=1e-9)

    sel = select_parameters(model, x, y, criterion="topk_gradients", ratio=0.4, seed=0,
                            batch_size=4)
    top2 = torch.argsort(d_pre.mean(0).abs(), descending=True)[:2].tolist()
    assert _selected_units(sel, "0") == dict.fromkeys(top2, 5)  # k = 10 of 25: two whole units


def test_topk_gradients_differ_from_topk_outputs_where_the_constructed_case_says_so():
    # Unit 0 has a huge constant output but no effect on the loss; unit 1 drives the loss.
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([10.0, 0.0]))
        model[0].weight[1] = torch.tensor([1.0, 0.0])
        model[1].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
        model[1].bias.zero_()
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([1, 1])
    args = {"ratio": 0.5, "seed": 0, "batch_size": 2}
    by_outputs = select_parameters(model, x, y, criterion="topk_outputs", **args)
    by_gradients = select_parameters(model, x, y, criterion="topk_gradients", **args)
    assert _selected_units(by_outputs, "0") == {0: 3}
    assert _selected_units(by_gradients, "0") == {1: 3}


def test_threshold_samples_from_passing_units_and_lowers_tau_per_layer_only():
    model = nn.Sequential(_bias_driven_linear([0.1, 5.0, 2.0, 0.3, 0.2]),
                          _bias_driven_linear([4.0, 3.0, 0.5, 2.5, 0.1], fan_in=5))
    x, y = torch.randn(4, 3), torch.zeros(4).long()
    sel = select_parameters(model, x, y, criterion="threshold", threshold=2.2, ratio=0.25,
                            seed=0, batch_size=4)
    first, second = sel.per_layer
    # Layer 0: only unit 1 passes τ=2.2 (4 entries) < k=5, so τ drops to admit unit 2 (score 2).
    assert set(_selected_units(sel, "0")) <= {1, 2} and first["num_selected"] == 5
    assert first["threshold_lowered"] and first["threshold"] == pytest.approx(2.0)
    # Layer 1: units 0, 1, 3 pass (18 entries) >= k = floor(0.25 * 30) = 7; τ unchanged.
    assert set(_selected_units(sel, "1")) <= {0, 1, 3} and second["num_selected"] == 7
    assert not second["threshold_lowered"] and second["threshold"] == 2.2


def test_random_draws_every_entry_about_equally_often():
    layer = nn.Linear(3, 5)  # 20 entries, k = 5
    counts = torch.zeros(20)
    for seed in range(400):
        sel = select_parameters(layer, torch.zeros(0, 3), torch.zeros(0).long(),
                                criterion="random", ratio=0.25, seed=seed, batch_size=1)
        counts += torch.cat([sel.masks["weight"].float(), sel.masks["bias"].float()[:, None]],
                            dim=1).reshape(-1)
    assert counts.sum() == 400 * 5
    assert counts.min() > 60 and counts.max() < 140  # expected 100, sd ≈ 8.7


def test_ties_are_broken_by_the_seed():
    layer = _bias_driven_linear([1.0] * 8)  # every unit scores the same
    x, y = torch.randn(3, 3), torch.zeros(3).long()
    picks = {frozenset(_selected_units(select_parameters(
        layer, x, y, criterion="topk_outputs", ratio=0.25, seed=s, batch_size=3)))
        for s in range(6)}
    assert len(picks) > 1 and all(len(p) == 2 for p in picks)


# --- side effects and bookkeeping -----------------------------------------------------------


@pytest.mark.parametrize("criterion", CRITERIA)
def test_selection_leaves_the_model_as_it_was(criterion):
    model = _cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data("cnn")
    _select(model, x, y, criterion, 0.3)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN statistics untouched: eval mode was used
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_eval_mode_is_used_for_scores():
    model = _cnn()  # in training mode: BN would use batch statistics
    x, _ = _data("cnn")
    eval_scores = output_scores(model, eligible_layers(model), x, batch_size=4)
    model.eval()
    with torch.no_grad():
        h = torch.relu(model.bn1(model.conv1(x)))
        expected = model.conv2(h).double().mean(dim=(0, 2, 3)).abs()
    torch.testing.assert_close(eval_scores["conv2"], expected, rtol=1e-5, atol=1e-7)


def test_to_dict_is_json_and_describes_each_layer():
    x, y = _data("cnn")
    sel = _select(_cnn(), x, y, "threshold", 0.1)
    as_json = json.loads(json.dumps(sel.to_dict()))
    assert as_json["num_selected"] == sel.num_selected
    assert as_json["num_eligible"] == 5 * 2 * 9 + 5 + 4 * 5 * 9 + 3 * 16 + 3
    assert [e["layer"] for e in as_json["per_layer"]] == ["conv1", "conv2", "fc"]
    assert [e["type"] for e in as_json["per_layer"]] == ["Conv2d", "Conv2d", "Linear"]
    assert all({"num_params", "num_selected", "ratio", "units", "units_selected", "threshold",
                "threshold_lowered"} <= set(e) for e in as_json["per_layer"])


def test_frozen_parameters_are_neither_selected_nor_in_the_masks():
    model = _mlp()
    model[0].requires_grad_(False)
    x, y = _data("mlp")
    sel = _select(model, x, y, "topk_outputs", 0.5)
    assert "0.weight" not in sel.masks and [e["layer"] for e in sel.per_layer] == ["2", "4"]


@pytest.mark.parametrize(
    ("kwargs", "loc"),
    [
        ({"criterion": "best"}, ("selection", "criterion")),
        ({"ratio": 0.0}, ("selection", "ratio")),
        ({"ratio": 1.5}, ("selection", "ratio")),
        ({"criterion": "threshold", "threshold": None}, ("selection", "threshold")),
        ({"batch_size": 0}, ("solver", "batch_size")),
        ({"x": torch.zeros(0, 6), "y": torch.zeros(0).long()}, ("edit",)),
    ],
)
def test_bad_arguments_name_the_field(kwargs, loc):
    x, y = _data("mlp")
    args = {"x": x, "y": y, "criterion": "topk_outputs", "ratio": 0.1, "threshold": None,
            "seed": 0, "batch_size": 4, **kwargs}
    with pytest.raises(InvalidRequest) as info:
        select_parameters(_mlp(), args.pop("x"), args.pop("y"), **args)
    assert info.value.loc == loc


def test_non_finite_outputs_are_reported():
    layer = _bias_driven_linear([float("nan"), 1.0])
    with pytest.raises(NonFinite, match="non-finite topk_outputs scores in layer ''"):
        select_parameters(layer, torch.randn(2, 3), torch.zeros(2).long(),
                          criterion="topk_outputs", ratio=0.5, seed=0, batch_size=2)


@pytest.mark.cuda
def test_selection_of_a_cuda_model_gives_cpu_masks_matching_the_cpu_run():
    model = _cnn()
    x, y = _data("cnn")
    on_gpu = copy.deepcopy(model).cuda()
    for criterion in CRITERIA:
        cpu = _select(model, x, y, criterion, 0.29, seed=3)
        gpu = _select(on_gpu, x, y, criterion, 0.29, seed=3)
        assert all(m.device.type == "cpu" for m in gpu.masks.values())
        assert [e["num_selected"] for e in gpu.per_layer] == [
            e["num_selected"] for e in cpu.per_layer]
        if criterion == "random":  # no scores involved: bit-identical
            assert all(torch.equal(gpu.masks[k], cpu.masks[k]) for k in cpu.masks)
    layers = eligible_layers(model)
    torch.testing.assert_close(
        gradient_scores(on_gpu, eligible_layers(on_gpu), x, y, 4, "cross_entropy")["conv2"],
        gradient_scores(model, layers, x, y, 4, "cross_entropy")["conv2"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("criterion", ["topk_outputs", "topk_gradients", "threshold"])
def test_a_cancel_is_seen_between_scoring_batches(criterion):
    """A job cancelled while selection scores a large edit set stops there (issue 9: cancel
    during every phase), not after every batch has been scored."""
    from gif.errors import Cancelled

    x, y = _data("mlp", 40)
    polls = []

    def cancel_on_third_poll() -> bool:
        polls.append(1)
        return len(polls) >= 3

    with pytest.raises(Cancelled):
        _select(_mlp(), x, y, criterion, 0.5, batch_size=4, should_stop=cancel_on_third_poll)
    assert len(polls) == 3  # stopped at the third of ten batches
    never = _select(_mlp(), x, y, criterion, 0.5, batch_size=4, should_stop=lambda: False)
    assert never.num_selected == _select(_mlp(), x, y, criterion, 0.5, batch_size=4).num_selected
