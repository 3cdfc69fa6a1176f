"""The Wyoming server's whole connections over loopback TCP, with fake live sessions
(no broker, no model): transcriptions, refusals, protocol violations, limits, shutdown.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping

from gateway.agreement import TimedWord
from gateway.livesession import (
    Hypothesis,
    LiveEvent,
    SessionClosed,
    SessionEnded,
    SessionOptions,
    Utterance,
)
from gateway.livesessions import LiveRefused
from gateway.wyoming.catalog import build_info
from gateway.wyoming.framing import read_event
from gateway.wyoming.handler import WyomingContext, WyomingHandler
from gateway.wyoming.server import drain
from gateway.wyoming.transcription import AudioFormat
from stt_daemon.common.protocol import TranscriptResult


def frame(header: dict[str, Any], extra: bytes = b"", payload: bytes = b"") -> bytes:
    return json.dumps(header).encode() + b"\n" + extra + payload


def w(text: str) -> TimedWord:
    return TimedWord(0.0, 0.1, text)


# -- connections, with fake live sessions ------------------------------------


class FakeSession:
    """Commits one word per fed chunk; one utterance per two words."""

    def __init__(self, options: SessionOptions, fail: str | None) -> None:
        self.id = "live-fake"
        self.options = options
        self.fed = b""
        self.received = 0.0
        self.ended: SessionEnded | None = None
        self._fail = fail
        self._words: list[TimedWord] = []
        self._events: asyncio.Queue[LiveEvent | None] = asyncio.Queue()

    async def feed(self, pcm: bytes) -> None:
        if self.ended is not None:
            raise SessionClosed("the session has ended")
        self.fed += pcm
        self.received = len(self.fed) / 32000
        if self._fail:
            self._end(self._fail)
            return
        word = w(f" w{len(self._words)}")
        self._words.append(word)
        self._events.put_nowait(Hypothesis([word], []))
        if len(self._words) % 2 == 0:
            self._events.put_nowait(Utterance(0, 0, 0, self._words[-2:]))

    def finish(self) -> None:
        if len(self._words) % 2:
            self._events.put_nowait(Utterance(0, 0, 0, self._words[-1:]))
        self._end(None)

    def _end(self, error: str | None) -> None:
        if self.ended is not None:
            return
        pairs = [self._words[i : i + 2] for i in range(0, len(self._words), 2)]
        text = " ".join("".join(x.text for x in p).strip() for p in pairs)
        result = TranscriptResult(text=text, language="en", duration=1, model="m", segments=[])
        self.ended = SessionEnded(result, error)
        self._events.put_nowait(self.ended)
        self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[LiveEvent]:
        while (event := await self._events.get()) is not None:
            yield event


class FakeLive:
    """LiveSessions' interface: a limit and sessions that record what they got."""

    def __init__(self, limit: int = 1, fail: str | None = None, record_fails: bool = False) -> None:
        self.limit = limit
        self.fail = fail
        self.record_fails = record_fails
        self.sessions: list[FakeSession] = []
        self.active = 0

    def check_room(self) -> None:
        if self.active >= self.limit:
            raise LiveRefused("full; try again later", busy=True)

    @asynccontextmanager
    async def open(self, options: SessionOptions, owner: str | None) -> AsyncIterator[FakeSession]:
        self.check_room()
        session = FakeSession(options, self.fail)
        self.sessions.append(session)
        self.active += 1
        try:
            yield session
        finally:
            self.active -= 1
            if self.record_fails:
                raise RuntimeError("the status store is gone")


#: The context of the server() last started (for the shutdown test).
CONTEXTS: list[WyomingContext] = []


@asynccontextmanager
async def server(live: FakeLive, **limits: Any) -> AsyncIterator[int]:
    context = WyomingContext(
        live=live,  # type: ignore[arg-type]
        models=["tiny.en", "base"],
        info=build_info(["tiny.en", "base"]).event(),
        idle_timeout=limits.get("idle_timeout", 5.0),
        max_connections=limits.get("max_connections", 10),
    )

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await WyomingHandler(context, reader, writer).run()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    CONTEXTS.append(context)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()


