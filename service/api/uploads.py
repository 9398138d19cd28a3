"""Streaming multipart uploads straight into the artifact store.

Starlette's form parser spools every file to the system temp directory with no size cap, so a
too-large upload would be written in full before anyone could refuse it. Here the one ``file``
part goes, chunk by chunk, into a :class:`~service.storage.StagedFile` in the store's own
``tmp`` directory: hashed on the way in, refused with 413 the moment it passes the cap (the
staging file is deleted), and committed by the caller with an atomic rename. Text fields and
part headers are small and capped separately. Disk writes run in the threadpool, off the event
loop.

Every request body is capped by the app's ``BodySizeLimitMiddleware`` (16 MiB) through the
:class:`BodyLimit` it puts in the scope; :func:`receive_multipart` raises that request's limit
to the upload cap plus the form's overhead before it streams, so only an upload route, and only
while it streams to disk, reads more.

:func:`create_from_upload` is the one sequence both upload routes run: receive the form, check
and store the file (:class:`UploadKind`), then index it (artifact row + resource row, under
``service.erasure``'s content lock, so a deletion of identical bytes cannot remove the file
under the new row). A refused upload (a bad file, 413, a full disk: 507) leaves neither a
staging file nor a stored one."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.db.models import Artifact
from service.db.session import session_scope
from service.erasure import check_published, release_content
from service.problems import ProblemError, validation_problem
from service.storage import ArtifactStore, StagedFile, UploadTooLarge

MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_TEXT_FIELDS = 16
MAX_PART_HEADER_BYTES = 16 * 1024  # all header lines of one part together
FORM_OVERHEAD_BYTES = (MAX_TEXT_FIELDS + 1) * (MAX_TEXT_FIELD_BYTES + MAX_PART_HEADER_BYTES)
BODY_LIMIT_SCOPE_KEY = "gif.body_limit"

Checked = TypeVar("Checked")
Out = TypeVar("Out")


@dataclass
class BodyLimit:
    """The body cap of one request, in bytes: enforced on every ``receive`` by the app's
    ``BodySizeLimitMiddleware``, raised by :func:`receive_multipart` for an upload."""

    max_bytes: int


def _raise_body_limit(request: Request, max_bytes: int) -> None:
    limit = request.scope.get(BODY_LIMIT_SCOPE_KEY)
    if isinstance(limit, BodyLimit):
        limit.max_bytes = max(limit.max_bytes, max_bytes)


@dataclass
class MultipartUpload:
    """The parsed form: text ``fields`` and the staged ``file`` part (None when absent)."""

    fields: dict[str, str] = field(default_factory=dict)
    file: StagedFile | None = None
    filename: str | None = None

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """Multipart callbacks: text parts into memory (capped), the file part into a staging file.

    Callbacks are synchronous; file bytes are queued in ``pending`` and written by the async
    loop in a worker thread."""

    def __init__(self, store: ArtifactStore, file_field: str, limit: int, charset: str):
        self.store = store
        self.file_field = file_field
        self.limit = limit
        self.charset = charset
        self.upload = MultipartUpload()
        self.part = _Part()
        self.disposition = b""
        self.header_name = b""
        self.header_value = b""
        self.header_bytes = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.disposition = b""
        self.header_bytes = 0

    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_PART_HEADER_BYTES:
            raise _bad_form(f"a part's headers exceed {MAX_PART_HEADER_BYTES} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = b""
        self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise _bad_form('a multipart part has no Content-Disposition "name"')
        self.part.name = options[b"name"].decode(self.charset, errors="replace")
        if self.part.name == self.file_field:
            if self.upload.file is not None:
                raise _bad_form(f"more than one {self.file_field!r} part")
            self.part.is_file = True
            filename = options.get(b"filename")
            self.upload.filename = filename.decode(self.charset, "replace") if filename else None
            self.upload.file = self.store.stage(limit=self.limit)
        elif len(self.upload.fields) >= MAX_TEXT_FIELDS:
            raise _bad_form(f"too many form fields (at most {MAX_TEXT_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.is_file:
            self.pending_bytes += len(chunk)
            if self.upload.file is not None and (
                self.upload.file.size + self.pending_bytes > self.limit
            ):
                raise UploadTooLarge(self.limit)
            self.pending.append(chunk)
            return
        if len(self.part.data) + len(chunk) > MAX_TEXT_FIELD_BYTES:
            raise ProblemError(
                413,
                f"form field {self.part.name!r} exceeds {MAX_TEXT_FIELD_BYTES} bytes",
                slug="upload-too-large",
            )
        self.part.data.extend(chunk)

    def on_part_end(self) -> None:
        if not self.part.is_file:
            self.upload.fields[self.part.name] = self.part.data.decode(
                self.charset, errors="replace"
            )

    def take_pending(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return data


def _bad_form(detail: str) -> ProblemError:
    return ProblemError(400, detail, slug="malformed-multipart")


def _check_content_type(request: Request) -> tuple[bytes, str]:
    content_type = request.headers.get("content-type", "")
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise ProblemError(
            415,
            f"expected multipart/form-data, got {content_type or 'no Content-Type'!r}",
            slug="unsupported-media-type",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad_form("multipart/form-data without a boundary")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "utf-8"
    return boundary, charset


def _least_file_size(request: Request) -> int:
    """A lower bound of the file part's size from ``Content-Length`` (0 when undeclared)."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return 0
    return max(0, int(declared) - FORM_OVERHEAD_BYTES)


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise UploadTooLarge(limit)


