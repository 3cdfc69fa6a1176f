"""Closed-loop HTTP load from wrk (C, epoll), so the client is not what a gateway figure measures.

On a small machine the Python client (httpx) tops out near 500 trivial requests a
second; wrk answers tens of thousands with one thread, leaving the cores to the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx

WRK_DIR = Path(__file__).resolve().parent / "wrk"
#: One wrk thread: on two cores a second one only competes with the server for CPU.
WRK_THREADS = 1


def wrk_path() -> str | None:
    """The wrk binary, or None when it is not installed or ``STT_BENCH_LOADGEN=httpx``
    asks for the Python client (the caller then falls back to httpx)."""
    if os.environ.get("STT_BENCH_LOADGEN") == "httpx":
        return None
    return shutil.which("wrk")


@dataclass
class WrkResult:
    """Totals of one wrk run."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """Requests answered per second."""
        return self.requests / self.seconds


def multipart_body(filename: str, data: bytes) -> tuple[bytes, str]:
    """The body and boundary httpx would send for ``files={"file": (filename, data)}``."""
    request = httpx.Request("POST", "http://x/", files={"file": (filename, data)})
    body = request.read()
    boundary = request.headers["content-type"].split("boundary=", 1)[1]
    return body, boundary


async def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    work_dir: Path,
    script: str | None = None,
    args: tuple[str, ...] = (),
) -> WrkResult:
    """Run wrk against ``url`` for ``seconds``; raises if any request failed."""
    binary = wrk_path()
    if binary is None:
        raise RuntimeError("wrk is not installed")
    # Every script ends with report.lua's done(), which prints the totals as JSON.
    lua = work_dir / f"wrk-{script or 'plain'}.lua"
    body = (WRK_DIR / script).read_text() if script else ""
    lua.write_text(body + "\n" + (WRK_DIR / "report.lua").read_text())
    argv = [binary, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "-s", str(lua)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        url,
        "--",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await proc.communicate())[0].decode(errors="replace")
    line = next((x for x in out.splitlines() if x.startswith("WRK_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out[-2000:]}")
    totals = json.loads(line.removeprefix("WRK_RESULT "))
    errors = {k: v for k, v in totals.items() if k.endswith(("_errors", "timeouts")) and v}
    if errors:
        raise RuntimeError(f"wrk {url}: {errors} of {totals['requests']} requests")
    return WrkResult(
        requests=totals["requests"],
        seconds=totals["duration_us"] / 1e6,
        p50_ms=totals["p50_us"] / 1000,
        p99_ms=totals["p99_us"] / 1000,
    )
