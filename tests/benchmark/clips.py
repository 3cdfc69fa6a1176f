"""The recordings the benchmark uses: the team's real ones and espeak-ng speech of set lengths."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from stack import HOTWORDS, JFK

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A benchmark measures what the system does, not what we hope it does.",
    "Every job is published to a durable queue and acknowledged after its result.",
    "Speech recognition turns recorded voices into written words.",
    "Two cores share the work of the broker, the gateway and the daemons.",
)


def speech(text: str, out: Path) -> Path:
    """Synthesise ``text`` with espeak-ng (a WAV at 22.05 kHz)."""
    subprocess.run(["espeak-ng", "-w", str(out), text], check=True, timeout=120)
    return out


def generated(work_dir: Path, sentences: int, name: str) -> Path:
    """Generated speech of about ``sentences`` x 4 s."""
    text = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(sentences))
    return speech(text, work_dir / f"{name}.wav")


def mixed_set(work_dir: Path) -> list[Path]:
    """The real recordings plus generated speech of several lengths (about 75 s in all)."""
    return [
        JFK,
        HOTWORDS,
        generated(work_dir, 1, "speech-short"),
        generated(work_dir, 4, "speech-medium"),
        generated(work_dir, 10, "speech-long"),
    ]


def one_second(work_dir: Path) -> Path:
    """A spoken clip of about one second."""
    return speech("Hello world.", work_dir / "one-second.wav")


def big_wav(out: Path, megabytes: int) -> Path:
    """A 16 kHz 16-bit mono WAV of about ``megabytes`` MiB of quiet noise, written in chunks."""
    rng = np.random.default_rng(0)
    chunk = 16000 * 60  # one minute
    left = megabytes * 1024 * 1024 // 2
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        while left > 0:
            n = min(chunk, left)
            wav.writeframes(rng.integers(-300, 300, n, dtype=np.int16).tobytes())
            left -= n
    return out
