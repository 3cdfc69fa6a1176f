"""The gateway's job feed: fan-out to streams, its bounds, trust, and following one job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway import jobfeed
from gateway.jobfeed import JobFeed, StreamTimeout, TooManyStreams, final_event, follow
from gateway.store import JobRecord
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobOptions,
    JobStatus,
    TranscriptResult,
    encode_event,
)
from stt_daemon.common.topology import Names

RESULT = TranscriptResult(text="hello", duration=1.0, model="tiny.en", segments=[])


def feed(**kwargs: Any) -> JobFeed:
    return JobFeed(Names("t"), trusted={"stt-daemon"}, **kwargs)


def event(kind: EventType, job_id: str = "j1", **fields: Any) -> JobEvent:
    return JobEvent(event=kind, job_id=job_id, **fields)


async def drain(subscription: jobfeed.Subscription) -> list[JobEvent]:
    got = []
    while (next_event := await subscription.get(0)) is not None:
        got.append(next_event)
    return got


async def test_events_go_to_the_streams_of_their_job_only() -> None:
    f = feed()
    first, second, other = f.open("j1"), f.open("j1"), f.open("j2")
    assert f.dispatch(event(EventType.STARTED)) == 2
    assert f.dispatch(event(EventType.STARTED, "j3")) == 0
    assert len(await drain(first)) == len(await drain(second)) == 1
    assert await drain(other) == []


async def test_streams_are_counted_and_given_back_once() -> None:
    f = feed(max_streams=2)
    first, _second = f.open("j1"), f.open()
    with pytest.raises(TooManyStreams, match="STT_MAX_EVENT_STREAMS"):
        f.open("j1")
    first.close()
    first.close()  # twice: still one slot
    assert f.open_streams == 1
    f.open("j2")
    assert f.open_streams == 2
    assert f.dispatch(event(EventType.STARTED)) == 0  # the closed stream gets nothing


async def test_a_lagging_stream_loses_progress_never_the_final_event() -> None:
    f = feed(stream_queue=3)
    sub = f.open("j1")
    f.dispatch(event(EventType.STARTED))
    for i in range(5):
        f.dispatch(event(EventType.PROGRESS, progress=i / 10))
    f.dispatch(event(EventType.SUCCEEDED, result=RESULT))
    got = await drain(sub)
    assert [e.event for e in got] == [EventType.STARTED, EventType.PROGRESS, EventType.SUCCEEDED]
    assert got[1].progress == pytest.approx(0.4)  # the newest progress is kept
    assert sub.dropped == 4


async def test_a_full_queue_of_statuses_still_takes_the_final_event() -> None:
    f = feed(stream_queue=2)
    sub = f.open("j1")
    f.dispatch(event(EventType.STARTED, attempt=1))
    f.dispatch(event(EventType.REQUEUED, attempt=1))
    f.dispatch(event(EventType.FAILED, error=ErrorInfo(code=ErrorCode.INTERNAL, message="x")))
    assert [e.event for e in await drain(sub)] == [EventType.REQUEUED, EventType.FAILED]


@dataclass
class FakeMessage:
    body: bytes
    user_id: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    acked: bool = False

    async def ack(self) -> None:
        self.acked = True


def delivery(e: JobEvent, user_id: str | None = "stt-daemon") -> FakeMessage:
    message = encode_event(e, user_id=user_id)
    return FakeMessage(message.body, user_id, dict(message.headers))


async def test_only_trusted_publishers_are_believed() -> None:
    f = feed()
    sub = f.open("j1")
    for user in ("stt-producer", None):
        message = delivery(event(EventType.SUCCEEDED, result=RESULT), user)
        await f._on_message(message)  # type: ignore[arg-type]
        assert message.acked
    assert await drain(sub) == [] and f.untrusted == 2
    await f._on_message(delivery(event(EventType.STARTED)))  # type: ignore[arg-type]
    assert [e.event for e in await drain(sub)] == [EventType.STARTED]


async def test_events_nobody_follows_are_not_even_decoded() -> None:
    f = feed()
    f.open("j1")
    garbage = FakeMessage(b"not json", "stt-daemon", {"job_id": "j2"})
    await f._on_message(garbage)  # type: ignore[arg-type]
    assert garbage.acked  # dropped by its header: decoding would have failed loudly


# --- following one job ----------------------------------------------------------------------


class Store:
    def __init__(self, record: JobRecord | None) -> None:
        self.record = record

    async def get(self, job_id: str) -> JobRecord | None:
        return self.record


async def collect(stream: Any) -> list[JobEvent | None]:
    return [item async for item in stream]


async def test_follow_ends_with_the_final_event_and_skips_other_producers() -> None:
    f = feed()
    record = JobRecord(id="j1", status=JobStatus.QUEUED, producer="stt-gateway")
    sub = f.open("j1")
    f.dispatch(event(EventType.SUCCEEDED, result=RESULT, producer="someone-else"))
    f.dispatch(event(EventType.STARTED, producer="stt-gateway"))
    f.dispatch(event(EventType.SUCCEEDED, result=RESULT, producer="stt-gateway"))
    got = await collect(follow(sub, Store(record), record, heartbeat=10, limit=10))  # type: ignore[arg-type]
    assert [e.event for e in got if e] == [EventType.STARTED, EventType.SUCCEEDED]
    assert got[-1] is not None and got[-1].producer == "stt-gateway"


async def test_a_missed_final_event_is_read_from_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobfeed, "STORE_RECHECK_S", 0.05)
    record = JobRecord(id="j1", status=JobStatus.PROCESSING, model="tiny.en", attempts=1)
    store = Store(record)
    stream = follow(feed().open("j1"), store, record, heartbeat=0.02, limit=5)  # type: ignore[arg-type]
    assert await anext(stream) is None  # a heartbeat while nothing happens
    store.record = JobRecord(id="j1", status=JobStatus.SUCCEEDED, result=RESULT, attempts=1)
    rest = await collect(stream)
    final = rest[-1]
    assert final is not None and final.event is EventType.SUCCEEDED
    assert final.result == RESULT and final.attempt == 1


async def test_follow_stops_at_its_limit() -> None:
    record = JobRecord(id="j1", status=JobStatus.QUEUED)
    stream = follow(feed().open("j1"), Store(record), record, heartbeat=10, limit=0.05)  # type: ignore[arg-type]
    with pytest.raises(StreamTimeout):
        await asyncio.wait_for(collect(stream), 2)


def test_final_event_of_a_record() -> None:
    record = JobRecord(
        id="j1",
        status=JobStatus.CANCELLED,
        options=JobOptions(model="tiny.en"),
        error=ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled on request"),
    )
    made = final_event(record)
    assert made.event is EventType.CANCELLED and made.status is JobStatus.CANCELLED
    assert made.options is not None and made.options.model == "tiny.en"
    assert made.error == record.error
