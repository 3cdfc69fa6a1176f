"""One call from a transcript and its audio to speakers: voice prints, then labels.

A daemon that transcribed a recording (or one part of a split one) calls
:meth:`Diarizer.voiceprints`: windows over the speech Silero VAD finds, each
embedded by CAM++. Whoever holds every part's prints calls :meth:`Diarizer.label`
once: all windows are clustered together, so a person keeps one label across parts;
then every instant goes to the speaker its windows sound most like, and each word
to the speaker of the time it covers.

Measured on real voices (the recordings of the benchmark's ``diarization``
section, each also with its windows shifted by 0.15-0.6 s): windows over the VAD's
stretches counted three voices taking turns as three at every shift, where
stretches made of Whisper's words (which run on across the pauses between
speakers) counted four at two shifts of five; the VAD costs about 0.05 s per 30 s
of audio. Windows of 1.5 s every 0.5 s: a 0.75 s step left the two-speaker
sample's quick exchanges at 0.89-0.94 word accuracy (0.5 s: 0.93-0.97), and
shorter windows sound less like their speaker (1.0 s: 0.86). Turns decided per
frame from every window's likeness to each speaker, rather than each instant
going to the nearest window's label, added 2-6 points.
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stt_daemon.audio import SAMPLE_RATE, Samples
from stt_daemon.common.protocol import JobOptions, Segment, SpeakerTurn, VoicePrintsWire
from stt_daemon.speakers.cluster import cluster_speakers
from stt_daemon.speakers.embedder import SpeakerEmbedder, plan_windows
from stt_daemon.speakers.turns import assign_speakers, speaker_name
from stt_daemon.vad import speech_timestamps

#: Window length and hop over each stretch of speech, seconds.
WINDOW = 1.5
STEP = 0.5
#: A window starting less than this after the one before adds next to nothing.
LEAST_SHIFT = 0.3
#: Silero VAD for the stretches: pauses from 300 ms split them (a change of speaker
#: often has no longer pause), padded 50 ms so word edges stay in.
VAD_MIN_SILENCE_MS = 300
VAD_PAD_MS = 50
#: The most audio read at once: the windows embedded together lie within this
#: many seconds, so memory does not follow the recording's length.
MAX_READ_S = 30.0
#: Window times on the wire, rounded to milliseconds (a 10 ms frame is the finest
#: thing the model hears).
TIME_DECIMALS = 3
#: Turns are decided on this grid, seconds.
FRAME = 0.02
#: A window's say at an instant falls linearly from its centre to this share at its
#: edges: its centre is what it heard best, its edges may be another voice's.
EDGE_WEIGHT = 0.05

Embeddings = npt.NDArray[np.float32]


@dataclass(frozen=True)
class VoicePrints:
    """What one recording, or one part of a split one, contributes to its speakers."""

    #: ``(start, end)`` of each window, seconds in the whole recording.
    windows: list[tuple[float, float]]
    #: One L2-normalised embedding per window, ``(len(windows), dim)`` float32.
    embeddings: Embeddings

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.windows):
            raise ValueError(
                f"{len(self.windows)} windows need as many rows of embeddings, "
                f"not shape {self.embeddings.shape}"
            )

    def to_wire(self) -> VoicePrintsWire:
        """For part results on the broker and on disk: float16, base64."""
        rows = np.ascontiguousarray(self.embeddings, dtype="<f2")
        return VoicePrintsWire(
            windows=[(round(a, TIME_DECIMALS), round(b, TIME_DECIMALS)) for a, b in self.windows],
            dim=rows.shape[1],
            embeddings=base64.b64encode(rows.tobytes()).decode("ascii"),
        )

    @classmethod
    def from_wire(cls, wire: VoicePrintsWire) -> VoicePrints:
        """Back from the wire (the sizes were checked when it was decoded)."""
        raw = base64.b64decode(wire.embeddings, validate=True)
        rows = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        return cls(list(wire.windows), rows.reshape(len(wire.windows), wire.dim))


def speech_stretches(audio: Samples) -> list[tuple[float, float]]:
    """Where someone speaks in ``audio``, seconds (Silero VAD, read 30 s at a time)."""
    # Imported here: the gateway and the tools import this package without the model stack.
    from faster_whisper.vad import VadOptions

    options = VadOptions(min_silence_duration_ms=VAD_MIN_SILENCE_MS, speech_pad_ms=VAD_PAD_MS)
    length = audio.samples / SAMPLE_RATE
    return [
        (start / SAMPLE_RATE, min(end / SAMPLE_RATE, length))
        for start, end in speech_timestamps(audio, options)
    ]


def plan(stretches: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Windows over each stretch, less a window that the stretch's last one all but repeats.

    The last window of a stretch is aligned to its end; when it starts less than
    ``LEAST_SHIFT`` after the one before, that one goes (the hop there stays under
    a window's length): three voices taking turns, 30 windows instead of 34, the
    same labels.
    """
    windows: list[tuple[float, float]] = []
    for stretch in stretches:
        planned = plan_windows([stretch], WINDOW, STEP)
        if len(planned) >= 3 and planned[-1][0] - planned[-2][0] < LEAST_SHIFT:
            del planned[-2]
        windows += planned
    return windows


