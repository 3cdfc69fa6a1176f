"""Event messages: the message_id consumers de-duplicate on (no broker: a recording exchange)."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from stt_daemon.common.protocol import EventType, JobEvent, decode_event, encode_event
from stt_daemon.events import EventPublisher


class RecordingExchange:
    """Keeps what is published; fails the first ``failures`` publishes, as a lost confirm would."""

    name = "stt.results"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.published: list[aio_pika.Message] = []

    async def publish(self, message: aio_pika.Message, routing_key: str, **_: Any) -> None:
        self.published.append(message)
        if self.failures:
            self.failures -= 1
            raise TimeoutError


def progress(job_id: str, fraction: float) -> JobEvent:
    return JobEvent(event=EventType.PROGRESS, job_id=job_id, progress=fraction, attempt=1)


def test_each_progress_event_of_a_job_has_its_own_message_id() -> None:
    ids = [encode_event(progress("j1", f)).message_id for f in (0.1, 0.2, 0.3)]
    assert len(set(ids)) == 3, ids


def test_each_attempt_start_has_its_own_message_id() -> None:
    first, second = (
        encode_event(JobEvent(event=EventType.STARTED, job_id="j1", attempt=n)).message_id
        for n in (1, 2)
    )
    assert first != second


async def test_a_retried_publish_keeps_the_message_id() -> None:
    exchange = RecordingExchange(failures=1)
    publisher = EventPublisher(channel=None, exchange=exchange, timeout=1.0)  # type: ignore[arg-type]
    event = progress("j1", 0.5)
    with pytest.raises(TimeoutError):
        await publisher.publish(event)
    await publisher.publish(event)  # the caller's retry
    first, retried = exchange.published
    assert first.message_id == retried.message_id == event.event_id


def test_an_event_read_back_from_the_wire_keeps_its_id() -> None:
    # A consumer that republishes what it received (a relay, a dead-letter replay).
    event = progress("j1", 0.5)
    again = decode_event(event.model_dump_json().encode())
    assert encode_event(again).message_id == encode_event(event).message_id


@pytest.mark.parametrize("kind", [EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED])
def test_a_jobs_final_event_is_named_by_the_job(kind: EventType) -> None:
    # A daemon that died before its ack runs the job again: its second result is a duplicate.
    first, rerun = (JobEvent(event=kind, job_id="j1", attempt=n) for n in (1, 2))
    assert encode_event(first).message_id == encode_event(rerun).message_id == f"j1:{kind}"
