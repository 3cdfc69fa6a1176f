"""OpenAI's realtime transcription API: ``ws /v1/realtime?intent=transcription``.

A client of OpenAI's (the ``openai`` package's ``client.realtime.connect(extra_query=
{"intent": "transcription"})``, the Agents SDK, a browser) talks to the gateway as to
OpenAI: ``session.created`` first, ``session.update`` / ``transcription_session.update``
answered with ``*.updated``, base64 PCM16 at 24 kHz in ``input_audio_buffer.append``
(resampled here to the 16 kHz live sessions take, see :mod:`gateway.resample`), items
out as ``speech_started`` / ``speech_stopped`` / ``committed`` / transcription
``delta`` / ``completed`` (shapes in :mod:`gateway.openai_realtime` and
:mod:`gateway.realtime_items`).

Each buffer of audio is a live session, and so a job (:mod:`gateway.realtime_buffer`):
it opens with the first audio (with the configuration then in effect), and ends at
``input_audio_buffer.commit`` (everything transcribed, then the next audio opens the
next one), at ``input_audio_buffer.clear``, or when the connection ends. With server VAD a
connection that never commits is one job; ``committed`` and ``completed`` events
name it (``job_id``) for ``GET /v1/jobs/{id}``.

Bounds: a refused key closes the handshake (403); a full gateway answers an
``error`` and closes (1013); a bad event gets an ``error`` and the session goes on,
as OpenAI's does; no audio for ``STT_LIVE_IDLE_TIMEOUT`` or more than
``STT_LIVE_MAX_SECONDS`` of it ends the connection with an ``error``; a client faster
than real time waits (``feed`` applies backpressure, and this socket stops being read),
and one that reads nothing is not read either (:mod:`gateway.realtime_outbox`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from typing import TYPE_CHECKING

import structlog
from fastapi import APIRouter, HTTPException, WebSocket

from gateway.auth import OpenAIOwnerDep
from gateway.livesession import BYTES_PER_SECOND, SessionClosed
from gateway.livesessions import LiveRefused
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
from gateway.realtime_buffer import InputBuffer, live_sessions
from gateway.realtime_items import ItemTracker
from gateway.realtime_outbox import Outbox
from gateway.services import Services, get_services

if TYPE_CHECKING:
    from gateway.resample import Resampler24to16

router = APIRouter(tags=["openai realtime"])
log = structlog.get_logger("gateway.realtime")

#: Close codes: done, a policy (the intent), try again later (full), our failure.
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1011, 1013


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, owner: OpenAIOwnerDep, intent: str | None = None) -> None:
    """A realtime transcription session (the key was checked before the handshake)."""
    services = get_services(websocket)
    await websocket.accept()
    beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
    connection = RealtimeConnection(websocket, services, owner, beta=beta)
    await connection.run(intent)


class RealtimeConnection:
    """One client's socket: reads its events and answers them.

    What it writes goes through its :class:`Outbox`; the audio, to its
    :class:`InputBuffer` (the live sessions and the items they make).
    """

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
        self._outbox = Outbox(websocket)
        self._emit = self._outbox.emit
        items = ItemTracker(self._emit, ga=not beta)
        self._input = InputBuffer(
            services, owner, items, connection_id=self._id, on_failure=self._session_failed
        )
        self._resampler: Resampler24to16 | None = None
        self._close_code = CLOSE_NORMAL
        self._reader: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._idle_deadline = loop.time() + self._settings.live_idle_timeout

    # -- the connection ----------------------------------------------------------

    async def run(self, intent: str | None) -> None:
        """Serve the connection until either side ends it."""
        self._outbox.start(name=f"realtime-write-{self._id}")
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
            await self._input.stop()
            await self._outbox.flush()
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
            live_sessions(self._services).check_room()
        except LiveRefused as exc:
            self._refused(exc)
            return False
        kind = "transcription_session.created" if self._beta else "session.created"
        self._emit({"type": kind, "session": self._session_object(beta=self._beta)})
        log.info("realtime.connected", session=self._id, beta=self._beta, owner=self._owner)
        return True

    def _session_object(self, *, beta: bool) -> Event:
        render = beta_session if beta else ga_session
        return render(self._config, self._id, self._silence_ms)

    # -- errors ------------------------------------------------------------------------

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

    def _expired(self, limit: float) -> None:
        message = f"The session reached its limit of {limit:g} s of audio."
        self._fail(ProtocolError("session_expired", message), CLOSE_NORMAL)

    def _session_failed(self, message: str) -> None:
        """A live session failed on its own: said, and the connection ends."""
        self._fail(ProtocolError("server_error", message, kind="server_error"), CLOSE_ERROR)
        if self._reader is not None:
            self._reader.cancel()

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
            # A client that reads nothing is not read either, until it catches up.
            await self._outbox.wait_for_room()

    async def _handle(self, event: ClientEvent) -> bool:
        """One client event; False when the connection must end."""
        if isinstance(event, SessionUpdate | TranscriptionSessionUpdate):
            self._update(event)
            return True
        if isinstance(event, Append):
            return await self._append(event)
        if isinstance(event, Commit):
            return await self._commit(event.event_id)
        await self._input.stop()
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
        pcm24 = _audio_of(event)
        self._idle_deadline = asyncio.get_running_loop().time() + self._settings.live_idle_timeout
        pcm = self._to_16k(pcm24)
        if not pcm:
            return True
        if not self._input.is_open:
            try:
                await self._input.open(self._config)
            except LiveRefused as exc:
                self._refused(exc)
                return False
        limit = self._settings.live_max_seconds
        if self._input.audio_seconds + len(pcm) / BYTES_PER_SECOND > limit:
            self._expired(limit)
            return False
        try:
            await self._input.feed(pcm)
        except SessionClosed:
            self._expired(limit)
            return False
        return True

    def _to_16k(self, pcm24: bytes) -> bytes:
        """The client's 24 kHz audio at the 16 kHz live sessions take."""
        if self._resampler is None:
            # numpy only here: a gateway that serves no realtime client never imports it.
            from gateway.resample import Resampler24to16

            self._resampler = Resampler24to16()
        return self._resampler.convert(pcm24)

    async def _commit(self, event_id: str | None) -> bool:
        received = self._input.received
        if not self._input.is_open or received < MIN_COMMIT_SECONDS:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_SECONDS * 1000:g}ms of audio, but buffer only has "
                f"{received * 1000:.2f}ms of audio.",
                event_id=event_id,
            )
        await self._input.commit()
        return True


def _audio_of(event: Append) -> bytes:
    """The event's audio, decoded; an error event when it is not base64."""
    try:
        return base64.b64decode(event.audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "invalid_value",
            "Invalid 'audio': expected base64-encoded 16-bit PCM.",
            param="audio",
            event_id=event.event_id,
        ) from None
