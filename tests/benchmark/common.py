"""What every benchmark section shares: result rows, the machine, clips, final-event waiting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aio_pika
import httpx

from stack import Stack
from stt_daemon.audio import SAMPLE_RATE, decode
from stt_daemon.common.protocol import decode_event
from stt_daemon.common.topology import Names

FINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")


@dataclass
class Row:
    """One figure: an absolute value, the baseline it is compared with, and its target."""

    section: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    #: value / baseline (or baseline / value where lower is better: see ``lower_is_better``).
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class Context:
    """One benchmark run: its broker, scratch directory, sizes and what sections leave behind."""

    amqp_url: str
    work_dir: Path
    quick: bool
    clips: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    stacks: list[Stack] = field(default_factory=list)

    def stack(self, name: str, **env: str) -> Stack:
        """A fresh deployment (own namespace and data directory); stopped at the end of the run."""
        data = self.work_dir / name
        data.mkdir(parents=True, exist_ok=True)
        # Metrics port 0: several daemons on one host would fight over 9400.
        stack = Stack(amqp_url=self.amqp_url, data_dir=data, env={"STT_METRICS_PORT": "0", **env})
        self.stacks.append(stack)
        return stack


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; enough for benchmark tables."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """Median, NaN for none."""
    return statistics.median(values) if values else float("nan")


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a process (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def peak_process_hwm_mb(pid: int) -> float:
    """The largest ``VmHWM`` of a process and its children (a gateway's workers), in MiB."""
    pids = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(child) for child in children.read_text().split()]
    peaks = []
    for each in pids:
        with contextlib.suppress(OSError, RuntimeError):  # a child that exited meanwhile
            peaks.append(vm_hwm_mb(each))
    return max(peaks)


def audio_seconds(path: Path) -> float:
    """Length of a recording, decoded as the daemon decodes it."""
    return float(decode(path, max_seconds=3 * 3600).shape[0] / SAMPLE_RATE)


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, memory, Python and the packages that matter."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    packages = {}
    for name in ("faster-whisper", "ctranslate2", "aio-pika", "fastapi", "uvicorn", "httpx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    rabbit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rabbit = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "rabbitmq": rabbit,
    }


class Finals:
    """A downstream consumer of the results exchange: when each job's final event arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, tuple[str, float]] = {}
        self._changed = asyncio.Event()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            event = decode_event(message.body)
            self.arrived.setdefault(event.job_id, (str(event.event), time.monotonic()))
            self._changed.set()

    async def wait(self, job_ids: Sequence[str], timeout: float) -> None:
        """Until every job has a final event; raises on timeout."""
        deadline = time.monotonic() + timeout
        while not all(job_id in self.arrived for job_id in job_ids):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [j for j in job_ids if j not in self.arrived]
                raise TimeoutError(f"{len(missing)} of {len(job_ids)} jobs not final")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))

    def failed(self, job_ids: Sequence[str]) -> list[str]:
        """Jobs whose final event was not a success."""
        return [j for j in job_ids if self.arrived[j][0] != "job.succeeded"]


@contextlib.asynccontextmanager
async def finals(amqp_url: str, names: Names) -> AsyncIterator[Finals]:
    """Bind an exclusive queue to the final events of one deployment."""
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            names.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        for key in FINAL_EVENTS:
            await queue.bind(exchange, routing_key=key)
        tap = Finals()
        await queue.consume(tap._on_message)
        yield tap
    finally:
        await connection.close()


async def submit(client: httpx.AsyncClient, path: Path) -> tuple[str, float]:
    """POST one file to /v1/jobs; the job id and when the request started."""
    started = time.monotonic()
    response = await client.post("/v1/jobs", files={"file": (path.name, path.read_bytes())})
    if response.status_code != 202:
        raise RuntimeError(f"submit refused: {response.status_code} {response.text[:200]}")
    return str(response.json()["id"]), started


async def submit_all(url: str, paths: Sequence[Path], concurrency: int = 8) -> list[str]:
    """Submit files concurrently, in order of the list; return the job ids."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(path: Path) -> str:
            async with limit:
                return (await submit(client, path))[0]

        return list(await asyncio.gather(*(one(p) for p in paths)))
