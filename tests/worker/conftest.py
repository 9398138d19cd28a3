"""Fixtures of the worker tests: a real, migrated SQLite database and artifact store in a temp
directory, seeded with rows the way the API writes them (an owner, a checkpoint and a dataset
in the content-addressed store, jobs)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from sqlalchemy.orm import Session, sessionmaker

from service.db.migrate import upgrade
from service.db.models import Artifact, Dataset, Job, JobEvent, Model, Owner, utcnow
from service.db.session import engine_from_settings, make_session_factory
from service.settings import Settings
from service.storage import ArtifactStore
from tests.worker import digits


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_data():
    return digits.digits_arrays()


@pytest.fixture(scope="session")
def trained_state(digits_data):
    x, y = digits_data
    return digits.train_mlp(x, y)


@dataclass
class WorkerDB:
    """A migrated database + store, and helpers that insert rows like the API does."""

    settings: Settings
    factory: sessionmaker[Session]
    store: ArtifactStore
    owner_id: str

    def put_artifact(self, data: bytes, kind: str, media_type: str) -> Artifact:
        sha, size = self.store.put_bytes(data)
        with self.factory() as session:
            artifact = Artifact(
                owner_id=self.owner_id,
                sha256=sha,
                size_bytes=size,
                kind=kind,
                media_type=media_type,
            )
            session.add(artifact)
            session.commit()
            return artifact

    def add_model(self, state_dict: dict, spec: dict | None = None) -> Model:
        spec = spec or digits.MLP_SPEC
        artifact = self.put_artifact(
            digits.safetensors_bytes(state_dict), "checkpoint", "application/octet-stream"
        )
        with self.factory() as session:
            model = Model(
                owner_id=self.owner_id,
                name=spec.get("name"),
                arch=spec["arch"],
                arch_kwargs=spec["arch_kwargs"],
                input=spec.get("input", {}),
                task="classification",
                num_parameters=sum(t.numel() for t in state_dict.values()),
                size_bytes=artifact.size_bytes,
                sha256=artifact.sha256,
                artifact_id=artifact.id,
            )
            session.add(model)
            session.commit()
            return model

    def add_dataset(self, x, y, name: str = "digits-train") -> Dataset:
        artifact = self.put_artifact(digits.npz_bytes(x, y), "dataset", "application/x-npz")
        with self.factory() as session:
            dataset = Dataset(
                owner_id=self.owner_id,
                name=name,
                num_samples=len(y),
                sample_shape=list(x.shape[1:]),
                dtype=str(x.dtype),
                num_classes=int(y.max()) + 1,
                class_counts=[int((y == c).sum()) for c in range(int(y.max()) + 1)],
                sha256=artifact.sha256,
                size_bytes=artifact.size_bytes,
                artifact_id=artifact.id,
            )
            session.add(dataset)
            session.commit()
            return dataset

    def add_job(self, model_id: str, dataset_id: str, request: dict, **fields) -> str:
        body = {"model_id": model_id, "train_dataset_id": dataset_id, **request}
        with self.factory() as session:
            job = Job(
                owner_id=self.owner_id,
                request=body,
                request_hash=hashlib.sha256(repr(sorted(body.items())).encode()).hexdigest(),
                model_id=model_id,
                train_dataset_id=dataset_id,
                **fields,
            )
            session.add(job)
            session.commit()
            return job.id

    def job(self, job_id: str) -> Job:
        with self.factory() as session:
            return session.get(Job, job_id)

    def events(self, job_id: str) -> list[JobEvent]:
        with self.factory() as session:
            return list(session.scalars(
                sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))

    def update_job(self, job_id: str, **values) -> None:
        with self.factory() as session:
            job = session.get(Job, job_id)
            for key, value in values.items():
                setattr(job, key, value)
            session.commit()


def make_worker_db(data_dir: Path, **settings_overrides) -> tuple[WorkerDB, object]:
    settings = Settings(
        data_dir=data_dir,
        runner="none",
        heartbeat_interval_s=settings_overrides.pop("heartbeat_interval_s", 0.2),
        **settings_overrides,
    )
    upgrade(settings)
    engine = engine_from_settings(settings)
    factory = make_session_factory(engine)
    with factory() as session:
        owner = Owner(name="tester", created_at=utcnow())
        session.add(owner)
        session.commit()
        owner_id = owner.id
    return WorkerDB(settings, factory, ArtifactStore(settings.artifacts_dir), owner_id), engine


@pytest.fixture
def worker_db(tmp_path):
    db, engine = make_worker_db(tmp_path / "data")
    yield db
    engine.dispose()


@pytest.fixture
def seeded(worker_db, trained_state, digits_data):
    """(db, model, dataset) with the trained mlp and the digits subset uploaded."""
    x, y = digits_data
    return worker_db, worker_db.add_model(trained_state), worker_db.add_dataset(x, y)
