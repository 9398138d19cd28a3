"""``gif edit`` end to end with real files, and its errors (clear message, non-zero exit)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gif.checkpoint import read_state_dict, write_safetensors
from gif.cli import main
from gif.data import load_dataset, prepare_inputs
from gif.edit import LoadedModel, run_edit
from gif.plots import PLOTS
from gif.registry import build_model
from gif.request import EditRequest
from gif.spec import ModelSpec

SPEC = {"arch": "mlp", "arch_kwargs": {"in_features": 64, "hidden": [32], "num_classes": 10},
        "input": {"scale": 1 / 16}}
REQUEST = {"edit": {"kind": "remove_class", "class": 2},
           "solver": {"max_iter": 15, "batch_size": 2048, "hessian_samples": 512},
           "step": {"mode": "auto"}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A trained checkpoint, its spec, a request, and the training data as an .npz upload."""
    root = tmp_path_factory.mktemp("cli")
    train = load_dataset("builtin:digits:train")
    spec = ModelSpec.model_validate(SPEC)
    torch.manual_seed(0)
    model = build_model(spec).train()
    x = prepare_inputs(train.x, spec.input, flat=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), train.y).backward()
        optimizer.step()
    paths = {"model": root / "model.safetensors", "spec": root / "spec.json",
             "request": root / "request.json", "train": root / "train.npz"}
    write_safetensors(model.eval().state_dict(), paths["model"])
    paths["spec"].write_text(json.dumps(SPEC))
    paths["request"].write_text(json.dumps(REQUEST))
    np.savez(paths["train"], x=train.x.numpy(), y=train.y.numpy())
    return paths


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def edit_args(files, out: Path, request: Path | None = None) -> list[str]:
    return ["edit", "--model", str(files["model"]), "--spec", str(files["spec"]),
            "--train", str(files["train"]), "--request", str(request or files["request"]),
            "--out", str(out)]


def test_edit_writes_checkpoint_result_and_plots(files, tmp_path):
    out, plots = tmp_path / "edited.safetensors", tmp_path / "plots"
    result = invoke(*edit_args(files, out), "--eval", "test=builtin:digits:test",
                    "--plots", str(plots))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metrics"]["after"]["test"]["count"] == 360
    assert report["metrics"]["after"]["forget"]["accuracy"] < report["metrics"]["before"]["forget"][
        "accuracy"]
    assert "solve" in result.stderr  # the progress bar names the phases on stderr

    # The file holds exactly what the library call returns for the same inputs.
    edited = read_state_dict(out)
    expected = run_edit(
        EditRequest.model_validate(REQUEST),
        LoadedModel(ModelSpec.model_validate(SPEC), read_state_dict(files["model"])),
        load_dataset(files["train"]), {"test": load_dataset("builtin:digits:test")},
    )
    assert edited.keys() == expected.state_dict.keys()
    assert all(torch.equal(edited[k], expected.state_dict[k]) for k in edited)
    assert report["scale"] == expected.result["scale"]
    # Every registered figure the result has data for, and only those, is a file.
    drawable = {name for name, plot in PLOTS.items() if plot.has_data(report)}
    assert {"convergence", "scale", "per_class", "per_layer"} <= drawable
    assert {path.stem for path in plots.iterdir()} == drawable
    for name in drawable:
        assert (plots / f"{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({**REQUEST, "edit": {"kind": "remove_class", "class": 42}},
         "error [invalid_request] (at edit.class): class 42 is outside"),
        ({**REQUEST, "mehtod": "gif"}, "(at request.mehtod)"),
        ({"edit": {"kind": "relabel", "indices": [1, 2], "labels": [3]}}, "same length"),
    ],
)
def test_bad_request_exits_non_zero_with_clear_message(files, tmp_path, request_body, message):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(request_body))
    out = tmp_path / "edited.safetensors"
    result = invoke(*edit_args(files, out, request), "--quiet")
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_object_checkpoint_is_refused(files, tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _Payload()}))
    args = edit_args(files, tmp_path / "edited.safetensors")
    args[args.index("--model") + 1] = str(evil)
    result = invoke(*args, "--quiet")
    assert result.exit_code == 1
    assert "error [invalid_checkpoint]" in result.stderr
    assert "unpickled!" not in result.stdout + result.stderr


def test_malformed_eval_option_is_a_usage_error(files, tmp_path):
    result = invoke(*edit_args(files, tmp_path / "e.safetensors"), "--eval", "builtin:digits:test")
    assert result.exit_code == 2
    assert "expected NAME=DATA" in result.stderr


def test_unknown_builtin_dataset_is_named(files, tmp_path):
    args = edit_args(files, tmp_path / "e.safetensors")
    args[args.index("--train") + 1] = "builtin:nope:train"
    result = invoke(*args, "--quiet")
    assert result.exit_code == 1
    assert "error [invalid_dataset]" in result.stderr and "builtin:nope:train" in result.stderr


def test_installed_entry_point_has_help():
    gif = Path(sys.executable).with_name("gif")
    completed = subprocess.run([str(gif), "edit", "--help"], capture_output=True, text=True,
                               timeout=60, check=False)
    assert completed.returncode == 0
    for option in ("--model", "--spec", "--train", "--request", "--out", "--eval"):
        assert option in completed.stdout


def test_unwritable_output_is_a_clear_error(files, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = invoke(*edit_args(files, blocker / "edited.safetensors"), "--quiet")
    assert result.exit_code == 1
    assert "error [io]" in result.stderr and "not-a-directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_holdout_option_tunes_a_sample_removal_with_non_member_data(files, tmp_path):
    """``--holdout DATA`` (method.md E9): the sample-removal objective compares the forgotten
    points with that data (no ``no_holdout`` warning), the request records it, and the file
    is what the library call with the same holdout returns. A holdout that does not fit the
    model is refused naming ``step.holdout_dataset_id``."""
    body = {"edit": {"kind": "remove_samples", "indices": list(range(0, 400, 5))},
            "solver": {"max_iter": 10, "batch_size": 2048, "hessian_samples": 256}}
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    out = tmp_path / "edited.safetensors"
    result = invoke(*edit_args(files, out, request), "--holdout", "builtin:digits:test",
                    "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert "no_holdout" not in [w["code"] for w in report["warnings"]]
    assert "loss_ks" in report["path"]["chosen"]
    expected = run_edit(
        EditRequest.model_validate({**body, "step": {"holdout_dataset_id": "x"}}),
        LoadedModel(ModelSpec.model_validate(SPEC), read_state_dict(files["model"])),
        load_dataset(files["train"]), {}, holdout=load_dataset("builtin:digits:test"),
    )
    edited = read_state_dict(out)
    assert all(torch.equal(edited[k], expected.state_dict[k]) for k in edited)
    without = invoke(*edit_args(files, tmp_path / "e2.safetensors", request), "--quiet")
    assert "no_holdout" in [w["code"] for w in json.loads(without.stdout)["warnings"]]

    wrong = invoke(*edit_args(files, tmp_path / "e3.safetensors", request), "--quiet",
                   "--holdout", "builtin:fashion-mnist:test")
    assert wrong.exit_code == 1
    assert "(at step.holdout_dataset_id)" in wrong.stderr
