"""CI checks of the reproduction experiments: each experiment's ``--quick`` mode runs end to end
through ``gif.edit.run_edit`` on a small subset, and the qualitative findings that hold at that
size are asserted. The full runs (the published tables) are never run here.

Also unit checks of the pieces the tables rest on (the backdoor trigger, the resizing, the
convergence bookkeeping), each against values computed independently."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import backdoor, methods, selection, solvers
from experiments.common import (
    ArrayDataset,
    checkerboard_trigger,
    mean_std,
    poison,
    resize_uint8,
    triggered_test_sets,
)

# --------------------------------------------------------------------------- unit checks


def test_checkerboard_adds_16_where_row_and_column_parity_differ_and_clips_at_255():
    image = torch.tensor([[[[0, 0, 0], [250, 250, 250], [100, 100, 100]]]], dtype=torch.uint8)
    expected = image.clone().to(torch.int32)
    for row in range(3):
        for col in range(3):
            if row % 2 != col % 2:
                expected[0, 0, row, col] = min(int(expected[0, 0, row, col]) + 16, 255)
    triggered = checkerboard_trigger(image)
    assert triggered.dtype == torch.uint8
    assert torch.equal(triggered.to(torch.int32), expected)
    assert int(triggered[0, 0, 1, 0]) == 255  # 250 + 16 clipped


def test_poison_marks_a_seeded_tenth_relabelled_to_4_and_keeps_true_labels():
    x = torch.zeros(50, 1, 4, 4, dtype=torch.uint8)
    y = torch.arange(50) % 10
    dataset = ArrayDataset(x=x, y=y)
    first, again = poison(dataset, seed=3), poison(dataset, seed=3)
    assert len(first.indices) == 5 and torch.equal(first.indices, again.indices)
    assert not torch.equal(first.indices, poison(dataset, seed=4).indices)
    assert torch.equal(first.true_labels, y[first.indices])
    assert (first.dataset.y[first.indices] == 4).all()
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[first.indices] = False
    assert torch.equal(first.dataset.y[untouched], y[untouched])
    assert torch.equal(first.dataset.x[untouched], x[untouched])
    assert int(first.dataset.x[first.indices].sum()) == 5 * 8 * 16  # 8 odd-parity pixels of 16


def test_triggered_sets_drop_the_target_class_and_label_for_asr():
    test = ArrayDataset(x=torch.zeros(20, 1, 2, 2, dtype=torch.uint8), y=torch.arange(20) % 10)
    sets = triggered_test_sets(test, target=4)
    assert len(sets["triggered_true"].y) == 18
    assert (sets["triggered_true"].y != 4).all()
    assert (sets["triggered_as_target"].y == 4).all()
    assert int(sets["triggered_true"].x[0, 0, 0, 1]) == 16


def test_resize_pools_blocks_and_pads_symmetrically():
    x = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    pooled = resize_uint8(x, 2)
    block_means = x.float().reshape(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(2, 2, 4).mean(-1)
    assert torch.equal(pooled[0, 0], block_means.round().to(torch.uint8))
    padded = resize_uint8(x, 8)
    assert padded.shape[-2:] == (8, 8) and torch.equal(padded[0, 0, 2:6, 2:6], x[0, 0])


def test_hvps_to_reach_and_mean_std():
    history = [{"normal_residual": r, "hvps": h} for r, h in ((0.5, 4), (0.05, 6), (0.004, 8))]
    assert solvers.hvps_to_reach(history, 1e-1) == 6
    assert solvers.hvps_to_reach(history, 1e-2) == 8
    assert solvers.hvps_to_reach(history, 1e-3) is None
    assert mean_std([1.0, 3.0], 1) == "2.0 ± 1.4"


# --------------------------------------------------------------------------- quick runs


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """All four experiments in quick mode, sharing one model cache (methods reuses the models
    trained for selection, solvers those of backdoor)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    records = {
        module.__name__.rsplit(".", 1)[1]: module.run(quick=True, seeds=1, out=out,
                                                       cache_dir=cache)
        for module in (selection, methods, backdoor, solvers)
    }
    return out, records


