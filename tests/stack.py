"""Test support: real processes (broker node, daemons, gateways) and what tests do with them."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractChannel, AbstractQueue

from stt_daemon.common.claims import ClaimSigner
from stt_daemon.common.protocol import JobEvent, decode_event
from stt_daemon.common.topology import Names
from stt_daemon.localbroker import free_port

REPO = Path(__file__).resolve().parent.parent
#: The recordings the tests use, committed with them (tests/data/README.md says where they
#: come from): a fresh clone tests itself with nothing beside it.
AUDIO_DIR = Path(__file__).resolve().parent / "data"
JFK = AUDIO_DIR / "jfk.flac"
HOTWORDS = AUDIO_DIR / "hotwords.mp3"
JFK_WORDS = "ask not what your country can do for you"


def normalise(text: str) -> str:
    """Lower case, letters and spaces only: what speech tests compare."""
    kept = "".join(c.lower() if c.isalnum() else " " for c in text)
    return " ".join(kept.split())


class Proc:
    """A child process of ours with its output in a file we can wait on."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    @property
    def pid(self) -> int:
        """OS process id."""
        return self.popen.pid

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines printed so far."""
        lines = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with suppress(json.JSONDecodeError):
                    lines.append(json.loads(line))
        return lines

    async def wait_for_log(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until a log line with this ``event`` appears (fail if the process dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("event") == event:
                    return line
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-3000:]}"
                )
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"{self.name}: no {event!r} within {timeout}s:\n{self.output()[-3000:]}"
        )

    def signal(self, sig: int) -> None:
        """Send a signal."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; return its code."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit within {timeout}s")
            await asyncio.sleep(0.1)
        return self.popen.returncode

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                await self.wait_exit(30)
            except AssertionError:
                self.popen.kill()
                await self.wait_exit(10)
        self._log.close()