async def transcribe(client: AsyncTcpClient, chunks: int = 3) -> list[Event]:
    """One transcription of ``chunks`` 100 ms chunks; the events up to the transcript's end."""
    await client.write_event(Transcribe(language="en").event())
    await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
    for _ in range(chunks):
        await client.write_event(AudioChunk(16000, 2, 1, b"\x00\x01" * 1600).event())
    await client.write_event(AudioStop().event())
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(client.read_event(), 5)
        assert event is not None, events
        events.append(event)
        if event.type in ("transcript-stop", "error"):
            return events


async def test_describe_and_two_streamed_transcriptions_on_one_connection() -> None:
    live = FakeLive()
    async with server(live) as port, AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        info = await client.read_event()
        assert info is not None and Info.is_type(info.type)
        for chunks in (3, 4):
            events = await transcribe(client, chunks)
            kinds = [e.type for e in events]
            streamed_kinds = ["transcript-chunk"] * chunks
            assert kinds == ["transcript-start", *streamed_kinds, "transcript", "transcript-stop"]
            text = Transcript.from_event(events[-2]).text
            streamed = "".join(TranscriptChunk.from_event(e).text for e in events[1:-2])
            assert streamed == text and text.startswith("w0 w1 w2")
        await client.write_event(Ping(text="still here").event())
        pong = await client.read_event()
        assert pong is not None and pong.type == "pong" and pong.data["text"] == "still here"
    assert [len(s.fed) for s in live.sessions] == [9600, 12800]
    assert live.sessions[0].options == SessionOptions(model="tiny.en", language="en")


async def test_a_client_before_protocol_1_7_gets_only_the_transcript() -> None:
    live = FakeLive()
    async with server(live) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        old = {"version": "1.5.0"}
        chunk = b"\x00\x00" * 1600
        writer.write(frame({"type": "transcribe", "data": {"name": "base"}, **old}))
        writer.write(frame({"type": "audio-start", "data": AudioFormat(16000, 2, 1).__dict__}))
        head = {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}}
        writer.write(frame({**head, "payload_length": len(chunk), **old}, payload=chunk))
        writer.write(frame({"type": "audio-stop", **old}))
        first = await asyncio.wait_for(read_event(reader), 5)
        assert first is not None and first.event.type == "transcript"
        assert first.event.data["text"] == "w0"
        writer.close()
    assert live.sessions[0].options.model == "base"


async def test_a_full_server_refuses_with_an_error_and_the_connection_stays() -> None:
    live = FakeLive(limit=0)
    async with server(live) as port, AsyncTcpClient("127.0.0.1", port) as client:
        events = await transcribe(client)
        assert [e.type for e in events] == ["error"]
        error = Error.from_event(events[0])
        assert error.code == "busy" and "try again later" in error.text
        await client.write_event(Describe().event())  # the refused audio was dropped
        info = await asyncio.wait_for(client.read_event(), 5)
        assert info is not None and info.type == "info"
    assert live.sessions == []


async def test_an_unservable_transcribe_is_refused() -> None:
    async with server(FakeLive()) as port, AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(name="tiny.en", language="de").event())
        event = await asyncio.wait_for(client.read_event(), 5)
        assert event is not None and Error.from_event(event).code == "unservable"


async def test_a_failed_session_is_an_error() -> None:
    live = FakeLive(fail="no daemon answered 6 windows in a row")
    async with server(live) as port, AsyncTcpClient("127.0.0.1", port) as client:
        events = await transcribe(client)
        error = Error.from_event(events[-1])
        assert error.code == "transcription-failed" and "no daemon answered" in error.text
        await client.write_event(Describe().event())
        info = await asyncio.wait_for(client.read_event(), 5)
        assert info is not None and info.type == "info"


async def test_a_session_that_cannot_be_recorded_still_answers() -> None:
    live = FakeLive(record_fails=True)
    async with server(live) as port, AsyncTcpClient("127.0.0.1", port) as client:
        for _ in range(2):
            events = await transcribe(client)
            assert events[-2].type == "transcript" and events[-2].data["text"] == "w0 w1 w2"


