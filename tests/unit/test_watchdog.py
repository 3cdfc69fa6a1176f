"""Signs of life: ``/livez`` sees a stuck event loop; announcement trouble is logged, not swallowed.

The daemon's metrics server runs in a thread of its own, so it answers while the
loop is blocked; its liveness answer comes from the loop's beat instead. The
daemon's announcements and the gateway's hearing of them log what goes wrong,
rate-limited.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
from structlog.testing import capture_logs

from gateway.fleet import Fleet
from stt_daemon.common.protocol import DaemonAnnouncement
from stt_daemon.common.topology import Names
from stt_daemon.config import DaemonSettings
from stt_daemon.control import Cancellations, ControlPlane, Outage
from stt_daemon.metrics import DaemonMetrics, LoopWatchdog


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """A real event loop running in a thread, as the daemon's main loop runs beside the server."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_livez_answers_503_while_the_loop_is_blocked_and_200_after(
    loop_in_thread: asyncio.AbstractEventLoop,
) -> None:
    metrics = DaemonMetrics()
    metrics.watchdog.stall_after = 0.5
    port = _free_port()
    metrics.serve(port)
    url = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{url}/livez").status_code == 200  # not watched yet: alive
        beat = asyncio.run_coroutine_threadsafe(metrics.watchdog.run(interval=0.05), loop_in_thread)
        time.sleep(0.2)
        assert httpx.get(f"{url}/livez").status_code == 200
        # Something blocks the loop (a synchronous call where an await belonged).
        loop_in_thread.call_soon_threadsafe(time.sleep, 1.5)
        time.sleep(0.9)
        stuck = httpx.get(f"{url}/livez")
        assert stuck.status_code == 503 and "stalled" in stuck.text
        assert httpx.get(f"{url}/healthz").status_code == 503
        # The metrics themselves still answer: Prometheus sees the stall as it happens.
        assert httpx.get(f"{url}/metrics").status_code == 200
        with capture_logs() as logs:
            time.sleep(1.0)  # the block ends and the loop beats again
            assert httpx.get(f"{url}/livez").status_code == 200
        assert [e["event"] for e in logs] == ["daemon.loop_stalled"]
        assert logs[0]["stalled_s"] >= 1.0
        beat.cancel()
    finally:
        metrics.close()


def test_the_verdict_follows_the_last_beat() -> None:
    now = [100.0]
    watchdog = LoopWatchdog(stall_after=30, clock=lambda: now[0])
    assert watchdog.verdict()[0]
    watchdog.beat()
    now[0] += 29
    assert watchdog.verdict()[0]
    now[0] += 2
    alive, why = watchdog.verdict()
    assert not alive and "31.0 s" in why and "30 s" in why


def test_the_stall_limit_is_a_setting() -> None:
    assert DaemonSettings().loop_stall_seconds == 30
    assert DaemonSettings(loop_stall_seconds=5).loop_stall_seconds == 5


# --- announcements ------------------------------------------------------------------------


class FlakyExchange:
    """A control exchange that fails the first ``failures`` publishes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[tuple[Any, str]] = []

    async def publish(self, message: Any, routing_key: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("connection is blocked")
        self.published.append((message, routing_key))


async def test_failed_announcements_are_logged_once_then_the_recovery() -> None:
    settings = DaemonSettings(announce_interval=0.01, worker_name="host:1")
    control = ControlPlane(settings, {}, lambda: 0, Cancellations())
    exchange = FlakyExchange(failures=6)
    control._exchange = exchange  # type: ignore[assignment]
    with capture_logs() as logs:
        ticker = asyncio.create_task(control._announce_forever())
        for _ in range(200):
            if exchange.published:
                break
            await asyncio.sleep(0.01)
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [
        ("control.announce_failed", "warning"),
        ("control.announce_recovered", "info"),
    ]
    assert logs[0]["error"] == "ConnectionError: connection is blocked"
    assert logs[1]["failures"] == 6
    message, routing_key = exchange.published[0]
    assert routing_key == "daemon.up" and message.user_id == "guest"


async def test_a_failed_goodbye_is_logged() -> None:
    control = ControlPlane(DaemonSettings(), {}, lambda: 0, Cancellations())
    control._exchange = FlakyExchange(failures=1)  # type: ignore[assignment]
    with capture_logs() as logs:
        await control.stop()
    assert [e["event"] for e in logs] == ["control.goodbye_failed"]


def test_a_long_outage_is_recalled_once_a_minute() -> None:
    now = [0.0]
    outage = Outage("x.publish", every=60, clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(130):  # one failure a second for 130 s
            outage.failed(TimeoutError())
            now[0] += 1
        outage.succeeded()
        outage.succeeded()
    assert [e["event"] for e in logs] == [
        "x.publish_failed",
        "x.publish_still_failing",
        "x.publish_still_failing",
        "x.publish_recovered",
    ]
    assert [e.get("failures") for e in logs[1:]] == [61, 121, 130]
    assert logs[0]["error"] == "TimeoutError"


@dataclass
class Announcement:
    """A delivery on the gateway's fleet queue."""

    body: bytes
    routing_key: str = "daemon.up"
    user_id: str | None = None


def _announcement(worker: str, state: Literal["up", "down"] = "up") -> Announcement:
    body = DaemonAnnouncement(
        worker=worker, models=["tiny.en"], prefetch=1, interval=5, state=state
    ).model_dump_json()
    return Announcement(body.encode(), routing_key=f"daemon.{state}")


async def test_the_gateway_logs_bad_announcements_rate_limited_and_daemons_coming_and_going() -> (
    None
):
    fleet = Fleet(Names())
    with capture_logs() as logs:
        for body in (b"not json", b'{"schema_version": 1, "worker": "w"}', b"secret-ish"):
            await fleet._on_announcement(Announcement(body, user_id="someone"))  # type: ignore[arg-type]
        await fleet._on_announcement(_announcement("host:1"))  # type: ignore[arg-type]
        await fleet._on_announcement(_announcement("host:1"))  # type: ignore[arg-type]
        await fleet._on_announcement(_announcement("host:1", "down"))  # type: ignore[arg-type]
    assert [e["event"] for e in logs] == [
        "fleet.bad_announcement",
        "fleet.daemon_up",
        "fleet.daemon_down",
    ]
    bad = logs[0]
    assert (bad["routing_key"], bad["user_id"], bad["count"]) == ("daemon.up", "someone", 1)
    assert "not json" not in repr(logs) and "secret-ish" not in repr(logs)
    assert fleet.bad == 3 and fleet.workers() == []
