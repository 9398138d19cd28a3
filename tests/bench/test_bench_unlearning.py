"""``bench/bench_unlearning.py`` end to end at its tiny scale (real Fashion-MNIST, real
``run_edit`` calls): every method × task row is in the table, the values are sane, the
reference retrain has no gap to itself, and the page, JSON and plot are written. Speed is not
asserted (it belongs to the benchmark's own output)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NOT_APPLICABLE = {("backdoor", m) for m in ("gradient_ascent", "salun", "l1_sparse")}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_unlearning",
                                                  ROOT / "bench" / "bench_unlearning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_unlearning"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    bench = load_bench()
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--scale", "tiny", "--out", str(out)]) == 0
    return bench, out, json.loads((out / "unlearning-tiny.json").read_text())


def expected_rows(bench, task: str) -> list[str]:
    rows = ["original (no edit)", *bench.GIF_FAMILY]
    if task == "sample":  # the tiny test set leaves test points for a holdout
        rows.append(bench.HOLDOUT_ROW)
    for method in bench.BASELINES:
        rows += [f"{method} 1 epoch", f"{method} recipe"]
    return [*rows, "retrain", "retrain seed+1"]


def test_every_method_and_task_has_a_row_with_sane_values(tiny_run):
    bench, _, data = tiny_run
    records = data["records"]
    assert data["meta"]["status"] == "finished"
    for task in bench.TASKS:
        got = [r["row"] for r in records if r["task"] == task]
        assert got == expected_rows(bench, task), task
        for record in (r for r in records if r["task"] == task):
            method = record.get("method", "original")
            if (task, method) in NOT_APPLICABLE:
                assert record.get("skipped") is True
                continue
            assert "error" not in record, record
            for key in bench.GAP_METRICS[task]:
                assert 0.0 <= record[key] <= 1.0, (task, record["row"], key)
            assert record["gap"] >= 0.0
            if record["row"] != "original (no edit)":
                assert record["cpu_s"] > 0 and record["speedup"] > 0
        reference = next(r for r in records if r["task"] == task and r["row"] == "retrain")
        assert reference["gap"] == 0.0 and reference["speedup"] == 1.0
        floor = next(r for r in records if r["task"] == task and r["row"] == "retrain seed+1")
        assert floor["gap_over_floor"] == pytest.approx(1.0)


def test_removal_tasks_measure_what_they_remove(tiny_run):
    bench, _, data = tiny_run
    by_task = {t: [r for r in data["records"] if r["task"] == t] for t in bench.TASKS}
    assert all("removed" in r for r in by_task["class"] if not r.get("skipped"))
    assert all("asr" in r for r in by_task["backdoor"] if not r.get("skipped"))
    assert not any("asr" in r or "removed" in r for r in by_task["sample"])
    # a model retrained without class 8 never predicts it (the model is tiny, not blind)
    retrain = next(r for r in by_task["class"] if r["row"] == "retrain")
    assert retrain["removed"] == 0.0 and retrain["forget"] == 0.0


def test_page_has_every_table_the_targets_and_the_plot(tiny_run):
    bench, out, data = tiny_run
    page = (out / "unlearning-tiny.md").read_text()
    assert "python bench/bench_unlearning.py --scale tiny" in page
    for task in bench.TASKS:
        assert f"## tinynet: {bench.TASK_TITLES[task]}" in page
    table_rows = [line for line in page.splitlines() if line.startswith("| **gif** |")]
    assert len(table_rows) == 3  # one default-request gif row per task
    assert "## Targets of issue 9" in page
    assert page.count("edit CPU ≤ 1/10 of retraining's") == 3
    assert (out / "unlearning-tiny.png").stat().st_size > 10_000
    assert data["meta"]["default_request"]["method"] == "gif"


def test_resume_reuses_every_finished_row_and_renders_the_same_table(tiny_run):
    bench, out, data = tiny_run
    first = (out / "unlearning-tiny.md").read_text()
    assert bench.main(["--scale", "tiny", "--out", str(out), "--resume"]) == 0
    again = json.loads((out / "unlearning-tiny.json").read_text())
    done = [r for r in data["records"] if r["row"] != "original (no edit)" and not r.get("skipped")]
    assert again["meta"]["reused_rows"] == len(done)
    assert [(r["row"], r.get("cpu_s")) for r in again["records"]] == \
        [(r["row"], r.get("cpu_s")) for r in data["records"]]
    tables = lambda page: [line for line in page.splitlines() if line.startswith("| ")]  # noqa: E731
    assert tables((out / "unlearning-tiny.md").read_text()) == tables(first)


def test_resume_after_a_change_of_defaults_runs_only_the_influence_rows_again(
        tiny_run, tmp_path):
    """A run at other defaults keeps the retraining and E10 rows (their own recipes) and
    measures the influence rows again; the page says which commit the kept rows are from."""
    bench, out, data = tiny_run
    earlier = json.loads((out / "unlearning-tiny.json").read_text())
    earlier["meta"]["default_request"] = {**earlier["meta"]["default_request"], "seed": 99}
    earlier["meta"]["commit"] = "0ldc0de"
    for record in earlier["records"]:
        record["cpu_s"] = 12345.0  # a mark: a kept row keeps it, a re-run row cannot
        record.pop("measured_at", None)  # a page from before the rows were marked
    (tmp_path / "unlearning-tiny.json").write_text(json.dumps(earlier))
    assert bench.main(["--scale", "tiny", "--out", str(tmp_path), "--resume"]) == 0
    again = json.loads((tmp_path / "unlearning-tiny.json").read_text())
    rows = [r for r in again["records"] if r["row"] != "original (no edit)"
            and not r.get("skipped")]
    influence = [r for r in rows if r["method"] in bench.INFLUENCE_METHODS]
    others = [r for r in rows if r["method"] not in bench.INFLUENCE_METHODS]
    assert influence and others
    assert all(r["cpu_s"] != 12345.0 for r in influence)
    assert all(r["cpu_s"] == 12345.0 for r in others)
    assert again["meta"]["reused_rows"] == len(others)
    page = (tmp_path / "unlearning-tiny.md").read_text()
    assert "retraining and E10 rows reused" in page and "`0ldc0de`" in page


def test_rerun_influence_measures_the_influence_rows_again_at_the_same_defaults(
        tiny_run, tmp_path):
    bench, out, data = tiny_run
    earlier = json.loads((out / "unlearning-tiny.json").read_text())
    for record in earlier["records"]:
        record["cpu_s"] = 12345.0
    (tmp_path / "unlearning-tiny.json").write_text(json.dumps(earlier))
    assert bench.main(["--scale", "tiny", "--out", str(tmp_path), "--resume",
                       "--rerun-influence"]) == 0
    again = json.loads((tmp_path / "unlearning-tiny.json").read_text())
    rows = [r for r in again["records"] if r["row"] != "original (no edit)"
            and not r.get("skipped")]
    assert all((r["cpu_s"] == 12345.0) == (r["method"] not in bench.INFLUENCE_METHODS)
               for r in rows)
    # every row knows the commit it was measured at; the page names the kept rows' one
    assert all(r["measured_at"] == data["meta"]["commit"] for r in rows)
    assert again["meta"]["reused_from"] == data["meta"]["commit"]
    with pytest.raises(SystemExit):  # the flag says what to re-run of a resumed page
        bench.main(["--scale", "tiny", "--out", str(tmp_path), "--rerun-influence"])


def test_rows_reused_twice_keep_the_commit_they_were_measured_at(tiny_run, tmp_path):
    """A page whose retraining and E10 rows were themselves reused (and carry no mark) names
    the commit they came from, not the run that reused them."""
    bench, out, _ = tiny_run
    earlier = json.loads((out / "unlearning-tiny.json").read_text())
    earlier["meta"].update(commit="1nfl000", reused_rows=1, reused_from="0r1g1n0",
                           reused_influence_rows=False)
    for record in earlier["records"]:
        record.pop("measured_at", None)
    kept, commit = bench.reusable_rows(earlier, rerun_influence=True)
    assert kept and {r["measured_at"] for r in kept} == {"0r1g1n0"} and commit == "0r1g1n0"


def test_resume_reuses_no_row_measured_on_another_original(tiny_run, tmp_path):
    """Training is deterministic on one machine, not across machines: a row measured on an
    original with another fingerprint (or on a page from before fingerprints) runs again; the
    other tasks' rows are reused, and the page names the machine."""
    bench, out, data = tiny_run
    originals = {r["task"]: r["original"] for r in data["records"]
                 if r["row"] == "original (no edit)"}
    # class and sample removal start from one original, the backdoor from a poisoned one
    assert originals["class"] == originals["sample"] != originals["backdoor"]
    earlier = json.loads((out / "unlearning-tiny.json").read_text())
    for record in earlier["records"]:
        record["cpu_s"] = 12345.0
        if record["row"] == "original (no edit)" and record["task"] == "class":
            record["original"] = "0" * 16  # another machine's original
        if record["row"] == "original (no edit)" and record["task"] == "sample":
            del record["original"]  # a page from before fingerprints
    (tmp_path / "unlearning-tiny.json").write_text(json.dumps(earlier))
    assert bench.main(["--scale", "tiny", "--out", str(tmp_path), "--resume"]) == 0
    again = json.loads((tmp_path / "unlearning-tiny.json").read_text())
    rows = [r for r in again["records"] if r["row"] != "original (no edit)"
            and not r.get("skipped")]
    assert all((r["cpu_s"] == 12345.0) == (r["task"] == "backdoor") for r in rows)
    assert again["meta"]["reused_rows"] == sum(r["task"] == "backdoor" for r in rows)
    assert {r["original"] for r in again["records"] if r["row"] == "original (no edit)"} == \
        set(originals.values())
    page = (tmp_path / "unlearning-tiny.md").read_text()
    assert f"Machine: {bench.machine()}" in page and "torch " in bench.machine()