class Diarizer:
    """Voice prints of transcribed audio, and speaker labels from the prints of every part."""

    def __init__(self, embedder: SpeakerEmbedder) -> None:
        self.embedder = embedder

    def voiceprints(
        self, audio: Samples, segments: Sequence[Segment], offset: float = 0.0
    ) -> VoicePrints:
        """Embeddings of windows over the speech in ``audio`` (blocking: runs on the CPU).

        ``offset`` (where ``audio`` starts in the whole recording) is added to the
        windows. The audio is read a few windows at a time, never whole. Without
        ``segments`` there is nothing to label, and nothing is embedded.
        """
        windows = plan(speech_stretches(audio)) if segments else []
        embeddings = np.empty((len(windows), self.embedder.dim), dtype=np.float32)
        for first, last in _reads(windows, MAX_READ_S):
            embeddings[first:last] = self._embed(audio, windows[first:last])
        return VoicePrints([(a + offset, b + offset) for a, b in windows], embeddings)

    def _embed(self, audio: Samples, windows: Sequence[tuple[float, float]]) -> Embeddings:
        """Embeddings of windows that lie close together, from one read of their audio."""
        begin = round(windows[0][0] * SAMPLE_RATE)
        block = audio.read(begin, round(max(end for _, end in windows) * SAMPLE_RATE))
        shift = begin / SAMPLE_RATE
        return self.embedder.embed(block, [(a - shift, b - shift) for a, b in windows])

    def label(
        self, segments: list[Segment], prints: Sequence[VoicePrints], options: JobOptions
    ) -> tuple[list[Segment], list[SpeakerTurn]]:
        """Segments with speakers (cut at changes) and the turns, from every part's prints.

        ``segments`` are in whole-recording time; ``prints`` may come in any order.
        """
        windows, embeddings = _joined(prints)
        labels = cluster_speakers(
            embeddings,
            num_speakers=options.num_speakers,
            min_speakers=options.min_speakers,
            max_speakers=options.max_speakers,
            windows=windows,
        )
        return assign_speakers(segments, speaker_turns(windows, embeddings, labels))


def speaker_turns(
    windows: Sequence[tuple[float, float]], embeddings: Embeddings, labels: npt.NDArray[np.integer]
) -> list[SpeakerTurn]:
    """Who speaks when: each instant to the speaker its windows sound most like.

    Every window says how like each speaker it sounds (cosine with the speaker's
    mean embedding), loudest at its centre. Where windows of two speakers overlap,
    the boundary falls where their say balances, not halfway between their
    centres: a window that sounds only a little like its speaker (it heard the
    other one too) gives way early. ``windows`` are in time order; pauses between
    them stay gaps.
    """
    if not len(windows):
        return []
    likeness = embeddings.astype(np.float64) @ _centroids(embeddings, labels).T
    turns: list[SpeakerTurn] = []
    for first, last in _regions(windows):
        turns += _region_turns(windows[first:last], likeness[first:last])
    return turns


def _centroids(embeddings: Embeddings, labels: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """Each speaker's mean embedding, unit length."""
    sums = np.zeros((int(labels.max()) + 1, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    norms: npt.NDArray[np.float64] = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.maximum(norms, 1e-12)


def _regions(windows: Sequence[tuple[float, float]]) -> Iterator[tuple[int, int]]:
    """Runs ``[first, last)`` of windows that overlap or touch: unbroken speech."""
    first, reach = 0, windows[0][1]
    for index in range(1, len(windows)):
        if windows[index][0] > reach:
            yield first, index
            first = index
        reach = max(reach, windows[index][1])
    yield first, len(windows)


def _region_turns(
    windows: Sequence[tuple[float, float]], likeness: npt.NDArray[np.float64]
) -> list[SpeakerTurn]:
    """One region's turns, decided a frame at a time."""
    start, stop = windows[0][0], max(end for _, end in windows)
    frames = max(1, math.ceil((stop - start) / FRAME - 1e-9))
    centres = start + (np.arange(frames) + 0.5) * FRAME
    say = np.zeros((frames, likeness.shape[1]))
    for (a, b), like in zip(windows, likeness, strict=True):
        lo, hi = np.searchsorted(centres, [a, b])
        nearness = 1.0 - np.abs(centres[lo:hi] - (a + b) / 2) / ((b - a) / 2)
        say[lo:hi] += np.maximum(nearness, EDGE_WEIGHT)[:, None] * like
    best = np.argmax(say, axis=1)
    changes = np.flatnonzero(np.diff(best)) + 1
    bounds = [0, *changes.tolist(), frames]
    return [
        SpeakerTurn(
            start=round(start + i * FRAME, TIME_DECIMALS),
            end=round(min(start + j * FRAME, stop), TIME_DECIMALS),
            speaker=speaker_name(int(best[i])),
        )
        for i, j in itertools.pairwise(bounds)
    ]


def _reads(windows: Sequence[tuple[float, float]], longest: float) -> Iterator[tuple[int, int]]:
    """Runs ``[first, last)`` of windows (in time order) that fit in one read of ``longest`` s."""
    first = 0
    while first < len(windows):
        last = first + 1
        while last < len(windows) and windows[last][1] - windows[first][0] <= longest:
            last += 1
        yield first, last
        first = last


def _joined(prints: Sequence[VoicePrints]) -> tuple[list[tuple[float, float]], Embeddings]:
    """Every part's windows and embeddings in one time order, whatever order the parts came in."""
    windows = [w for p in prints for w in p.windows]
    dims = {p.embeddings.shape[1] for p in prints if len(p.windows)}
    if len(dims) > 1:
        raise ValueError(f"voice prints of different models ({sorted(dims)} dimensions)")
    if not windows:
        return [], np.zeros((0, dims.pop() if dims else 1), dtype=np.float32)
    embeddings = np.concatenate([p.embeddings for p in prints if len(p.windows)])
    order = sorted(range(len(windows)), key=lambda i: windows[i])
    return [windows[i] for i in order], embeddings[order]
