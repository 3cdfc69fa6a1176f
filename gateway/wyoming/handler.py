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

This module owns the connection (admission, reads within bounds, timeouts, the
last error); :mod:`gateway.wyoming.transcriber` owns its transcriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler

from gateway.livesessions import LiveSessions
from gateway.wyoming.framing import BadEvent, Incoming, default_limit, read_event
from gateway.wyoming.transcriber import BAD_EVENT, BUSY, SHUTTING_DOWN, TIMEOUT, Transcriber

log = structlog.get_logger("gateway.wyoming")

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
    """Serves one connection until the client leaves, breaks the protocol or goes quiet.

    Its transcriptions, one after another, are its :class:`Transcriber`'s.
    """

    def __init__(
        self, context: WyomingContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self._ctx = context
        self._version: tuple[int, ...] | None = None
        self._transcriber = Transcriber(
            context.live, context.models, self._send, on_stream_failed=self._hang_up
        )
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
            await self._transcriber.end()
            if last is not None:
                await self._last_error(*last)
            self.writer.close()
            self._ctx.open.discard(self)

    def request_stop(self) -> None:
        """Shutdown: close now if idle, else after the transcription in progress."""
        self._stop_requested = True
        if self._transcriber.idle:
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
        in_progress = self._transcriber.in_progress
        if not in_progress or AudioChunk.is_type(kind) or AudioStart.is_type(kind):
            self._quiet_since = time.monotonic()
        return keep and not (self._stop_requested and self._transcriber.idle)

    async def _read(self) -> Incoming | None:
        left = self._ctx.idle_timeout - (time.monotonic() - self._quiet_since)
        what = "audio" if self._transcriber.in_progress else "event"
        try:
            async with asyncio.timeout(max(left, 0.0)):
                return await read_event(self.reader, self._payload_limit)
        except TimeoutError:
            raise IdleTimeout(f"no {what} for {self._ctx.idle_timeout:g} s") from None

    def _payload_limit(self, event_type: str) -> int:
        # Refused before its payload is read: audio is held only for a session.
        if AudioChunk.is_type(event_type) and self._transcriber.idle:
            raise BadEvent("audio-chunk before audio-start")
        return default_limit(event_type)

    def _hang_up(self) -> None:
        """End the connection from outside its reader (a stream that failed)."""
        self.writer.close()
        self.reader.feed_eof()

    # -- events -------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; unknown events are dropped, as the protocol asks of servers."""
        kind = event.type
        if AudioChunk.is_type(kind):
            await self._transcriber.on_chunk(event)
        elif Describe.is_type(kind):
            await self._send(self._ctx.info)
        elif Transcribe.is_type(kind):
            await self._transcriber.on_transcribe(event)
        elif AudioStart.is_type(kind):
            await self._transcriber.on_start(event, self._version)
        elif AudioStop.is_type(kind):
            await self._transcriber.on_stop()
        elif Ping.is_type(kind):
            text = event.data.get("text")
            await self._send(Pong(text=text if isinstance(text, str) else None).event())
        return True

    # -- writing ------------------------------------------------------------

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
