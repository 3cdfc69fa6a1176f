"""Speech the transcript does not cover: say so in the result instead of dropping it silently.

Whisper can lose speech without a sound. ``tiny.en`` hears only English: given
Spanish it writes nothing, or words that were never said. A multilingual model
transcribes a whole recording in the language it detected from the first 30 s,
and was seen skipping the Spanish half of an English-then-Spanish file. After
transcription, Silero VAD (faster-whisper ships it) finds where speech is, and
speech that no segment covers is reported in the result's ``warnings``, with the
language heard there when a multilingual model is at hand to tell.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import structlog

from stt_daemon.audio import SAMPLE_RATE, ArraySamples, Audio
from stt_daemon.common.protocol import ResultWarning, Segment, TranscriptResult, WarningCode
from stt_daemon.engine import Engine
from stt_daemon.standin import StandInEngine
from stt_daemon.vad import speech_timestamps

log = structlog.get_logger("stt_daemon.coverage")


class Readable(Protocol):
    """A decoded recording read a window at a time, so a long one is never whole in memory."""

    @property
    def samples(self) -> int:
        """Its length in samples."""
        ...

    def read(self, start: int = 0, stop: int | None = None) -> Audio:
        """Samples ``[start, stop)`` as float32."""
        ...


#: What the check takes: a decoded array, or a recording read by windows.
Recording = Audio | Readable

#: VAD settings for finding speech, not for cutting it: pauses of half a second end a
#: stretch and 200 ms of padding keeps word edges in, so that a gap between two
#: languages (a breath, a speaker change) shows as a gap. faster-whisper's own
#: defaults (2 s, 400 ms) merged a whole bilingual file into one stretch.
MIN_SILENCE_MS = 500
SPEECH_PAD_MS = 200
#: Whisper's segment and word times are approximate (segments of a plain decode
#: snap to 20 ms tokens but often start early or end late by a few hundred ms):
#: a segment covers this much beyond its ends.
TOLERANCE_S = 0.5
#: With words, a segment whose words average below this probability covers nothing.
#: Measured on tiny.en: English segments averaged 0.75-0.95; what it invented over
#: Spanish, French and Chinese 0.1-0.47 (one Chinese segment 0.62).
MIN_MEAN_WORD_PROBABILITY = 0.5
#: Without words, a segment whose tokens average below this log probability covers
#: nothing. Measured on tiny.en: English segments -0.26 to -0.37; English it made up
#: over Spanish, French or Chinese speech -0.76 to -3.3.
MIN_AVG_LOGPROB = -0.7
#: Uncovered speech closer than this is one stretch (one warning).
MERGE_GAP_S = 2.0
#: Stretches shorter than this are not reported on their own (a missed "hmm").
MIN_STRETCH_S = 1.0
#: A result is flagged only when the uncovered speech is at least this long in all
#: and this share of the speech. Measured on tiny.en and base, with and without word
#: timestamps and vad_filter: English, silence, tones and noise left at most 0.1 s
#: uncovered; Chinese on base 1.4 s (17 %, word timings of a 8 s clip); a second
#: language dropped after the first 7-15 s (28-62 %).
MIN_UNCOVERED_S = 2.0
MIN_UNCOVERED_SHARE = 0.15
#: Longer recordings can have many holes: report the longest few.
MAX_WARNINGS = 10
#: Whisper detects a language from at most 30 s.
DETECT_S = 30.0
#: Each detection is one encoder pass of the multilingual model: name the language
#: of the longest stretches only.
MAX_DETECTIONS = 3
#: Whisper always names some language: a guess less sure than this says nothing.
MIN_LANGUAGE_PROBABILITY = 0.5


@dataclass(frozen=True)
class Span:
    """A stretch of time, seconds: ``[start, end)``."""

    start: float
    end: float

    @property
    def length(self) -> float:
        """Its length in seconds."""
        return self.end - self.start


def _channels(audio: Recording) -> int:
    if isinstance(audio, np.ndarray):
        return 1 if audio.ndim == 1 else int(audio.shape[0])
    return int(getattr(audio, "channels", 1))


def _window(audio: Recording, start: int, stop: int) -> Audio:
    if isinstance(audio, np.ndarray):
        return audio[start:stop]
    return audio.read(start, stop)


def speech_spans(audio: Recording) -> list[Span]:
    """Where Silero VAD hears speech, in order (blocking: it runs on the CPU)."""
    # Imported here: the gateway and the tools import this package without the model stack.
    from faster_whisper.vad import VadOptions

    options = VadOptions(min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS)
    samples = ArraySamples(audio) if isinstance(audio, np.ndarray) else audio
    return [
        Span(start / SAMPLE_RATE, end / SAMPLE_RATE)
        for start, end in speech_timestamps(samples, options)
    ]


def covering(segment: Segment) -> bool:
    """False for a segment whose words, or tokens, say Whisper made it up."""
    if not segment.text.strip():
        return False
    if segment.avg_logprob is not None and segment.avg_logprob < MIN_AVG_LOGPROB:
        return False
    if not segment.words:
        return True
    mean = sum(w.probability for w in segment.words) / len(segment.words)
    return mean >= MIN_MEAN_WORD_PROBABILITY


def covered_spans(segments: Iterable[Segment], tolerance: float = TOLERANCE_S) -> list[Span]:
    """The time the transcript covers, widened by ``tolerance``, merged and in order."""
    spans = [
        Span(max(0.0, s.start - tolerance), s.end + tolerance) for s in segments if covering(s)
    ]
    return merge(spans, gap=0.0)


def merge(spans: Iterable[Span], gap: float) -> list[Span]:
    """Sorted spans with those less than ``gap`` apart (or overlapping) joined."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start - merged[-1].end <= gap:
            last = merged[-1]
            merged[-1] = Span(last.start, max(last.end, span.end))
        else:
            merged.append(span)
    return merged


