"""A Wyoming connection's transcriptions, one after another, each a live session.

``transcribe`` (optional) chooses the model and language, ``audio-start`` opens the
live session, ``audio-chunk`` feeds it, ``audio-stop`` waits for its last words and
answers ``transcript``. A refused or failed transcription is an ``error`` event; the
rest of its audio is dropped until ``audio-stop``. The connection itself (reading,
timeouts, closing) is :mod:`gateway.wyoming.handler`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import structlog
from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.error import Error
from wyoming.event import Event

from gateway.livesession import Hypothesis, SessionClosed, SessionOptions, Utterance
from gateway.livesessions import LiveRefused, LiveSessions
from gateway.wyoming.catalog import Unservable, choose, prompt_of
from gateway.wyoming.framing import BadEvent
from gateway.wyoming.transcription import AudioFormat, Request, Transcription

log = structlog.get_logger("gateway.wyoming")

#: transcript-start, transcript-chunk and transcript-stop came with wyoming 1.7.0.
STREAMING_SINCE = (1, 7)

#: ``code`` of our error events (the connection's as well as the transcriptions').
BUSY = "busy"
UNSERVABLE = "unservable"
BAD_EVENT = "bad-event"
TIMEOUT = "timeout"
FAILED = "transcription-failed"
SHUTTING_DOWN = "shutting-down"


class Transcriber:
    """The transcription in progress on one connection, and what comes before it."""

    def __init__(
        self,
        live: LiveSessions,
        models: list[str],
        send: Callable[[Event], Awaitable[None]],
        on_stream_failed: Callable[[], None],
    ) -> None:
        self._live = live
        self._models = models
        self._send = send
        #: The client stopped reading while words streamed: the connection must end.
        self._on_stream_failed = on_stream_failed
        self._options: SessionOptions | None = None
        self._current: Transcription | None = None
        #: A refused or failed transcription: its audio is dropped until audio-stop.
        self._discarding = False

    @property
    def in_progress(self) -> bool:
        """Whether a live session takes audio now."""
        return self._current is not None

    @property
    def idle(self) -> bool:
        """Neither a transcription nor a refused one's audio to drop."""
        return self._current is None and not self._discarding

    async def on_transcribe(self, event: Event) -> None:
        """``transcribe``: the model and language of the next transcription."""
        if self._current is not None:
            raise BadEvent("transcribe before the audio-stop of the transcription in progress")
        request = Request.from_data(event.data)
        self._discarding = False
        self._options = None
        try:
            choice = choose(self._models, request.name, request.language)
            # Before audio-start, so a full server says so at once (STT_LIVE_MAX_SESSIONS).
            self._live.check_room()
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

    async def on_start(self, event: Event, version: tuple[int, ...] | None) -> None:
        """``audio-start``: the live session opens (``version``: the client's protocol)."""
        if self._current is not None:
            raise BadEvent("audio-start before the audio-stop of the transcription in progress")
        fmt = AudioFormat.from_data(event.data, "audio-start")
        if self._discarding:
            return
        options = self._options or SessionOptions(model=self._models[0])
        self._options = None
        exits = AsyncExitStack()
        try:
            session = await exits.enter_async_context(self._live.open(options, owner=None))
        except LiveRefused as exc:
            await self._refuse(BUSY if exc.busy else UNSERVABLE, str(exc))
            return
        streaming = version is not None and version >= STREAMING_SINCE
        current = Transcription(exits, session, fmt, streaming)
        self._current = current
        if streaming:
            await self._send(TranscriptStart(language=options.language).event())
        current.pump = asyncio.create_task(self._pump(current), name=f"wyoming-{session.id}")
        current.pump.add_done_callback(self._pump_done)

    async def on_chunk(self, event: Event) -> None:
        """``audio-chunk``: to the live session, or dropped after a refusal."""
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

    async def on_stop(self) -> None:
        """``audio-stop``: the whole transcript, once every word is in."""
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
        await self.end()

    async def end(self) -> None:
        """End the transcription in progress, if any: its session is closed and recorded."""
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
            self._on_stream_failed()

    async def _fail(self, message: str) -> None:
        """The session failed: say so, drop the rest of its audio until audio-stop."""
        await self.end()
        await self._refuse(FAILED, f"transcription failed: {message}")

    async def _refuse(self, code: str, message: str) -> None:
        log.info("wyoming.refused", code=code, error=message)
        self._discarding = True
        self._options = None
        await self._send(Error(text=message, code=code).event())
