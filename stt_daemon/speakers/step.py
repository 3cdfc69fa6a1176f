"""``diarize=speakers`` in the daemon: voice prints after transcription, labels once a recording.

A whole recording is transcribed with word times (forced on: speakers are given
word by word), then its voice prints are taken and labelled in one go. A split
recording's parts each add their voice prints to their part result; the part
that completes the set labels the merged transcript from every part's prints
(fanbook.py keeps them with the part results), so one voice keeps one label from
the first part to the last.

The speaker model is checked at start, beside the Whisper models, and loaded by
the first job that needs it. A daemon without it (turned off, or the model
missing or changed) keeps serving every other job and fails ``diarize=speakers``
jobs at once as ``unsupported``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import structlog

from stt_daemon.audio import Samples
from stt_daemon.common.protocol import (
    Diarize,
    ErrorCode,
    InboundJob,
    JobOptions,
    TranscriptResult,
    VoicePrintsWire,
)
from stt_daemon.config import DaemonSettings
from stt_daemon.engine import JobCancelled
from stt_daemon.metrics import DaemonMetrics
from stt_daemon.niceness import in_niced_thread
from stt_daemon.settling import PermanentError, Timings
from stt_daemon.speakers.diarizer import Diarizer, VoicePrints
from stt_daemon.speakers.embedder import SpeakerEmbedder
from stt_daemon.speakers.model import (
    SpeakerModelChanged,
    SpeakerModelMissing,
    load_speaker_model,
)

log = structlog.get_logger("stt_daemon.speakers")

T = TypeVar("T")

#: What a job hears when this daemon cannot diarize. The operator's log line at
#: start says where the model was looked for and how to prepare it; users are not
#: told the daemon's paths.
NO_MODEL = (
    "diarize=speakers is not available on this daemon: its speaker-embedding model is "
    "missing or does not match its checksum (the daemon's log at start says how to fix it); "
    "transcribe without diarize=speakers, or ask the operator"
)
TURNED_OFF = (
    "diarize=speakers is turned off on this daemon (STT_DIARIZATION=false); "
    "transcribe without it, or send the job to daemons that diarize"
)
STAND_IN = "the stand-in engine (STT_ENGINE=standin) does not diarize speakers"
NOT_LOADED = "this daemon was started without a speaker model"


class SpeakerStep:
    """What this daemon can do for ``diarize=speakers``: a diarizer (loaded when first
    needed), or why not.

    The model is checked at start (its manifest and checksum), so a daemon knows and
    announces whether it diarizes; onnxruntime loads it with the first such job.
    Daemons that never see one never pay its memory (about 50 MB loaded, 90 MB while
    embedding) nor its load time at every start.
    """

    def __init__(
        self,
        diarizer: Diarizer | Callable[[], Diarizer] | None,
        unavailable: str | None = None,
        nice: int = 0,
    ) -> None:
        if (diarizer is None) == (unavailable is None):
            raise ValueError("a speaker step has a diarizer or a reason why not, not both")
        self._ready = diarizer if isinstance(diarizer, Diarizer) else None
        self._load = None if isinstance(diarizer, Diarizer) else diarizer
        self._lock = threading.Lock()
        #: The sentence a refused job carries.
        self.unavailable = unavailable
        #: Resident memory the model added when it was loaded (None: not yet, or not measured).
        self.rss_bytes: int | None = None
        #: Nice levels the step's threads run below the event loop (STT_COMPUTE_NICE).
        self.nice = nice

    @classmethod
    def off(cls, reason: str) -> SpeakerStep:
        """A daemon that refuses ``diarize=speakers`` jobs, saying ``reason``."""
        return cls(None, reason)

    @property
    def available(self) -> bool:
        """True when ``diarize=speakers`` jobs run here."""
        return self.unavailable is None

    def diarizer(self) -> Diarizer:
        """The diarizer, loaded on the first call (blocking: call it off the event loop).

        PermanentError (``unsupported``) when this daemon cannot diarize, or when
        onnxruntime refuses the model it checked at start: then every later
        ``diarize=speakers`` job is refused at once as well.
        """
        with self._lock:
            if self._ready is not None:
                return self._ready
            if self._load is None:
                raise PermanentError(ErrorCode.UNSUPPORTED, self.unavailable or NOT_LOADED)
            before = _rss_bytes()
            try:
                self._ready = self._load()
            except Exception as exc:  # a model changed since start, or unusable
                log.error(
                    "speakers.model_unusable",
                    error=f"{type(exc).__name__}: {exc}"[:500],
                    then="diarize=speakers refused",
                )
                self._load, self.unavailable = None, NO_MODEL
                raise PermanentError(ErrorCode.UNSUPPORTED, NO_MODEL) from None
            after = _rss_bytes()
            if before is not None and after is not None:
                self.rss_bytes = after - before
            log.info("speakers.loaded", rss_added_mb=round((self.rss_bytes or 0) / 2**20, 1))
            return self._ready


def load_speakers(settings: DaemonSettings) -> SpeakerStep:
    """Check the speaker model (blocking), or say clearly why this daemon cannot diarize.

    Never raises: a daemon that cannot diarize still transcribes everything else.
    onnxruntime loads the model with the first ``diarize=speakers`` job.
    """
    if settings.engine == "standin":
        return SpeakerStep.off(STAND_IN)
    if not settings.diarization:
        log.info("speakers.off", reason="STT_DIARIZATION is false")
        return SpeakerStep.off(TURNED_OFF)
    try:
        model = load_speaker_model(settings.speaker_model_dir)
    except SpeakerModelMissing as exc:
        event = "changed" if isinstance(exc, SpeakerModelChanged) else "missing"
        log.error(f"speakers.model_{event}", error=str(exc), then="diarize=speakers refused")
        return SpeakerStep.off(NO_MODEL)
    log.info(
        "speakers.ready",
        path=str(settings.speaker_model_dir),
        sha256=model.sha256[:12],
        threads=settings.speaker_threads,
        loaded="with the first diarize=speakers job",
    )
    directory, threads = settings.speaker_model_dir, settings.speaker_threads
    return SpeakerStep(
        lambda: Diarizer(SpeakerEmbedder(directory, threads)), nice=settings.compute_nice
    )


def _rss_bytes() -> int | None:
    """This process's resident memory (Linux), to tell what loading the model added."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def transcription_options(options: JobOptions) -> JobOptions:
    """What the engine is asked for: ``diarize=speakers`` needs word times."""
    if options.diarize is Diarize.SPEAKERS and not options.word_timestamps:
        return options.model_copy(update={"word_timestamps": True})
    return options


