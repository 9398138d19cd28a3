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


@pytest.mark.services
def test_read_costs_prints_one_row_per_way_of_reading(postgres_url, capsys):
    assert load("read_costs").main(["--postgres", postgres_url, "--reads", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| read ")]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows]
    assert names == ["thread hop", "engine", "held connection", "engine in the thread pool",
                     "raw psycopg", "raw psycopg async"]
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)
