"""Baseline of the memory section: one recording through faster-whisper in one process.

Run as a script (``memory_direct.py RECORDING``), so that nothing of ours shares the
process: faster-whisper decodes the file itself and computes the features of all of
it, as its README shows. Prints one JSON object: the resident set after loading the
model, the peak (``VmHWM``), seconds and segments.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from faster_whisper import WhisperModel

from stt_daemon.models import resolve


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Load tiny.en as the daemon does (int8, one CPU thread), transcribe, report memory."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("recording", type=Path)
    args = parser.parse_args()
    model = WhisperModel(
        str(resolve(args.model).path), device="cpu", compute_type="int8", cpu_threads=1
    )
    loaded_mib = status_mib("VmRSS")
    started = time.monotonic()
    segments, info = model.transcribe(str(args.recording), beam_size=args.beam_size)
    count = sum(1 for _ in segments)  # the work happens while the generator is iterated
    print(
        json.dumps(
            {
                "model_loaded_rss_mib": loaded_mib,
                "vm_hwm_mib": status_mib("VmHWM"),
                "seconds": time.monotonic() - started,
                "audio_s": info.duration,
                "segments": count,
            }
        )
    )


if __name__ == "__main__":
    main()
