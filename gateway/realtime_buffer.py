"""A realtime connection's input audio buffer, each buffer a live session (a job).

``gateway/routes/realtime.py`` reads the client; this module owns the live
session its audio goes to: opened with the first audio of a buffer (with the
configuration then in effect), ended at ``input_audio_buffer.commit`` (all its
audio transcribed first), at ``input_audio_buffer.clear`` or when the connection
ends (stopped). Its events become OpenAI's items (:mod:`gateway.realtime_items`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import structlog

from gateway.livesession import BYTES_PER_SECOND, LiveSession, SessionEnded, SessionOptions
from gateway.livesessions import LiveRefused, LiveSessions
from gateway.openai_realtime import TranscriptionConfig
from gateway.realtime_items import ItemTracker
from gateway.services import Services

log = structlog.get_logger("gateway.realtime")

#: Audio goes to the session half a second at a time, so backpressure holds per half second.
FEED_BYTES = BYTES_PER_SECOND // 2


def live_sessions(services: Services) -> LiveSessions:
    """The gateway's live sessions; :class:`LiveRefused` when it runs none."""
    live = services.live
    if live is None:
        raise LiveRefused("live sessions are not available on this gateway", busy=True)
    return live


@dataclass
class _Buffer:
    """The live session the current input buffer goes to."""

    session: LiveSession
    stack: AsyncExitStack
    #: Forwards the session's events to the client.
    pump: asyncio.Task[None] | None = None
    #: We asked it to end (commit, clear, the connection's end): its end is no failure.
    ending: bool = False


class InputBuffer:
    """The connection's live sessions, one after another, and the items they make."""

    def __init__(
        self,
        services: Services,
        owner: str | None,
        items: ItemTracker,
        *,
        connection_id: str,
        on_failure: Callable[[str], None],
    ) -> None:
        self._services = services
        self._owner = owner
        self._items = items
        self._connection_id = connection_id
        #: Told a live session's own failure (not one we asked for): it ends the connection.
        self._on_failure = on_failure
        self._buffer: _Buffer | None = None
        #: Seconds of audio of the live sessions that ended (connection time of the next).
        self._offset = 0.0

    @property
    def is_open(self) -> bool:
        """Whether a live session takes the audio now."""
        return self._buffer is not None

    @property
    def received(self) -> float:
        """Seconds of audio in the current buffer (0 when none is open)."""
        return self._buffer.session.received if self._buffer is not None else 0.0

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio over the whole connection: every buffer, this one included."""
        return self._offset + self.received

    async def open(self, config: TranscriptionConfig) -> None:
        """Open the live session for new audio with ``config``; :class:`LiveRefused` if not."""
        options = SessionOptions(
            model=config.resolved,
            language=config.language,
            prompt=config.prompt,
            end_silence=config.end_silence,
        )
        stack = AsyncExitStack()
        live = live_sessions(self._services)
        session = await stack.enter_async_context(live.open(options, self._owner))
        self._items.start(session.id, config, self._offset)
        buffer = self._buffer = _Buffer(session, stack)
        buffer.pump = asyncio.create_task(self._pump(buffer), name=f"realtime-{session.id}")
        log.info(
            "realtime.buffer_opened", session=self._connection_id, job_id=session.id, vad=config.vad
        )

    async def feed(self, pcm: bytes) -> None:
        """16 kHz audio to the open session (waits while it is behind; SessionClosed)."""
        assert self._buffer is not None
        for start in range(0, len(pcm), FEED_BYTES):
            await self._buffer.session.feed(pcm[start : start + FEED_BYTES])

    async def commit(self) -> None:
        """The client committed: its item is committed, and all its audio transcribed."""
        self._items.commit()
        await self._end(finish=True)

    async def stop(self) -> None:
        """Cleared, or the connection ends: the session stops, its item is dropped."""
        await self._end(finish=False)

    async def _pump(self, buffer: _Buffer) -> None:
        """The live session's events, as items; a failure of its own ends the connection."""
        async for event in buffer.session.events():
            self._items.on_event(event)
            if isinstance(event, SessionEnded) and event.error and not buffer.ending:
                self._on_failure(event.error)

    async def _end(self, *, finish: bool) -> None:
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
