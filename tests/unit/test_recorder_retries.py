"""A status store that keeps refusing an event: the recorder retries it a bounded number of times.

The recorder queue is a quorum queue, which counts redeliveries in ``x-delivery-count``;
past ``STT_RECORDER_MAX_ATTEMPTS`` deliveries the event is dropped with an error line
instead of being requeued for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from structlog.testing import capture_logs

from gateway.config import GatewaySettings
from gateway.recorder import Recorder
from stt_daemon.common.protocol import EventType, JobEvent
from stt_daemon.common.topology import Names

EVENT = JobEvent(event=EventType.STARTED, job_id="job-7", model="tiny.en", attempt=1)


@dataclass
class FakeMessage:
    """One delivery of the event, the ``delivery``-th (as a quorum queue counts)."""

    delivery: int
    body: bytes = EVENT.model_dump_json(exclude_none=True).encode()
    user_id: str | None = "stt-daemon"
    routing_key: str = "job.started"
    message_id: str | None = "m1"
    settled: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, Any]:
        return {"x-delivery-count": self.delivery - 1} if self.delivery > 1 else {}

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(f"nack(requeue={requeue})")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append(f"reject(requeue={requeue})")


class BrokenStore:
    """A store that refuses every write."""

    def __init__(self) -> None:
        self.tries = 0

    async def apply(self, event: JobEvent) -> bool:
        self.tries += 1
        raise ConnectionError("database is locked")


async def test_a_refused_event_is_retried_then_dropped_with_an_error_line() -> None:
    store = BrokenStore()
    recorder = Recorder(
        store,  # type: ignore[arg-type]
        Names(),
        8,
        trusted={"stt-daemon"},
        max_attempts=5,
        retry_delay=0,
    )
    messages = [FakeMessage(delivery) for delivery in range(1, 6)]
    with capture_logs() as logs:
        for message in messages:
            await recorder._on_event(message)  # type: ignore[arg-type]
    assert store.tries == 5
    assert [m.settled for m in messages[:4]] == [["nack(requeue=True)"]] * 4
    assert messages[4].settled == ["reject(requeue=False)"]
    assert recorder.dropped == 1
    failed = [e for e in logs if e["event"] == "recorder.store_failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3, 4]
    (dropped,) = [e for e in logs if e["event"] == "recorder.event_dropped"]
    assert dropped["log_level"] == "error"
    assert dropped["job_id"] == "job-7" and dropped["event_type"] == "job.started"
    assert dropped["attempts"] == 5
    assert dropped["error"] == "ConnectionError: database is locked"


async def test_a_store_that_recovers_gets_the_event() -> None:
    class FlakyStore:
        def __init__(self) -> None:
            self.tries = 0

        async def apply(self, event: JobEvent) -> bool:
            self.tries += 1
            if self.tries < 3:
                raise ConnectionError("not yet")
            return True

    recorder = Recorder(FlakyStore(), Names(), 8, trusted={"stt-daemon"}, retry_delay=0)  # type: ignore[arg-type]
    messages = [FakeMessage(delivery) for delivery in (1, 2, 3)]
    for message in messages:
        await recorder._on_event(message)  # type: ignore[arg-type]
    assert [m.settled for m in messages] == [
        ["nack(requeue=True)"],
        ["nack(requeue=True)"],
        ["ack"],
    ]
    assert recorder.applied == 1 and recorder.dropped == 0


def test_the_bound_is_a_setting() -> None:
    assert GatewaySettings().recorder_max_attempts == 20
    recorder = Recorder.from_settings(
        BrokenStore(),  # type: ignore[arg-type]
        GatewaySettings(recorder_max_attempts=3),
    )
    assert recorder._max_attempts == 3