def test_the_fingerprint_sees_one_changed_weight():
    bench = load_bench()
    state = {"w": torch.zeros(3, 2), "b": torch.ones(2), "n": torch.tensor(7)}
    same = {k: v.clone() for k, v in state.items()}
    changed = {**same, "w": same["w"].clone().index_put_((torch.tensor(1), torch.tensor(0)),
                                                        torch.tensor(1e-7))}
    assert bench.fingerprint(state) == bench.fingerprint(same)
    assert bench.fingerprint(state) != bench.fingerprint(changed)


def test_retraining_cost_at_the_recipe_scales_only_the_training_loop():
    bench = load_bench()
    measured = [{"cpu_s": 12.0, "details": {"loop_s": 10.0}}]
    assert bench.retrain_cpu_at_recipe(measured, 1.0) == (12.0, "measured")
    seconds, how = bench.retrain_cpu_at_recipe(measured, 10.0)
    assert seconds == pytest.approx(12.0 + 9 * 10.0) and "loop" in how
    seconds, how = bench.retrain_cpu_at_recipe([{"cpu_s": 12.0}], 10.0)  # no loop seconds
    assert seconds == pytest.approx(120.0) and "upper bound" in how


def test_the_holdout_row_tunes_on_non_members_the_default_row_does_not(tiny_run):
    bench, _, data = tiny_run
    rows = {r["row"]: r for r in data["records"] if r["task"] == "sample"}
    assert "no_holdout" in rows["gif"]["details"]["warnings"]
    assert "no_holdout" not in rows[bench.HOLDOUT_ROW]["details"]["warnings"]
    assert rows[bench.HOLDOUT_ROW]["setting"].startswith("default request + step.holdout")


