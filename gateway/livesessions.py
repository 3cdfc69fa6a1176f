"""The live sessions of one gateway process: the limit, the record, the news.

Every protocol adapter (WhisperLive, OpenAI realtime, Wyoming, the CLI's) opens
its sessions here, so they share one limit (``STT_LIVE_MAX_SESSIONS``), and every
session is a job like any other: recorded in the status store when it opens
(``processing``, owned by the caller's API key), its utterances published on the
results exchange as ``session.segment`` while it runs, and its transcript stored
and published as the job's result (``job.succeeded``, and ``session.ended``)
when it ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from gateway.broker import BrokerLink, BrokerUnavailable
from gateway.config import GatewaySettings
from gateway.livebroker import LiveClient
from gateway.livesession import (
    LiveEvent,
    LiveLimits,
    LiveSession,
    SessionEnded,
    SessionOptions,
    Utterance,
)
from gateway.metrics import GatewayMetrics
from gateway.store import JobRecord, StatusStore
from stt_daemon.common.amqp import broker_user
from stt_daemon.common.liveprotocol import SessionEvent
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobOptions,
    JobStatus,
    Segment,
    utcnow,
)

log = structlog.get_logger("gateway.live")


class LiveRefused(Exception):
    """A session cannot open: the limit is reached, or no broker / no such model."""

    def __init__(self, message: str, *, busy: bool) -> None:
        super().__init__(message)
        #: True when it is the session limit (worth retrying later), not a mistake.
        self.busy = busy


class LiveSessions:
    """Opens, counts and records live sessions."""

    def __init__(
        self,
        settings: GatewaySettings,
        client: LiveClient,
        store: StatusStore,
        broker: BrokerLink,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self.client = client
        self._store = store
        self._broker = broker
        self._metrics = metrics
        self._active: dict[str, LiveSession] = {}
        self._producer = broker_user(settings.amqp_url)
        self._pending: set[asyncio.Task[None]] = set()
        self.limits = LiveLimits(
            step=settings.live_step,
            window_timeout=settings.live_window_timeout,
            end_silence=settings.live_end_silence,
            max_seconds=settings.live_max_seconds,
        )

    @property
    def active(self) -> int:
        """Sessions open now."""
        return len(self._active)

    def check_room(self) -> None:
        """Raise :class:`LiveRefused` now if a session could not open (before a handshake)."""
        if len(self._active) >= self._settings.live_max_sessions:
            raise LiveRefused(
                f"this gateway runs {self._settings.live_max_sessions} live sessions at most; "
                "try again later",
                busy=True,
            )
        if not self.client.ready:
            raise LiveRefused("the message broker is not reachable", busy=True)

    @asynccontextmanager
    async def open(self, options: SessionOptions, owner: str | None) -> AsyncIterator[LiveSession]:
        """A started session; when the block ends it is closed and its result recorded."""
        self.check_room()
        if options.model not in self._settings.model_names:
            served = ", ".join(self._settings.model_names)
            raise LiveRefused(f"unknown model {options.model!r}; served: {served}", busy=False)
        session_id = f"live-{uuid.uuid4().hex}"
        job_options = JobOptions(
            model=options.model,
            language=options.language,
            task=options.task,
            prompt=options.prompt,
            word_timestamps=True,
        )
        await self._store.create(self._processing(session_id, owner, job_options))
        session = LiveSession(
            session_id,
            options,
            self.client,
            self.limits,
            on_window=self._metrics.live_window,
            on_event=self._observe,
        )
        self._active[session_id] = session
        self._metrics.live_sessions.inc()
        log.info("live.session_opened", session=session_id, model=options.model, owner=owner)
        session.start()
        try:
            yield session
        finally:
            await session.close()
            del self._active[session_id]
            self._metrics.live_sessions.dec()
            await self._record(session, job_options)

    def _processing(self, session_id: str, owner: str | None, options: JobOptions) -> JobRecord:
        """The session's job as it is stored when the session opens: processing."""
        now = utcnow()
        return JobRecord(
            id=session_id,
            status=JobStatus.PROCESSING,
            owner=owner,
            model=options.model,
            options=options,
            live=True,
            created_at=now,
            started_at=now,
            updated_at=now,
            producer=self._producer,
        )

    def _observe(self, session: LiveSession, event: LiveEvent) -> None:
        """Publish each complete utterance as ``session.segment`` (in the background)."""
        if not isinstance(event, Utterance):
            return
        segment = Segment(
            id=event.index, start=round(event.start, 3), end=round(event.end, 3), text=event.text
        )
        news = SessionEvent(
            event="session.segment",
            session_id=session.id,
            model=session.options.model,
            segment=segment,
        )
        task = asyncio.create_task(self._publish(news))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, news: SessionEvent) -> None:
        try:
            await self._broker.publish_result_event(news)
        except BrokerUnavailable as exc:
            # The session's transcript is still stored; only followers miss this one.
            log.warning("live.news_not_published", news=news.event, error=str(exc))

    async def _record(self, session: LiveSession, options: JobOptions) -> None:
        """Store the transcript as the job's result and tell the results exchange."""
        ended = session.ended
        assert ended is not None
        transcript = ended.transcript
        event = self._final_event(session, ended, options)
        try:
            await self._store.apply(event)
        except Exception as exc:
            log.error("live.result_not_stored", session=session.id, error=str(exc))
        news = SessionEvent(
            event="session.ended",
            session_id=session.id,
            model=session.options.model,
            result=transcript,
            error=ended.error,
        )
        await self._publish(news)
        try:
            await self._broker.publish_result_event(event)
        except BrokerUnavailable as exc:
            log.warning("live.result_not_published", session=session.id, error=str(exc))
        log.info(
            "live.session_closed",
            session=session.id,
            audio_s=round(session.received, 3),
            utterances=len(transcript.segments),
            windows=session.stats.sent,
            missed=session.stats.missed,
            error=ended.error,
        )

    def _final_event(
        self, session: LiveSession, ended: SessionEnded, options: JobOptions
    ) -> JobEvent:
        """The job's final event: succeeded with the transcript, or failed."""
        transcript = ended.transcript
        # A session that fails after words were committed still keeps them.
        failed = ended.error is not None and not transcript.segments
        return JobEvent(
            event=EventType.FAILED if failed else EventType.SUCCEEDED,
            job_id=session.id,
            model=session.options.model,
            attempt=1,
            result=None if failed else transcript,
            error=ErrorInfo(code=ErrorCode.INTERNAL, message=ended.error or "") if failed else None,
            options=options,
            producer=self._producer,
        )
