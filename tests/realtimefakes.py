"""Scripted live sessions and a test client for ws /v1/realtime (tests/unit/test_realtime*.py).

The live sessions are fakes that say what a script tells them to as their audio
arrives, so each test pins one thing the client must see.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from gateway.agreement import TimedWord
from gateway.config import GatewaySettings
from gateway.fleet import Fleet
from gateway.livesession import LiveEvent, SessionClosed, SessionEnded, SessionOptions, Utterance
from gateway.livesessions import LiveRefused
from gateway.routes import realtime
from gateway.services import Services
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import TranscriptResult

Script = list[tuple[float, LiveEvent]]
URL = "/v1/realtime?intent=transcription"


def words(*texts: str, start: float = 0.0) -> list[TimedWord]:
    return [TimedWord(start + i * 0.3, start + i * 0.3 + 0.25, t, 0.9) for i, t in enumerate(texts)]


def utterance(index: int, ws: list[TimedWord]) -> Utterance:
    return Utterance(index, ws[0].start, ws[-1].end, ws)


class FakeSession:
    """Says its script's events as its audio passes their times; the rest at ``finish``."""

    def __init__(
        self, number: int, options: SessionOptions, script: Script, fail_at: float
    ) -> None:
        self.id = f"live-{number}"
        self.options = options
        self.received = 0.0
        self.pcm = bytearray()
        self._script = list(script)
        self._fail_at = fail_at
        self._queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue()
        self.ended: SessionEnded | None = None
        self.finished = False

    async def feed(self, pcm: bytes) -> None:
        if self.finished or self.ended is not None:
            raise SessionClosed("the session has ended")
        self.pcm += pcm
        self.received += len(pcm) / 32000
        while self._script and self._script[0][0] <= self.received:
            self._queue.put_nowait(self._script.pop(0)[1])
        if self.received >= self._fail_at:
            self._end("no daemon answered 6 windows in a row")

    def finish(self) -> None:
        self.finished = True
        for _, event in self._script:
            self._queue.put_nowait(event)
        self._end(None)

    async def close(self) -> None:
        self._end("closed before the end of its audio")

    def _end(self, error: str | None) -> None:
        if self.ended is not None:
            return
        result = TranscriptResult(text="", duration=self.received, model="tiny.en", segments=[])
        self.ended = SessionEnded(result, error)
        self._queue.put_nowait(self.ended)
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[LiveEvent]:
        while (event := await self._queue.get()) is not None:
            yield event


class FakeLive:
    """``services.live``: the session limit, and sessions that follow ``scripts`` in turn."""

    def __init__(self, models: list[str], max_sessions: int = 8) -> None:
        self.models = models
        self.max_sessions = max_sessions
        self.scripts: list[Script] = []
        self.fail_at = float("inf")
        #: Recording a session fails (the store or the broker): open()'s exit raises.
        self.record_fails = False
        self.sessions: list[FakeSession] = []
        self.owners: list[str | None] = []
        self.active = 0

    def check_room(self) -> None:
        if self.active >= self.max_sessions:
            raise LiveRefused("this gateway runs 1 live sessions at most", busy=True)

    @asynccontextmanager
    async def open(self, options: SessionOptions, owner: str | None) -> AsyncIterator[FakeSession]:
        self.check_room()
        assert options.model in self.models
        script = self.scripts.pop(0) if self.scripts else []
        session = FakeSession(len(self.sessions), options, script, self.fail_at)
        self.sessions.append(session)
        self.owners.append(owner)
        self.active += 1
        try:
            yield session
        finally:
            await session.close()
            self.active -= 1
            if self.record_fails:
                raise RuntimeError("the session's job could not be recorded")


def make_client(tmp_path: Path, live: FakeLive, **settings: Any) -> TestClient:
    config = GatewaySettings(data_dir=tmp_path, models=["tiny.en", "base"], **settings)
    app = FastAPI()
    app.include_router(realtime.router)
    services = Services(
        settings=config,
        blobs=BlobStore(config.resolved_blob_url),
        store=None,  # type: ignore[arg-type]
        broker=None,  # type: ignore[arg-type]
        fleet=Fleet(config.names),
    )
    services.live = live  # type: ignore[assignment]
    app.state.services = services
    return TestClient(app)


def audio(seconds: float) -> str:
    """Base64 of ``seconds`` of 24 kHz PCM16 (a quiet tone)."""
    samples = int(24000 * seconds)
    pcm = b"".join(
        (1000 if (i // 12) % 2 else -1000).to_bytes(2, "little", signed=True)
        for i in range(samples)
    )
    return base64.b64encode(pcm).decode()


def append(ws: WebSocketTestSession, seconds: float) -> None:
    ws.send_json({"type": "input_audio_buffer.append", "audio": audio(seconds)})


def receive_until(ws: WebSocketTestSession, kind: str) -> list[dict[str, Any]]:
    """Events up to and including the first of type ``kind``."""
    seen = []
    while True:
        event = ws.receive_json()
        seen.append(event)
        if event["type"] == kind:
            return seen


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def manual(ws: WebSocketTestSession) -> dict[str, Any]:
    ws.send_json(
        {
            "type": "session.update",
            "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
        }
    )
    return receive_until(ws, "session.updated")[-1]


def error_of(ws: WebSocketTestSession) -> dict[str, Any]:
    event = ws.receive_json()
    assert event["type"] == "error", event
    assert event["event_id"].startswith("event_")
    error: dict[str, Any] = event["error"]
    assert set(error) == {"type", "code", "message", "param", "event_id"}
    return error