def test_the_holdout_is_test_data_outside_the_measured_test_set():
    import torch

    bench = load_bench()
    test_idx = torch.arange(0, 1000, 3)
    chosen = bench.holdout_indices(1000, test_idx, 50)
    assert len(chosen) == 50 and len(set(chosen.tolist())) == 50
    assert not set(chosen.tolist()) & set(test_idx.tolist())
    assert len(bench.holdout_indices(1000, test_idx, 5000)) == 1000 - len(test_idx)
    assert bench.holdout_set(bench.fashion_mnist("test", image_size=28),
                             torch.arange(10_000), 50) is None  # a full-split test set


def test_a_stopped_run_has_the_reference_and_the_default_request_before_the_costly_rows():
    """The run order (``priority``): the reference retrain, then the default request (gif and
    gif + holdout), the 1-epoch baselines, the noise floor, fif/pif, the recipes last."""
    bench = load_bench()

    class Holdout:
        num_samples = 10

    task = bench.Task("sample", {"kind": "remove_samples", "indices": [0]}, None, None, None,
                      None, None, holdout=Holdout())
    rows = bench.rows_for(task, bench.SCALES["full-tinynet"], 0)
    ordered = [row.label for row in sorted(rows, key=bench.priority)]
    assert ordered[0] == "retrain"
    assert ordered[1:3] == ["gif", bench.HOLDOUT_ROW]
    assert ordered[3:3 + len(bench.BASELINES)] == [f"{m} 1 epoch" for m in bench.BASELINES]
    assert ordered[3 + len(bench.BASELINES)] == "retrain seed+1"
    assert set(ordered[-len(bench.BASELINES):]) == {f"{m} recipe" for m in bench.BASELINES}
    assert sorted(ordered) == sorted(row.label for row in rows)