def subtract(spans: Sequence[Span], holes: Sequence[Span]) -> list[Span]:
    """What of ``spans`` lies outside ``holes`` (both sorted, ``holes`` not overlapping)."""
    left: list[Span] = []
    for span in spans:
        start = span.start
        for hole in holes:
            if hole.end <= start or hole.start >= span.end:
                continue
            if hole.start > start:
                left.append(Span(start, hole.start))
            start = max(start, hole.end)
        if start < span.end:
            left.append(Span(start, span.end))
    return left


def intersect(spans: Sequence[Span], within: Span) -> list[Span]:
    """The parts of ``spans`` inside ``within``."""
    cut = (Span(max(s.start, within.start), min(s.end, within.end)) for s in spans)
    return [s for s in cut if s.start < s.end]


def uncovered(speech: Sequence[Span], segments: Iterable[Segment]) -> list[Span]:
    """Stretches of speech worth a warning, in order; empty when the transcript covers enough.

    Pure arithmetic on times: the test of what counts as speech dropped.
    """
    total = sum(s.length for s in speech)
    missing = subtract(speech, covered_spans(segments))
    missed = sum(s.length for s in missing)
    if total <= 0 or missed < MIN_UNCOVERED_S or missed < MIN_UNCOVERED_SHARE * total:
        return []
    stretches = [s for s in merge(missing, gap=MERGE_GAP_S) if s.length >= MIN_STRETCH_S]
    longest = sorted(stretches, key=lambda s: s.length, reverse=True)[:MAX_WARNINGS]
    return sorted(longest, key=lambda s: s.start)


def _detector(engine: Engine, engines: Mapping[str, Engine]) -> Engine | None:
    """A multilingual engine to name the language heard: the job's own, else any served."""
    if engine.multilingual:
        return engine
    return next((e for e in engines.values() if e.multilingual), None)


def _clip(audio: Recording, speech: Sequence[Span], stretch: Span) -> Audio:
    """The speech inside ``stretch``, joined, at most ``DETECT_S`` (silence would dilute it)."""
    pieces = intersect(speech, stretch) or [stretch]
    joined = np.concatenate(
        [_window(audio, int(p.start * SAMPLE_RATE), int(p.end * SAMPLE_RATE)) for p in pieces]
    )
    return joined[: int(DETECT_S * SAMPLE_RATE)]


