"""The SQLite status store: forward-only statuses, persistence across reopen."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.store import JobRecord, open_store
from stt_daemon.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobStatus,
    TranscriptResult,
)

RESULT = TranscriptResult(text="hello", language="en", duration=1.0, model="tiny.en", segments=[])


def _event(kind: EventType, **fields: object) -> JobEvent:
    return JobEvent(event=kind, job_id="j1", model="tiny.en", **fields)  # type: ignore[arg-type]


async def _store(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{tmp_path}/status.db")
    await store.create(
        JobRecord(id="j1", status=JobStatus.QUEUED, model="tiny.en", created_at=datetime.now(UTC))
    )
    return store


async def test_status_moves_forward_and_never_back(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    assert await store.apply(_event(EventType.STARTED, attempt=1))
    assert await store.apply(_event(EventType.PROGRESS, progress=0.5))
    assert not await store.apply(_event(EventType.PROGRESS, progress=0.4))  # late, smaller
    assert await store.apply(_event(EventType.SUCCEEDED, result=RESULT))
    # Duplicates and stragglers after the final state change nothing.
    assert not await store.apply(_event(EventType.STARTED, attempt=2))
    assert not await store.apply(_event(EventType.PROGRESS, progress=0.9))
    assert not await store.apply(
        _event(EventType.FAILED, error=ErrorInfo(code=ErrorCode.INTERNAL, message="late"))
    )
    record = await store.get("j1")
    assert record is not None
    assert record.status is JobStatus.SUCCEEDED
    assert record.result == RESULT
    assert record.error is None
    assert record.progress == 1.0
    assert record.started_at is not None and record.finished_at is not None


async def test_final_event_arriving_first_still_wins(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    assert await store.apply(_event(EventType.SUCCEEDED, result=RESULT))
    assert not await store.apply(_event(EventType.STARTED))
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.SUCCEEDED


async def test_events_for_unknown_jobs_create_them(tmp_path: Path) -> None:
    """Jobs from outside producers become visible to polling too."""
    store = open_store(f"sqlite:///{tmp_path}/status.db")
    await store.apply(JobEvent(event=EventType.STARTED, job_id="outside", model="tiny.en"))
    record = await store.get("outside")
    assert record is not None and record.status is JobStatus.PROCESSING


async def test_create_never_overwrites_and_discard_only_drops_queued(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    await store.apply(_event(EventType.STARTED))
    await store.create(JobRecord(id="j1", status=JobStatus.QUEUED))
    await store.discard("j1")
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.PROCESSING


async def test_statuses_survive_reopening(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    await store.apply(_event(EventType.SUCCEEDED, result=RESULT))
    await store.close()
    reopened = open_store(f"sqlite:///{tmp_path}/status.db")
    record = await reopened.get("j1")
    assert record is not None and record.result == RESULT
    assert await reopened.get("missing") is None


async def test_active_jobs_are_counted_per_owner(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/status.db")
    for n, owner in enumerate(["a", "a", "b", None]):
        await store.create(JobRecord(id=f"j{n}", status=JobStatus.QUEUED, owner=owner))
    await store.apply(_event(EventType.SUCCEEDED, result=RESULT))  # j1, owner a
    assert await store.count_active("a") == 1
    assert await store.count_active("b") == 1
    assert await store.count_active(None) == 1
    first = await store.get("j0")
    assert first is not None and first.owner == "a"
