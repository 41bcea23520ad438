"""/v1/files (multipart uploads streamed into FileService.UploadFile) and /v1/vector_stores
with their files, file batches and search."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import uuid

import grpc
from fastapi import APIRouter
from openai.types import FileObject, VectorStore, vector_store_create_params, vector_store_search_params
from openai.types.vector_stores import VectorStoreFile, VectorStoreFileBatch
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import StreamingResponse

from parley.files.v1 import files_pb2 as fpb
from parley.files.v1 import files_service_pb2 as fapi
from services.rest import ids
from services.rest.convert import metadata, seconds
from services.rest.errors import ApiError, from_grpc
from services.rest.gateway import first_and_rest
from services.rest.http import dump, json_response, paginate, read_json, unsupported

router = APIRouter(tags=["files"])

PURPOSES = {"assistants": fpb.FILE_PURPOSE_ASSISTANTS, "assistants_output": fpb.FILE_PURPOSE_ASSISTANTS_OUTPUT,
            "vision": fpb.FILE_PURPOSE_VISION, "user_data": fpb.FILE_PURPOSE_USER_DATA}
_PURPOSE_OUT = {v: k for k, v in PURPOSES.items()}
_FILE_STATUS = {fpb.FILE_STATUS_UPLOADED: "uploaded", fpb.FILE_STATUS_PROCESSING: "uploaded",
                fpb.FILE_STATUS_PROCESSED: "processed", fpb.FILE_STATUS_ERROR: "error"}
UPLOAD_CHUNK = 1024 * 1024


def _gateway(request: Request):
    return request.app.state.gateway


def _settings(request: Request):
    return request.app.state.settings


def file_out(file: fpb.File) -> dict:
    return dump(FileObject.model_construct(
        id=ids.public("file", file.id), object="file", bytes=file.size_bytes, created_at=seconds(file.create_time) or 0,
        filename=file.filename, purpose=_PURPOSE_OUT.get(file.purpose, "assistants"),
        status=_FILE_STATUS.get(file.status, "uploaded"), status_details=file.status_reason or None,
        expires_at=None))


# ---- files -----------------------------------------------------------------------------------


class _Upload:
    """Parses a multipart body as it arrives and turns its `file` part into UploadFile
    messages. `purpose` usually comes first; a file part that comes before it is spooled (in
    memory, then on disk) until it is known."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename = ""
        self.media_type = ""
        self.size = 0
        self.out: list[bytes] = []       # file bytes parsed since the last drain
        self.spool = None
        self.file_seen = self.file_done = False
        self._name = ""
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._is_file = False
        self._text = bytearray()
        self.parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished})

    def _begin(self):
        self._headers, self._field, self._value, self._text = {}, b"", b"", bytearray()

    def _header_field(self, data, start, end):
        self._field += data[start:end]

    def _header_value(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._name == "file"
        if self._is_file:
            self.file_seen = True
            self.filename = options.get(b"filename", b"upload").decode("utf-8", "replace")
            self.media_type = self._headers.get(b"content-type", b"").decode("latin-1")

    def _data(self, data, start, end):
        if self._is_file:
            self.size += end - start
            if self.size > self.limit:
                raise ApiError(413, f"The file is larger than the limit of {self.limit} bytes.",
                               param="file", code="file_too_large")
            self.out.append(bytes(data[start:end]))
        else:
            self._text += data[start:end]
            if len(self._text) > 64 * 1024:
                raise ApiError(400, f"The form field '{self._name[:50]}' is too long.", param=self._name[:50])

    def _end(self):
        if self._is_file:
            self.file_done = True
        else:
            self.fields[self._name] = self._text.decode("utf-8", "replace")

    def purpose(self) -> int:
        purpose = self.fields.get("purpose")
        if purpose is None:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose",
                           code="missing_required_parameter")
        if purpose not in PURPOSES:
            raise unsupported("purpose", f"The purpose '{purpose[:50]}'") if purpose in (
                "batch", "fine-tune", "evals") else ApiError(400, f"Invalid value for 'purpose': '{purpose[:50]}'.",
                                                              param="purpose", code="invalid_value")
        return PURPOSES[purpose]