def _languages(
    audio: Recording, speech: Sequence[Span], stretches: Sequence[Span], detector: Engine | None
) -> dict[Span, str]:
    """The language heard in the longest stretches, where the detector is sure enough."""
    if detector is None:
        return {}
    heard: dict[Span, str] = {}
    for stretch in sorted(stretches, key=lambda s: s.length, reverse=True)[:MAX_DETECTIONS]:
        try:
            clip = ArraySamples(_clip(audio, speech, stretch))
            language, probability = detector.detect_language(clip)
        except Exception:
            # The warning matters more than the name of the language: keep it without.
            log.exception("coverage.detect_failed", model=detector.name)
            continue
        if probability >= MIN_LANGUAGE_PROBABILITY:
            heard[stretch] = language
    return heard


def _message(stretch: Span, result: TranscriptResult, engine: Engine, heard: str | None) -> str:
    """What happened and what to do, for people."""
    where = f"{stretch.length:.1f} s of speech from {stretch.start:.1f} s to {stretch.end:.1f} s"
    if not engine.multilingual:
        if heard == "en":
            return f"{where} has no transcript, although it sounds like English"
        language = f" (it sounds like {heard!r})" if heard else ""
        return (
            f"{where} has no transcript: model {engine.name!r} is English-only and the "
            f"speech there may be in another language{language}; use a multilingual "
            "model such as 'base'"
        )
    if heard is None:
        return f"{where} has no transcript: transcribe that stretch on its own"
    if heard != result.language:
        # Whisper keeps to the language it detected from the first 30 s (or was given):
        # speech in another one is skipped.
        return (
            f"{where} has no transcript: the recording was transcribed as "
            f"{result.language!r} and this sounds like {heard!r}; transcribe that stretch "
            f"on its own with language={heard}"
        )
    return (
        f"{where} has no transcript (it sounds like {heard!r}); transcribe that stretch "
        f"on its own with language={heard}"
    )


def annotate(
    audio: Recording,
    result: TranscriptResult,
    engine: Engine,
    engines: Mapping[str, Engine] | None = None,
) -> TranscriptResult:
    """``result`` with a warning for each stretch of speech it does not cover (blocking).

    ``engines`` are the others the daemon serves: a multilingual one among them
    names the language of what an English-only model missed. Multi-channel audio
    and the stand-in engine are returned as they are.
    """
    if _channels(audio) != 1 or isinstance(engine, StandInEngine):
        # Channels are speakers who are silent in turn (and hear each other faintly):
        # each was transcribed with the VAD already. The stand-in never hears anything.
        return result
    try:
        return _annotate(audio, result, engine, engines or {})
    except Exception:
        # The check only advises: a transcript that is there must not be retried or
        # lost because the check failed.
        log.exception("coverage.check_failed")
        return result


def _annotate(
    audio: Recording, result: TranscriptResult, engine: Engine, engines: Mapping[str, Engine]
) -> TranscriptResult:
    started = time.monotonic()
    # A job with vad_filter ran the VAD already, but inside faster-whisper, which keeps
    # its stretches to itself and finds them with coarser settings; this pass costs
    # about 0.1 s of CPU per minute of audio.
    speech = speech_spans(audio)
    stretches = uncovered(speech, result.segments)
    vad_s = time.monotonic() - started
    if not stretches:
        return result
    heard = _languages(audio, speech, stretches, _detector(engine, engines))
    warnings = [
        ResultWarning(
            code=WarningCode.UNTRANSCRIBED_SPEECH,
            message=_message(stretch, result, engine, heard.get(stretch)),
            start=round(stretch.start, 2),
            end=round(stretch.end, 2),
            language=heard.get(stretch),
        )
        for stretch in stretches
    ]
    log.warning(
        "job.untranscribed_speech",
        stretches=[(w.start, w.end, w.language) for w in warnings],
        vad_s=round(vad_s, 3),
        check_s=round(time.monotonic() - started, 3),
    )
    return result.model_copy(update={"warnings": [*result.warnings, *warnings]})
