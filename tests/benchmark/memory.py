"""Daemon memory with long recordings in flight, against direct faster-whisper on the same audio.

One daemon (tiny.en, ``STT_PREFETCH=3``) takes three long recordings at once, each
kept whole (``split=false``): an hour of 16 kHz mono silence, an hour of 48 kHz
stereo silence, and speech (jfk.flac repeated by sox). Its peak resident set is
compared with faster-whisper transcribing the speech, and the hour of silence,
one recording per process (``memory_direct.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from common import Context, Row, finals, vm_hwm_mb

from stack import JFK, REPO, Gateway, Proc

HERE = Path(__file__).resolve().parent
JOBS = 3
SILENCE_S = 3600
TARGET_MIB = 600


def silence(path: Path, rate: int, channels: int, seconds: int) -> Path:
    """Digital silence as FLAC (an hour is about 200 KB: a small upload)."""
    argv = ["sox", "-n", "-r", str(rate), "-c", str(channels), str(path), "trim", "0", str(seconds)]
    subprocess.run(argv, check=True, timeout=300)
    return path


def speech(path: Path, seconds: int) -> Path:
    """jfk.flac (11 s) end to end until ``seconds``, as one FLAC."""
    copies = -(-seconds // 11)
    subprocess.run(["sox", *[str(JFK)] * copies, str(path)], check=True, timeout=300)
    return path


def rss_mib(pid: int) -> float:
    """A process's resident set now (``VmRSS``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def direct(recording: Path) -> dict[str, Any]:
    """faster-whisper on one recording in a process of its own (memory_direct.py)."""
    out = subprocess.run(
        [sys.executable, str(HERE / "memory_direct.py"), str(recording)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=1800,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def _submit(gw: Gateway, path: Path) -> str:
    """POST one recording, kept whole (``split=false``); its job id."""
    async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
        response = await client.post(
            "/v1/jobs", files={"file": (path.name, path.read_bytes())}, data={"split": "false"}
        )
    if response.status_code != 202:
        raise RuntimeError(f"submit refused: {response.status_code} {response.text[:200]}")
    return str(response.json()["id"])


async def _in_flight(ctx: Context, recordings: list[Path]) -> dict[str, Any]:
    """One daemon takes the recordings at once; its resident set, sampled until they end."""
    stack = ctx.stack("memory-long")
    work = ctx.work_dir / "memory-long-work"
    work.mkdir(exist_ok=True)
    gw = await stack.gateway()
    daemon: Proc = await stack.daemon(
        STT_PREFETCH=str(JOBS),
        # Admitted: an hour of silence is far quicker than the 0.5 s a second assumed.
        STT_ASSUMED_RTF="0.05",
        STT_WORK_DIR=str(work),
    )
    idle = rss_mib(daemon.pid)
    timeline: list[tuple[float, float]] = []
    async with finals(ctx.amqp_url, stack.names) as tap:
        started = time.monotonic()
        ids = [await _submit(gw, path) for path in recordings]
        waiting = asyncio.ensure_future(tap.wait(ids, timeout=1800))
        while not waiting.done():
            timeline.append((round(time.monotonic() - started, 1), round(rss_mib(daemon.pid))))
            await asyncio.wait([waiting], timeout=0.5)
        await waiting
        if failed := tap.failed(ids):
            raise RuntimeError(f"{len(failed)} long jobs did not succeed")
        elapsed = max(tap.arrived[j][1] for j in ids) - started
    peak = vm_hwm_mb(daemon.pid)
    await daemon.stop()  # its log is complete now
    done = [line for line in daemon.log_lines() if line.get("event") == "job.done"]
    return {
        "idle_rss_mib": round(idle, 1),
        "peak_rss_mib": round(peak, 1),
        "elapsed_s": round(elapsed, 1),
        "jobs": [
            {key: line.get(key) for key in ("audio_s", "decode_s", "transcribe_s", "total_s")}
            for line in done
        ],
        "rss_timeline_mib": timeline,
    }


async def long_recordings(ctx: Context) -> list[Row]:
    """Peak RSS of a daemon with three long jobs in flight, and of direct faster-whisper."""
    # Speech beyond 300 s, where features are computed window by window (features.py);
    # tiny.en takes it at about 4x real time here on one core.
    speech_s = 360 if ctx.quick else 600
    mono = silence(ctx.work_dir / "silence-1h-16k-mono.flac", 16000, 1, SILENCE_S)
    stereo = silence(ctx.work_dir / "silence-1h-48k-stereo.flac", 48000, 2, SILENCE_S)
    talk = speech(ctx.work_dir / f"speech-{speech_s // 60}min.flac", speech_s)
    # The baselines first, side by side: one core each, and memory is what is compared.
    direct_talk, direct_silence = await asyncio.gather(
        asyncio.to_thread(direct, talk), asyncio.to_thread(direct, mono)
    )
    ours = await _in_flight(ctx, [mono, stereo, talk])
    peak, idle = ours["peak_rss_mib"], ours["idle_rss_mib"]
    per_job = (peak - idle) / JOBS
    talk_peak = direct_talk["vm_hwm_mib"]
    talk_job = talk_peak - direct_talk["model_loaded_rss_mib"]
    silence_peak = direct_silence["vm_hwm_mib"]
    minutes = f"{speech_s // 60}-min speech"
    ctx.details["memory_long"] = {
        "recordings": {
            "mono": f"{SILENCE_S} s of 16 kHz mono silence (sox), {mono.stat().st_size} bytes",
            "stereo": f"{SILENCE_S} s of 48 kHz stereo silence, {stereo.stat().st_size} bytes",
            "speech": f"jfk.flac repeated to {speech_s} s (sox), {talk.stat().st_size} bytes",
        },
        "daemon": {
            "model": "tiny.en",
            "prefetch": JOBS,
            "split": False,
            # glibc keeps a heap (arena) per thread unless this caps them: it moves the peak.
            "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
            **ours,
        },
        "direct": {"speech": direct_talk, "silence_1h_mono": direct_silence, "cpu_threads": 1},
    }
    return [
        Row(
            "memory",
            f"daemon peak RSS, {JOBS} jobs in flight: 1 h mono + 1 h stereo silence, {minutes}",
            peak,
            "MiB",
            talk_peak,
            f"direct faster-whisper, the {minutes} alone",
            peak / talk_peak,
            f"<= {TARGET_MIB} MiB",
            peak <= TARGET_MIB,
        ),
        Row(
            "memory",
            "daemon RSS per long job in flight (peak - idle) / 3",
            per_job,
            "MiB",
            talk_job,
            f"direct, {minutes}: peak - model loaded",
            per_job / talk_job,
        ),
        Row("memory", "daemon RSS idle (tiny.en loaded)", idle, "MiB"),
        Row(
            "memory",
            "direct faster-whisper peak RSS, 1 h silence",
            silence_peak,
            "MiB",
            peak,
            f"daemon, {JOBS} long jobs",
            silence_peak / peak,
        ),
    ]