@router.post("/files", summary="Upload a file (multipart/form-data: purpose, file)")
async def upload_file(request: Request):
    settings, gateway = _settings(request), _gateway(request)
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(400, "The request must be multipart/form-data with a 'file' and a 'purpose'.", param="file",
                       code="invalid_content_type")
    upload = _Upload(options[b"boundary"], settings.max_upload_bytes)
    body = request.stream().__aiter__()
    failure: list[BaseException] = []

    async def feed() -> bool:
        """Parses the next piece of the body; False at its end."""
        try:
            chunk = await body.__anext__()
        except StopAsyncIteration:
            return False
        upload.parser.write(chunk)
        return True

    # Read until the file part starts, with its purpose known, before the call starts, so a bad
    # form is refused before anything is stored.
    more = True
    while more and not (upload.file_seen and "purpose" in upload.fields) and not upload.file_done:
        more = await feed()
    if upload.file_seen and "purpose" not in upload.fields:
        upload.spool = tempfile.SpooledTemporaryFile(max_size=8 * UPLOAD_CHUNK)  # noqa: SIM115 - closed below
        while more and "purpose" not in upload.fields:
            for piece in upload.out:
                upload.spool.write(piece)
            upload.out.clear()
            more = await feed()
    if not upload.file_seen:
        raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    purpose = upload.purpose()

    async def messages():
        yield fapi.UploadFileRequest(metadata=fapi.UploadFileMetadata(
            filename=upload.filename, media_type=upload.media_type, purpose=purpose))
        if upload.spool is not None:
            upload.spool.seek(0)
            while piece := upload.spool.read(UPLOAD_CHUNK):
                yield fapi.UploadFileRequest(chunk=piece)
            upload.spool.close()
        nonlocal more
        while True:
            pending = b"".join(upload.out)
            upload.out.clear()
            for offset in range(0, len(pending), UPLOAD_CHUNK):
                yield fapi.UploadFileRequest(chunk=pending[offset:offset + UPLOAD_CHUNK])
            if not more:
                return
            try:
                more = await feed()
            except BaseException as error:
                # Raising (never returning) cancels the call without a half-close, so the files
                # service stores nothing of a body that went wrong.
                failure.append(error)
                raise

    call = gateway.files.UploadFile(messages(), metadata=gateway.metadata(request), timeout=gateway.timeout)
    try:
        # Not until_disconnect: the body is still being read, and a client that goes away
        # fails that read, which cancels the call.
        file = await call
    except (asyncio.CancelledError, grpc.aio.AioRpcError) as error:
        if failure:
            _raise_failure(failure[0])
        if isinstance(error, grpc.aio.AioRpcError):
            raise from_grpc(error) from None
        raise
    if failure or not upload.file_done:
        # Belt and braces: a file from a body that went wrong is not kept.
        await gateway.call(request, gateway.files.DeleteFile, fapi.DeleteFileRequest(file_id=file.id))
        _raise_failure(failure[0] if failure else ApiError(400, "The multipart body ended inside the file part.",
                                                           param="file"))
    return json_response(file_out(file))


def _raise_failure(error: BaseException):
    if isinstance(error, ApiError):
        raise error
    raise ApiError(400, "The upload was interrupted.", param="file") from None


@router.get("/files", summary="List files")
async def list_files(request: Request):
    gateway = _gateway(request)
    purpose_name = request.query_params.get("purpose")
    purpose = PURPOSES.get(purpose_name, fpb.FILE_PURPOSE_UNSPECIFIED) if purpose_name else fpb.FILE_PURPOSE_UNSPECIFIED

    async def fetch(token, size):
        page = await gateway.call(request, gateway.files.ListFiles,
                                  fapi.ListFilesRequest(page_size=size, page_token=token, purpose=purpose))
        return [file_out(f) for f in page.files], page.next_page_token

    return json_response(await paginate(request, f"files:{purpose}", fetch))


