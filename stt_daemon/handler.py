"""One job message: fetch audio -> transcribe -> publish the result -> ack, retry or dead-letter.

Acknowledgement is explicit and late: a job is acked only after its final event
is confirmed by the broker. This module decides what a delivery comes to;
follow one job through:

- ``JobHandler.handle``: quarantine, decode and verify the message, count its attempts;
- ``JobHandler._attempt``: run it, and classify what went wrong (permanent,
  cancelled, interrupted, transient);
- transcription.py: the engine, the audio, the model, coverage and speakers;
- parts.py: a long recording fanned out, or one part of one;
- endings.py: the delivery settled that way (settling.py keeps the safe order);
- outcomes.py: the outcome counted, metered and logged, once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

from stt_daemon.checkpoints import CheckpointStore, Tracker
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    DecodeError,
    ErrorCode,
    ErrorInfo,
    EventType,
    InboundJob,
    decode_job,
)
from stt_daemon.config import DaemonSettings
from stt_daemon.control import Cancellations
from stt_daemon.endings import Endings
from stt_daemon.engine import Engine, JobCancelled
from stt_daemon.events import EventPublisher
from stt_daemon.fanout import FanOut
from stt_daemon.handback import Handback
from stt_daemon.interrupts import Interrupts
from stt_daemon.metrics import DaemonMetrics
from stt_daemon.outcomes import Outcomes
from stt_daemon.parts import PartRunner
from stt_daemon.quarantine import Quarantine, previous_deliveries
from stt_daemon.settling import DeliveryLost, PermanentError, Settler, Timings, delivery_lost
from stt_daemon.speakers.step import NOT_LOADED, Speakers, SpeakerStep
from stt_daemon.transcription import Transcriber

log = structlog.get_logger("stt_daemon.handler")


def _on_channel_close(
    message: AbstractIncomingMessage, callback: Callable[[], None]
) -> asyncio.Future[Any] | None:
    """Call ``callback`` when the delivery's channel closes; the observer, to cancel after."""
    try:
        closing: asyncio.Future[Any] = message.channel.closing
    except Exception:  # a closed channel (the job is lost already) or a test's fake
        return None

    def closed(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            callback()

    closing.add_done_callback(closed)
    return closing


class JobHandler:
    """Runs jobs for the daemon; one instance serves every model it has loaded."""

    def __init__(
        self,
        settings: DaemonSettings,
        engines: Mapping[str, Engine],
        blobs: BlobStore,
        events: EventPublisher,
        cancellations: Cancellations | None = None,
        metrics: DaemonMetrics | None = None,
        quarantine: Quarantine | None = None,
        fanout: FanOut | None = None,
        handback: Handback | None = None,
        speakers: SpeakerStep | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = metrics or DaemonMetrics()
        self.metrics.serves(engines)
        self._outcomes = Outcomes(self.metrics)
        #: Deliveries by outcome, for the daemon's stop line.
        self.counts = self._outcomes.counts
        self._checkpoints = CheckpointStore(blobs)
        self._settle = Settler(
            events,
            blobs,
            settings.worker_name,
            settings.progress_interval,
            self._checkpoints,
            handback,
        )
        self._cancellations = cancellations or Cancellations()
        self._quarantine = quarantine
        self._interrupts = Interrupts()
        self._speakers = Speakers(speakers or SpeakerStep.off(NOT_LOADED), self.metrics)
        self._parts = PartRunner(fanout, self._settle, self._outcomes, self._speakers)
        self._end = Endings(settings, events, self._settle, self._parts, self._outcomes)
        self._transcriber = Transcriber(
            settings, engines, blobs, self._settle, self._speakers, self._interrupts
        )

    def stop(self, grace: float) -> None:
        """The daemon is stopping: jobs that need more than ``grace`` seconds go back now."""
        self._interrupts.stop(grace)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process one delivery to the end: exactly one of ack, reject or requeue."""
        attempt = previous_deliveries(message) + 1
        structlog.contextvars.bind_contextvars(job_id=message.message_id, attempt=attempt)
        try:
            if await self._quarantined(message):
                return
            # The routing key of stt.jobs is the model.
            with self.metrics.running(message.routing_key):
                await self._handle(message, attempt)
        except DeliveryLost as lost:
            # Nothing to settle: the broker already requeued the job for another daemon.
            self._outcomes.record(
                "abandoned",
                message.routing_key,
                "job.abandoned",
                warn=True,
                reason="delivery channel closed while the job ran",
                work="stopped" if lost.stopped else "finished",
            )
        except Exception:
            # Reporting the outcome failed (broker trouble, most likely). Never leave
            # the delivery unsettled: it would hold a prefetch slot until the
            # broker's consumer timeout. Hand it back, after a pause, to try again.
            log.exception("job.unsettled")
            await asyncio.sleep(self._end.retry_delay(attempt))
            await self._settle.requeue(message)
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "attempt", "request_id")

    async def _quarantined(self, message: AbstractIncomingMessage) -> bool:
        """True when the redelivery went to the quarantine queue to run apart."""
        if self._quarantine is None or not self._quarantine.wants(message):
            return False
        if await self._quarantine.admit(message):
            self._outcomes.record(
                "quarantined",
                message.routing_key,
                "job.quarantined",
                reason="redelivered: runs apart from other jobs",
            )
            return True
        # Handing it back would only raise its delivery count towards the
        # broker's limit: better to run it here, among the others.
        log.warning("job.not_quarantined", reason="quarantine queue is full")
        return False

    async def _handle(self, message: AbstractIncomingMessage, attempt: int) -> None:
        job = await self._admit(message)
        if job is None:
            return
        if attempt > self._settings.max_attempts:
            await self._end.fail(
                message,
                job,
                attempt,
                ErrorInfo(
                    code=ErrorCode.TOO_MANY_ATTEMPTS,
                    message=f"job was delivered {attempt} times without finishing "
                    "(each attempt crashed, was interrupted or hit a transient error)",
                ),
            )
            return
        await self._run(message, job, attempt)

    async def _admit(self, message: AbstractIncomingMessage) -> InboundJob | None:
        """The delivery's job, decoded and its claim check verified; None when refused."""
        try:
            job = decode_job(
                message.body,
                content_type=message.content_type,
                message_id=message.message_id,
                headers=message.headers,
                # Jobs reach us through stt.jobs, whose routing key is the model.
                default_model=message.routing_key or None,
            )
        except DecodeError as exc:
            job_id = message.message_id or "unknown"
            await self._end.refuse(message, job_id, ErrorCode.BAD_MESSAGE, str(exc))
            return None
        job = job.model_copy(update={"producer": self._end.producer(message)})
        structlog.contextvars.bind_contextvars(job_id=job.job_id)
        if job.message.audio is not None and (
            refusal := self._settings.claim_signer.verify(
                message.body, message.reply_to, message.headers
            )
        ):
            # Before the audio file is opened, and not through fail(): a forged claim
            # check must not delete that file, nor settle a recording's parts.
            log.warning("job.forged_claim_check", producer=job.producer, reason=refusal)
            await self._end.refuse(message, job.job_id, ErrorCode.FORBIDDEN, refusal)
            return None
        if job.message.request_id:
            structlog.contextvars.bind_contextvars(request_id=job.message.request_id)
        return job

    async def _run(self, message: AbstractIncomingMessage, job: InboundJob, attempt: int) -> None:
        if job.message.part is not None and not await self._parts.wanted(message, job):
            return
        if self._cancellations.is_cancelled(job.job_id):
            await self._end.cancel(message, job, attempt)  # cancelled while queued: skip it
            return
        cancelled = self._cancellations.running(job.job_id)
        lost = _on_channel_close(message, cancelled.set)
        try:
            await self._attempt(message, job, attempt, cancelled)
        finally:
            if lost is not None:
                lost.cancel()
            self._cancellations.finished(job.job_id, cancelled)

    async def _attempt(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        attempt: int,
        cancelled: threading.Event,
    ) -> None:
        """Run the job once and classify what stopped it: the one place outcomes are decided."""
        timings = Timings()
        tracker = Tracker(
            job,
            await asyncio.to_thread(self._checkpoints.load, job),
            lambda checkpoint: self._checkpoints.save(job, checkpoint),
            self._settings.checkpoint_seconds,
        )
        try:
            await self._work(message, job, attempt, timings, cancelled, tracker)
        except PermanentError as exc:
            await self._end.fail(message, job, attempt, ErrorInfo(code=exc.code, message=str(exc)))
        except JobCancelled:
            if delivery_lost(message):
                # The broker took the job back (this process froze past its heartbeat,
                # a network cut): whatever is left of it is someone else's work now.
                raise DeliveryLost(job.job_id, stopped=True) from None
            if self._interrupts.interrupted(cancelled):
                await self._end.hand_back(message, job, attempt, tracker, "daemon stopping")
            else:
                await self._end.cancel(message, job, attempt)
        except DeliveryLost:
            raise  # not a job error: nothing to retry here
        except asyncio.CancelledError:
            # Shutdown deadline: stop the worker thread and hand the job back intact.
            cancelled.set()
            await asyncio.shield(
                self._end.hand_back(message, job, attempt, tracker, "shutdown deadline")
            )
            raise
        except Exception as exc:  # transient: anything we did not classify as permanent
            await self._end.retry(message, job, attempt, exc)

    async def _work(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        attempt: int,
        timings: Timings,
        cancelled: threading.Event,
        tracker: Tracker,
    ) -> None:
        """Transcribe a job, or fan a long recording out, or run one part of one."""
        part = job.message.part
        resume = tracker.resume
        if part is None:
            # A resumed job starts where its checkpoint ends, and says so.
            progress = resume.fraction if resume is not None else None
            await self._settle.emit(job, EventType.STARTED, attempt, progress=progress)
        log.info(
            "job.started",
            model=job.message.options.model,
            part=part.index if part is not None else None,
            resumed_from_s=round(resume.start, 3) if resume is not None else None,
        )
        engine = self._transcriber.engine(job.message.options)  # fails before any decoding
        self._speakers.check(job.message.options)  # as soon, when it cannot diarize
        audio = await self._transcriber.decode(job, timings)
        try:
            if await self._parts.split(message, job, engine, audio, timings):
                return
            result = await self._transcriber.run(
                job, engine, audio, attempt, timings, cancelled, tracker
            )
            if part is not None:
                await self._parts.done(message, job, attempt, timings, result)
            else:
                await self._end.succeed(message, job, attempt, timings, result)
        finally:
            audio.remove()