async def receive_multipart(
    request: Request, store: ArtifactStore, *, limit: int, file_field: str = "file"
) -> MultipartUpload:
    """Parse the request's multipart body, streaming ``file_field`` into a staging file.

    Raises 415 (not multipart), 400 (malformed), 413 (over ``limit``: nothing left on disk).
    The caller owns the result: commit its ``file`` or call :meth:`MultipartUpload.discard`."""
    boundary, charset = _check_content_type(request)
    _check_declared_length(request, limit)
    _raise_body_limit(request, limit + FORM_OVERHEAD_BYTES)
    collector = _Collector(store, file_field, limit, charset)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
            if collector.pending and collector.upload.file is not None:
                await run_in_threadpool(collector.upload.file.write, collector.take_pending())
        parser.finalize()
        if collector.pending and collector.upload.file is not None:
            await run_in_threadpool(collector.upload.file.write, collector.take_pending())
    except FormParserError as err:
        collector.upload.discard()
        raise _bad_form(f"malformed multipart body: {err}") from None
    except BaseException:
        collector.upload.discard()
        raise
    return collector.upload


# ------------------------------------------------------------------ upload → artifact → row


@dataclass(frozen=True)
class StoredFile:
    """A checked upload, in the store under its content hash."""

    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class UploadKind(Generic[Checked, Out]):
    """What one upload route stores.

    ``check(fields, file)`` validates the form's text ``fields`` and the staged ``file``, puts
    the file into the store and returns what it found (with a ``stored: StoredFile``); it runs
    in the threadpool and raises problems for bad input. ``make_row(owner_id, artifact_id,
    checked)`` builds the resource's ORM row, ``out(row)`` its response."""

    artifact_kind: str
    media_type: str
    check: Callable[[dict[str, str], StagedFile], Checked]
    make_row: Callable[[str, str, Checked], Any]
    out: Callable[[Any], Out]


def _record(
    factory: sessionmaker[Session],
    store: ArtifactStore,
    owner_id: str,
    kind: UploadKind[Checked, Out],
    checked: Any,
) -> Out:
    stored: StoredFile = checked.stored
    with session_scope(factory) as session:
        check_published(session, store, stored.sha256)
        artifact = Artifact.record(
            session,
            owner_id=owner_id,
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            kind=kind.artifact_kind,
            media_type=kind.media_type,
        )
        row = kind.make_row(owner_id, artifact.id, checked)
        session.add(row)
        session.flush()
        return kind.out(row)


async def create_from_upload(
    request: Request,
    kind: UploadKind[Checked, Out],
    *,
    store: ArtifactStore,
    factory: sessionmaker[Session],
    owner_id: str,
    limit: int,
    admit: Callable[[int], None] | None = None,
) -> Out:
    """Receive the multipart form (the ``file`` part streamed to staging under ``limit``),
    check and store it with ``kind.check``, then insert its artifact and resource rows. The
    staging file is gone afterwards whatever happened; a refused upload leaves nothing.

    ``admit(size)`` may refuse the upload (the storage limit): called before the body is read
    with the least the file can hold (the declared length less the form's overhead), and with
    the staged file's size before it enters the store."""
    if admit is not None:
        await run_in_threadpool(admit, _least_file_size(request))
    upload = await receive_multipart(request, store, limit=limit)
    try:
        if upload.file is None:
            raise validation_problem("missing form part 'file'", [(("body", "file"), "required")])
        if admit is not None:
            await run_in_threadpool(admit, upload.file.size)
        checked = await run_in_threadpool(kind.check, upload.fields, upload.file)
    finally:
        upload.discard()
    try:
        return await run_in_threadpool(_record, factory, store, owner_id, kind, checked)
    except BaseException:
        # Not indexed (a full disk, the database down): the file must not stay unreferenced.
        await run_in_threadpool(release_content, factory, store, checked.stored.sha256)
        raise