@router.get("/files/{file_id}", summary="Retrieve a file")
async def get_file(request: Request, file_id: str):
    gateway = _gateway(request)
    file = await gateway.call(request, gateway.files.GetFile, fapi.GetFileRequest(file_id=ids.internal("file", file_id)))
    return json_response(file_out(file))


@router.delete("/files/{file_id}", summary="Delete a file")
async def delete_file(request: Request, file_id: str):
    gateway = _gateway(request)
    await gateway.call(request, gateway.files.DeleteFile, fapi.DeleteFileRequest(file_id=ids.internal("file", file_id)))
    return json_response({"id": file_id, "object": "file", "deleted": True})


@router.get("/files/{file_id}/content", summary="Download a file's content")
async def file_content(request: Request, file_id: str):
    gateway = _gateway(request)
    call = gateway.stream(request, gateway.files.DownloadFile,
                          fapi.DownloadFileRequest(file_id=ids.internal("file", file_id)))
    first, rest = await first_and_rest(call)

    async def chunks():
        try:
            async for message in rest:
                yield message.chunk
        except grpc.aio.AioRpcError:
            return  # the response has started: the client sees a short body
        finally:
            call.cancel()

    media_type = first.file.media_type if first is not None else "application/octet-stream"
    return StreamingResponse(chunks(), media_type=media_type or "application/octet-stream",
                             headers={"content-length": str(first.file.size_bytes)} if first is not None else None)


# ---- vector stores ---------------------------------------------------------------------------

_STORE_STATUS = {fpb.VECTOR_STORE_STATUS_IN_PROGRESS: "in_progress", fpb.VECTOR_STORE_STATUS_COMPLETED: "completed",
                 fpb.VECTOR_STORE_STATUS_EXPIRED: "expired"}
_VSF_STATUS = {fpb.VECTOR_STORE_FILE_STATUS_IN_PROGRESS: "in_progress",
               fpb.VECTOR_STORE_FILE_STATUS_COMPLETED: "completed", fpb.VECTOR_STORE_FILE_STATUS_FAILED: "failed",
               fpb.VECTOR_STORE_FILE_STATUS_CANCELLED: "cancelled"}
_VSF_STATUS_IN = {v: k for k, v in _VSF_STATUS.items()}
_VSF_ERROR = {fpb.VECTOR_STORE_FILE_ERROR_CODE_UNSUPPORTED_FILE: "unsupported_file",
              fpb.VECTOR_STORE_FILE_ERROR_CODE_INVALID_FILE: "invalid_file"}


def _counts(counts) -> dict:
    return {"in_progress": counts.in_progress, "completed": counts.completed, "failed": counts.failed,
            "cancelled": counts.cancelled, "total": counts.total}


def store_out(store: fpb.VectorStore) -> dict:
    return dump(VectorStore.model_construct(
        id=ids.public("vector_store", store.id), object="vector_store", created_at=seconds(store.create_time) or 0,
        name=store.name, usage_bytes=store.usage_bytes, file_counts=_counts(store.file_counts),
        status=_STORE_STATUS.get(store.status, "in_progress"), metadata=dict(store.metadata),
        last_active_at=seconds(store.last_active_time),
        expires_after={"anchor": "last_active_at", "days": store.expires_after.days}
        if store.HasField("expires_after") else None, expires_at=seconds(store.expire_time)))


def _attribute_in(value, param: str) -> fpb.AttributeValue:
    if isinstance(value, bool):
        return fpb.AttributeValue(bool_value=value)
    if isinstance(value, (int, float)):
        return fpb.AttributeValue(number_value=float(value))
    if isinstance(value, str):
        return fpb.AttributeValue(string_value=value)
    raise ApiError(400, f"Invalid type for '{param}': expected a string, number or boolean.", param=param,
                   code="invalid_type")


