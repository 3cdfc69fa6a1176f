"""Where to cut a long recording into parts: in the widest pause near each part's end.

Cutting inside a word costs that word (and Whisper's context around it); cutting in
a pause costs almost nothing. faster-whisper ships Silero VAD, which finds the
speech; the gaps between speech are the candidate cuts. Each part ends in the
widest gap of its last third, or at the length limit when the speech never pauses
there (music, a monologue without breath).
"""

from __future__ import annotations

from dataclasses import dataclass

from stt_daemon.audio import SAMPLE_RATE, Samples
from stt_daemon.vad import speech_timestamps

#: Pauses shorter than this are not cut candidates: they fall between words.
MIN_PAUSE_MS = 200
#: Speech padding of the VAD: keeps word edges out of the gaps.
SPEECH_PAD_MS = 100
#: A part ends somewhere in this last share of its longest length.
CUT_WINDOW = 1 / 3


@dataclass(frozen=True)
class Span:
    """A stretch of the recording, in samples: ``[start, end)``."""

    start: int
    end: int

    @property
    def seconds(self) -> float:
        """Its length in seconds."""
        return (self.end - self.start) / SAMPLE_RATE

    @property
    def offset(self) -> float:
        """Where it starts in the recording, seconds."""
        return self.start / SAMPLE_RATE


def pauses(audio: Samples) -> list[Span]:
    """The gaps between stretches of speech (blocking: Silero VAD runs on the CPU)."""
    # Imported here: the gateway and the tools import this package without the model stack.
    from faster_whisper.vad import VadOptions

    options = VadOptions(min_silence_duration_ms=MIN_PAUSE_MS, speech_pad_ms=SPEECH_PAD_MS)
    gaps: list[Span] = []
    previous_end = 0
    for start, end in speech_timestamps(audio, options):
        if start > previous_end:
            gaps.append(Span(previous_end, start))
        previous_end = end
    if previous_end < audio.samples:
        gaps.append(Span(previous_end, audio.samples))
    return gaps


def plan_parts(total: int, gaps: list[Span], longest: int) -> list[Span]:
    """Cut ``total`` samples into parts of at most ``longest``, in the widest pauses.

    Pure: the same recording always gives the same parts, so a job split again
    after a crash gives the same parts too.
    """
    if longest <= 0:
        raise ValueError("parts need a positive length")
    parts: list[Span] = []
    start = 0
    while total - start > longest:
        cut = _best_cut(gaps, start + int(longest * (1 - CUT_WINDOW)), start + longest)
        parts.append(Span(start, cut))
        start = cut
    parts.append(Span(start, total))
    return parts


def _best_cut(gaps: list[Span], earliest: int, latest: int) -> int:
    """The middle of the widest pause within ``[earliest, latest]``, else ``latest``."""
    best: tuple[int, int] | None = None  # (width, middle): wider wins, then later
    for gap in gaps:
        # Only the part of a pause inside the window counts: a long silence that
        # straddles it is cut in the middle of what lies inside.
        low, high = max(gap.start, earliest), min(gap.end, latest)
        if low < high:
            candidate = (high - low, (low + high) // 2)
            best = candidate if best is None or candidate > best else best
    return best[1] if best is not None else latest
