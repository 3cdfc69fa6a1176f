"""A stand-in speech engine, for testing and benchmarks only.

It takes time proportional to the audio's length, ``STT_STANDIN_RTF`` seconds per
second of audio, without using the CPU (it sleeps), and returns a transcript that
says so. Everything around it (broker, decoding, events, status store) is real,
so many daemons can share one small machine and still behave like busy ones:
the scale-out benchmark measures the job system, not the model.
"""

from __future__ import annotations

import math
import threading

import structlog

from stt_daemon.audio import SAMPLE_RATE, Samples
from stt_daemon.checkpoints import Checkpoint, Tracker
from stt_daemon.common.protocol import JobOptions, Segment, TranscriptResult
from stt_daemon.config import DaemonSettings
from stt_daemon.engine import Engine, JobCancelled, ProgressCallback

log = structlog.get_logger("stt_daemon")

#: One segment per Whisper-sized window, so results look like the real engine's.
WINDOW_S = 30.0


class StandInEngine:
    """Sleeps ``audio seconds x rtf`` and returns a placeholder transcript."""

    def __init__(self, name: str, rtf: float) -> None:
        self.name = name
        self._rtf = rtf
        # Mirrors the real models: ``*.en`` names are English-only.
        self.multilingual = not name.endswith(".en")

    def transcribe(
        self,
        audio: Samples,
        options: JobOptions,
        on_progress: ProgressCallback,
        cancelled: threading.Event,
        tracker: Tracker | None = None,
    ) -> TranscriptResult:
        """Wait as long as a model of this speed would, window by window."""
        duration = audio.samples / SAMPLE_RATE
        resume = tracker.resume if tracker is not None else None
        segments: list[Segment] = list(resume.segments) if resume is not None else []
        if tracker is not None:
            tracker.begin(duration, options.language or "en", 1.0)
        for start in _window_starts(duration, resume):
            end = min(start + WINDOW_S, duration)
            # Event.wait sleeps without CPU and wakes at once on cancellation.
            if cancelled.wait((end - start) * self._rtf):
                raise JobCancelled("cancelled while transcribing")
            segments.append(_placeholder(len(segments), start, end))
            if tracker is not None:
                # A stand-in window is over once its one segment is out.
                tracker.add(segments[-1], start)
                tracker.complete(end)
            if duration > 0:
                on_progress(min(end / duration, 1.0))
        return TranscriptResult(
            text=f"[stand-in] {duration:.1f} s of audio",
            language=options.language or "en",
            language_probability=1.0,
            duration=duration,
            model=self.name,
            task=options.task,
            segments=segments,
        )

    def detect_language(self, audio: Samples) -> tuple[str, float]:
        """No model, no detection: English, as the placeholder transcripts are."""
        return "en", 1.0


def _window_starts(duration: float, resume: Checkpoint | None) -> list[float]:
    """Where the windows still to do start (a resumed run skips those it has)."""
    # At least one window, so a silent or empty clip still gets one segment.
    starts = [i * WINDOW_S for i in range(max(1, math.ceil(duration / WINDOW_S)))]
    if resume is None:
        return starts
    return [start for start in starts if start >= resume.start]


def _placeholder(index: int, start: float, end: float) -> Segment:
    """The one segment of a window."""
    return Segment(
        id=index,
        start=round(start, 3),
        end=round(end, 3),
        text=f" [stand-in] {end - start:.1f} s of audio",
    )


def standin_engines(settings: DaemonSettings) -> dict[str, Engine]:
    """A stand-in for every configured model name; no model is resolved or loaded."""
    engines: dict[str, Engine] = {}
    for name in settings.model_names:
        engines[name] = StandInEngine(name, settings.standin_rtf)
        log.warning("model.loaded", model=name, engine="standin", rtf=settings.standin_rtf)
    return engines
