"""The status store's interface and its record type."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from stt_daemon.protocol import ErrorInfo, JobEvent, JobStatus, TranscriptResult


@dataclass
class JobRecord:
    """What the gateway knows about one job."""

    id: str
    status: JobStatus
    #: Who submitted it: the id of an API key (never the key), None without keys.
    owner: str | None = None
    model: str | None = None
    options: dict[str, Any] | None = None
    filename: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    progress: float = 0.0
    attempts: int = 0
    worker: str | None = None
    result: TranscriptResult | None = None
    error: ErrorInfo | None = None


def advance(record: JobRecord | None, event: JobEvent) -> JobRecord | None:
    """The record after ``event``, or None when the event changes nothing.

    Status only moves forward (queued -> processing -> succeeded | failed), so a
    duplicate or late event never regresses a job; the first final event wins.
    """
    new = event.status
    if record is None:
        record = JobRecord(
            id=event.job_id, status=JobStatus.QUEUED, model=event.model, created_at=event.timestamp
        )
    elif _is_stale(record, event):
        return None
    record.status = new
    record.updated_at = event.timestamp
    record.model = record.model or event.model
    if record.options is None and event.options is not None:
        record.options = event.options.model_dump(mode="json")
    if event.attempt is not None:
        record.attempts = max(record.attempts, event.attempt)
    record.worker = event.worker or record.worker
    if new is JobStatus.PROCESSING:
        record.started_at = record.started_at or event.timestamp
        if event.progress is not None:
            record.progress = max(record.progress, event.progress)
    if new.is_final:
        record.finished_at = event.timestamp
        record.started_at = record.started_at or event.timestamp
        record.result = event.result
        record.error = event.error
        if new is JobStatus.SUCCEEDED:
            record.progress = 1.0
    return record


def _is_stale(record: JobRecord, event: JobEvent) -> bool:
    if record.status.is_final or event.status.rank < record.status.rank:
        return True
    # Same status: only a progress report that moves forward is news.
    return event.status is record.status and (
        event.progress is None or event.progress <= record.progress
    )


class StatusStore(Protocol):
    """Where job statuses and results live; fed by the recorder, read by the routes."""

    async def create(self, record: JobRecord) -> None:
        """Record a newly accepted job (status queued); never overwrites an existing one."""
        ...

    async def discard(self, job_id: str) -> None:
        """Forget a job that was never accepted (its publish failed)."""
        ...

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        ...

    async def apply(self, event: JobEvent) -> bool:
        """Apply an event (forward-only); True if it changed the job."""
        ...

    async def count_active(self, owner: str | None) -> int:
        """How many of this owner's jobs are not final yet (the concurrent-job quota)."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be used."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
