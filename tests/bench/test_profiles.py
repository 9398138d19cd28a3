"""The measuring scripts behind figures in docs/ run on this code and print what the docs
quote: ``bench/profile_edit.py`` (where a default edit's CPU goes) and ``bench/read_costs.py``
(what one PostgreSQL read costs, by the way it is made)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_edit_prints_the_edit_and_where_its_time_went(capsys):
    assert load("profile_edit").main(["--scale", "tiny", "--task", "class", "--top", "60"]) == 0
    out = capsys.readouterr().out
    assert "CPU s of run_edit under the profiler" in out
    assert "'removed':" in out and "iterations " in out and "timings {" in out
    for hot in ("hvp.py", "(apply)", "step.py", "(_curve)"):  # the HVPs and the path's scoring
        assert hot in out, hot
    alphas, pruned, points = _scoring(out)
    assert alphas > 0 and 0 <= pruned <= alphas and points > 0


def _scoring(out: str) -> tuple[int, int, int]:
    line = next(line for line in out.splitlines() if line.startswith("step search: "))
    words = line.replace(",", "").replace(";", "").split()
    return int(words[2]), int(words[5]), int(words[9])


def test_profile_edit_without_pruning_scores_every_alpha_in_full(capsys):
    """The same edit scored in full: the same α, none pruned, at least as many points."""
    profile = load("profile_edit")
    assert profile.main(["--scale", "tiny", "--task", "class", "--top", "1"]) == 0
    alphas, _, points = _scoring(capsys.readouterr().out)
    assert profile.main(["--scale", "tiny", "--task", "class", "--top", "1",
                         "--no-pruning"]) == 0
    full_alphas, full_pruned, full_points = _scoring(capsys.readouterr().out)
    assert (full_alphas, full_pruned) == (alphas, 0) and full_points >= points
    import gif.step

    assert gif.step.PRUNING is True  # restored


@pytest.mark.services
def test_read_costs_prints_one_row_per_way_of_reading(postgres_url, capsys):
    assert load("read_costs").main(["--postgres", postgres_url, "--reads", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| read ")]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows]
    assert names == ["thread hop", "engine", "held connection", "engine in the thread pool",
                     "raw psycopg", "raw psycopg async"]
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)
