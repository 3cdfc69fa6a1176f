"""One call from a transcript and its audio to speakers: voice prints, then labels.

A daemon that transcribed a recording (or one part of a split one) calls
:meth:`Diarizer.voiceprints`: windows over the speech its words cover, each embedded
by CAM++. Whoever holds every part's prints calls :meth:`Diarizer.label` once: all
windows are clustered together, so a person keeps one label across parts, and the
turns give each word and segment its speaker.

Where the speech is comes from Whisper's words, merged across short pauses: the
same stretches the transcript has words for, at no cost beyond the transcription.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stt_daemon.audio import SAMPLE_RATE, Samples
from stt_daemon.protocol import JobOptions, Segment, SpeakerTurn, VoicePrintsWire
from stt_daemon.speakers.cluster import cluster_speakers
from stt_daemon.speakers.embedder import SpeakerEmbedder, plan_windows
from stt_daemon.speakers.turns import assign_speakers, windows_to_turns

#: Words less than this apart are one stretch of speech: Whisper's word times leave
#: small gaps between words of one breath.
WORD_GAP = 0.5
#: Window length and hop over each stretch of speech, seconds.
WINDOW = 1.5
STEP = 0.75
#: The most audio read at once: the windows embedded together lie within this
#: many seconds, so memory does not follow the recording's length.
MAX_READ_S = 30.0
#: Window times on the wire, rounded to milliseconds (a 10 ms frame is the finest
#: thing the model hears).
TIME_DECIMALS = 3

Embeddings = npt.NDArray[np.float32]


@dataclass(frozen=True)
class VoicePrints:
    """What one recording, or one part of a split one, contributes to its speakers."""

    #: ``(start, end)`` of each window, seconds in the whole recording.
    windows: list[tuple[float, float]]
    #: One L2-normalised embedding per window, ``(len(windows), dim)`` float32.
    embeddings: Embeddings

    def to_wire(self) -> VoicePrintsWire:
        """For part results on the broker and on disk: float16, base64."""
        rows = np.asarray(self.embeddings, dtype="<f2").reshape(len(self.windows), -1)
        return VoicePrintsWire(
            windows=[(round(a, TIME_DECIMALS), round(b, TIME_DECIMALS)) for a, b in self.windows],
            dim=int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0,
            embeddings=base64.b64encode(rows.tobytes()).decode("ascii"),
        )

    @classmethod
    def from_wire(cls, wire: VoicePrintsWire) -> VoicePrints:
        """Back from the wire (the sizes were checked when it was decoded)."""
        raw = base64.b64decode(wire.embeddings, validate=True)
        rows = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        return cls(list(wire.windows), rows.reshape(len(wire.windows), wire.dim))


def speech_from_words(
    segments: Sequence[Segment], gap: float = WORD_GAP
) -> list[tuple[float, float]]:
    """Stretches of speech: the words' times, merged where less than ``gap`` apart.

    A segment without word times counts as speech from its start to its end.
    """
    spans = sorted(
        span
        for segment in segments
        for span in (
            [(w.start, w.end) for w in segment.words]
            if segment.words
            else [(segment.start, segment.end)]
        )
    )
    stretches: list[tuple[float, float]] = []
    for start, end in spans:
        if end <= start:
            continue
        if stretches and start - stretches[-1][1] < gap:
            stretches[-1] = (stretches[-1][0], max(stretches[-1][1], end))
        else:
            stretches.append((start, end))
    return stretches


class Diarizer:
    """Voice prints of transcribed audio, and speaker labels from the prints of every part."""

    def __init__(self, embedder: SpeakerEmbedder) -> None:
        self.embedder = embedder

    def voiceprints(
        self, audio: Samples, segments: Sequence[Segment], offset: float = 0.0
    ) -> VoicePrints:
        """Embeddings of windows over the speech of ``segments`` (times relative to ``audio``).

        ``offset`` (where ``audio`` starts in the whole recording) is added to the
        windows. The audio is read a few windows at a time, never whole.
        """
        length = audio.samples / SAMPLE_RATE
        stretches = [(max(0.0, a), min(length, b)) for a, b in speech_from_words(segments)]
        windows = plan_windows([(a, b) for a, b in stretches if b > a], WINDOW, STEP)
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
        )
        return assign_speakers(segments, windows_to_turns(windows, labels))


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