def _attribute_out(value: fpb.AttributeValue):
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def store_file_out(entry: fpb.VectorStoreFile) -> dict:
    strategy = entry.chunking_strategy
    return dump(VectorStoreFile.model_construct(
        id=ids.public("file", entry.id), object="vector_store.file", created_at=seconds(entry.create_time) or 0,
        vector_store_id=ids.public("vector_store", entry.vector_store_id), usage_bytes=entry.usage_bytes,
        status=_VSF_STATUS.get(entry.status, "in_progress"),
        last_error={"code": _VSF_ERROR.get(entry.last_error.code, "server_error"), "message": entry.last_error.message}
        if entry.status == fpb.VECTOR_STORE_FILE_STATUS_FAILED else None,
        attributes={k: _attribute_out(v) for k, v in entry.attributes.items()},
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": strategy.max_chunk_size_tokens,
                                                        "chunk_overlap_tokens": strategy.chunk_overlap_tokens}}))


def _chunking(value, param: str) -> fpb.ChunkingStrategy | None:
    if not value or value.get("type") == "auto":
        return None
    static = value.get("static") or {}
    return fpb.ChunkingStrategy(type=fpb.CHUNKING_STRATEGY_TYPE_STATIC,
                                max_chunk_size_tokens=static.get("max_chunk_size_tokens", 0),
                                chunk_overlap_tokens=static.get("chunk_overlap_tokens", 0))


def _expires(value) -> fpb.ExpirationPolicy | None:
    if not value:
        return None
    return fpb.ExpirationPolicy(anchor=fpb.EXPIRATION_ANCHOR_LAST_ACTIVE_TIME, days=int(value.get("days", 0)))


def _store_id(store_id: str) -> str:
    return ids.internal("vector_store", store_id)


@router.post("/vector_stores", summary="Create a vector store")
async def create_store(request: Request):
    body = await read_json(request, _settings(request).max_body_bytes, vector_store_create_params.VectorStoreCreateParams,
                           optional=True)
    create = fapi.CreateVectorStoreRequest(
        name=body.get("name") or "", metadata=metadata(body.get("metadata")),
        file_ids=[ids.internal_or_400("file", f, f"file_ids[{i}]") for i, f in enumerate(body.get("file_ids") or [])])
    chunking = _chunking(body.get("chunking_strategy"), "chunking_strategy")
    if chunking is not None:
        create.chunking_strategy.CopyFrom(chunking)
    expires = _expires(body.get("expires_after"))
    if expires is not None:
        create.expires_after.CopyFrom(expires)
    gateway = _gateway(request)
    return json_response(store_out(await gateway.call(request, gateway.files.CreateVectorStore, create)))


@router.get("/vector_stores", summary="List vector stores")
async def list_stores(request: Request):
    gateway = _gateway(request)

    async def fetch(token, size):
        page = await gateway.call(request, gateway.files.ListVectorStores,
                                  fapi.ListVectorStoresRequest(page_size=size, page_token=token))
        return [store_out(s) for s in page.vector_stores], page.next_page_token

    return json_response(await paginate(request, "vector_stores", fetch))


@router.get("/vector_stores/{store_id}", summary="Retrieve a vector store")
async def get_store(request: Request, store_id: str):
    gateway = _gateway(request)
    return json_response(store_out(await gateway.call(request, gateway.files.GetVectorStore,
                                                      fapi.GetVectorStoreRequest(vector_store_id=_store_id(store_id)))))


