"""What a job's transcription runs: the engine, the decoded audio, the model, coverage, speakers.

The handler hands a job here once it is ours to run; what comes back is the
job's transcript (annotated with coverage, speakers labelled when asked), or a
``PermanentError`` when the job cannot be run here at all (unknown model,
unsupported language, bad or too long audio).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

from stt_daemon import coverage
from stt_daemon.admission import Admission
from stt_daemon.audio import AudioError, PcmFile
from stt_daemon.checkpoints import Tracker
from stt_daemon.common.blobs import BlobError, BlobStore
from stt_daemon.common.languages import unsupported_language
from stt_daemon.common.protocol import (
    Diarize,
    ErrorCode,
    InboundJob,
    JobOptions,
    Segment,
    TranscriptResult,
)
from stt_daemon.config import DaemonSettings
from stt_daemon.diarize import transcribe_channels
from stt_daemon.engine import Engine, ProgressCallback
from stt_daemon.interrupts import Interrupts
from stt_daemon.recordings import load_recording
from stt_daemon.settling import PermanentError, Settler, Timings, ignore_progress
from stt_daemon.speakers.step import Speakers, transcription_options


def check_supported(engine: Engine, options: JobOptions) -> None:
    """Refuse a language the model cannot hear (the rule: stt_daemon/common/languages.py)."""
    problem = unsupported_language(engine.name, options.language, multilingual=engine.multilingual)
    if problem is not None:
        raise PermanentError(ErrorCode.UNSUPPORTED, problem)


class Transcriber:
    """Runs one job's audio through its model, off the event loop, with progress and timings."""

    def __init__(
        self,
        settings: DaemonSettings,
        engines: Mapping[str, Engine],
        blobs: BlobStore,
        settle: Settler,
        speakers: Speakers,
        interrupts: Interrupts,
    ) -> None:
        self._settings = settings
        self._engines = engines
        self._blobs = blobs
        self._settle = settle
        self._speakers = speakers
        self._interrupts = interrupts
        self._admission = Admission(settings.ack_timeout, settings.assumed_rtf)

    def engine(self, options: JobOptions) -> Engine:
        """The engine of the job's model; a PermanentError when this daemon cannot run it."""
        engine = self._engines.get(options.model)
        if engine is None:
            raise PermanentError(
                ErrorCode.UNKNOWN_MODEL,
                f"model {options.model!r} is not served here (serves {', '.join(self._engines)})",
            )
        check_supported(engine, options)
        return engine

    async def decode(self, job: InboundJob, timings: Timings) -> PcmFile:
        """Fetch, verify and decode the job's audio to a work file; the caller removes it."""
        audio = await asyncio.to_thread(self._load_audio, job)
        timings.mark("decode_s", timings.started)
        timings.marks["audio_s"] = round(audio.duration, 3)
        return audio

    async def run(
        self,
        job: InboundJob,
        engine: Engine,
        audio: PcmFile,
        attempt: int,
        timings: Timings,
        cancelled: threading.Event,
        tracker: Tracker,
    ) -> TranscriptResult:
        """The job's transcript: the model's words, their coverage, then its speakers."""
        result = await self._transcribe(job, engine, audio, attempt, timings, cancelled, tracker)
        result = await asyncio.to_thread(coverage.annotate, audio, result, engine, self._engines)
        return await self._speakers.after_transcription(job, audio, result, cancelled, timings)

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
        done = [tracker.resume.fraction if tracker.resume is not None else 0.0]
        report = self._progress(job, attempt, done)
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

    def _progress(self, job: InboundJob, attempt: int, done: list[float]) -> ProgressCallback:
        """A progress callback that also keeps ``done[0]``, the fraction transcribed so far."""
        # A part's own progress is not its recording's: parts report as they finish,
        # and their segments reach clients with the recording's result only.
        progress = (
            self._settle.progress_reporter(job, attempt)
            if job.message.part is None
            else ignore_progress
        )

        def report(fraction: float, segments: Sequence[Segment] = (), /) -> None:
            done[0] = fraction
            progress(fraction, segments)

        return report

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
