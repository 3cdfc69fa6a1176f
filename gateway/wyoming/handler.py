"""One Wyoming connection: ``describe``, and transcriptions in a row, each a live session.

The order of events is the ``wyoming`` package's README ("Speech to Text"):
``transcribe`` (optional: model ``name``, ``language``), ``audio-start``,
``audio-chunk``..., ``audio-stop``; the answer is ``transcript`` with the whole
text. A client of protocol 1.7.0 or later also gets ``transcript-start`` when the
session opens, a ``transcript-chunk`` per batch of committed words while audio
flows, then ``transcript`` and ``transcript-stop``. A refusal (session limit,
broker down, unknown model) is an ``error`` event; the rest of that
transcription's audio is dropped and the connection stays usable. What breaks
the protocol (garbage, an oversized event, audio before ``audio-start``) and a
client that sends nothing for ``STT_LIVE_IDLE_TIMEOUT`` get an ``error`` and the
connection is closed: only that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import structlog
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler

from gateway.livesession import Hypothesis, SessionClosed, SessionOptions, Utterance
from gateway.livesessions import LiveRefused, LiveSessions
from gateway.wyoming.catalog import Unservable, choose, prompt_of
from gateway.wyoming.framing import BadEvent, Incoming, default_limit, read_event
from gateway.wyoming.transcription import AudioFormat, Request, Transcription

log = structlog.get_logger("gateway.wyoming")

#: transcript-start, transcript-chunk and transcript-stop came with wyoming 1.7.0.
STREAMING_SINCE = (1, 7)

#: ``code`` of our error events.
BUSY = "busy"
UNSERVABLE = "unservable"
BAD_EVENT = "bad-event"
TIMEOUT = "timeout"
FAILED = "transcription-failed"
SHUTTING_DOWN = "shutting-down"

#: Seconds a closing connection's input is still read (and dropped) after its last error.
LINGER_SECONDS = 2.0


@dataclass
class WyomingContext:
    """What every connection of one server shares."""

    live: LiveSessions
    models: list[str]
    info: Event
    #: Seconds a connection may stay silent (in a transcription: without audio).
    idle_timeout: float
    #: Connections open at once; past it, a new one gets an error and is closed.
    max_connections: int
    open: set[WyomingHandler] = field(default_factory=set)
    draining: bool = False


class IdleTimeout(Exception):
    """Nothing (no audio, in a transcription) arrived for the idle timeout."""


class WyomingHandler(AsyncEventHandler):
    """Serves one connection until the client leaves, breaks the protocol or goes quiet."""

    def __init__(
        self, context: WyomingContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self._ctx = context
        self._version: tuple[int, ...] | None = None
        self._options: SessionOptions | None = None
        self._current: Transcription | None = None
        #: A refused or failed transcription: its audio is dropped until audio-stop.
        self._discarding = False
        self._stop_requested = False
        self._quiet_since = time.monotonic()
        self._write_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None

    # -- the connection -----------------------------------------------------

    async def run(self) -> None:
        """Read and answer events (replaces AsyncEventHandler.run: bounded reads, timeouts)."""
        self.task = asyncio.current_task()
        peer = self.writer.get_extra_info("peername")
        structlog.contextvars.bind_contextvars(wyoming_peer=str(peer))
        last: tuple[str, str] | None = None
        try:
            if await self._admitted():
                while await self._step():
                    pass
        except BadEvent as exc:
            log.warning("wyoming.bad_event", error=str(exc))
            last = (BAD_EVENT, str(exc))
        except IdleTimeout as exc:
            log.info("wyoming.idle_closed", error=str(exc))
            last = (TIMEOUT, str(exc))
        except (ConnectionError, TimeoutError) as exc:
            log.info("wyoming.peer_gone", error=f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("wyoming.connection_failed")
        finally:
            # The session's slot is freed first, then the client is told why it ends.
            await self._end_transcription()
            if last is not None:
                await self._last_error(*last)
            self.writer.close()
            self._ctx.open.discard(self)

    def request_stop(self) -> None:
        """Shutdown: close now if idle, else after the transcription in progress."""
        self._stop_requested = True
        if self._current is None and not self._discarding:
            self.reader.feed_eof()

    async def _admitted(self) -> bool:
        if self._ctx.draining:
            await self._last_error(SHUTTING_DOWN, "the server is shutting down")
            return False
        if len(self._ctx.open) >= self._ctx.max_connections:
            log.warning("wyoming.connection_refused", open=len(self._ctx.open))
            await self._last_error(BUSY, "too many connections; try again later")
            return False
        self._ctx.open.add(self)
        return True

    async def _step(self) -> bool:
        """One event; False when the connection should end."""
        incoming = await self._read()
        if incoming is None:
            return False
        if incoming.version is not None:
            self._version = incoming.version
        kind = incoming.event.type
        keep = await self.handle_event(incoming.event)
        # In a transcription only audio counts: pings do not keep a session open.
        if self._current is None or AudioChunk.is_type(kind) or AudioStart.is_type(kind):
            self._quiet_since = time.monotonic()
        idle = self._current is None and not self._discarding
        return keep and not (self._stop_requested and idle)

    async def _read(self) -> Incoming | None:
        left = self._ctx.idle_timeout - (time.monotonic() - self._quiet_since)
        what = "audio" if self._current is not None else "event"
        try:
            async with asyncio.timeout(max(left, 0.0)):
                return await read_event(self.reader, self._payload_limit)
        except TimeoutError:
            raise IdleTimeout(f"no {what} for {self._ctx.idle_timeout:g} s") from None

    def _payload_limit(self, event_type: str) -> int:
        # Refused before its payload is read: audio is held only for a session.
        if AudioChunk.is_type(event_type) and self._current is None and not self._discarding:
            raise BadEvent("audio-chunk before audio-start")
        return default_limit(event_type)

    # -- events -------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; unknown events are dropped, as the protocol asks of servers."""
        kind = event.type
        if AudioChunk.is_type(kind):
            await self._on_chunk(event)
        elif Describe.is_type(kind):
            await self._send(self._ctx.info)
        elif Transcribe.is_type(kind):
            await self._on_transcribe(event)
        elif AudioStart.is_type(kind):
            await self._on_start(event)
        elif AudioStop.is_type(kind):
            await self._on_stop()
        elif Ping.is_type(kind):
            text = event.data.get("text")
            await self._send(Pong(text=text if isinstance(text, str) else None).event())
        return True

    async def _on_transcribe(self, event: Event) -> None:
        if self._current is not None:
            raise BadEvent("transcribe before the audio-stop of the transcription in progress")
        request = Request.from_data(event.data)
        self._discarding = False
        self._options = None
        try:
            choice = choose(self._ctx.models, request.name, request.language)
            # Before audio-start, so a full server says so at once (STT_LIVE_MAX_SESSIONS).
            self._ctx.live.check_room()
        except Unservable as exc:
            await self._refuse(UNSERVABLE, str(exc))
            return
        except LiveRefused as exc:
            await self._refuse(BUSY if exc.busy else UNSERVABLE, str(exc))
            return
        self._options = SessionOptions(
            model=choice.model,
            language=choice.language,
            prompt=prompt_of(request.names, request.terms),
        )

    async def _on_start(self, event: Event) -> None:
        if self._current is not None:
            raise BadEvent("audio-start before the audio-stop of the transcription in progress")
        fmt = AudioFormat.from_data(event.data, "audio-start")
        if self._discarding:
            return
        options = self._options or SessionOptions(model=self._ctx.models[0])
        self._options = None
        exits = AsyncExitStack()
        try:
            session = await exits.enter_async_context(self._ctx.live.open(options, owner=None))
        except LiveRefused as exc:
            await self._refuse(BUSY if exc.busy else UNSERVABLE, str(exc))
            return
        streaming = self._version is not None and self._version >= STREAMING_SINCE
        current = Transcription(exits, session, fmt, streaming)
        self._current = current
        if streaming:
            await self._send(TranscriptStart(language=options.language).event())
        current.pump = asyncio.create_task(self._pump(current), name=f"wyoming-{session.id}")
        current.pump.add_done_callback(self._pump_done)

    async def _on_chunk(self, event: Event) -> None:
        current = self._current
        if current is None:  # discarding: a refused transcription's audio
            return
        pcm = current.pcm(event.data, event.payload)
        if not pcm:
            return
        try:
            # Backpressure: waits while the session has a window's worth unsent.
            await current.session.feed(pcm)
        except SessionClosed as exc:
            ended = current.session.ended
            await self._fail((ended.error if ended else None) or str(exc))

    async def _on_stop(self) -> None:
        if self._discarding:
            self._discarding = False
            return
        current = self._current
        if current is None:
            raise BadEvent("audio-stop before audio-start")
        current.session.finish()
        assert current.pump is not None
        await current.pump  # until SessionEnded: every committed word is sent
        ended = current.session.ended
        assert ended is not None
        if ended.error is not None:
            await self._fail(ended.error)
            self._discarding = False
            return
        transcript = ended.transcript
        await self._send(Transcript(text=transcript.text, language=transcript.language).event())
        if current.streaming:
            await self._send(TranscriptStop().event())
        await self._end_transcription()

    # -- the session --------------------------------------------------------

    async def _pump(self, current: Transcription) -> None:
        """Committed words as transcript-chunk events, until the session ends."""
        async for event in current.session.events():
            if isinstance(event, Hypothesis):
                text = current.text.add(event.committed)
                if text and current.streaming:
                    await self._send(TranscriptChunk(text=text).event())
            elif isinstance(event, Utterance):
                current.text.end_utterance()

    def _pump_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The client stopped reading or left: end the connection, not just the stream.
            log.info("wyoming.stream_failed", error=repr(task.exception()))
            self.writer.close()
            self.reader.feed_eof()

    async def _fail(self, message: str) -> None:
        """The session failed: say so, drop the rest of its audio until audio-stop."""
        await self._end_transcription()
        await self._refuse(FAILED, f"transcription failed: {message}")

    async def _end_transcription(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        if current.pump is not None and not current.pump.done():
            current.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await current.pump
        try:
            await current.exits.aclose()  # closes and records the session
        except Exception:
            # The client has its answer; a record or a news item that failed is logged
            # here and must not end the connection.
            log.exception("wyoming.session_not_recorded", session=current.session.id)
        ended = current.session.ended
        log.info(
            "wyoming.transcription_ended",
            session=current.session.id,
            model=current.session.options.model,
            audio_s=round(current.session.received, 3),
            streaming=current.streaming,
            error=ended.error if ended else None,
        )

    # -- writing ------------------------------------------------------------

    async def _refuse(self, code: str, message: str) -> None:
        log.info("wyoming.refused", code=code, error=message)
        self._discarding = True
        self._options = None
        await self._send(Error(text=message, code=code).event())

    async def _send(self, event: Event) -> None:
        # A client that does not read for the idle timeout is gone (or hostile).
        async with self._write_lock, asyncio.timeout(self._ctx.idle_timeout):
            await self.write_event(event)

    async def _last_error(self, code: str, message: str) -> None:
        """An error before the connection closes: best effort, the peer may be gone."""
        with contextlib.suppress(Exception):
            await self._send(Error(text=message, code=code).event())
            # Closing with unread input would reset the connection, and the peer could
            # lose the error: say we are done (FIN), then drop what it still sends, a while.
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                while await self.reader.read(64 * 1024):
                    pass