@dataclass
class Stack:
    """One isolated deployment: its own namespace of queues and its own data directory.

    With ``roles`` (role -> AMQP URL, see tests/conftest.py), daemons and gateways
    connect as their own broker users with the shipped permissions, as a real
    deployment does; without, everything connects with ``amqp_url``.
    """

    amqp_url: str
    data_dir: Path
    namespace: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)
    #: STT_CLAIM_SECRET of this deployment: its daemons refuse unsigned claim checks.
    claim_secret: str = field(default_factory=lambda: secrets.token_hex(16))

    def url_of(self, role: str) -> str:
        """The AMQP URL a process of ``role`` connects with."""
        return self.roles.get(role, self.amqp_url)

    @property
    def signer(self) -> ClaimSigner:
        """Signs claim checks as this deployment's gateways do (a trusted producer)."""
        return ClaimSigner(self.claim_secret)

    @property
    def names(self) -> Names:
        """Broker names of this stack."""
        return Names(self.namespace)

    def _env(self, extra: dict[str, str], role: str = "admin") -> dict[str, str]:
        return {
            **os.environ,
            "STT_AMQP_URL": self.url_of(role),
            "STT_CLAIM_SECRET": self.claim_secret,
            "STT_NAMESPACE": self.namespace,
            "STT_DATA_DIR": str(self.data_dir),
            "STT_LOG_FORMAT": "json",
            "STT_PROGRESS_INTERVAL": "0.2",
            **self.env,
            **extra,
        }

    async def daemon(
        self,
        wait: bool = True,
        argv: list[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **env: str,
    ) -> Proc:
        """Start a daemon (``python -m stt_daemon``, or ``argv``) and wait until it consumes.

        Its environment gets ``environ`` (a shared set of settings) and then ``env``.
        """
        argv = argv or [sys.executable, "-m", "stt_daemon"]
        proc = Proc("daemon", argv, self._env({**(environ or {}), **env}, "daemon"), self.data_dir)
        self.procs.append(proc)
        if wait:
            await proc.wait_for_log("daemon.ready", timeout=120)
        return proc

    async def gateway(
        self,
        port: int | None = None,
        wait_ready: bool = True,
        environ: Mapping[str, str] | None = None,
        **env: str,
    ) -> Gateway:
        """Start a gateway on a free port and wait until /readyz says ready.

        Its environment gets ``environ`` (a shared set of settings) and then ``env``.
        """
        port = port or free_port()
        argv = [sys.executable, "-m", "gateway", "--port", str(port)]
        proc = Proc(
            "gateway", argv, self._env({**(environ or {}), **env}, "gateway"), self.data_dir
        )
        self.procs.append(proc)
        gw = Gateway(proc, f"http://127.0.0.1:{port}")
        await gw.wait_up(ready=wait_ready)
        return gw

    async def stop_all(self) -> None:
        """Stop every process this stack started."""
        for proc in reversed(self.procs):
            await proc.stop()

    async def forget(self, models: tuple[str, ...] = ("tiny.en", "base")) -> None:
        """Delete this stack's queues and exchanges from the broker.

        A test session makes hundreds of stacks on one node; left behind, their
        quorum queues and streams would make it nothing like a real deployment's.
        """
        names = self.names
        queues = [
            *(names.job_queue(m) for m in models),
            *(names.quarantine_queue(m) for m in models),
            *(names.live_queue(m) for m in models),
            names.dead_queue,
            names.recorder_queue,
            names.callbacks_queue,
            names.cancel_stream,
        ]
        exchanges = [
            names.jobs_exchange,
            names.quarantine_exchange,
            names.live_exchange,
            names.results_exchange,
            names.dead_exchange,
            names.control_exchange,
        ]
        with suppress(Exception):
            connection = await aio_pika.connect(self.amqp_url.split(",")[0])
            async with connection:
                for name in queues:
                    with suppress(Exception):
                        channel = await connection.channel()
                        await channel.queue_delete(name)
                for name in exchanges:
                    with suppress(Exception):
                        channel = await connection.channel()
                        await channel.exchange_delete(name)


@dataclass
class Gateway:
    """A running gateway and an HTTP client for it."""

    proc: Proc
    url: str

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client bound to this gateway."""
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kwargs)

    async def wait_up(self, ready: bool = True, timeout: float = 60.0) -> None:
        """Wait for /healthz (and /readyz when asked)."""
        path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + timeout
        async with self.client() as client:
            while time.monotonic() < deadline:
                if self.proc.popen.poll() is not None:
                    raise AssertionError(f"gateway exited:\n{self.proc.output()[-3000:]}")
                try:
                    if (await client.get(path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not {path} within {timeout}s:\n{self.proc.output()[-3000:]}")

    async def submit(
        self, path: Path | bytes, name: str = "audio", **fields: str
    ) -> dict[str, Any]:
        """POST /v1/jobs and return the 202 body."""
        data = path.read_bytes() if isinstance(path, Path) else path
        filename = path.name if isinstance(path, Path) else name
        async with self.client() as client:
            response = await client.post("/v1/jobs", files={"file": (filename, data)}, data=fields)
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_final(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll /v1/jobs/{id} until the job is final (succeeded, failed or cancelled)."""
        deadline = time.monotonic() + timeout
        async with self.client() as client:
            while time.monotonic() < deadline:
                response = await client.get(f"/v1/jobs/{job_id}")
                final = ("succeeded", "failed", "cancelled")
                if response.status_code == 200 and response.json()["status"] in final:
                    body: dict[str, Any] = response.json()
                    return body
                await asyncio.sleep(0.2)
        raise AssertionError(f"job {job_id} not final within {timeout}s")


class EventTap:
    """A downstream consumer: its own queue bound to the results exchange."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.events: list[JobEvent] = []
        self._changed = asyncio.Event()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            self.events.append(decode_event(message.body))
            self._changed.set()

    def of(self, job_id: str, kind: str | None = None) -> list[JobEvent]:
        """Events seen for one job (optionally of one kind)."""
        return [e for e in self.events if e.job_id == job_id and (kind is None or e.event == kind)]

    def progress(self, job_id: str) -> list[float]:
        """The fractions of the job's ``job.progress`` events, in order (each carries one)."""
        fractions = []
        for event in self.of(job_id, "job.progress"):
            assert event.progress is not None, event
            fractions.append(event.progress)
        return fractions

    async def wait_for(
        self, job_id: str, kinds: tuple[str, ...], timeout: float = 120.0
    ) -> JobEvent:
        """Wait until an event of one of these kinds arrives for the job."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.of(job_id):
                if event.event in kinds:
                    return event
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=1.0)
        raise AssertionError(f"no {kinds} for {job_id} within {timeout}s; saw {self.of(job_id)}")


@asynccontextmanager
async def event_tap(
    channel: AbstractChannel, names: Names, routing_key: str = "job.#"
) -> AsyncIterator[EventTap]:
    """Bind an exclusive queue to the results exchange, as any downstream service would."""
    exchange = await channel.declare_exchange(
        names.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key=routing_key)
    tap = EventTap(queue)
    tag = await queue.consume(tap._on_message)
    try:
        yield tap
    finally:
        await queue.cancel(tag)


async def drain_dead_letters(
    channel: AbstractChannel, names: Names, count: int, timeout: float = 45.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Get ``count`` messages from the dead-letter queue (at-least-once DLX takes seconds)."""
    queue = await channel.get_queue(names.dead_queue)
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            await asyncio.sleep(0.5)
            continue
        got.append(message)
    return got


_SCRIPT = Path(sys.executable).parent / "stt"
#: The ``stt`` console script of this venv (or the module, when not installed).
STT = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "gateway.cli"]


async def stt(*args: str, timeout: float = 180, **env: str) -> tuple[int, str, str]:
    """Run ``stt ARGS`` as a user would; its exit code, stdout and stderr."""
    environ = {k: v for k, v in os.environ.items() if k not in ("STT_URL", "STT_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        *STT,
        *args,
        cwd=REPO,
        env={**environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
