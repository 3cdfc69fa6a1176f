"""Streaming multipart parsing: the file part goes straight to the blob store.

Starlette's form parser spools the whole body before the handler runs, so a
limit checked afterwards comes too late. Here every limit is enforced while the
bytes arrive (chunked bodies included) and the request is refused at the first
byte past one: the whole body, the number of parts, each part's headers, each
small field, and a file part under any name but ``file`` (refused at its headers,
before its body is read). Memory stays bounded whatever the client sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from stt_daemon.common.blobs import BlobStore, BlobTooLarge, BlobWriter

#: Small (non-file) fields a form may carry; the richest form we take has about 15.
MAX_FIELDS = 50
#: Bytes of one small field's value (a prompt is the longest, a few hundred bytes).
MAX_FIELD_BYTES = 64 * 1024
#: Bytes of one part's headers (Content-Disposition with a long file name, Content-Type).
MAX_PART_HEADER_BYTES = 16 * 1024
#: Room for the multipart framing and the small fields around the file.
FRAMING_SLACK = 256 * 1024


class PayloadTooLarge(HTTPException):
    """413 with the limit in the message."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"upload exceeds the limit of {limit / 1024 / 1024:g} MB (STT_MAX_UPLOAD_MB)"
        )


@dataclass
class Upload:
    """The parsed form: small fields as text, the file as an unfinished blob.

    A repeated field keeps its last value, except array fields (``name[]``),
    whose values are joined with commas.
    """

    fields: dict[str, str] = field(default_factory=dict)
    blob: BlobWriter | None = None
    filename: str | None = None
    content_type: str | None = None

    def discard(self) -> None:
        """Drop the stored file (the job was not accepted)."""
        if self.blob is not None:
            self.blob.abort()


class _FormState:
    """Callbacks of python-multipart's push parser, collecting one form."""

    def __init__(self, blobs: BlobStore, max_bytes: int, file_field: str) -> None:
        self.upload = Upload()
        self._blobs = blobs
        self._max = max_bytes
        self._file_field = file_field
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._header_name = b""
        self._header_value = b""
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self._fields = 0
        # Array values are gathered in lists and joined once at the end: joining as
        # they arrive copies the growing string each time (quadratic in the body).
        self._arrays: dict[str, list[str]] = {}

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_val,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def fields(self) -> dict[str, str]:
        """Single fields and joined array fields."""
        return self.upload.fields | {name: ",".join(v) for name, v in self._arrays.items()}

    def _part_begin(self) -> None:
        self._headers.clear()
        self._header_bytes = 0
        self._buffer.clear()
        self._name, self._is_file = None, False

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise HTTPException(413, f"a form part's headers exceed {MAX_PART_HEADER_BYTES} bytes")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise HTTPException(413, f"the form has more than {MAX_FIELDS} fields")
            return
        if self._name != self._file_field:
            # Refused before its first byte is read: reading past it would let a
            # client make the gateway swallow any amount of data for nothing.
            raise HTTPException(
                422,
                f"unexpected file part {self._name[:64]!r}: send the audio as '{self._file_field}'",
            )
        if self.upload.blob is not None:
            raise HTTPException(400, f"only one '{self._file_field}' part is allowed")
        self._is_file = True
        self.upload.filename = filename.decode("utf-8", "replace")[:255]
        ctype = self._headers.get(b"content-type")
        self.upload.content_type = ctype.decode("latin-1") if ctype else None
        self.upload.blob = self._blobs.writer(self._max)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            assert self.upload.blob is not None
            try:
                self.upload.blob.write(data[start:end])
            except BlobTooLarge:
                raise PayloadTooLarge(self._max) from None
        else:
            self._buffer += data[start:end]
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise HTTPException(
                    413, f"form field {self._name!r} exceeds {MAX_FIELD_BYTES // 1024} KiB"
                )

    def _part_end(self) -> None:
        if self._is_file or not self._name:
            return
        value = self._buffer.decode("utf-8", "replace")
        if self._name.endswith("[]"):
            # An array field (``name[]`` sent once per value): keep them all.
            self._arrays.setdefault(self._name, []).append(value)
        else:
            self.upload.fields[self._name] = value


async def receive_upload(
    request: Request, blobs: BlobStore, max_bytes: int, file_field: str = "file"
) -> Upload:
    """Parse a multipart/form-data request, streaming its file part to the blob store."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise HTTPException(415, "send the audio as multipart/form-data with a 'file' part")
    body_limit = max_bytes + FRAMING_SLACK
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > body_limit:
        # Refuse before reading a byte when the client says how much is coming.
        raise PayloadTooLarge(max_bytes)
    state = _FormState(blobs, max_bytes, file_field)
    parser = MultipartParser(boundary, state.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                # A chunked body (no Content-Length) is counted as it comes.
                raise PayloadTooLarge(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except HTTPException:
        state.upload.discard()
        raise
    except Exception as exc:
        state.upload.discard()
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    state.upload.fields = state.fields()
    if state.upload.blob is None:
        raise HTTPException(422, f"missing file part '{file_field}'")
    if state.upload.blob.size == 0:
        state.upload.discard()
        raise HTTPException(422, "the uploaded file is empty")
    return state.upload
