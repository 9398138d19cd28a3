"""``/v1/datasets``: upload (multipart ``file`` + ``name``), list (uploads, then the built-ins
present on this server), get, delete."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response

from gif.builtins import BUILTIN_PREFIX, is_builtin
from gif.errors import InvalidDataset
from service.api.common import AUTH_PROBLEMS, get_owned, paginate, problem_responses
from service.api.deps import (
    CatalogDep,
    OwnerDep,
    PageDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StoreDep,
)
from service.api.erasures import erase_by_request
from service.api.uploads import StoredFile, UploadKind, create_from_upload
from service.catalog import BuiltinCatalog, DatasetSummary
from service.db.models import DATASET_MEDIA_TYPE, Dataset
from service.db.owned import owned_rows
from service.limits import storage_admission
from service.problems import ProblemError, validation_problem
from service.schemas import DatasetOut, Page
from service.storage import ArtifactStore, StagedFile

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=AUTH_PROBLEMS)

MAX_NAME_LENGTH = 200

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz (no pickles) or safetensors with x (N×C×H×W "
                            "or N×F, uint8 or float32) and y (N integer labels).",
                        },
                        "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
                    },
                }
            }
        },
    }
}


def dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(dataset)


def builtin_out(dataset_id: str, summary: DatasetSummary) -> DatasetOut:
    return DatasetOut(
        id=dataset_id,
        name=dataset_id.removeprefix(BUILTIN_PREFIX),
        num_samples=summary.num_samples,
        sample_shape=summary.sample_shape,
        dtype=summary.dtype,
        num_classes=summary.num_classes,
        class_counts=summary.class_counts,
        sha256=None,
        created_at=None,
        builtin=True,
    )


def _name_from_form(raw: str | None) -> str:
    name = (raw or "").strip()
    if not name:
        raise validation_problem("missing form field 'name'", [(("body", "name"), "required")])
    if len(name) > MAX_NAME_LENGTH:
        raise validation_problem(
            "dataset name too long",
            [(("body", "name"), f"at most {MAX_NAME_LENGTH} characters")],
        )
    return name


@dataclass
class CheckedDataset:
    name: str
    summary: DatasetSummary
    stored: StoredFile


def check_and_store_dataset(store: ArtifactStore, name: str, upload: StagedFile) -> CheckedDataset:
    """Check the uploaded file with the engine's streaming reader (``gif.data.scan_dataset``:
    every rule, memory one chunk whatever the size; 422 if it is not a valid dataset) and move
    it into the store as it is."""
    from gif.data import scan_dataset

    upload.close()
    try:
        summary = DatasetSummary(**scan_dataset(upload.path))
    except InvalidDataset as err:
        raise validation_problem(err.message, [(("body", "file"), err.message)]) from None
    stored = StoredFile(sha256=store.commit(upload), size_bytes=upload.size)
    return CheckedDataset(name=name, summary=summary, stored=stored)


def _check_upload(store: ArtifactStore, fields: dict[str, str], file: StagedFile) -> CheckedDataset:
    return check_and_store_dataset(store, _name_from_form(fields.get("name")), file)


def _dataset_row(owner_id: str, artifact_id: str, checked: CheckedDataset) -> Dataset:
    summary = checked.summary
    return Dataset(
        owner_id=owner_id,
        name=checked.name,
        num_samples=summary.num_samples,
        sample_shape=summary.sample_shape,
        dtype=summary.dtype,
        num_classes=summary.num_classes,
        class_counts=summary.class_counts,
        sha256=checked.stored.sha256,
        size_bytes=checked.stored.size_bytes,
        artifact_id=artifact_id,
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a dataset (.npz or safetensors with x and y)",
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(400, 413, 415, 429),
)
async def create_dataset(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    factory: SessionFactoryDep,
    response: Response,
) -> DatasetOut:
    kind = UploadKind(
        artifact_kind="dataset",
        media_type=DATASET_MEDIA_TYPE,
        check=partial(_check_upload, store),
        make_row=_dataset_row,
        out=dataset_out,
    )
    created = await create_from_upload(
        request, kind, store=store, factory=factory, owner_id=owner.id,
        limit=settings.max_upload_bytes, admit=storage_admission(factory, owner.id, settings),
    )
    response.headers["Location"] = f"/v1/datasets/{created.id}"
    return created


def _owned_datasets(owner_id: str) -> sa.Select:
    return owned_rows(Dataset, owner_id)


def _builtin_page(
    catalog: BuiltinCatalog, after: str | None, limit: int
) -> tuple[list[DatasetOut], bool]:
    entries = catalog.all()
    ids = [dataset_id for dataset_id, _ in entries]
    start = 0
    if after is not None:
        if after not in ids:
            raise validation_problem(
                f"unknown cursor {after!r}",
                [(("query", "after"), "not the id of an item of this list")],
            )
        start = ids.index(after) + 1
    chosen = entries[start : start + limit]
    return [builtin_out(i, s) for i, s in chosen], start + limit < len(entries)


@router.get(
    "",
    response_model=Page[DatasetOut],
    summary="List datasets: uploads newest first, then the built-ins present here",
)
def list_datasets(
    owner: OwnerDep, session: SessionDep, catalog: CatalogDep, page: PageDep
) -> Page[DatasetOut]:
    if page.after is not None and is_builtin(page.after):
        data, has_more = _builtin_page(catalog, page.after, page.limit)
        return _page(data, has_more)
    window = paginate(session, _owned_datasets(owner.id), Dataset, page, owner.id)
    data = [dataset_out(d) for d in window.rows]
    if window.has_more:
        return Page[DatasetOut](data=data, has_more=True, next_cursor=window.next_cursor)
    if len(data) < page.limit:
        builtins, has_more = _builtin_page(catalog, None, page.limit - len(data))
        return _page(data + builtins, has_more)
    # The uploads fill this page exactly: the built-ins follow on the next.
    return _page(data, bool(catalog.ids()))


def _page(data: list[DatasetOut], has_more: bool) -> Page[DatasetOut]:
    """A page whose cursor is its last item's id (built-ins are paged by their fixed order;
    the last upload's id is found again by ``paginate``, whatever happened to it)."""
    return Page[DatasetOut](
        data=data, has_more=has_more, next_cursor=data[-1].id if has_more and data else None
    )


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    summary="Get a dataset (an upload or a built-in)",
    responses=problem_responses(404),
)
def get_dataset(
    dataset_id: str, owner: OwnerDep, session: SessionDep, catalog: CatalogDep
) -> DatasetOut:
    if is_builtin(dataset_id):
        summary = catalog.get(dataset_id)
        if summary is None:
            raise ProblemError(404, catalog.unknown(dataset_id), slug="not-found")
        return builtin_out(dataset_id, summary)
    return dataset_out(get_owned(session, Dataset, "dataset", owner.id, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Erase an uploaded dataset: its stored file and every copy go",
    responses=problem_responses(404, 409),
)
async def delete_dataset(
    dataset_id: str, request: Request, owner: OwnerDep, catalog: CatalogDep
) -> Response:
    """409 naming the job while a queued or running job uses the dataset, for training,
    evaluation or as holdout (service.erasure); built-ins cannot be deleted (409)."""
    if is_builtin(dataset_id):
        if dataset_id not in catalog.ids():
            raise ProblemError(404, catalog.unknown(dataset_id), slug="not-found")
        raise ProblemError(409, "built-in datasets cannot be deleted", slug="builtin-dataset")
    await erase_by_request(request, "dataset", owner, dataset_id)
    return Response(status_code=204)
