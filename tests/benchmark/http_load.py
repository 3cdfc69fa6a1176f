"""Gateway sections: submissions and polls per second, latency at a fixed rate, upload memory."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import time
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from clips import big_wav
from common import Context, Row, median, peak_process_hwm_mb, percentile
from loadgen import WRK_THREADS, multipart_body, run_wrk, wrk_path

from stack import Gateway

Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
CONCURRENCY = 32
#: The gateway as it should be deployed on this machine: one worker process per core.
WORKERS = os.cpu_count() or 1
LIMITS = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)


def tiny_wav() -> bytes:
    """0.1 s of silence: a small upload."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 1600)
    return buf.getvalue()


async def closed_loop(client: httpx.AsyncClient, request: Request, n: int) -> float:
    """``n`` requests from CONCURRENCY workers as fast as answered; requests per second."""
    counter = itertools.count()

    async def worker() -> None:
        while next(counter) < n:
            response = await request(client)
            if response.status_code >= 400:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.monotonic() - started)


async def fixed_rate(
    client: httpx.AsyncClient, request: Request, rate: float, seconds: float
) -> list[float]:
    """Open loop: one request every 1/rate s whatever the answers; latencies in ms.

    Latency counts from when the request was due, so a stalled generator shows up too.
    """
    latencies: list[float] = []
    tasks = []

    async def one(due: float) -> None:
        response = await request(client)
        if response.status_code >= 400:
            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
        latencies.append((time.monotonic() - due) * 1000)

    started = time.monotonic()
    for i in range(int(rate * seconds)):
        due = started + i / rate
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return latencies


async def health(client: httpx.AsyncClient) -> httpx.Response:
    """The trivial request: what the generator and server do with no work behind it."""
    return await client.get("/healthz")


async def post_tiny(client: httpx.AsyncClient, body: bytes, ids: list[str]) -> httpx.Response:
    """Submit one small upload; keep the id of an accepted job."""
    response = await client.post("/v1/jobs", files={"file": ("a.wav", body)})
    if response.status_code == 202:
        ids.append(response.json()["id"])
    return response


