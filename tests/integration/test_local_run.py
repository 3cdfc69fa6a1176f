"""``stt-local`` run for real, as root from a private directory: ready, transcribes, survives
a gateway restart, stops the daemon before the gateway."""

from __future__ import annotations

import asyncio
import os
import pwd
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aiormq.exceptions import ChannelAccessRefused

from stack import JFK, REPO, Proc, normalise, stt
from stt_daemon import localbroker
from stt_daemon.common.protocol import decode_event
from stt_daemon.localbroker import free_port, port_problem

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SCRIPT = REPO / ".venv" / "bin" / "stt-local"
STT_LOCAL = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "stt_daemon.local"]
SENTENCE = "the quick brown fox jumps over the lazy dog"


def free_amqp_port() -> int:
    """A port below 45536 that is free, and whose distribution port (+ 20000) is free too."""
    for port in random.sample(range(20000, 45000), 500):
        if port_problem(port) is None and port_problem(port + 20000) is None:
            return port
    raise AssertionError("no free pair of ports")


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A mode-700 directory of root's, like /root or `mktemp -d`: rabbitmq cannot enter it."""
    path = Path(tempfile.mkdtemp(prefix="stt-local-test-"))
    assert path.stat().st_mode & 0o777 == 0o700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            wanted = (path / "data" / "rabbitmq").resolve()
            shutil.rmtree(localbroker.fallback_dir(wanted, user), ignore_errors=True)


@pytest.fixture
def spoken(tmp_path: Path) -> Path:
    """A short sentence in flite's slt voice, which tiny.en hears nearly word for word."""
    audio = tmp_path / "fox.wav"
    argv = ["flite", "-voice", "slt", "-t", SENTENCE, "-o", str(audio)]
    subprocess.run(argv, check=True, timeout=60)
    return audio


def events(proc: Proc, logger: str = "stt_local") -> list[dict[str, Any]]:
    return [line for line in proc.log_lines() if line.get("logger") == logger]


def child_pids(proc: Proc, name: str) -> list[int]:
    return [
        e["pid"] for e in events(proc) if e["event"] == "local.child_started" and e["child"] == name
    ]


