"""Baseline: direct in-process faster-whisper, sequential, on the given clips (run as a script).

Prints one JSON object: load time, per-clip and total transcription seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from faster_whisper import WhisperModel

from stt_daemon.models import resolve


def vm_hwm_mb() -> float:
    """Our own peak RSS, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Load the model with faster-whisper's defaults, warm up once, time the clips in order."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--nice", type=int, default=0, help="run this many nice levels down")
    parser.add_argument("clips", nargs="+", type=Path)
    args = parser.parse_args()
    # The daemon's transcription threads run niced (STT_COMPUTE_NICE): at equal priority
    # the comparison stays fair when other work shares the machine.
    os.nice(args.nice)
    started = time.monotonic()
    model = WhisperModel(
        str(resolve(args.model).path), device="cpu", compute_type=args.compute_type
    )
    load_s = time.monotonic() - started
    # Warm-up (not timed), as the daemon's first job is warm-up too in the benchmark.
    list(model.transcribe(str(args.clips[0]), beam_size=args.beam_size)[0])
    per_clip = []
    started = time.monotonic()
    for clip in args.clips:
        t0 = time.monotonic()
        segments, _info = model.transcribe(str(clip), beam_size=args.beam_size)
        list(segments)  # the work happens while the generator is iterated
        per_clip.append(time.monotonic() - t0)
    total = time.monotonic() - started
    print(
        json.dumps(
            {"load_s": load_s, "total_s": total, "per_clip_s": per_clip, "vm_hwm_mb": vm_hwm_mb()}
        )
    )


if __name__ == "__main__":
    main()
