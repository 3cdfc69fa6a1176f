"""How a job ends: succeeded, failed (dead-lettered), cancelled, refused, retried or handed back.

The handler decides which; each method here settles the delivery that way
(settling.py keeps the safe order of events, ack and audio) and then records
the outcome once (outcomes.py). Permanent failures are dead-lettered at once;
transient ones are handed back after a backoff, until the job has been
delivered ``max_attempts`` times.
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage

from stt_daemon.checkpoints import Tracker
from stt_daemon.common.backoff import Backoff
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    InboundJob,
    JobEvent,
    TranscriptResult,
)
from stt_daemon.config import DaemonSettings
from stt_daemon.events import EventPublisher
from stt_daemon.outcomes import Outcomes
from stt_daemon.parts import PartRunner
from stt_daemon.provenance import producer_of
from stt_daemon.settling import Settler, Timings

#: The cap of the wait before a transient retry.
RETRY_CAP_S = 60.0


class Endings:
    """Ends one delivery the way the handler decided, and records it."""

    def __init__(
        self,
        settings: DaemonSettings,
        events: EventPublisher,
        settle: Settler,
        parts: PartRunner,
        outcomes: Outcomes,
    ) -> None:
        self._settings = settings
        self._events = events
        self._settle = settle
        self._parts = parts
        self._outcomes = outcomes
        # Full jitter spreads apart the retries of many jobs that failed together.
        self._retry_backoff = Backoff(settings.retry_backoff, RETRY_CAP_S, jitter=True)

    def retry_delay(self, attempt: int) -> float:
        """The wait before handing back the ``attempt``-th delivery of a job."""
        return self._retry_backoff.delay(attempt)

    def producer(self, message: AbstractIncomingMessage) -> str:
        """Who published this delivery (the broker's validated user, when there is one)."""
        return producer_of(message, self._settings.broker_user)

    async def succeed(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        attempt: int,
        timings: Timings,
        result: TranscriptResult,
    ) -> None:
        """Publish the transcript, then ack."""
        final = self._settle.event(job, EventType.SUCCEEDED, attempt, result=result)
        await self._settle.finish(message, job, final, ack=True)
        self._outcomes.succeeded(job, attempt, timings, result)

    async def fail(
        self, message: AbstractIncomingMessage, job: InboundJob, attempt: int, error: ErrorInfo
    ) -> None:
        """Report the job failed and dead-letter it (a part fails its whole recording)."""
        if (part := job.message.part) is not None:
            # A part that fails fails its whole recording: say where.
            where = f"part {part.index + 1} of {part.count} (from {part.offset:.1f} s)"
            error = ErrorInfo(code=error.code, message=f"{where}: {error.message}")
        final = self._settle.event(job, EventType.FAILED, attempt, error=error)
        await self._settle.finish(message, job, final, ack=False)
        await self._parts.settle(job)
        model = job.message.options.model
        self._outcomes.record(
            "failed",
            model,
            "job.done",
            warn=True,
            error_code=error.code.value,
            status="failed",
            model=model,
            attempt=attempt,
            error=error.message,
        )

    async def cancel(self, message: AbstractIncomingMessage, job: InboundJob, attempt: int) -> None:
        """A cancelled job: reported and acked (not dead-lettered: nothing went wrong)."""
        info = ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled on request")
        final = self._settle.event(job, EventType.CANCELLED, attempt, error=info)
        await self._settle.finish(message, job, final, ack=True)
        await self._parts.settle(job)
        model = job.message.options.model
        self._outcomes.record(
            "cancelled", model, "job.done", status="cancelled", model=model, attempt=attempt
        )

    async def refuse(
        self, message: AbstractIncomingMessage, job_id: str, code: ErrorCode, reason: str
    ) -> None:
        """Fail a message that is no job of ours to run: say so, dead-letter it, touch nothing.

        The event names the message's producer, so a status store does not let it
        fail another producer's job of the same id.
        """
        event = JobEvent(
            event=EventType.FAILED,
            job_id=job_id,
            worker=self._settings.worker_name,
            error=ErrorInfo(code=code, message=reason),
            producer=self.producer(message),
        )
        await self._events.publish(event)
        await self._settle.reply(message, event)
        await message.reject(requeue=False)
        self._outcomes.record(
            "failed",
            message.routing_key,
            "job.done",
            warn=True,
            error_code=code.value,
            status="failed",
            error=reason,
        )

    async def retry(
        self, message: AbstractIncomingMessage, job: InboundJob, attempt: int, exc: Exception
    ) -> None:
        """A transient error: hand the job back after a backoff, or fail it on its last attempt."""
        if attempt >= self._settings.max_attempts:
            info = ErrorInfo(
                code=ErrorCode.INTERNAL,
                message=f"gave up after {attempt} attempts; last error: "
                f"{type(exc).__name__}: {exc}",
            )
            await self.fail(message, job, attempt, info)
            return
        delay = self.retry_delay(attempt)
        # Recorded before the wait, so the line comes when the error does; the job
        # goes back to the queue even if the daemon stops during the wait.
        self._outcomes.record(
            "retried",
            job.message.options.model,
            "job.retry",
            warn=True,
            error=f"{type(exc).__name__}: {exc}",
            delay_s=round(delay, 2),
        )
        await asyncio.sleep(delay)
        await self._settle.requeue(message)

    async def hand_back(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        attempt: int,
        tracker: Tracker,
        reason: str,
    ) -> None:
        """Save what is done, then put the job back unharmed (see settling.py)."""
        checkpoint = await asyncio.to_thread(tracker.save_quietly)
        how = await self._settle.hand_back(message, job, attempt, checkpoint)
        self._outcomes.record(
            "handed_back",
            job.message.options.model,
            "job.handed_back",
            warn=True,
            reason=reason,
            how=how,
            checkpoint_s=round(checkpoint.start, 3) if checkpoint is not None else None,
        )
