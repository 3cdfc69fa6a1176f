"""Scale-out: 1, 2, 4, 8 daemons with the stand-in engine (sleeps, no CPU), one job each at once."""

from __future__ import annotations

import asyncio
import time

from common import Context, Row, finals, submit_all

from stack import JFK, Gateway, Proc, Stack

COUNTS = (1, 2, 4, 8)


async def _round(ctx: Context, stack: Stack, gw: Gateway, jobs: int) -> float:
    """Submit ``jobs`` copies of jfk.flac; seconds until the last is final."""
    async with finals(ctx.amqp_url, stack.names) as tap:
        started = time.monotonic()
        ids = await submit_all(gw.url, [JFK] * jobs)
        await tap.wait(ids, timeout=600)
        if failed := tap.failed(ids):
            raise RuntimeError(f"{len(failed)} stand-in jobs did not succeed")
        return max(tap.arrived[j][1] for j in ids) - started


async def scaleout(ctx: Context) -> list[Row]:
    """Throughput with N daemons against one daemon, same jobs."""
    rtf = 0.05 if ctx.quick else 0.1
    jobs = 8 if ctx.quick else 32
    env = {"STT_ENGINE": "standin", "STT_STANDIN_RTF": str(rtf), "STT_PREFETCH": "1"}
    stack = ctx.stack("scaleout", STT_MAX_QUEUED="100000")
    gw = await stack.gateway()
    daemons: list[Proc] = []
    rates: dict[int, float] = {}
    for count in COUNTS:
        new = [await stack.daemon(wait=False, environ=env) for _ in range(count - len(daemons))]
        await asyncio.gather(*(d.wait_for_log("daemon.ready", timeout=120) for d in new))
        daemons += new
        await _round(ctx, stack, gw, count)  # warm-up round, not timed
        rates[count] = jobs / await _round(ctx, stack, gw, jobs)
    ctx.details["scaleout"] = {
        "jobs_per_round": jobs,
        "job": "jfk.flac (11 s)",
        "standin_rtf": rtf,
        "prefetch": 1,
        "jobs_per_s": rates,
    }
    rows = []
    for count in COUNTS:
        ratio = rates[count] / rates[1]
        target, met = ("", None) if count != 8 else (">= 7x", ratio >= 7)
        rows.append(
            Row(
                "scaleout",
                f"{count} stand-in daemon(s)",
                rates[count],
                "jobs/s",
                rates[1],
                "1 daemon",
                ratio,
                target,
                met,
            )
        )
    return rows
