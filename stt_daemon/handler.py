"""One job message: fetch audio -> transcribe -> publish the result -> ack, retry or dead-letter.

Acknowledgement is explicit and late: a job is acked only after its final event
is confirmed by the broker. Permanent failures (bad message, bad audio) are
reported and dead-lettered at once; transient ones are handed back after a
backoff, until the job has been delivered ``max_attempts`` times.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

from stt_daemon import coverage
from stt_daemon.admission import Admission
from stt_daemon.audio import AudioError, PcmFile
from stt_daemon.checkpoints import CheckpointStore, Tracker
from stt_daemon.common.blobs import BlobError, BlobStore
from stt_daemon.common.languages import unsupported_language
from stt_daemon.common.protocol import (
    DecodeError,
    Diarize,
    ErrorCode,
    ErrorInfo,
    EventType,
    InboundJob,
    JobEvent,
    JobOptions,
    Segment,
    TranscriptResult,
    decode_job,
    utcnow,
)
from stt_daemon.config import DaemonSettings
from stt_daemon.control import Cancellations
from stt_daemon.diarize import transcribe_channels
from stt_daemon.engine import Engine, JobCancelled
from stt_daemon.events import EventPublisher
from stt_daemon.fanout import FanOut
from stt_daemon.handback import Handback
from stt_daemon.interrupts import Interrupts
from stt_daemon.metrics import DaemonMetrics
from stt_daemon.parts import PartRunner
from stt_daemon.provenance import producer_of
from stt_daemon.quarantine import Quarantine, previous_deliveries
from stt_daemon.recordings import load_recording
from stt_daemon.settling import (
    DeliveryLost,
    PermanentError,
    Settler,
    Timings,
    backoff,
    delivery_lost,
    ignore_progress,
)
from stt_daemon.speakers.step import (
    NOT_LOADED,
    Speakers,
    SpeakerStep,
    transcription_options,
)

log = structlog.get_logger("stt_daemon.handler")


def check_supported(engine: Engine, options: JobOptions) -> None:
    """Refuse a language the model cannot hear (the rule: stt_daemon/common/languages.py)."""
    problem = unsupported_language(engine.name, options.language, multilingual=engine.multilingual)
    if problem is not None:
        raise PermanentError(ErrorCode.UNSUPPORTED, problem)


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
        self._signer = settings.claim_signer
        self.metrics = metrics or DaemonMetrics()
        self.metrics.serves(engines)
        self._engines = engines
        self._blobs = blobs
        self._events = events
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
        self._admission = Admission(settings.ack_timeout, settings.assumed_rtf)
        self._quarantine = quarantine
        self._interrupts = Interrupts()
        self.counts: dict[str, int] = {
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
            "retried": 0,
            "handed_back": 0,
            "abandoned": 0,
            "quarantined": 0,
            "split": 0,
            "parts": 0,
        }
        self._speakers = Speakers(speakers or SpeakerStep.off(NOT_LOADED), self.metrics)
        self._parts = PartRunner(fanout, self._settle, self.metrics, self.counts, self._speakers)

    def stop(self, grace: float) -> None:
        """The daemon is stopping: jobs that need more than ``grace`` seconds go back now."""
        self._interrupts.stop(grace)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process one delivery to the end: exactly one of ack, reject or requeue."""
        attempt = previous_deliveries(message) + 1
        structlog.contextvars.bind_contextvars(job_id=message.message_id, attempt=attempt)
        try:
            if self._quarantine is not None and self._quarantine.wants(message):
                if await self._quarantine.admit(message):
                    self.counts["quarantined"] += 1
                    log.info("job.quarantined", reason="redelivered: runs apart from other jobs")
                    return
                # Handing it back would only raise its delivery count towards the
                # broker's limit: better to run it here, among the others.
                log.warning("job.not_quarantined", reason="quarantine queue is full")
            # The routing key of stt.jobs is the model.
            with self.metrics.running(message.routing_key):
                await self._handle(message, attempt)
        except DeliveryLost as lost:
            # Nothing to settle: the broker already requeued the job for another daemon.
            self.counts["abandoned"] += 1
            self.metrics.job_finished(message.routing_key, "abandoned")
            log.warning(
                "job.abandoned",
                reason="delivery channel closed while the job ran",
                work="stopped" if lost.stopped else "finished",
            )
        except Exception:
            # Reporting the outcome failed (broker trouble, most likely). Never leave
            # the delivery unsettled: it would hold a prefetch slot until the
            # broker's consumer timeout. Hand it back, after a pause, to try again.
            log.exception("job.unsettled")
            await asyncio.sleep(backoff(attempt, self._settings.retry_backoff))
            await self._settle.requeue(message)
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "attempt", "request_id")

    async def _handle(self, message: AbstractIncomingMessage, attempt: int) -> None:
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
            await self._refuse(message, job_id, ErrorCode.BAD_MESSAGE, str(exc))
            return
        job = job.model_copy(update={"producer": self._producer(message)})
        structlog.contextvars.bind_contextvars(job_id=job.job_id)
        if job.message.audio is not None and (
            refusal := self._signer.verify(message.body, message.reply_to, message.headers)
        ):
            # Before the audio file is opened, and not through _fail: a forged claim
            # check must not delete that file, nor settle a recording's parts.
            log.warning("job.forged_claim_check", producer=job.producer, reason=refusal)
            await self._refuse(message, job.job_id, ErrorCode.FORBIDDEN, refusal)
            return
        if job.message.request_id:
            structlog.contextvars.bind_contextvars(request_id=job.message.request_id)
        if attempt > self._settings.max_attempts:
            await self._fail(
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

    async def _run(self, message: AbstractIncomingMessage, job: InboundJob, attempt: int) -> None:
        if job.message.part is not None and not await self._parts.wanted(message, job):
            return
        if self._cancellations.is_cancelled(job.job_id):
            await self._cancel(message, job, attempt)  # cancelled while queued: skip it
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
            await self._fail(message, job, attempt, ErrorInfo(code=exc.code, message=str(exc)))
        except JobCancelled:
            if delivery_lost(message):
                # The broker took the job back (this process froze past its heartbeat,
                # a network cut): whatever is left of it is someone else's work now.
                raise DeliveryLost(job.job_id, stopped=True) from None
            if self._interrupts.interrupted(cancelled):
                await self._hand_back(message, job, attempt, tracker, "daemon stopping")
            else:
                await self._cancel(message, job, attempt)
        except DeliveryLost:
            raise  # not a job error: nothing to retry here
        except asyncio.CancelledError:
            # Shutdown deadline: stop the worker thread and hand the job back intact.
            cancelled.set()
            await asyncio.shield(
                self._hand_back(message, job, attempt, tracker, "shutdown deadline")
            )
            raise
        except Exception as exc:  # transient: anything we did not classify as permanent
            await self._retry(message, job, attempt, exc)

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
        self._engine(job.message.options)  # an unknown model fails before any decoding
        self._speakers.check(job.message.options)  # as soon, when it cannot diarize
        audio = await self._decode(job, timings)
        try:
            await self._run_decoded(message, job, attempt, timings, cancelled, tracker, audio)
        finally:
            audio.remove()

    async def _run_decoded(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        attempt: int,
        timings: Timings,
        cancelled: threading.Event,
        tracker: Tracker,
        audio: PcmFile,
    ) -> None:
        part = job.message.part
        engine = self._engine(job.message.options)
        if await self._parts.split(message, job, engine, audio, timings):
            return
        result = await self._transcribe(job, engine, audio, attempt, timings, cancelled, tracker)
        result = await asyncio.to_thread(coverage.annotate, audio, result, engine, self._engines)
        result = await self._speakers.after_transcription(job, audio, result, cancelled, timings)
        if part is not None:
            await self._parts.done(message, job, attempt, timings, result)
            return
        final = self._settle.event(job, EventType.SUCCEEDED, attempt, result=result)
        await self._settle.finish(message, job, final, ack=True)
        self.counts["succeeded"] += 1
        self._log_done(job, "succeeded", attempt, timings, result)

    def _engine(self, options: JobOptions) -> Engine:
        engine = self._engines.get(options.model)
        if engine is None:
            raise PermanentError(
                ErrorCode.UNKNOWN_MODEL,
                f"model {options.model!r} is not served here (serves {', '.join(self._engines)})",
            )
        check_supported(engine, options)
        return engine

    async def _decode(self, job: InboundJob, timings: Timings) -> PcmFile:
        audio = await asyncio.to_thread(self._load_audio, job)
        timings.mark("decode_s", timings.started)
        timings.marks["audio_s"] = round(audio.duration, 3)
        return audio

    async def _transcribe(
        self,
        job: InboundJob,
        engine: Engine,
        audio: PcmFile,
        attempt: int,
        timings: Timings,
        cancelled: threading.Event,
        tracker: Tracker,
    ) -> TranscriptResult:
        options = transcription_options(job.message.options)
        audio_s = timings.marks["audio_s"]
        if (too_long := self._admission.refusal(options.model, audio_s)) is not None:
            raise PermanentError(ErrorCode.AUDIO_TOO_LONG, too_long)
        mark = time.monotonic()
        # A part's own progress is not its recording's: parts report as they finish,
        # and their segments reach clients with the recording's result only.
        progress = (
            self._settle.progress_reporter(job, attempt)
            if job.message.part is None
            else ignore_progress
        )
        done = [tracker.resume.fraction if tracker.resume is not None else 0.0]

        def report(fraction: float, segments: Sequence[Segment] = (), /) -> None:
            done[0] = fraction
            progress(fraction, segments)

        rtf = self._admission.rtf(options.model)
        # JobCancelled from the thread: a user cancelled the job, or the daemon is stopping
        # (interrupts tell which). At the shutdown deadline the task itself is cancelled
        # first, and the thread's late exception is dropped.
        with self._interrupts.transcribing(cancelled, lambda: (1 - done[0]) * audio_s * rtf):
            if options.diarize is Diarize.CHANNELS:
                result = await asyncio.to_thread(
                    transcribe_channels, engine, audio, options, report, cancelled
                )
            else:
                result = await asyncio.to_thread(
                    engine.transcribe, audio, options, report, cancelled, tracker
                )
        timings.mark("transcribe_s", mark)
        self._admission.observe(options.model, audio_s, timings.marks["transcribe_s"])
        return result

    def _load_audio(self, job: InboundJob) -> PcmFile:
        """Fetch, verify and decode to a work file (blocking; runs in a thread)."""
        try:
            return load_recording(
                job,
                self._blobs,
                self._settings.max_audio_seconds,
                self._settings.resolved_work_dir,
            )
        except (AudioError, BlobError) as exc:
            raise PermanentError(exc.code, str(exc)) from None

    async def _hand_back(
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
        self.counts["handed_back"] += 1
        self.metrics.job_finished(job.message.options.model, "handed_back")
        log.warning(
            "job.handed_back",
            reason=reason,
            how=how,
            checkpoint_s=round(checkpoint.start, 3) if checkpoint is not None else None,
        )

    async def _cancel(
        self, message: AbstractIncomingMessage, job: InboundJob, attempt: int
    ) -> None:
        """A cancelled job: reported and acked (not dead-lettered: nothing went wrong)."""
        info = ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled on request")
        final = self._settle.event(job, EventType.CANCELLED, attempt, error=info)
        await self._settle.finish(message, job, final, ack=True)
        await self._parts.settle(job)
        self.counts["cancelled"] += 1
        self.metrics.job_finished(job.message.options.model, "cancelled")
        log.info("job.done", status="cancelled", model=job.message.options.model, attempt=attempt)

    async def _fail(
        self, message: AbstractIncomingMessage, job: InboundJob, attempt: int, error: ErrorInfo
    ) -> None:
        if (part := job.message.part) is not None:
            # A part that fails fails its whole recording: say where.
            where = f"part {part.index + 1} of {part.count} (from {part.offset:.1f} s)"
            error = ErrorInfo(code=error.code, message=f"{where}: {error.message}")
        final = self._settle.event(job, EventType.FAILED, attempt, error=error)
        await self._settle.finish(message, job, final, ack=False)
        await self._parts.settle(job)
        self.counts["failed"] += 1
        self.metrics.job_finished(job.message.options.model, "failed", error_code=error.code.value)
        log.warning(
            "job.done",
            status="failed",
            model=job.message.options.model,
            attempt=attempt,
            error_code=error.code.value,
            error=error.message,
        )

    def _producer(self, message: AbstractIncomingMessage) -> str:
        return producer_of(message, self._settings.broker_user)

    async def _refuse(
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
            producer=self._producer(message),
        )
        await self._events.publish(event)
        await self._settle.reply(message, event)
        await message.reject(requeue=False)
        self.counts["failed"] += 1
        self.metrics.job_finished(message.routing_key, "failed", error_code=code.value)
        log.warning("job.done", status="failed", error_code=code.value, error=reason)

    async def _retry(
        self, message: AbstractIncomingMessage, job: InboundJob, attempt: int, exc: Exception
    ) -> None:
        if attempt >= self._settings.max_attempts:
            info = ErrorInfo(
                code=ErrorCode.INTERNAL,
                message=f"gave up after {attempt} attempts; last error: "
                f"{type(exc).__name__}: {exc}",
            )
            await self._fail(message, job, attempt, info)
            return
        delay = backoff(attempt, self._settings.retry_backoff)
        log.warning("job.retry", error=f"{type(exc).__name__}: {exc}", delay_s=round(delay, 2))
        await asyncio.sleep(delay)
        await self._settle.requeue(message)
        self.counts["retried"] += 1
        self.metrics.job_finished(job.message.options.model, "retried")

    def _log_done(
        self,
        job: InboundJob,
        status: str,
        attempt: int,
        timings: Timings,
        result: TranscriptResult,
    ) -> None:
        total = time.monotonic() - timings.started
        audio_s = timings.marks.get("audio_s", 0.0)
        self.metrics.job_finished(
            job.message.options.model,
            "succeeded",
            audio_s=audio_s,
            transcribe_s=timings.marks.get("transcribe_s"),
        )
        log.info(
            "job.done",
            status=status,
            model=job.message.options.model,
            attempt=attempt,
            language=result.language,
            total_s=round(total, 3),
            rtf=round(timings.marks.get("transcribe_s", 0.0) / audio_s, 4) if audio_s else None,
            queue_wait_s=round((utcnow() - job.message.submitted_at).total_seconds() - total, 3),
            **timings.marks,
        )