async def read_until_closed(reader: asyncio.StreamReader) -> list[Event]:
    events = []
    while (incoming := await asyncio.wait_for(read_event(reader), 5)) is not None:
        events.append(incoming.event)
    return events


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xff garbage \x13\n",
        frame({"type": "audio-chunk", "payload_length": 4}, payload=b"\x00" * 4),
        frame({"type": "audio-stop"}),
        frame({"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 5}}),
        frame({"type": "audio-chunk", "payload_length": 2**40}),
    ],
)
async def test_a_protocol_violation_closes_that_connection_only(raw: bytes) -> None:
    live = FakeLive()
    async with server(live) as port, AsyncTcpClient("127.0.0.1", port) as good:
        await good.write_event(Transcribe().event())
        await good.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        start = await asyncio.wait_for(good.read_event(), 5)
        assert start is not None and start.type == "transcript-start"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        events = await read_until_closed(reader)
        assert [e.type for e in events] == ["error"]
        assert events[0].data["code"] == "bad-event"
        writer.close()
        # The other connection's transcription goes on.
        await good.write_event(AudioChunk(16000, 2, 1, b"\x00\x01" * 1600).event())
        await good.write_event(AudioStop().event())
        kinds: list[str] = []
        while not kinds or kinds[-1] != "transcript-stop":
            event = await asyncio.wait_for(good.read_event(), 5)
            assert event is not None
            kinds.append(event.type)
        assert kinds == ["transcript-chunk", "transcript", "transcript-stop"]


async def test_a_quiet_connection_is_closed_after_the_idle_timeout() -> None:
    async with server(FakeLive(), idle_timeout=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = {"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}}
        writer.write(frame(start))
        # Pings are not audio: they do not keep a session open.
        for _ in range(3):
            writer.write(frame({"type": "ping"}))
            await asyncio.sleep(0.1)
        events = await read_until_closed(reader)
        assert [e.type for e in events[:-1]] == ["pong"] * 3
        assert events[-1].type == "error" and events[-1].data["code"] == "timeout"
        assert "no audio for 0.5 s" in events[-1].data["text"]
        writer.close()


async def test_connections_past_the_limit_are_refused() -> None:
    limited = server(FakeLive(), max_connections=1)
    async with limited as port, AsyncTcpClient("127.0.0.1", port) as first:
        await first.write_event(Describe().event())
        assert await asyncio.wait_for(first.read_event(), 5) is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        events = await read_until_closed(reader)
        assert [e.data.get("code") for e in events] == ["busy"]
        writer.close()


async def test_an_oversized_audio_chunk_ends_the_connection() -> None:
    async with server(FakeLive()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        fmt = {"rate": 16000, "width": 2, "channels": 1}
        writer.write(frame({"type": "audio-start", "data": fmt}))
        writer.write(frame({"type": "audio-chunk", "data": fmt, "payload_length": 2**21}))
        events = await read_until_closed(reader)
        assert events[-1].data["code"] == "bad-event"
        assert "over 1048576 bytes" in events[-1].data["text"]
        writer.close()


async def test_shutdown_lets_a_transcription_finish_and_closes_idle_connections() -> None:
    async with (
        server(FakeLive()) as port,
        AsyncTcpClient("127.0.0.1", port) as busy,
        AsyncTcpClient("127.0.0.1", port) as idle,
    ):
        await idle.write_event(Describe().event())
        assert await asyncio.wait_for(idle.read_event(), 5) is not None
        await busy.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        assert await asyncio.wait_for(busy.read_event(), 5) is not None  # transcript-start
        stopping = asyncio.create_task(drain(CONTEXTS[-1], grace=5))
        assert await asyncio.wait_for(idle.read_event(), 5) is None  # closed at once
        await busy.write_event(AudioChunk(16000, 2, 1, b"\x00\x01" * 1600).event())
        await busy.write_event(AudioStop().event())
        kinds = []
        while (event := await asyncio.wait_for(busy.read_event(), 5)) is not None:
            kinds.append(event.type)
        assert kinds == ["transcript-chunk", "transcript", "transcript-stop"]
        await asyncio.wait_for(stopping, 5)
        assert not CONTEXTS[-1].open
