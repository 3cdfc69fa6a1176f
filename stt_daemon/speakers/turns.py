"""Who said each word: words and segments given the speaker turns (diarizer.speaker_turns).

Every word goes to the speaker whose turns cover most of it (the nearest turn when
none does), as WhisperX assigns words, and segments are cut where the speaker
changes. Nothing here assumes one part of a recording: turns are sorted by time, so
the parts of a long recording may come in any order with absolute times.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

from stt_daemon.common.protocol import Segment, SpeakerTurn


def speaker_name(index: int) -> str:
    """The public name of the ``index``-th speaker: ``SPEAKER_00``, ``SPEAKER_01``..."""
    return f"SPEAKER_{index:02d}"


def assign_speakers(
    segments: list[Segment], turns: Sequence[SpeakerTurn]
) -> tuple[list[Segment], list[SpeakerTurn]]:
    """Each word and segment with its speaker, segments cut where the speaker changes.

    Speakers are renamed ``SPEAKER_00``, ``SPEAKER_01``... in the order they first
    speak in ``segments`` (taken in the order given); speakers with turns but no
    words are named after them. The turns come back in time order with those names.
    Without any turn (no window to embed) everything is ``SPEAKER_00``, in one turn.
    """
    if not turns:
        if not segments:
            return [], []
        span = SpeakerTurn(
            start=min(s.start for s in segments), end=max(s.end for s in segments), speaker="0"
        )
        return assign_speakers(segments, [span])
    timeline = _Timeline(turns)
    heard = [
        [timeline.speaker_at(w.start, w.end) for w in s.words]
        if s.words
        else [timeline.speaker_at(s.start, s.end)]
        for s in segments
    ]
    names: dict[str, str] = {}
    for speaker in itertools.chain(itertools.chain.from_iterable(heard), timeline.speakers()):
        names.setdefault(speaker, speaker_name(len(names)))
    pieces = [
        piece
        for segment, speakers in zip(segments, heard, strict=True)
        for piece in _split(segment, [names[s] for s in speakers])
    ]
    renamed = [t.model_copy(update={"speaker": names[t.speaker]}) for t in timeline.turns]
    return [p.model_copy(update={"id": i}) for i, p in enumerate(pieces)], renamed


def _split(segment: Segment, speakers: list[str]) -> list[Segment]:
    """``segment`` with its speaker(s): one piece per run of words of one speaker."""
    if not segment.words:
        return [segment.model_copy(update={"speaker": speakers[0]})]
    words = [
        w.model_copy(update={"speaker": s}) for w, s in zip(segment.words, speakers, strict=True)
    ]
    runs = [list(run) for _, run in itertools.groupby(words, key=lambda w: w.speaker)]
    if len(runs) == 1:
        return [segment.model_copy(update={"words": words, "speaker": speakers[0]})]
    return [
        segment.model_copy(
            update={
                "start": run[0].start,
                "end": run[-1].end,
                # Whisper's words carry their own leading spaces.
                "text": "".join(w.word for w in run),
                "words": run,
                "speaker": run[0].speaker,
            }
        )
        for run in runs
    ]


class _Timeline:
    """Turns sorted by start, to find those that overlap a stretch of time quickly."""

    def __init__(self, turns: Sequence[SpeakerTurn]) -> None:
        self.turns = sorted(turns, key=lambda t: (t.start, t.end))
        self.starts = [t.start for t in self.turns]
        # Running maximum of the ends: a non-decreasing key to bisect on, since
        # turns given by a caller may overlap each other.
        self.reach = list(itertools.accumulate((t.end for t in self.turns), max))
        # Which turn reaches that far: the nearest one before a stretch that none covers.
        self.reacher: list[int] = []
        for i, turn in enumerate(self.turns):
            best = self.reacher[-1] if self.reacher else i
            self.reacher.append(i if turn.end > self.turns[best].end else best)

    def speakers(self) -> list[str]:
        """Every speaker, in the order of their first turn."""
        return list(dict.fromkeys(t.speaker for t in self.turns))

    def speaker_at(self, start: float, end: float) -> str:
        """The speaker who covers most of ``[start, end]``, or the nearest one."""
        first = bisect.bisect_right(self.reach, start)
        last = bisect.bisect_right(self.starts, end)
        overlap: dict[str, float] = {}
        for turn in self.turns[first:last]:
            shared = min(end, turn.end) - max(start, turn.start)
            if shared > 0:
                overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
        if overlap:
            # max() keeps the first of equals: the speaker of the earlier turn.
            return max(overlap, key=lambda s: overlap[s])
        # Those that might touch it, the first that starts after it, and the one
        # ending nearest before it.
        nearby = self.turns[first : last + 1]
        if first > 0:
            # The turn reaching furthest among those that end before ``start``.
            nearby.append(self.turns[self.reacher[first - 1]])
        return min(nearby, key=lambda t: max(t.start - end, start - t.end, 0.0)).speaker
