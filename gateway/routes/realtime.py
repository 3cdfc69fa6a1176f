"""OpenAI's realtime transcription API: ``ws /v1/realtime?intent=transcription``.

A client of OpenAI's (the ``openai`` package's ``client.realtime.connect(extra_query=
{"intent": "transcription"})``, the Agents SDK, a browser) talks to the gateway as to
OpenAI: ``session.created`` first, ``session.update`` / ``transcription_session.update``
answered with ``*.updated``, base64 PCM16 at 24 kHz in ``input_audio_buffer.append``
(resampled here to the 16 kHz live sessions take, see :mod:`gateway.resample`), items
out as ``speech_started`` / ``speech_stopped`` / ``committed`` / transcription
``delta`` / ``completed`` (shapes in :mod:`gateway.openai_realtime` and
:mod:`gateway.realtime_items`).

Each buffer of audio is a live session, and so a job: it opens with the first audio
(with the configuration then in effect), and ends at ``input_audio_buffer.commit``
(everything transcribed, then the next audio opens the next one), at
``input_audio_buffer.clear``, or when the connection ends. With server VAD a
connection that never commits is one job; ``committed`` and ``completed`` events
name it (``job_id``) for ``GET /v1/jobs/{id}``.

Bounds: a refused key closes the handshake (403); a full gateway answers an
``error`` and closes (1013); a bad event gets an ``error`` and the session goes on,
as OpenAI's does; no audio for ``STT_LIVE_IDLE_TIMEOUT`` or more than
``STT_LIVE_MAX_SECONDS`` of it ends the connection with an ``error``; a client faster
than real time waits (``feed`` applies backpressure, and this socket stops being read).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from fastapi import APIRouter, HTTPException, WebSocket

from gateway.auth import OpenAIOwnerDep
from gateway.livesession import (
    BYTES_PER_SECOND,
    LiveSession,
    SessionClosed,
    SessionEnded,
    SessionOptions,
)
from gateway.livesessions import LiveRefused, LiveSessions
from gateway.openai_realtime import (
    MIN_COMMIT_SECONDS,
    Append,
    ClientEvent,
    Commit,
    Event,
    ProtocolError,
    SessionUpdate,
    TranscriptionConfig,
    TranscriptionSessionUpdate,
    beta_session,
    ga_session,
    new_id,
    parse_client_event,
    updated_config,
)
from gateway.realtime_items import ItemTracker
from gateway.services import Services, get_services

if TYPE_CHECKING:
    from gateway.resample import Resampler24to16

router = APIRouter(tags=["openai realtime"])
log = structlog.get_logger("gateway.realtime")

#: Close codes: done, a policy (the intent), try again later (full), our failure.
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1011, 1013
#: Audio goes to the session half a second at a time, so backpressure holds per half second.
FEED_BYTES = BYTES_PER_SECOND // 2
#: Server events queued for a client that does not read before we stop reading it.
OUTBOX_HIGH_WATER = 256
#: Seconds the last events have to reach a client before the socket closes.
FLUSH_SECONDS = 5.0


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, owner: OpenAIOwnerDep, intent: str | None = None) -> None:
    """A realtime transcription session (the key was checked before the handshake)."""
    services = get_services(websocket)
    await websocket.accept()
    beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
    connection = RealtimeConnection(websocket, services, owner, beta=beta)
    await connection.run(intent)


@dataclass
class _Buffer:
    """The live session the current input buffer goes to."""

    session: LiveSession
    stack: AsyncExitStack
    #: Forwards the session's events to the client.
    pump: asyncio.Task[None] | None = None
    #: We asked it to end (commit, clear, the connection's end): its end is no failure.
    ending: bool = False


class RealtimeConnection:
    """One client's socket: reads its events, writes ours, owns its live sessions."""

    def __init__(
        self, websocket: WebSocket, services: Services, owner: str | None, *, beta: bool
    ) -> None:
        self._ws = websocket
        self._services = services
        self._settings = services.settings
        self._owner = owner
        self._beta = beta
        self._id = new_id("sess")
        models = self._settings.model_names
        self._config = TranscriptionConfig(model=models[0], resolved=models[0])
        self._silence_ms = round(self._settings.live_end_silence * 1000)
        self._items = ItemTracker(self._emit, ga=not beta)
        self._outbox: asyncio.Queue[Event | None] = asyncio.Queue()
        #: Set while the outbox is short enough for the reader to go on.
        self._room = asyncio.Event()
        self._room.set()
        self._buffer: _Buffer | None = None
        #: Seconds of audio of the live sessions that ended (connection time of the next).
        self._offset = 0.0
        self._resampler: Resampler24to16 | None = None
        self._close_code = CLOSE_NORMAL
        self._reader: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._idle_deadline = loop.time() + self._settings.live_idle_timeout

    # -- the connection ----------------------------------------------------------

    async def run(self, intent: str | None) -> None:
        """Serve the connection until either side ends it."""
        writer = asyncio.create_task(self._write(), name=f"realtime-write-{self._id}")
        try:
            if self._admitted(intent):
                self._reader = asyncio.create_task(self._read(), name=f"realtime-{self._id}")
                # The reader ends the connection; a live session that fails cancels it.
                await asyncio.wait({self._reader})
                if not self._reader.cancelled() and self._reader.exception() is not None:
                    self._close_code = CLOSE_ERROR
                    log.error(
                        "realtime.failed", session=self._id, exc_info=self._reader.exception()
                    )
        finally:
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
            await self._end_buffer(finish=False)
            self._outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, FLUSH_SECONDS)
            writer.cancel()
            with contextlib.suppress(Exception):
                await self._ws.close(self._close_code)

    def _admitted(self, intent: str | None) -> bool:
        """Refuse, in the protocol's own way, what this endpoint cannot serve."""
        if intent != "transcription":
            self._fail(
                ProtocolError(
                    "invalid_value",
                    "This gateway serves transcription sessions only: "
                    "connect to /v1/realtime?intent=transcription.",
                    param="intent",
                ),
                CLOSE_POLICY,
            )
            return False
        try:
            self._live().check_room()
        except LiveRefused as exc:
            self._refused(exc)
            return False
        kind = "transcription_session.created" if self._beta else "session.created"
        self._emit({"type": kind, "session": self._session_object(beta=self._beta)})
        log.info("realtime.connected", session=self._id, beta=self._beta, owner=self._owner)
        return True

    def _live(self) -> LiveSessions:
        live = self._services.live
        if live is None:
            raise LiveRefused("live sessions are not available on this gateway", busy=True)
        return live

    def _session_object(self, *, beta: bool) -> Event:
        render = beta_session if beta else ga_session
        return render(self._config, self._id, self._silence_ms)

    # -- output ----------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        """Queue a server event (in order, whichever task produced it)."""
        self._outbox.put_nowait({"event_id": new_id("event"), **event})

    async def _write(self) -> None:
        try:
            while (event := await self._outbox.get()) is not None:
                if self._outbox.qsize() <= OUTBOX_HIGH_WATER:
                    self._room.set()
                await self._ws.send_text(json.dumps(event))
        except Exception:
            return  # the client is gone; the reader sees it too
        finally:
            self._room.set()

    def _fail(self, error: ProtocolError, code: int) -> None:
        """An error that ends the connection: said, then the socket closes with ``code``."""
        self._emit(error.event())
        self._close_code = code

    def _refused(self, exc: LiveRefused) -> None:
        code = "session_limit_reached" if exc.busy else "invalid_value"
        self._fail(
            ProtocolError(
                code, str(exc), kind="server_error" if exc.busy else "invalid_request_error"
            ),
            CLOSE_TRY_LATER if exc.busy else CLOSE_POLICY,
        )
        log.info("realtime.refused", session=self._id, reason=str(exc))

    # -- input ---------------------------------------------------------------------

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._idle_deadline - loop.time()
            if wait <= 0:
                idle = self._settings.live_idle_timeout
                self._fail(
                    ProtocolError(
                        "idle_timeout", f"No audio for {idle:g} s: the session is closed."
                    ),
                    CLOSE_NORMAL,
                )
                return
            try:
                message = await asyncio.wait_for(self._ws.receive(), wait)
            except TimeoutError:
                continue
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                if text is None:
                    raise ProtocolError(
                        "invalid_json", "Binary messages are not events: send JSON text messages."
                    )
                if not await self._handle(parse_client_event(text)):
                    return
            except ProtocolError as exc:
                self._emit(exc.event())
            if self._outbox.qsize() > OUTBOX_HIGH_WATER:
                # The client reads nothing: stop reading it too, until it catches up.
                self._room.clear()
                await self._room.wait()

    async def _handle(self, event: ClientEvent) -> bool:
        """One client event; False when the connection must end."""
        if isinstance(event, SessionUpdate | TranscriptionSessionUpdate):
            self._update(event)
            return True
        if isinstance(event, Append):
            return await self._append(event)
        if isinstance(event, Commit):
            return await self._commit(event.event_id)
        await self._end_buffer(finish=False)
        if self._resampler is not None:
            self._resampler.reset()
        self._emit({"type": "input_audio_buffer.cleared"})
        return True

    def _update(self, event: SessionUpdate | TranscriptionSessionUpdate) -> None:
        config = updated_config(self._config, event, self._settings.model_names)
        options = {"model": config.resolved, "language": config.language, "prompt": config.prompt}
        try:
            # The checks every job gets: language code, prompt length, English-only models.
            self._services.job_options(options)
        except HTTPException as exc:
            raise ProtocolError(
                "invalid_value", str(exc.detail), param="session", event_id=event.event_id
            ) from None
        self._config = config
        # Answered in the update's own dialect, whichever the connection began in.
        beta = isinstance(event, TranscriptionSessionUpdate)
        kind = "transcription_session.updated" if beta else "session.updated"
        self._emit({"type": kind, "session": self._session_object(beta=beta)})

    async def _append(self, event: Append) -> bool:
        try:
            pcm24 = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(
                "invalid_value",
                "Invalid 'audio': expected base64-encoded 16-bit PCM.",
                param="audio",
                event_id=event.event_id,
            ) from None
        self._idle_deadline = asyncio.get_running_loop().time() + self._settings.live_idle_timeout
        if self._resampler is None:
            # numpy only here: a gateway that serves no realtime client never imports it.
            from gateway.resample import Resampler24to16

            self._resampler = Resampler24to16()
        pcm = self._resampler.convert(pcm24)
        if not pcm:
            return True
        buffer = self._buffer or await self._open_buffer()
        if buffer is None:
            return False
        limit = self._settings.live_max_seconds
        if self._offset + buffer.session.received + len(pcm) / BYTES_PER_SECOND > limit:
            self._expired(limit)
            return False
        try:
            for start in range(0, len(pcm), FEED_BYTES):
                await buffer.session.feed(pcm[start : start + FEED_BYTES])
        except SessionClosed:
            self._expired(limit)
            return False
        return True

    def _expired(self, limit: float) -> None:
        message = f"The session reached its limit of {limit:g} s of audio."
        self._fail(ProtocolError("session_expired", message), CLOSE_NORMAL)

    async def _commit(self, event_id: str | None) -> bool:
        buffer = self._buffer
        received = buffer.session.received if buffer is not None else 0.0
        if buffer is None or received < MIN_COMMIT_SECONDS:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_SECONDS * 1000:g}ms of audio, but buffer only has "
                f"{received * 1000:.2f}ms of audio.",
                event_id=event_id,
            )
        self._items.commit()
        await self._end_buffer(finish=True)
        return True

    # -- live sessions -----------------------------------------------------------------

    async def _open_buffer(self) -> _Buffer | None:
        """The live session for new audio, opened with the configuration now in effect."""
        config = self._config
        options = SessionOptions(
            model=config.resolved,
            language=config.language,
            prompt=config.prompt,
            end_silence=config.end_silence,
        )
        stack = AsyncExitStack()
        try:
            session = await stack.enter_async_context(self._live().open(options, self._owner))
        except LiveRefused as exc:
            self._refused(exc)
            return None
        self._items.start(session.id, config, self._offset)
        buffer = self._buffer = _Buffer(session, stack)
        buffer.pump = asyncio.create_task(self._pump(buffer), name=f"realtime-{session.id}")
        log.info("realtime.buffer_opened", session=self._id, job_id=session.id, vad=config.vad)
        return buffer

    async def _pump(self, buffer: _Buffer) -> None:
        """The live session's events, as items; a failure of its own ends the connection."""
        async for event in buffer.session.events():
            self._items.on_event(event)
            if isinstance(event, SessionEnded) and event.error and not buffer.ending:
                error = ProtocolError("server_error", event.error, kind="server_error")
                self._fail(error, CLOSE_ERROR)
                if self._reader is not None:
                    self._reader.cancel()

    async def _end_buffer(self, *, finish: bool) -> None:
        """End the live session: ``finish`` transcribes all its audio first, else it stops."""
        buffer = self._buffer
        if buffer is None:
            return
        buffer.ending = True
        try:
            if finish:
                buffer.session.finish()
            else:
                self._items.discard()
                await buffer.session.close()
            if buffer.pump is not None:
                # The pump ends with the session's last event (every item said).
                await asyncio.wait({buffer.pump})
        finally:
            self._buffer = None
            self._offset += buffer.session.received
            try:
                # Closes the session and records it as a job (gateway/livesessions.py).
                await buffer.stack.aclose()
            except Exception:
                # The client's next buffer is still served; the log says what was lost.
                log.exception("realtime.session_not_recorded", job_id=buffer.session.id)
