"""Jobs and events the status store tests write (tests/unit/test_store*.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.store import JobRecord, StatusStore
from stt_daemon.common.protocol import EventType, JobEvent, JobStatus, TranscriptResult

RESULT = TranscriptResult(text="hello", language="en", duration=1.0, model="tiny.en", segments=[])


def event(kind: EventType, job_id: str = "j1", **fields: object) -> JobEvent:
    return JobEvent(event=kind, job_id=job_id, model="tiny.en", **fields)  # type: ignore[arg-type]


async def with_job(store: StatusStore, job_id: str = "j1", owner: str | None = None) -> None:
    await store.create(
        JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            owner=owner,
            model="tiny.en",
            created_at=datetime.now(UTC),
        )
    )