def _rows(records, **where):
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def test_every_experiment_writes_its_table_json_and_plot(quick_runs):
    out, _ = quick_runs
    for name in ("selection", "methods", "backdoor", "solvers"):
        table = (out / f"{name}.md").read_text()
        assert f"python -m experiments.{name} --quick" in table
        assert table.count("\n|") >= 3  # header, rule, at least one row
        assert json.loads((out / f"{name}.json").read_text())["records"]
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_selection_topk_edits_remove_the_class(quick_runs):
    _, records = quick_runs
    original = _rows(records["selection"], row="original")[0]
    assert original["test_forget_acc"] > 0.6  # the class was learnt
    for criterion in ("topk_outputs", "topk_gradients"):
        (edited,) = _rows(records["selection"], row="gif", criterion=criterion)
        assert edited["forget_acc"] < 0.5 * original["forget_acc"], criterion
        assert edited["test_forget_acc"] < 0.5 * original["test_forget_acc"], criterion
        assert edited["test_acc"] > original["test_acc"] - 0.15, criterion


def test_methods_gif_forgets_and_keeps_the_rest(quick_runs):
    _, records = quick_runs
    original = _rows(records["methods"], row="original")[0]
    retrain = _rows(records["methods"], row="retrain")[0]
    (gif,) = _rows(records["methods"], row="gif")
    assert retrain["forget_acc"] < 0.05  # the reference never saw the class
    assert gif["forget_acc"] < 0.5 * original["forget_acc"]
    assert gif["test_acc"] > original["test_acc"] - 0.15
    assert {r["row"] for r in records["methods"]} >= {"gif", "fif", "pif", "if"}


def test_backdoor_relabel_lowers_the_attack_success_rate(quick_runs):
    _, records = quick_runs
    original = _rows(records["backdoor"], row="original")[0]
    retrain = _rows(records["backdoor"], row="retrain")[0]
    (gif,) = _rows(records["backdoor"], row="gif")
    assert original["asr"] > 0.5  # the backdoor took hold
    assert retrain["asr"] < 0.2
    assert gif["asr"] < original["asr"] - 0.2
    assert gif["triggered_acc"] > original["triggered_acc"]


def test_lsqr_reaches_the_residual_with_fewer_hvps_than_neumann(quick_runs):
    _, records = quick_runs
    (lsqr,) = _rows(records["solvers"], algorithm="lsqr")
    (neumann,) = _rows(records["solvers"], algorithm="neumann")
    assert lsqr["hvps_to_0.01"] is not None
    neumann_hvps = None if "error" in neumann else neumann["hvps_to_0.01"]  # None: never reached
    assert neumann_hvps is None or lsqr["hvps_to_0.01"] < neumann_hvps


def test_publish_replaces_only_the_marked_blocks(tmp_path):
    from experiments.publish import refresh

    (tmp_path / "alpha.md").write_text("| a |\n")
    page = ("intro\n<!-- begin: alpha -->\nold\n<!-- end: alpha -->\nmiddle\n"
            "<!-- begin: beta -->\nstale\n<!-- end: beta -->\n")
    refreshed = refresh(page, tmp_path)
    assert refreshed == ("intro\n<!-- begin: alpha -->\n| a |\n<!-- end: alpha -->\nmiddle\n"
                         "<!-- begin: beta -->\n*(beta.md not produced yet)*\n<!-- end: beta -->\n")


