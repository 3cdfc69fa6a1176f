"""Who spoke when, and who said each word: speaker turns from labelled windows.

The clustered windows overlap (1.5 s every 0.5 s in the diarizer): in
:func:`windows_to_turns`, time where two windows of different speakers overlap goes
to the window whose centre is nearer (the diarizer decides per 20 ms frame itself,
see diarizer.speaker_turns). Turns of one
speaker that follow each other merge; pauses between speech stay gaps. Then every
word goes to the speaker whose turns cover most of it (the nearest turn when none
does), as WhisperX assigns words, and segments are cut where the speaker changes.

Nothing here assumes one part of a recording: windows and turns are sorted by time,
so the parts of a long recording may come in any order with absolute times.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stt_daemon.protocol import Segment, SpeakerTurn

#: A speaker change must last this many windows to count: fewer windows of one
#: speaker between two windows of one other speaker, in unbroken speech, are taken
#: as the other's (one 1.5 s window is too little voice to flip a turn on).
SHORTEST_FLIP_WINDOWS = 2


def speaker_name(index: int) -> str:
    """The public name of the ``index``-th speaker: ``SPEAKER_00``, ``SPEAKER_01``..."""
    return f"SPEAKER_{index:02d}"


def windows_to_turns(
    windows: Sequence[tuple[float, float]], labels: Sequence[int] | npt.NDArray[np.integer]
) -> list[SpeakerTurn]:
    """Speaker turns, in time order, from windows ``(start, end)`` and their speaker labels."""
    if len(windows) != len(labels):
        raise ValueError(f"{len(windows)} windows but {len(labels)} labels")
    order = sorted(range(len(windows)), key=lambda i: (windows[i][0], windows[i][1]))
    turns: list[SpeakerTurn] = []
    for region in _regions([windows[i] for i in order], [int(labels[i]) for i in order]):
        turns.extend(_region_turns(region))
    return turns


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


@dataclass(frozen=True)
class _Window:
    start: float
    end: float
    label: int

    @property
    def centre(self) -> float:
        return (self.start + self.end) / 2


def _regions(windows: list[tuple[float, float]], labels: list[int]) -> Iterable[list[_Window]]:
    """Runs of windows that overlap or touch: stretches of unbroken speech."""
    region: list[_Window] = []
    reach = 0.0
    for (start, end), label in zip(windows, labels, strict=True):
        if region and start > reach:
            yield region
            region = []
        reach = max(reach, end) if region else end
        region.append(_Window(start, end, label))
    if region:
        yield region


def _region_turns(region: list[_Window]) -> list[SpeakerTurn]:
    """One region's turns: each instant to the window with the nearest centre."""
    region.sort(key=lambda w: w.centre)
    labels = _smooth([w.label for w in region], SHORTEST_FLIP_WINDOWS)
    start, end = min(w.start for w in region), max(w.end for w in region)
    # Boundaries halfway between neighbouring centres: the midpoint of the overlap
    # for windows of one length.
    cuts = [start] + [(a.centre + b.centre) / 2 for a, b in itertools.pairwise(region)] + [end]
    pieces: list[list[float]] = []  # [start, end, label]
    for i, label in enumerate(labels):
        if pieces and pieces[-1][2] == label:
            pieces[-1][1] = cuts[i + 1]
        elif cuts[i + 1] > cuts[i]:
            pieces.append([cuts[i], cuts[i + 1], label])
    return [SpeakerTurn(start=a, end=b, speaker=speaker_name(int(c))) for a, b, c in pieces]


def _smooth(labels: list[int], shortest: int) -> list[int]:
    """Runs shorter than ``shortest`` between two runs of one other label take that label."""
    out = list(labels)
    i = 0
    while i < len(out):
        j = i
        while j < len(out) and out[j] == out[i]:
            j += 1
        if j - i < shortest and i > 0 and j < len(out) and out[i - 1] == out[j]:
            # Left to right, on the labels smoothed so far: A B A B A becomes all A.
            out[i:j] = [out[i - 1]] * (j - i)
        i = j
    return out


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
