"""Real speech by several people, with the truth of who spoke when, for speaker tests.

Nothing here is committed: the two-speaker recording comes from the ``pyannote.audio``
wheel on PyPI (``sample.wav`` and its ``sample.rttm``, used as test data only), fetched
once with pip into ``.cache/speaker-audio/`` (gitignored) and checked against a pinned
sha256. The three-voice recording is built from it and ``tests/data/jfk.flac``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stt_daemon.audio import decode

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "speaker-audio"
JFK = ROOT / "tests" / "data" / "jfk.flac"
RATE = 16000

PYANNOTE = "pyannote.audio==3.3.2"
PYANNOTE_WHEEL = "pyannote_audio-3.3.2-py2.py3-none-any.whl"
PYANNOTE_SHA256 = "23e0dcedda920cb2e154e146bcd9663289ee7942d0e012663dad76f2e571ebeb"
SAMPLE_MEMBERS = {
    "sample.wav": "pyannote/audio/sample/sample.wav",
    "sample.rttm": "pyannote/audio/sample/sample.rttm",
}
#: Bump when the three-voice recipe changes, so a stale cached copy is not used.
THREE_VOICES = "three-voices-v1"


class Turn(NamedTuple):
    """One stretch of one speaker, in seconds."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Recording:
    """A 16 kHz mono WAV file and the RTTM file that says who speaks when in it."""

    audio: Path
    rttm: Path

    @property
    def turns(self) -> list[Turn]:
        return read_rttm(self.rttm)

    def samples(self) -> np.ndarray:
        """The audio as float32 in [-1, 1]."""
        return decode(self.audio, max_seconds=600)

    @property
    def speakers(self) -> list[str]:
        """Speaker names in order of first appearance."""
        return list(dict.fromkeys(turn.speaker for turn in sorted(self.turns)))


# --- RTTM ----------------------------------------------------------------------


def parse_rttm(text: str) -> list[Turn]:
    """The SPEAKER lines of an RTTM document (NIST: type file channel start duration ...)."""
    turns: list[Turn] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#") or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"RTTM line {number}: expected at least 8 fields: {line!r}")
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise ValueError(f"RTTM line {number}: bad start or duration: {line!r}") from None
        if duration < 0:
            raise ValueError(f"RTTM line {number}: negative duration: {line!r}")
        turns.append(Turn(start, round(start + duration, 6), fields[7]))
    return turns


def read_rttm(path: Path) -> list[Turn]:
    return parse_rttm(path.read_text())


def format_rttm(turns: list[Turn], file_id: str) -> str:
    return "".join(
        f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in turns
    )


# --- (a) pyannote's two-speaker sample ------------------------------------------


def pyannote_sample() -> Recording:
    """pyannote.audio's 30 s two-speaker ``sample.wav`` and ``sample.rttm`` (fetched once)."""
    folder = CACHE / "pyannote-sample"
    recording = Recording(folder / "sample.wav", folder / "sample.rttm")
    if recording.audio.exists() and recording.rttm.exists():
        return recording
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        wheel = _download_pyannote(Path(scratch))
        with zipfile.ZipFile(wheel) as archive:
            for name, member in SAMPLE_MEMBERS.items():
                _write_atomically(folder / name, archive.read(member))
    return recording


def _download_pyannote(directory: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--quiet", "--disable-pip-version-check", PYANNOTE, "-d", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    wheel = directory / PYANNOTE_WHEEL
    if done.returncode != 0 or not wheel.exists():
        raise RuntimeError(f"could not download {PYANNOTE} for its sample: {done.stderr[-500:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != PYANNOTE_SHA256:
        raise RuntimeError(f"{wheel.name} has sha256 {digest}, expected {PYANNOTE_SHA256}")
    return wheel


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# --- (b) three people taking turns ------------------------------------------------

#: Pieces of pyannote's sample where one speaker talks alone (its RTTM, less the
#: overlaps), a few hundredths in from the turn edges so no neighbour bleeds in.
SOLO = {
    "speaker90": [(8.40, 9.87), (11.08, 14.44), (18.64, 21.44)],
    "speaker91": [(14.75, 17.87), (21.83, 27.80)],
}
#: jfk.flac cut at two of Kennedy's pauses (its level, in 0.1 s steps, is under
#: -35 dBFS at 2.2-3.1 s and 7.6-8.0 s): "And so my fellow Americans," / "ask not
#: what your country can do for you," / "ask what you can do for your country."
JFK_PIECES = [(0.25, 2.05), (3.25, 7.5), (8.15, 10.95)]
ORDER = [
    ("speaker90", 0),
    ("jfk", 0),
    ("speaker91", 0),
    ("speaker90", 1),
    ("jfk", 1),
    ("speaker91", 1),
    ("speaker90", 2),
    ("jfk", 2),
]
GAP = 0.4


def three_voices() -> Recording:
    """Three real people taking turns (pyannote's two speakers and JFK), with its RTTM."""
    recording = Recording(CACHE / f"{THREE_VOICES}.wav", CACHE / f"{THREE_VOICES}.rttm")
    if recording.audio.exists() and recording.rttm.exists():
        return recording
    sample = pyannote_sample().samples()
    jfk = decode(JFK, max_seconds=60)
    pieces = {name: [_cut(sample, *span) for span in spans] for name, spans in SOLO.items()}
    pieces["jfk"] = [_cut(jfk, *span) for span in JFK_PIECES]
    gap = np.zeros(round(GAP * RATE), dtype=np.float32)
    parts: list[np.ndarray] = [gap]
    turns: list[Turn] = []
    position = GAP
    for speaker, index in ORDER:
        piece = _level(pieces[speaker][index])
        turns.append(Turn(round(position, 3), round(position + piece.size / RATE, 3), speaker))
        parts += [piece, gap]
        position += (piece.size + gap.size) / RATE
    _write_wav(recording.audio, np.concatenate(parts))
    _write_atomically(recording.rttm, format_rttm(turns, THREE_VOICES).encode())
    return recording


def _cut(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    return samples[round(start * RATE) : round(end * RATE)]


def _level(piece: np.ndarray, rms: float = 0.05) -> np.ndarray:
    """Every voice at one loudness, so nothing can tell them apart by level alone."""
    current = float(np.sqrt(np.mean(piece.astype(np.float64) ** 2)))
    scaled = piece * (rms / max(current, 1e-6))
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.tobytes())
    os.replace(partial, path)