def test_candidates_print_every_requested_row(capsys):
    """``experiments.candidates`` on the benchmark's seconds-long scale: one row per candidate,
    the reference retraining among them, the task's metrics in [0, 1]."""
    from experiments import candidates

    assert candidates.main(["--scale", "tiny", "--task", "backdoor", "--candidates", "default",
                            "finetune 1 epoch", "retrain (reference)"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "| ASR |" in lines[0]
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == ["original (no edit)", "default", "finetune 1 epoch", "retrain (reference)"]
    assert "| validation objective |" in lines[0]
    for line in lines[2:]:
        asr, clean = (float(cell) for cell in line.split("|")[4:6])
        assert 0.0 <= asr <= 1.0 and 0.0 <= clean <= 1.0
    objective = lines[3].split("|")[3].strip()  # the default request's: what its path chose by
    assert 0.0 <= float(objective) <= 1.0
    # With the retraining among the rows, each row's mean gap to it over the benchmark's gap
    # metrics (backdoor: forget, retain, test, ASR, MIA): 0 for the retraining itself, and for
    # the others at least the mean over the columns shown (MIA, not shown, adds a term >= 0).
    assert "| mean gap to retrain |" in lines[0]
    header = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    shown = [header.index(name) for name in ("ASR", "clean test acc", "retained-train acc",
                                             "forget acc (label 4)")]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    reference = rows[-1]
    assert float(reference[-1]) == 0.0
    for row in rows[:-1]:
        partial = sum(abs(float(row[i]) - float(reference[i])) for i in shown) / 5
        assert float(row[-1]) >= partial - 0.001


def test_candidates_column_floor_reaches_the_scaling_for_the_run_only(capsys, monkeypatch):
    """``--column-floor`` sets ``gif.solvers.COLUMN_FLOOR`` for the run (the floors of
    docs/defaults.md's preconditioner table) and the page says so."""
    import gif.solvers
    from experiments import candidates

    floors = []
    real = gif.solvers.column_scaling

    def spy(norms):
        floors.append(gif.solvers.COLUMN_FLOOR)
        return real(norms)

    monkeypatch.setattr(gif.solvers, "COLUMN_FLOOR", gif.solvers.COLUMN_FLOOR)
    monkeypatch.setattr("gif.methods.column_scaling", spy)
    assert candidates.main(["--scale", "tiny", "--task", "class", "--column-floor", "0.3",
                            "--candidates", "preconditioner columns"]) == 0
    assert floors == [0.3]
    assert "column floor 0.3" in capsys.readouterr().out


def test_sample_removal_diagnosis_decomposes_the_gradient_exactly(capsys):
    """``experiments.sample_removal`` on the tiny scale: the mean gradient over all points is
    the m/N-weighted mix of the removed and retained ones (the decomposition it reports), the
    gradient tables print, and every KS statistic lies in [0, 1]."""
    from experiments import sample_removal
    from experiments.candidates import load_bench

    bench = load_bench()
    scale = bench.SCALES["tiny"]
    task = next(t for t in bench.build_tasks(bench.TINYNET, scale, 0) if t.name == "sample")
    original, _ = bench.cached_original(bench.TINYNET.spec, task.train, scale.training(), 0)
    parts = sample_removal.gradient_parts(bench.TINYNET.spec, task, original, 64, 0)
    assert parts["m"] == len(task.edit["indices"]) and parts["n"] == task.train.num_samples
    assert parts["identity"] < 1e-4
    assert -1.0 <= parts["cos_u_all"] <= 1.0 and parts["specific"] > 0.0

    assert sample_removal.main(["--scale", "tiny"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    models = [line for line in lines if line.startswith(("| original", "| retrained"))]
    assert [line.split("|")[1].strip() for line in models] == [
        "original", "retrained, seed 0", "retrained, seed 1"]
    for line in models:
        accuracy, ks, noise = (float(cell) for cell in line.split("|")[2:5])
        assert 0.0 <= accuracy <= 1.0 and 0.0 <= ks <= 1.0 and 0.0 <= noise <= 1.0


def test_path_surface_prints_every_scored_iterate_and_the_patience_stops_the_solve(capsys):
    """``experiments.path_surface`` on the tiny scale with patience 1: a row per scored
    iterate, and the solve stopped at the first scored iterate ``k ≥ 2·k_ref + 1``, k_ref at or
    before the chosen iterate (or at its own end, before it)."""
    from experiments import path_surface

    assert path_surface.main(["--scale", "tiny", "--task", "class", "--patience", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    iterations = [int(line.split("|")[1]) for line in rows]
    assert iterations == sorted(iterations) and iterations[0] == 1
    chosen = int(out.split("chosen: k = ")[1].split(",")[0])
    assert chosen in iterations
    assert all(k < 2 * chosen + 1 for k in iterations[:-1])  # k_ref <= chosen
    solver_iterations = int(out.split("solver iterations ")[1].split(";")[0])
    assert solver_iterations == iterations[-1]
    assert "patience 1" in out


def test_path_surface_applies_request_overrides(capsys):
    """``--overrides`` reaches the request: a max_iter of 2 caps the solve at 2 iterations."""
    from experiments import path_surface

    assert path_surface.main(["--scale", "tiny", "--task", "class", "--patience", "50",
                              "--overrides", '{"solver": {"max_iter": 2}}']) == 0
    out = capsys.readouterr().out
    assert 'request overrides {"solver": {"max_iter": 2}}' in out
    assert int(out.split("solver iterations ")[1].split(";")[0]) == 2


def test_path_surface_scan_scores_every_iterate_on_the_whole_range(capsys):
    """``--scan``: the solve runs to ``max_iter`` and every scored iterate gets a row."""
    from experiments import path_surface

    assert path_surface.main(["--scale", "tiny", "--task", "class", "--scan",
                              "--overrides", '{"solver": {"max_iter": 3}}']) == 0
    out = capsys.readouterr().out
    table = out.split("objective is above 0.5):")[1]
    assert [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| iteration", "| ---"))] == [
        "1", "2", "3"]
    assert int(out.split("solver iterations ")[1].split(";")[0]) == 3