@router.post("/vector_stores/{store_id}", summary="Modify a vector store")
async def update_store(request: Request, store_id: str):
    body = await read_json(request, _settings(request).max_body_bytes, optional=True)
    update = fapi.UpdateVectorStoreRequest(vector_store=fpb.VectorStore(id=_store_id(store_id)))
    if "name" in body:
        update.vector_store.name = body["name"] or ""
        update.update_mask.paths.append("name")
    if "metadata" in body:
        update.vector_store.metadata.update(metadata(body["metadata"]))
        update.update_mask.paths.append("metadata")
    if "expires_after" in body:
        expires = _expires(body["expires_after"])
        if expires is not None:
            update.vector_store.expires_after.CopyFrom(expires)
        update.update_mask.paths.append("expires_after")
    gateway = _gateway(request)
    if not update.update_mask.paths:
        return await get_store(request, store_id)
    return json_response(store_out(await gateway.call(request, gateway.files.UpdateVectorStore, update)))


@router.delete("/vector_stores/{store_id}", summary="Delete a vector store")
async def delete_store(request: Request, store_id: str):
    gateway = _gateway(request)
    await gateway.call(request, gateway.files.DeleteVectorStore,
                       fapi.DeleteVectorStoreRequest(vector_store_id=_store_id(store_id)))
    return json_response({"id": store_id, "object": "vector_store.deleted", "deleted": True})


async def _add_file(request: Request, store: str, file_id: str, param: str, attributes=None, chunking=None):
    add = fapi.AddVectorStoreFileRequest(vector_store_id=store, file_id=ids.internal_or_400("file", file_id, param))
    for key, value in (attributes or {}).items():
        add.attributes[key].CopyFrom(_attribute_in(value, f"attributes.{key}"))
    strategy = _chunking(chunking, "chunking_strategy")
    if strategy is not None:
        add.chunking_strategy.CopyFrom(strategy)
    gateway = _gateway(request)
    return await gateway.call(request, gateway.files.AddVectorStoreFile, add)


def _poll_headers(request: Request) -> dict:
    return {"openai-poll-after-ms": str(_settings(request).poll_after_ms)}


@router.post("/vector_stores/{store_id}/files", summary="Add a file to a vector store")
async def add_store_file(request: Request, store_id: str):
    store = _store_id(store_id)
    body = await read_json(request, _settings(request).max_body_bytes)
    if "file_id" not in body:
        raise ApiError(400, "Missing required parameter: 'file_id'.", param="file_id", code="missing_required_parameter")
    entry = await _add_file(request, store, body["file_id"], "file_id", body.get("attributes"),
                            body.get("chunking_strategy"))
    return json_response(store_file_out(entry), headers=_poll_headers(request))


@router.get("/vector_stores/{store_id}/files", summary="List a vector store's files")
async def list_store_files(request: Request, store_id: str):
    store, gateway = _store_id(store_id), _gateway(request)
    status = _VSF_STATUS_IN.get(request.query_params.get("filter", ""), fpb.VECTOR_STORE_FILE_STATUS_UNSPECIFIED)

    async def fetch(token, size):
        page = await gateway.call(request, gateway.files.ListVectorStoreFiles, fapi.ListVectorStoreFilesRequest(
            vector_store_id=store, page_size=size, page_token=token, status=status))
        return [store_file_out(f) for f in page.files], page.next_page_token

    return json_response(await paginate(request, f"vs_files:{store}:{status}", fetch))


@router.get("/vector_stores/{store_id}/files/{file_id}", summary="Retrieve a vector store file")
async def get_store_file(request: Request, store_id: str, file_id: str):
    gateway = _gateway(request)
    entry = await gateway.call(request, gateway.files.GetVectorStoreFile, fapi.GetVectorStoreFileRequest(
        vector_store_id=_store_id(store_id), file_id=ids.internal("file", file_id)))
    return json_response(store_file_out(entry), headers=_poll_headers(request))


@router.delete("/vector_stores/{store_id}/files/{file_id}", summary="Remove a file from a vector store")
async def remove_store_file(request: Request, store_id: str, file_id: str):
    gateway = _gateway(request)
    await gateway.call(request, gateway.files.RemoveVectorStoreFile, fapi.RemoveVectorStoreFileRequest(
        vector_store_id=_store_id(store_id), file_id=ids.internal("file", file_id)))
    return json_response({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})


