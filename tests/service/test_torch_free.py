"""The API process never imports torch on the job path (README): importing the app does not,
and a job submission is validated on what was stored at upload (``models.input_shape``,
``flat_input``, ``num_outputs``; the dataset's sample shape and labels), with no forward pass.
Each check runs in a fresh interpreter, so nothing imported by the test itself can hide an
import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, tmp_path: Path, prelude: str = "") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "GIF_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# A fresh interpreter's prelude: a migrated SQLite database under GIF_DATA_DIR, alice's key,
# and what the snippets after it use (json, sys, TestClient, create_app, session_scope).
_MIGRATED_APP = """
import json, sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.auth import create_key
from service.db.migrate import upgrade
from service.db.session import engine_from_settings, make_session_factory, session_scope
from service.settings import Settings

settings = Settings(runner="none")
upgrade(settings)
factory = make_session_factory(engine_from_settings(settings))
with session_scope(factory) as session:
    key = create_key(session, "alice")
"""


def test_importing_the_app_does_not_import_torch(tmp_path):
    loaded = _run(
        """
        import json, sys
        import service.app
        print(json.dumps({"torch": "torch" in sys.modules,
                          "engine": sorted(m for m in sys.modules if m.startswith("gif."))}))
        """,
        tmp_path,
    )
    assert loaded["torch"] is False
    assert {"gif.edit", "gif.data", "gif.registry", "gif.checkpoint"}.isdisjoint(loaded["engine"])


def test_a_submission_is_validated_and_queued_without_importing_torch(tmp_path):
    """Rows as an upload leaves them (here written directly: the upload itself checks the file
    with torch); then good and bad submissions through the real app and HTTP stack."""
    outcome = _run(
        """
        import sqlalchemy as sa
        from service.db.models import Artifact, Dataset, Model, Owner
        with session_scope(factory) as session:
            owner = session.scalars(sa.select(Owner)).one().id
            art = Artifact(owner_id=owner, sha256="0" * 64, size_bytes=1, kind="checkpoint",
                           media_type="application/octet-stream")
            session.add(art); session.flush()
            session.add(Model(id="mdl_a", owner_id=owner, arch="mlp",
                              arch_kwargs={"in_features": 4, "hidden": [3], "num_classes": 3},
                              input={"scale": 1.0}, num_parameters=27, input_shape=[4],
                              flat_input=True, num_outputs=3, size_bytes=1, sha256="0" * 64,
                              artifact_id=art.id))
            for ds_id, shape, classes in (("ds_fit", [4], 3), ("ds_wide", [5], 3),
                                          ("ds_labels", [4], 4)):
                session.add(Dataset(id=ds_id, owner_id=owner, name=ds_id,
                                    num_samples=10, sample_shape=shape, dtype="float32",
                                    num_classes=classes, class_counts=[3, 3, 4, 0][:classes],
                                    sha256="0" * 64, size_bytes=1, artifact_id=art.id))
        headers = {"Authorization": f"Bearer {key}"}
        def submit(dataset_id, edit):
            body = {"model_id": "mdl_a", "train_dataset_id": dataset_id, "edit": edit}
            return client.post("/v1/jobs", headers=headers, json=body)
        with TestClient(create_app(settings)) as client:
            ok = submit("ds_fit", {"kind": "remove_class", "class": 1})
            wide = submit("ds_wide", {"kind": "remove_class", "class": 1})
            labels = submit("ds_labels", {"kind": "remove_class", "class": 1})
            outside = submit("ds_fit", {"kind": "relabel", "indices": [0], "labels": [3]})
        print(json.dumps({
            "torch": "torch" in sys.modules,
            "statuses": [r.status_code for r in (ok, wide, labels, outside)],
            "job": ok.json().get("status"),
            "details": [r.json().get("detail") for r in (wide, labels, outside)],
        }))
        """,
        tmp_path, prelude=_MIGRATED_APP,
    )
    assert outcome["statuses"] == [202, 422, 422, 422], outcome
    assert outcome["job"] == "queued"
    wide, labels, outside = outcome["details"]
    assert "takes 4 features" in wide and "= 5" in wide
    assert "labels up to 3" in labels and "3 outputs" in labels
    assert "label 3 is outside the label range 0..2" in outside
    assert outcome["torch"] is False


def test_built_in_datasets_are_listed_and_described_without_importing_torch(tmp_path):
    """A built-in's summary (what listing, ``GET /v1/datasets/{id}`` and submission validation
    need) is read from its IDX headers and labels or scikit-learn's targets, not loaded by the
    engine: the API process describes Fashion-MNIST and digits with torch never imported."""
    outcome = _run(
        """
        headers = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(settings)) as client:
            listed = client.get("/v1/datasets", headers=headers).json()["data"]
            fashion = client.get("/v1/datasets/builtin:fashion-mnist:test", headers=headers)
            digits = client.get("/v1/datasets/builtin:digits:train", headers=headers)
        print(json.dumps({
            "torch": "torch" in sys.modules,
            "listed": [d["id"] for d in listed],
            "fashion": [fashion.status_code, fashion.json()],
            "digits": [digits.status_code, digits.json()],
        }))
        """,
        tmp_path, prelude=_MIGRATED_APP,
    )
    assert {"builtin:fashion-mnist:test", "builtin:digits:train"} <= set(outcome["listed"])
    status, fashion = outcome["fashion"]
    assert status == 200 and fashion["num_samples"] == 10_000
    assert fashion["sample_shape"] == [1, 28, 28] and fashion["class_counts"] == [1000] * 10
    status, digits = outcome["digits"]
    assert status == 200 and digits["num_samples"] == 1437 and digits["sample_shape"] == [1, 8, 8]
    assert outcome["torch"] is False
