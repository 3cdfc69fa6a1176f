"""The gateway's body limits (streaming multipart parser) and websocket re-framing, in process."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import HTTPException
from starlette.requests import Request
from starlette.types import Message
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.config import GatewaySettings
from gateway.limits import MAX_HEADER_BYTES, GuardedH11Protocol, uvicorn_options
from gateway.uploads import MAX_FIELDS, Upload, receive_upload
from gateway.wsframes import FrameSplitter
from stt_daemon.common.blobs import BlobStore

BOUNDARY = b"b0undary"


class Body:
    """A request body pulled chunk by chunk; counts how many chunks were read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.pulled = 0

    async def receive(self) -> Message:
        chunk = next(self._chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}


def request(body: Body, content_length: int | None = None) -> Request:
    headers = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers}
    return Request(scope, body.receive)


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (
        BOUNDARY,
        disposition.encode(),
        value,
    )


def end() -> bytes:
    return b"--%s--\r\n" % BOUNDARY


async def upload(tmp_path: Path, body: Body, max_bytes: int = 1024 * 1024) -> Upload:
    return await receive_upload(request(body), BlobStore(tmp_path.as_uri()), max_bytes)


async def test_array_fields_are_joined_once_and_in_order(tmp_path: Path) -> None:
    chunks = [part("x[]", b"a"), part("x[]", b"b"), part("model", b"base"), part("x[]", b"c")]
    got = await upload(tmp_path, Body(iter([*chunks, part("file", b"RIFF", "a.wav"), end()])))
    assert got.fields == {"x[]": "a,b,c", "model": "base"}
    assert got.filename == "a.wav"


async def test_more_fields_than_the_cap_are_refused_at_the_first_extra(tmp_path: Path) -> None:
    body = Body(part("x[]", b"v") for _ in range(100_000))
    with pytest.raises(HTTPException) as refused:
        await upload(tmp_path, body)
    assert refused.value.status_code == 413
    assert body.pulled == MAX_FIELDS + 1


async def test_a_field_past_64_kib_is_refused_while_it_arrives(tmp_path: Path) -> None:
    head = b'--%s\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' % BOUNDARY
    body = Body(iter([head, *(b"p" * 16384 for _ in range(10_000))]))
    with pytest.raises(HTTPException) as refused:
        await upload(tmp_path, body)
    assert refused.value.status_code == 413
    assert body.pulled < 10


async def test_a_file_under_another_name_is_refused_at_its_headers(tmp_path: Path) -> None:
    head = b'--%s\r\nContent-Disposition: form-data; name="x"; filename="a"\r\n\r\n' % BOUNDARY
    body = Body(iter([head, *(b"\0" * 65536 for _ in range(10_000))]))
    with pytest.raises(HTTPException) as refused:
        await upload(tmp_path, body)
    assert refused.value.status_code == 422
    assert "unexpected file part 'x'" in str(refused.value.detail)
    assert body.pulled == 1


async def test_a_chunked_body_past_the_upload_limit_is_refused(tmp_path: Path) -> None:
    # Small fields only (so no file part hits the blob limit first): the body cap does it.
    body = Body(iter([part("a", b"a" * 60_000) for _ in range(40)]))
    with pytest.raises(HTTPException) as refused:
        await upload(tmp_path, body, max_bytes=1024)
    assert refused.value.status_code == 413
    assert "STT_MAX_UPLOAD_MB" in str(refused.value.detail)
    assert list(tmp_path.iterdir()) == []


async def test_endless_part_headers_are_refused(tmp_path: Path) -> None:
    head = b"--%s\r\nX-Filler: " % BOUNDARY
    body = Body(iter([head, *(b"h" * 4096 for _ in range(10_000))]))
    with pytest.raises(HTTPException) as refused:
        await upload(tmp_path, body)
    # python-multipart's own header cap (400) or ours (413), whichever comes first.
    assert refused.value.status_code in (400, 413)
    assert body.pulled < 10


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        size = bytes((0x80 | length,))
    elif length < 65536:
        size = bytes((0x80 | 126,)) + struct.pack("!H", length)
    else:
        size = bytes((0x80 | 127,)) + struct.pack("!Q", length)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode,)) + size + key + masked


def parse_all(stream: bytes, max_size: int | None = None) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True, max_size=max_size)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


def test_splitter_cuts_big_frames_into_fragments_that_reassemble() -> None:
    rng = random.Random(7)
    audio = rng.randbytes(300_000)
    stream = masked_frame(0x9, b"ping") + masked_frame(0x2, audio) + masked_frame(0x8, b"\x03\xe8")
    splitter = FrameSplitter(max_size=1_000_000)
    out = bytearray()
    at = 0
    while at < len(stream):  # odd chunk sizes, so that cuts fall anywhere
        step = rng.randint(1, 70_000)
        out += splitter.feed(stream[at : at + step])
        at += step
    frames = parse_all(bytes(out))
    assert frames[0].opcode is Opcode.PING and frames[-1].opcode is Opcode.CLOSE
    data = frames[1:-1]
    assert len(data) > 3
    assert data[0].opcode is Opcode.BINARY and not data[0].fin
    assert all(f.opcode is Opcode.CONT for f in data[1:])
    assert data[-1].fin and not any(f.fin for f in data[:-1])
    assert max(len(f.data) for f in data) <= 70_004
    assert b"".join(f.data for f in data) == audio


def test_splitter_leaves_an_oversize_frame_whole_for_the_parser_to_refuse() -> None:
    frame = masked_frame(0x2, b"\0" * 200_000)
    out = FrameSplitter(max_size=100_000).feed(frame)
    assert out == frame


def test_uvicorn_runs_h11_with_the_limits() -> None:
    settings = GatewaySettings(max_upload_mb=100, ws_max_mb=16)
    options = uvicorn_options(settings)
    assert options["http"] is GuardedH11Protocol
    assert options["h11_max_incomplete_event_size"] == MAX_HEADER_BYTES
    assert options["ws_max_size"] == 16 * 1024 * 1024
    # The websocket cap never exceeds the HTTP upload limit.
    assert GatewaySettings(max_upload_mb=4, ws_max_mb=16).ws_max_bytes == 4 * 1024 * 1024


def test_live_sockets_are_recognised_by_their_upgrade_path() -> None:
    from gateway.limits import is_live_path

    assert is_live_path(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert is_live_path(b"GET /?token=k HTTP/1.1\r\n\r\n")
    assert is_live_path(b"GET /v1/realtime?intent=transcription HTTP/1.1\r\n\r\n")
    assert not is_live_path(b"GET /ws/test HTTP/1.1\r\n\r\n")
    assert not is_live_path(b"GET /v1/realtime/x HTTP/1.1\r\n\r\n")
    assert not is_live_path(b"garbage")
