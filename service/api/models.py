"""``/v1/models``: upload (multipart ``file`` + ``spec``), list, get, download, delete."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gif.errors import GifError, InvalidCheckpoint, InvalidRequest
from gif.fit import ModelIO
from gif.spec import ModelSpec
from service.api.common import AUTH_PROBLEMS, get_owned, paginate, problem_responses
from service.api.deps import (
    IfNoneMatchDep,
    OwnerDep,
    PageDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StoreDep,
)
from service.api.erasures import erase_by_request
from service.api.uploads import StoredFile, UploadKind, create_from_upload
from service.db.models import CHECKPOINT_MEDIA_TYPE, Artifact, Model
from service.db.owned import owned_rows
from service.limits import storage_admission
from service.problems import (
    ProblemError,
    explain_validation_errors,
    validation_problem,
    validation_summary,
)
from service.schemas import ModelOut, Page
from service.storage import CHUNK_BYTES, ArtifactStore, StagedFile

router = APIRouter(prefix="/v1/models", tags=["models"], responses=AUTH_PROBLEMS)


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "spec"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The checkpoint: safetensors, or a PyTorch state-dict "
                            "file loadable with weights_only=True.",
                        },
                        "spec": {
                            "type": "string",
                            "description": "JSON: {arch, arch_kwargs, input, task, name} "
                            "(see GET /v1/architectures).",
                        },
                    },
                }
            }
        },
    }
}


def model_out(model: Model) -> ModelOut:
    return ModelOut.model_validate(model)


def _spec_from_form(raw: str | None) -> ModelSpec:
    if raw is None:
        raise validation_problem("missing form field 'spec'", [(("body", "spec"), "required")])
    try:
        return ModelSpec.model_validate_json(raw)
    except ValidationError as err:
        prefix = ("body", "spec")
        errors = explain_validation_errors(
            [{**e, "loc": (*prefix, *e["loc"])} for e in err.errors()], ModelSpec, prefix
        )
        raise validation_problem(validation_summary("invalid model spec", errors),
                                 errors) from None


def _gif_problem(err: GifError, default_loc: tuple) -> ProblemError:
    """A 422 naming the offending field; ``InvalidRequest.loc`` paths start at the spec."""
    loc = getattr(err, "loc", None) or default_loc
    errors = [(("body", *loc), err.message)]
    reasons = {"missing": "missing key", "unexpected": "unexpected key",
               "mismatched": "shape mismatch", "wrong_dtype": "integer tensor for a float"}
    for kind, reason in reasons.items():
        for entry in err.details.get(kind, []) or []:
            key = entry.get("key", "?") if isinstance(entry, dict) else entry
            errors.append((("body", "file", str(key)), reason))
    return validation_problem(err.message, errors)


@dataclass
class CheckedModel:
    """A spec and checkpoint that load strictly, stored as safetensors."""

    spec: ModelSpec
    num_parameters: int
    stored: StoredFile
    io: ModelIO


def check_and_store_checkpoint(
    store: ArtifactStore, spec: ModelSpec, upload: StagedFile
) -> CheckedModel:
    """Check the uploaded state dict against the architecture without allocating the network
    (``gif.checkpoint.check_checkpoint``: meta model vs the file's layout, values scanned),
    reading no pickle beyond ``weights_only``, and store it as safetensors: a safetensors
    upload as it is, a torch file converted. Raises 422 problems naming fields/keys."""
    from gif.checkpoint import check_checkpoint, write_safetensors
    from gif.registry import model_io

    upload.close()
    try:
        checked = check_checkpoint(spec, upload.path)
    except InvalidRequest as err:
        raise _gif_problem(err, ("spec", "arch_kwargs")) from None
    except InvalidCheckpoint as err:
        raise _gif_problem(err, ("file",)) from None
    if checked.state_dict is None:
        stored = StoredFile(sha256=store.commit(upload), size_bytes=upload.size)
    else:
        staged = store.stage()
        try:
            staged.close()
            write_safetensors(checked.state_dict, staged.path)
            stored = StoredFile(*store.adopt(staged.path))
        finally:
            staged.discard()
    return CheckedModel(
        spec=spec, num_parameters=checked.num_parameters, stored=stored, io=model_io(spec)
    )


def _check_upload(store: ArtifactStore, fields: dict[str, str], file: StagedFile) -> CheckedModel:
    return check_and_store_checkpoint(store, _spec_from_form(fields.get("spec")), file)


def _model_row(owner_id: str, artifact_id: str, checked: CheckedModel) -> Model:
    spec = checked.spec
    return Model(
        owner_id=owner_id,
        name=spec.name,
        arch=spec.arch,
        arch_kwargs=spec.arch_kwargs,
        input=spec.input.model_dump(mode="json"),
        task=spec.task,
        num_parameters=checked.num_parameters,
        input_shape=checked.io.to_json()["sample_shape"],
        flat_input=checked.io.flat_input,
        num_outputs=checked.io.num_outputs,
        size_bytes=checked.stored.size_bytes,
        sha256=checked.stored.sha256,
        artifact_id=artifact_id,
    )


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    summary="Upload a checkpoint with its architecture spec",
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(400, 413, 415, 429),
)
async def create_model(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    factory: SessionFactoryDep,
    response: Response,
) -> ModelOut:
    kind = UploadKind(
        artifact_kind="checkpoint",
        media_type=CHECKPOINT_MEDIA_TYPE,
        check=partial(_check_upload, store),
        make_row=_model_row,
        out=model_out,
    )
    created = await create_from_upload(
        request, kind, store=store, factory=factory, owner_id=owner.id,
        limit=settings.max_upload_bytes, admit=storage_admission(factory, owner.id, settings),
    )
    response.headers["Location"] = f"/v1/models/{created.id}"
    return created


def _owned_models(owner_id: str) -> sa.Select:
    return owned_rows(Model, owner_id)


@router.get("", response_model=Page[ModelOut], summary="List models, newest first")
def list_models(owner: OwnerDep, session: SessionDep, page: PageDep) -> Page[ModelOut]:
    window = paginate(session, _owned_models(owner.id), Model, page, owner.id)
    return Page[ModelOut](data=[model_out(m) for m in window.rows], has_more=window.has_more,
                          next_cursor=window.next_cursor)


@router.get(
    "/{model_id}", response_model=ModelOut, summary="Get a model", responses=problem_responses(404)
)
def get_model(model_id: str, owner: OwnerDep, session: SessionDep) -> ModelOut:
    return model_out(get_owned(session, Model, "model", owner.id, model_id))


@router.delete(
    "/{model_id}",
    status_code=204,
    summary="Erase a model: its stored file and every copy go (jobs keep their history)",
    responses=problem_responses(404, 409),
)
async def delete_model(model_id: str, request: Request, owner: OwnerDep) -> Response:
    """409 naming the job while a queued or running job uses the model (service.erasure)."""
    await erase_by_request(request, "model", owner, model_id)
    return Response(status_code=204)


# ------------------------------------------------------------------ download with Range/ETag

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` of a single-range ``Range`` header, or None to send it all.

    Unparseable or multi-range headers are ignored (RFC 9110 allows it); an unsatisfiable range
    raises 416 with ``Content-Range: bytes */size``."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid range: ignore the header
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> ProblemError:
    return ProblemError(
        416,
        f"the requested range is outside the {size}-byte content",
        slug="range-not-satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _file_chunks(store: ArtifactStore, sha256: str, start: int, length: int):
    with store.open(sha256) as handle:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def artifact_response(
    store: ArtifactStore,
    sha256: str,
    media_type: str,
    filename: str,
    range_header: str | None,
    size: int,
) -> Response:
    """A download with ``ETag`` (the sha256), ``Content-Length``, ``Accept-Ranges``, and 206
    for a satisfiable single ``Range``."""
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    byte_range = parse_range(range_header, size) if range_header else None
    if byte_range is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            _file_chunks(store, sha256, 0, size), media_type=media_type, headers=headers
        )
    start, end = byte_range
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        _file_chunks(store, sha256, start, end - start + 1),
        status_code=206,
        media_type=media_type,
        headers=headers,
    )


@router.get(
    "/{model_id}/content",
    summary="Download the checkpoint (safetensors); honours Range and If-None-Match (weak, *)",
    response_class=Response,
    responses={
        200: {"content": {CHECKPOINT_MEDIA_TYPE: {}}, "description": "The whole file"},
        206: {"content": {CHECKPOINT_MEDIA_TYPE: {}}, "description": "The requested range"},
        304: {"description": "Not modified (ETag matched)"},
        **problem_responses(404, 416),
    },
)
async def download_model(
    model_id: str,
    owner: OwnerDep,
    factory: SessionFactoryDep,
    store: StoreDep,
    if_none_match: IfNoneMatchDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    def lookup() -> tuple[Model, str]:
        with factory() as session:
            model = get_owned(session, Model, "model", owner.id, model_id)
            artifact = session.get(Artifact, model.artifact_id)
            assert artifact is not None  # foreign key
            return model, artifact.media_type

    model, media_type = await run_in_threadpool(lookup)
    etag = f'"{model.sha256}"'
    if if_none_match.matches(etag):
        return Response(status_code=304, headers={"ETag": etag, "Accept-Ranges": "bytes"})
    size = await run_in_threadpool(store.verify, model.sha256)  # integrity before serving
    return artifact_response(
        store,
        model.sha256,
        media_type,
        f"{model.id}.safetensors",
        range_header,
        size,
    )