async def rates_httpx(gw: Gateway, body: bytes, quick: bool) -> dict[str, Any]:
    """Healthz, submissions and polls per second from httpx in this process (no wrk)."""
    ids: list[str] = []
    polled = itertools.count()

    async def post(client: httpx.AsyncClient) -> httpx.Response:
        return await post_tiny(client, body, ids)

    async def get(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(f"/v1/jobs/{ids[next(polled) % len(ids)]}")

    n = 300 if quick else 2000
    async with gw.client(limits=LIMITS) as client:
        await closed_loop(client, health, 50)  # warm connections
        healthz = await closed_loop(client, health, n)
        submits = await closed_loop(client, post, n)
        polls = await closed_loop(client, get, n * 2)
    return {"generator": "httpx", "healthz": healthz, "submits": submits, "polls": polls}


async def rates_wrk(gw: Gateway, body: bytes, quick: bool, work_dir: Path) -> dict[str, Any]:
    """Healthz, submissions and polls per second from wrk (time-boxed runs)."""
    seconds = 3 if quick else 10
    multipart, boundary = multipart_body("a.wav", body)
    body_file, ids_prefix = work_dir / "wrk-body.bin", work_dir / "wrk-ids"
    body_file.write_bytes(multipart)
    await run_wrk(f"{gw.url}/healthz", 1, CONCURRENCY, work_dir)  # warm up
    healthz = await run_wrk(f"{gw.url}/healthz", seconds, CONCURRENCY, work_dir)
    submit_args = (str(body_file), boundary, str(ids_prefix))
    submits = await run_wrk(
        f"{gw.url}/v1/jobs", seconds, CONCURRENCY, work_dir, "submit.lua", submit_args
    )
    ids_file = work_dir / "wrk-ids.all"
    ids_file.write_text("".join(f.read_text() for f in work_dir.glob("wrk-ids.[0-9]*")))
    polls = await run_wrk(gw.url, seconds, CONCURRENCY, work_dir, "poll.lua", (str(ids_file),))
    closed = {"healthz": healthz, "submits": submits, "polls": polls}
    return {
        "generator": "wrk",
        "wrk_threads": WRK_THREADS,
        "seconds_per_run": seconds,
        **{name: result.rate for name, result in closed.items()},
        "closed_loop_latency_ms": {
            name: {"p50": r.p50_ms, "p99": r.p99_ms} for name, r in closed.items()
        },
    }


async def gateway_load(ctx: Context) -> list[Row]:
    """Submissions/s and polls/s (no daemons), against /healthz/s from the same generator."""
    stack = ctx.stack("gateway", STT_MAX_QUEUED="1000000")
    gw = await stack.gateway(STT_LOG_LEVEL="WARNING", STT_GATEWAY_WORKERS=str(WORKERS))
    body = tiny_wav()
    if wrk_path() is not None:
        rates = await rates_wrk(gw, body, ctx.quick, ctx.work_dir)
    else:
        rates = await rates_httpx(gw, body, ctx.quick)
    healthz, submits, polls = rates["healthz"], rates["submits"], rates["polls"]
    ids: list[str] = []

    async def post(client: httpx.AsyncClient) -> httpx.Response:
        return await post_tiny(client, body, ids)

    # wrk cannot keep a fixed rate (wrk2 is not packaged); 200/s is within httpx's reach.
    async with gw.client(limits=LIMITS) as client:
        await closed_loop(client, health, 50)  # warm connections
        latencies = await fixed_rate(client, post, 200, 3 if ctx.quick else 10)
    p50, p99 = median(latencies), percentile(latencies, 99)
    ctx.details["gateway"] = {
        "concurrency": CONCURRENCY,
        "gateway_workers": WORKERS,
        "healthz_per_s": healthz,
        "load": rates,
        "latency_ms_at_200_per_s": {"p50": p50, "p99": p99, "requests": len(latencies)},
    }
    base = f"GET /healthz/s, same generator ({rates['generator']})"
    return [
        Row(
            "gateway",
            "job submissions (small upload, confirmed)",
            submits,
            "/s",
            healthz,
            base,
            submits / healthz,
            ">= 1000/s",
            submits >= 1000,
        ),
        Row(
            "gateway",
            "status polls",
            polls,
            "/s",
            healthz,
            base,
            polls / healthz,
            ">= 3000/s",
            polls >= 3000,
        ),
        Row("gateway", "submit latency p50 at 200/s", p50, "ms"),
        Row("gateway", "submit latency p99 at 200/s", p99, "ms", target="< 50 ms", met=p99 < 50),
    ]


async def gateway_memory(ctx: Context) -> list[Row]:
    """Peak RSS of a fresh gateway while it receives 100 MB uploads (two at a time).

    With several workers, the figure is the largest of theirs: the limit is per process.
    """
    stack = ctx.stack("uploads")
    gw = await stack.gateway(STT_MAX_UPLOAD_MB="200", STT_GATEWAY_WORKERS=str(WORKERS))
    idle = peak_process_hwm_mb(gw.proc.pid)
    path = await asyncio.to_thread(big_wav, ctx.work_dir / "big.wav", 100)
    uploads = 2 if ctx.quick else 4

    async def upload(client: httpx.AsyncClient) -> None:
        with path.open("rb") as f:  # httpx streams a file object: the client holds no copy
            response = await client.post("/v1/jobs", files={"file": (path.name, f)})
        if response.status_code != 202:
            raise RuntimeError(f"upload refused: {response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(base_url=gw.url, timeout=600) as client:
        for _ in range(uploads // 2):
            await asyncio.gather(upload(client), upload(client))
    peak = peak_process_hwm_mb(gw.proc.pid)
    path.unlink()
    return [
        Row(
            "memory",
            f"gateway peak RSS, {uploads} x 100 MB uploads",
            peak,
            "MiB",
            idle,
            "same gateway idle",
            peak / idle,
            "<= 150 MiB",
            peak <= 150,
        ),
    ]