# ---- file batches: Parley has no batch object, so a batch id carries its files ---------------


def _batch_id(file_ids: list[str]) -> str:
    return "vsfb_" + base64.urlsafe_b64encode(b"".join(uuid.UUID(f).bytes for f in file_ids)).decode().rstrip("=")


def _batch_files(batch_id: str) -> list[str]:
    try:
        encoded = batch_id.removeprefix("vsfb_")
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if not batch_id.startswith("vsfb_") or not raw or len(raw) % 16:
            raise ValueError
        return [str(uuid.UUID(bytes=raw[i:i + 16])) for i in range(0, len(raw), 16)]
    except ValueError:
        raise ApiError(404, f"No file batch found with id '{batch_id[:100]}'.", code="batch_not_found") from None


async def _batch_out(request: Request, store: str, batch_id: str, file_ids: list[str]) -> dict:
    gateway = _gateway(request)
    counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": len(file_ids)}
    entries = await asyncio.gather(*(gateway.call(request, gateway.files.GetVectorStoreFile,
                                                  fapi.GetVectorStoreFileRequest(vector_store_id=store, file_id=f))
                                     for f in file_ids), return_exceptions=True)
    created = 0
    for entry in entries:
        if isinstance(entry, ApiError) and entry.status == 404:
            counts["cancelled"] += 1
            continue
        if isinstance(entry, BaseException):
            raise entry
        counts[_VSF_STATUS.get(entry.status, "in_progress")] += 1
        created = max(created, seconds(entry.create_time) or 0)
    status = "in_progress" if counts["in_progress"] else ("cancelled" if counts["cancelled"] else "completed")
    return dump(VectorStoreFileBatch.model_construct(
        id=batch_id, object="vector_store.files_batch", created_at=created,
        vector_store_id=ids.public("vector_store", store), status=status, file_counts=counts))


@router.post("/vector_stores/{store_id}/file_batches", summary="Add several files to a vector store")
async def create_batch(request: Request, store_id: str):
    store = _store_id(store_id)
    body = await read_json(request, _settings(request).max_body_bytes)
    listed = body.get("file_ids") or [f.get("file_id") for f in body.get("files") or []]
    if not listed:
        raise ApiError(400, "Missing required parameter: 'file_ids'.", param="file_ids",
                       code="missing_required_parameter")
    if len(listed) > 500:
        raise ApiError(400, "A batch holds at most 500 files.", param="file_ids", code="invalid_value")
    file_ids = [ids.internal_or_400("file", f, f"file_ids[{i}]") for i, f in enumerate(listed)]
    for index, public_id in enumerate(listed):
        try:
            await _add_file(request, store, public_id, f"file_ids[{index}]", body.get("attributes"),
                            body.get("chunking_strategy"))
        except ApiError as error:
            if error.status != 409:  # already in the store: part of the batch all the same
                raise
    batch = _batch_id(file_ids)
    return json_response(await _batch_out(request, store, batch, file_ids), headers=_poll_headers(request))


@router.get("/vector_stores/{store_id}/file_batches/{batch_id}", summary="Retrieve a file batch")
async def get_batch(request: Request, store_id: str, batch_id: str):
    store = _store_id(store_id)
    return json_response(await _batch_out(request, store, batch_id, _batch_files(batch_id)),
                         headers=_poll_headers(request))


@router.post("/vector_stores/{store_id}/file_batches/{batch_id}/cancel", summary="Cancel a file batch")
async def cancel_batch(request: Request, store_id: str, batch_id: str):
    store, gateway = _store_id(store_id), _gateway(request)
    file_ids = _batch_files(batch_id)
    for file_id in file_ids:
        entry = await gateway.call(request, gateway.files.GetVectorStoreFile,
                                   fapi.GetVectorStoreFileRequest(vector_store_id=store, file_id=file_id))
        if entry.status == fpb.VECTOR_STORE_FILE_STATUS_IN_PROGRESS:
            await gateway.call(request, gateway.files.RemoveVectorStoreFile,
                               fapi.RemoveVectorStoreFileRequest(vector_store_id=store, file_id=file_id))
    return json_response(await _batch_out(request, store, batch_id, file_ids))