class Speakers:
    """The job handler's side of the speaker step: refuse, take voice prints, label; timed."""

    def __init__(self, step: SpeakerStep, metrics: DaemonMetrics) -> None:
        self._step = step
        self._metrics = metrics
        metrics.diarization_ready(step.available, step.rss_bytes)

    def check(self, options: JobOptions) -> None:
        """PermanentError (``unsupported``, saying why) when this daemon cannot run the job."""
        if options.diarize is not Diarize.SPEAKERS or self._step.available:
            return
        self._metrics.diarization_job("refused")
        raise PermanentError(ErrorCode.UNSUPPORTED, self._step.unavailable or NOT_LOADED)

    async def after_transcription(
        self,
        job: InboundJob,
        audio: Samples,
        result: TranscriptResult,
        cancelled: threading.Event,
        timings: Timings,
    ) -> TranscriptResult:
        """A whole recording's speakers, or a part's voice prints for its merge."""
        options, part = job.message.options, job.message.part
        if options.diarize is not Diarize.SPEAKERS:
            return result
        diarizer = await self._diarizer()
        mark = time.monotonic()
        offset = part.offset if part is not None else 0.0
        prints = await self._off_loop(lambda: diarizer.voiceprints(audio, result.segments, offset))
        self._metrics.diarization_step("voiceprints", time.monotonic() - mark)
        if cancelled.is_set():
            raise JobCancelled("cancelled while taking voice prints")
        if part is not None:
            timings.mark("voiceprints_s", mark)
            return result.model_copy(update={"voiceprints": prints.to_wire()})
        labelled = await self._label(result, [prints], options)
        timings.mark("diarize_s", mark)
        log.info("speakers.found", **_summary(labelled))
        return labelled

    async def after_merge(
        self, job: InboundJob, merged: TranscriptResult, prints: Sequence[VoicePrintsWire]
    ) -> TranscriptResult:
        """The merged transcript of a split recording, labelled from every part's prints."""
        options = job.message.options
        if options.diarize is not Diarize.SPEAKERS:
            return merged
        parts = job.message.part.count if job.message.part is not None else 1
        if len(prints) < parts:
            # Every part's daemon refuses or takes prints, so this is a part result
            # written by another version: its words take the nearest turn.
            log.warning("speakers.prints_missing", parts=parts, with_prints=len(prints))
        labelled = await self._label(merged, [VoicePrints.from_wire(p) for p in prints], options)
        log.info("speakers.found", parts=parts, **_summary(labelled))
        return labelled

    async def _label(
        self, result: TranscriptResult, prints: list[VoicePrints], options: JobOptions
    ) -> TranscriptResult:
        """Speakers on words and segments, the turns listed, no voice prints left (threaded)."""
        diarizer = await self._diarizer()
        mark = time.monotonic()
        segments, turns = await self._off_loop(
            lambda: diarizer.label(list(result.segments), prints, options)
        )
        self._metrics.diarization_step("label", time.monotonic() - mark)
        self._metrics.diarization_job("diarized")
        # Turn edges fall between window centres: milliseconds are all that mean anything.
        turns = [
            t.model_copy(update={"start": round(t.start, 3), "end": round(t.end, 3)}) for t in turns
        ]
        return result.model_copy(
            update={"segments": segments, "speaker_turns": turns, "voiceprints": None}
        )

    async def _off_loop(self, work: Callable[[], T]) -> T:
        # Niced like the transcription threads (niceness.py): onnxruntime runs in the
        # calling thread, and the event loop must keep its turn on busy cores.
        return await asyncio.to_thread(in_niced_thread, self._step.nice, work)

    async def _diarizer(self) -> Diarizer:
        # The first job loads the model: off the loop, niced like the work itself.
        try:
            return await self._off_loop(self._step.diarizer)
        finally:  # loaded, or refused for good: the gauges say which
            self._metrics.diarization_ready(self._step.available, self._step.rss_bytes)


def _summary(result: TranscriptResult) -> dict[str, int]:
    turns = result.speaker_turns or []
    return {"speakers": len({t.speaker for t in turns}), "turns": len(turns)}
