"""How a delivery ends: events published, then ack, dead-letter or requeue, then the blob dropped.

The order is the guarantee: a job is acked only after its final event is
confirmed, and its audio is deleted only after the ack. The handler decides
*what* happened to a job; this module says it to the world in that order.

Audio is deleted only when it is verifiably the job's own (size and sha256 as its
claim check says): a claim check may name any file of the store, another job's
too. A dead-lettered job keeps its audio for a replay (deadletters.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from stt_daemon import deadletters
from stt_daemon.checkpoints import Checkpoint, CheckpointStore
from stt_daemon.common.blobs import BlobError, BlobStore
from stt_daemon.common.protocol import ErrorCode, EventType, InboundJob, JobEvent, Segment
from stt_daemon.events import EventPublisher
from stt_daemon.handback import Handback

if TYPE_CHECKING:
    from stt_daemon.engine import ProgressCallback

log = structlog.get_logger("stt_daemon.handler")


@dataclass
class Timings:
    """Where one job's time went, for its canonical log line."""

    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, since: float) -> float:
        """Record the seconds elapsed since ``since``; return now."""
        now = time.monotonic()
        self.marks[name] = round(now - since, 3)
        return now


class PermanentError(Exception):
    """Retrying will not help: report the job failed and dead-letter it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DeliveryLost(Exception):
    """The channel this job came on closed while it ran: the broker gave the job to another."""

    def __init__(self, job_id: str, *, stopped: bool = False) -> None:
        super().__init__(job_id)
        #: True when the work was stopped as soon as the loss was seen (not finished first).
        self.stopped = stopped


def delivery_lost(message: AbstractIncomingMessage) -> bool:
    """True when the delivery can no longer be acked (its channel is closed)."""
    try:
        return bool(message.channel.is_closed)
    except ChannelInvalidStateError:  # aio-pika's answer for a closed channel
        return True


def ignore_progress(_fraction: float, _segments: Sequence[Segment] = (), /) -> None:
    """A progress callback that reports nothing."""


class Settler:
    """Builds a job's events and ends its delivery in the one safe order."""

    def __init__(
        self,
        events: EventPublisher,
        blobs: BlobStore,
        worker: str,
        progress_interval: float,
        checkpoints: CheckpointStore | None = None,
        handback: Handback | None = None,
    ) -> None:
        self._events = events
        self._blobs = blobs
        self._checkpoints = checkpoints
        self._handback = handback
        self._worker = worker
        self._progress_interval = progress_interval

    def event(self, job: InboundJob, kind: EventType, attempt: int, **fields: Any) -> JobEvent:
        """An event about ``job``; final ones carry its options."""
        if kind.status.is_final:
            fields["options"] = job.message.options
        return JobEvent(
            event=kind,
            job_id=job.job_id,
            model=job.message.options.model,
            attempt=attempt,
            worker=self._worker,
            producer=job.producer,
            **fields,
        )

    async def emit(self, job: InboundJob, kind: EventType, attempt: int, **fields: Any) -> None:
        """Publish an event and wait for its confirm."""
        await self._events.publish(self.event(job, kind, attempt, **fields))

    async def publish_quietly(self, event: JobEvent) -> None:
        """Publish an advisory event (progress): losing one must never fail the job."""
        try:
            await self._events.publish(event)
        except Exception as exc:
            log.debug("progress.not_published", error=str(exc))

    def progress_reporter(self, job: InboundJob, attempt: int) -> ProgressCallback:
        """A thread-safe callback that publishes throttled ``job.progress`` events.

        Each event carries the segments finished since the previous one: those that
        came between two allowed events wait for the next, none is dropped. Those
        finished after the last event come with the final result only.
        """
        loop = asyncio.get_running_loop()
        interval = self._progress_interval
        last = [0.0]
        # Touched only by the one thread that transcribes the job.
        unsent: list[Segment] = []

        def report(fraction: float, segments: Sequence[Segment] = (), /) -> None:
            unsent.extend(segments)
            now = time.monotonic()
            if now - last[0] < interval or fraction >= 1.0:
                return
            last[0] = now
            event = self.event(
                job,
                EventType.PROGRESS,
                attempt,
                progress=round(fraction, 4),
                segments=list(unsent) or None,
            )
            unsent.clear()
            loop.call_soon_threadsafe(lambda: loop.create_task(self.publish_quietly(event)))

        return report

    async def finish(
        self, message: AbstractIncomingMessage, job: InboundJob, final: JobEvent, *, ack: bool
    ) -> None:
        """Publish the final event (and RPC reply), then ack (audio dropped) or dead-letter."""
        if delivery_lost(message):
            # The broker closed our channel (missed heartbeats while this process was
            # stopped, a network cut) and handed the job to another daemon. This
            # delivery can never be acked; publishing its result would only race the
            # new owner's, and deleting the blob would pull the audio from under it.
            raise DeliveryLost(final.job_id)
        await self._events.publish(final)
        await self.reply(message, final)
        if ack:
            await message.ack()
            await self._drop_audio(job)
        else:
            await message.reject(requeue=False)  # -> dead-letter exchange
            await self._keep_audio(message, job, final)

    async def reply(self, message: AbstractIncomingMessage, final: JobEvent) -> None:
        """RPC reply when asked for; a caller that went away must not fail the job."""
        if not message.reply_to:
            return
        try:
            await self._events.reply(final, message.reply_to, message.correlation_id)
        except Exception as exc:
            log.warning("reply.not_sent", reply_to=message.reply_to, error=str(exc))

    async def ack_quietly(self, message: AbstractIncomingMessage, job: InboundJob) -> None:
        """Ack, without an event, a delivery whose work goes on elsewhere; drop its audio."""
        if delivery_lost(message):
            raise DeliveryLost(job.job_id)
        await message.ack()
        await self._drop_audio(job)

    async def hand_back(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        attempt: int,
        checkpoint: Checkpoint | None,
    ) -> str:
        """Say the job waits again, then republish it unharmed (or requeue it); how it went."""
        if delivery_lost(message):
            raise DeliveryLost(job.job_id)  # the broker has put it back already
        if job.message.part is None:
            # Parts report on their whole recording, which other parts keep running.
            progress = round(checkpoint.fraction, 4) if checkpoint is not None else None
            await self.publish_quietly(
                self.event(job, EventType.REQUEUED, attempt, progress=progress)
            )
        try:
            if self._handback is None:
                raise RuntimeError("no hand-back channel")
            # This attempt does not count: it was interrupted, not failed.
            await self._handback.give_back(message, attempts=attempt - 1)
        except Exception as exc:
            # Never lose it: a plain requeue costs an attempt, but keeps the job.
            await self.requeue(message)
            return f"requeued ({type(exc).__name__}: {exc})"
        return "republished"

    async def requeue(self, message: AbstractIncomingMessage) -> None:
        """Hand a delivery back; if its channel is gone the broker requeues it anyway."""
        try:
            await message.nack(requeue=True)
        except Exception as exc:
            log.info("requeue.skipped", error=str(exc))

    async def _drop_audio(self, job: InboundJob) -> None:
        """After an ack: the job is done with, and so is its audio if it is its own."""
        if self._checkpoints is not None:
            self._checkpoints.drop(job)  # settled: no one resumes it any more
        if job.message.audio is not None:
            await asyncio.to_thread(self._delete_if_own, job)

    def _delete_if_own(self, job: InboundJob) -> None:
        ref = job.message.audio
        assert ref is not None
        try:
            self._blobs.verified_path(ref)
        except BlobError as exc:
            # Missing already, or not what this job says: perhaps another job's file.
            log.info("blob.not_deleted", url=ref.url, reason=str(exc))
            return
        self._blobs.delete(ref.url)

    async def _keep_audio(
        self, message: AbstractIncomingMessage, job: InboundJob, final: JobEvent
    ) -> None:
        """After a dead-letter: keep the audio for a replay, marked for the retention sweep."""
        if self._checkpoints is not None:
            self._checkpoints.drop(job)
        key = message.message_id or job.job_id
        try:
            await asyncio.to_thread(deadletters.keep, self._blobs, key, job, final.error)
        except OSError as exc:
            # Unmarked audio is kept for good: better than a job settled twice.
            log.warning("blob.not_marked", error=f"{type(exc).__name__}: {exc}")
