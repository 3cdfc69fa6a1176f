"""Daemon memory does not grow with audio length (the attack: hours of silence in a small FLAC).

A 190 KB upload used to cost 3.2 GB of daemon memory: the whole recording was
decoded to float32 and faster-whisper's STFT held every frame of it at once. Now
the recording stays on disk and is read a window at a time, so three long jobs
in flight cost what three short ones do. This test fails if that regresses.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from audiofiles import repeated
from stack import JFK, Proc, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

#: The hardening issue's bound: tiny.en, STT_PREFETCH (3) jobs in flight, whatever their
#: length. Measured with the daemon's heap settings (heap.py: two glibc heaps, large blocks
#: mapped on their own): 481-527 MiB with two hour-long silences and ten minutes of speech
#: in flight. glibc's defaults took the same to 571-695 MiB, which this test would catch.
#: Python's own share is about 13 MiB a job (tracemalloc); the rest is the model, its
#: workers and the windows they decode.
PEAK_LIMIT_MIB = 600
MINUTES = 60
SPEECH_MINUTES = 10


def peak_rss_mib(proc: Proc) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def silence(path: Path, rate: int, channels: int, seconds: int) -> Path:
    subprocess.run(
        ["sox", "-n", "-r", str(rate), "-c", str(channels), str(path), "trim", "0", str(seconds)],
        check=True,
    )
    return path


async def test_three_long_jobs_in_flight_stay_under_the_bound(stack: Stack, tmp_path: Path) -> None:
    mono = silence(tmp_path / "mono.flac", 16000, 1, MINUTES * 60)
    stereo = silence(tmp_path / "stereo.flac", 48000, 2, MINUTES * 60)
    # Speech costs more than silence: the decoder runs and segments pile up.
    talk = repeated(JFK, SPEECH_MINUTES * 60 // 11, tmp_path / "speech.flac")
    assert mono.stat().st_size < 1_000_000  # a small upload...
    gw = await stack.gateway()
    work_dir = tmp_path / "work"
    daemon = await stack.daemon(
        STT_PREFETCH="3",
        STT_MAX_AUDIO_SECONDS=str(MINUTES * 60 + 1),
        STT_ASSUMED_RTF="0.05",  # admitted: an hour of silence is not refused as too long
        STT_WORK_DIR=str(work_dir),
    )
    jobs = [
        (await gw.submit(mono, split="false"))["id"],
        (await gw.submit(stereo, split="false", diarize="channels"))["id"],
        (await gw.submit(talk, split="false"))["id"],
    ]
    work_files: set[Path] = set()
    async with gw.client() as client:
        deadline = time.monotonic() + 540
        while True:
            work_files |= set(work_dir.glob("pcm-*"))
            states = [(await client.get(f"/v1/jobs/{job}")).json()["status"] for job in jobs]
            if all(state in ("succeeded", "failed") for state in states):
                break
            assert time.monotonic() < deadline, states
            await asyncio.sleep(0.5)
    assert states == ["succeeded"] * 3
    peak = peak_rss_mib(daemon)
    print(f"daemon peak RSS, two {MINUTES}-minute silences and speech in flight: {peak:.0f} MiB")
    assert peak <= PEAK_LIMIT_MIB, f"daemon peaked at {peak:.0f} MiB"
    # The decoded recordings were on disk (32 KB a second each, a file per channel)
    # and are gone now.
    assert len(work_files) == 1 + 2 + 1  # mono, stereo per channel, speech
    assert not list(work_dir.iterdir())
