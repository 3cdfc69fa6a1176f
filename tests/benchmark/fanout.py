"""Fan-out: a 10-minute recording on 1 and 4 stand-in daemons, split and whole."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from common import Context, Row, finals

from audiofiles import long_talk
from stack import Gateway, Proc, Stack

DAEMONS = 4


async def _one(ctx: Context, stack: Stack, gw: Gateway, talk: Path, split: bool) -> float:
    """Seconds from submitting the recording until its final event."""
    async with finals(ctx.amqp_url, stack.names) as tap:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
            response = await client.post(
                "/v1/jobs",
                files={"file": (talk.name, talk.read_bytes())},
                data={"split": str(split).lower()},
            )
        if response.status_code != 202:
            raise RuntimeError(f"submit refused: {response.status_code} {response.text[:200]}")
        job_id = response.json()["id"]
        await tap.wait([job_id], timeout=900)
        if tap.failed([job_id]):
            raise RuntimeError("the recording did not succeed")
        return tap.arrived[job_id][1] - started


def _parts(daemons: list[Proc]) -> int:
    """Parts of the last split, from the splitting daemon's log line."""
    lines = [line for d in daemons for line in d.log_lines() if line.get("event") == "job.split"]
    return int(lines[-1]["parts"]) if lines else 0


async def fanout(ctx: Context) -> list[Row]:
    """Time to a final result: whole on one daemon, split on one, split on four."""
    seconds = 600
    talk = long_talk(ctx.work_dir / "talk-10min.wav", seconds, ctx.work_dir)
    rtf = 0.02 if ctx.quick else 0.1
    env = {"STT_ENGINE": "standin", "STT_STANDIN_RTF": str(rtf), "STT_PREFETCH": "1"}
    stack = ctx.stack("fanout")
    gw = await stack.gateway()
    daemons = [await stack.daemon(environ=env)]
    whole = await _one(ctx, stack, gw, talk, split=False)
    one = await _one(ctx, stack, gw, talk, split=True)
    more = [await stack.daemon(wait=False, environ=env) for _ in range(DAEMONS - 1)]
    await asyncio.gather(*(d.wait_for_log("daemon.ready", timeout=120) for d in more))
    daemons += more
    four = await _one(ctx, stack, gw, talk, split=True)
    ctx.details["fanout"] = {
        "recording_s": seconds,
        "recording": "flite speech with jfk.flac and hotwords.mp3 between (tests/audiofiles.py)",
        "standin_rtf": rtf,
        "prefetch": 1,
        "parts": _parts(daemons),
        "seconds": {
            "whole_1_daemon": whole,
            "split_1_daemon": one,
            f"split_{DAEMONS}_daemons": four,
        },
    }
    label = f"{seconds // 60}-min recording"
    return [
        Row("fanout", f"{label}, whole, 1 stand-in daemon", whole, "s"),
        Row("fanout", f"{label}, split, 1 stand-in daemon", one, "s", whole, "whole", whole / one),
        Row(
            "fanout",
            f"{label}, split, {DAEMONS} stand-in daemons",
            four,
            "s",
            one,
            "split, 1 daemon",
            one / four,
            ">= 3x faster",
            one / four >= 3,
        ),
    ]