async def wait_until(what: str, check: Any, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{proc.output()[-3000:]}")
        await asyncio.sleep(0.2)


def force_stop(proc: Proc) -> None:
    """After a failure: stop stt-local and its children (each in its own session)."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            proc.popen.wait(60)
    if proc.popen.poll() is None:
        proc.popen.kill()
        for name in ("daemon", "gateway"):
            for pid in child_pids(proc, name):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_stt_local_from_a_private_directory(
    private_dir: Path, spoken: Path, tmp_path: Path
) -> None:
    amqp_port, http_port = free_amqp_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    drop = ("STT_AMQP_URL", "STT_MODELS", "STT_URL", "STT_API_KEYS", "STT_API_KEYS_FILE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {
        "STT_DATA_DIR": str(private_dir / "data"),
        "STT_LOG_FORMAT": "json",
        "STT_METRICS_PORT": str(free_port()),
        "STT_SHUTDOWN_TIMEOUT": "20",
        "STT_LOCAL_AMQP_PORT": str(amqp_port),
    }
    argv = [*STT_LOCAL, "--port", str(http_port)]
    proc = Proc("stt-local", argv, env, tmp_path)
    try:
        await check_ready(proc, amqp_port, url, private_dir)
        await check_transcribes(url, spoken)
        await check_broker_roles(private_dir / "data", amqp_port)
        await check_gateway_restarts(proc, url)
        await check_stop_order(proc)
    finally:
        force_stop(proc)


async def check_ready(proc: Proc, amqp_port: int, url: str, private_dir: Path) -> None:
    ready = await proc.wait_for_log("local.ready", timeout=150)
    assert ready["url"] == url
    assert ready["amqp"] == f"amqp://guest@127.0.0.1:{amqp_port}/"
    assert ready["models"] == ["tiny.en", "base"]
    if os.geteuid() == 0:
        # The rabbitmq user cannot enter the private directory: the node's files moved.
        assert ready["broker_dir"].startswith(pwd.getpwnam("rabbitmq").pw_dir)
    output = proc.output()
    banner = output[output.index("stt-local is ready") :]
    secrets_file = str(private_dir / "data" / "secrets.env")
    for text in (url, f"{url}/docs", ready["amqp"], "tiny.en, base", secrets_file, "stt"):
        assert text in banner, text
    # Ready means ready: the gateway answered and both models were loaded before.
    lines = proc.log_lines()
    at_ready = next(i for i, e in enumerate(lines) if e.get("event") == "local.ready")
    loaded = [i for i, e in enumerate(lines) if e.get("event") == "model.loaded"]
    assert len(loaded) == 2 and max(loaded) < at_ready
    async with httpx.AsyncClient(base_url=url) as client:
        models = (await client.get("/v1/models")).json()["data"]
    assert sorted(m["id"] for m in models) == ["base", "tiny.en"]


async def check_transcribes(url: str, audio: Path) -> None:
    # The URL before the command: the way people type it.
    code, out, err = await stt("--url", url, "transcribe", str(audio), "--wait", timeout=120)
    assert code == 0, err
    assert "quick brown fox" in normalise(out), out


async def check_broker_roles(data_dir: Path, amqp_port: int) -> None:
    """The private node has the role users; a producer submits with its own password."""
    stored = data_dir / "secrets.env"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    passwords = dict(line.split("=", 1) for line in stored.read_text().splitlines() if "=" in line)
    producer = f"amqp://stt-producer:{passwords['producer']}@127.0.0.1:{amqp_port}/"
    connection = await aio_pika.connect(producer)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True)
        jobs = await channel.get_exchange("stt.jobs", ensure=False)
        await jobs.publish(
            aio_pika.Message(
                JFK.read_bytes(),
                content_type="audio/flac",
                message_id=f"local-{os.getpid()}",
                reply_to=replies.name,
                user_id="stt-producer",
            ),
            routing_key="tiny.en",
        )
        reply = await replies.get(timeout=5, fail=False)
        for _ in range(120):
            if reply is not None:
                break
            await asyncio.sleep(0.5)
            reply = await replies.get(fail=False)
        assert reply is not None, "no reply to the producer's job"
        event = decode_event(reply.body)
        assert event.event == "job.succeeded" and event.producer == "stt-producer"
        # Its permissions end there: the job queue is not its to read.
        peek = await connection.channel()
        queue = await peek.get_queue("stt.jobs.tiny.en", ensure=False)
        with pytest.raises(ChannelAccessRefused):
            await queue.get(fail=False)


async def check_gateway_restarts(proc: Proc, url: str) -> None:
    (first,) = child_pids(proc, "gateway")
    os.kill(first, signal.SIGTERM)

    async def restarted() -> bool:
        return len(child_pids(proc, "gateway")) == 2

    await wait_until("gateway restarted", restarted, proc, 30)
    exited = [e for e in events(proc) if e["event"] == "local.child_exited"]
    assert [e["child"] for e in exited] == ["gateway"]

    async def answers() -> bool:
        async with httpx.AsyncClient(base_url=url) as client:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

    await wait_until("restarted gateway ready", answers, proc, 30)
    assert proc.popen.poll() is None  # stt-local and the daemon carried on


async def check_stop_order(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGINT)
    assert await proc.wait_exit(90) == 0
    lines = proc.log_lines()

    def at(event: str, **fields: str) -> int:
        for i, line in enumerate(lines):
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                return i
        raise AssertionError(f"no {event} {fields}:\n{proc.output()[-3000:]}")

    assert (
        at("local.child_stopping", child="daemon")
        < at("daemon.stopped")
        < at("local.child_stopped", child="daemon")
        < at("local.child_stopping", child="gateway")
        < at("local.child_stopped", child="gateway")
        < at("local.broker.stopped")
        < at("local.stopped")
    )