@router.get("/vector_stores/{store_id}/file_batches/{batch_id}/files", summary="List a file batch's files")
async def list_batch_files(request: Request, store_id: str, batch_id: str):
    store, gateway = _store_id(store_id), _gateway(request)
    file_ids = _batch_files(batch_id)

    async def fetch(token, size):
        entries = []
        for file_id in file_ids:
            try:
                entries.append(store_file_out(await gateway.call(request, gateway.files.GetVectorStoreFile,
                               fapi.GetVectorStoreFileRequest(vector_store_id=store, file_id=file_id))))
            except ApiError as error:
                if error.status != 404:
                    raise
        return entries, ""

    return json_response(await paginate(request, f"batch:{batch_id}", fetch, order_override="desc"))


# ---- search ----------------------------------------------------------------------------------

_COMPARISONS = {"eq": fpb.COMPARISON_OPERATOR_EQ, "ne": fpb.COMPARISON_OPERATOR_NE, "gt": fpb.COMPARISON_OPERATOR_GT,
                "gte": fpb.COMPARISON_OPERATOR_GTE, "lt": fpb.COMPARISON_OPERATOR_LT,
                "lte": fpb.COMPARISON_OPERATOR_LTE, "in": fpb.COMPARISON_OPERATOR_IN,
                "nin": fpb.COMPARISON_OPERATOR_NIN}


def filter_in(value: dict, param: str) -> fpb.Filter:
    kind = value.get("type")
    if kind in ("and", "or"):
        return fpb.Filter(compound=fpb.CompoundFilter(
            op=fpb.COMPOUND_OPERATOR_AND if kind == "and" else fpb.COMPOUND_OPERATOR_OR,
            filters=[filter_in(f, f"{param}.filters[{i}]") for i, f in enumerate(value.get("filters") or [])]))
    if kind not in _COMPARISONS:
        raise ApiError(400, f"Invalid value for '{param}.type'.", param=f"{param}.type", code="invalid_value")
    comparison = fpb.ComparisonFilter(key=value.get("key", ""), op=_COMPARISONS[kind])
    if isinstance(value.get("value"), list):
        comparison.values.extend(_attribute_in(v, f"{param}.value") for v in value["value"])
    else:
        comparison.value.CopyFrom(_attribute_in(value.get("value"), f"{param}.value"))
    return fpb.Filter(comparison=comparison)


@router.post("/vector_stores/{store_id}/search", summary="Search a vector store")
async def search_store(request: Request, store_id: str):
    store = _store_id(store_id)
    body = await read_json(request, _settings(request).max_body_bytes,
                           vector_store_search_params.VectorStoreSearchParams)
    query = body["query"]
    text = query if isinstance(query, str) else " ".join(query)
    search = fapi.SearchVectorStoreRequest(vector_store_ids=[store], query=text,
                                           max_num_results=body.get("max_num_results") or 10)
    ranking = body.get("ranking_options") or {}
    if ranking.get("score_threshold") is not None:
        search.score_threshold = float(ranking["score_threshold"])
    if body.get("filters"):
        search.filters.CopyFrom(filter_in(body["filters"], "filters"))
    gateway = _gateway(request)
    reply = await gateway.call(request, gateway.files.SearchVectorStore, search)
    return json_response({
        "object": "vector_store.search_results.page", "search_query": [text], "has_more": False, "next_page": None,
        "data": [{"file_id": ids.public("file", r.file_id), "filename": r.filename, "score": r.score,
                  "attributes": {k: _attribute_out(v) for k, v in r.attributes.items()},
                  "content": [{"type": "text", "text": r.text}]} for r in reply.results]})
