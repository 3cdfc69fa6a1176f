"""The status rules: forward only, except a hand-back of the attempt that is running."""

from __future__ import annotations

from gateway.store.base import JobRecord, advance
from stt_daemon.common.protocol import EventType, JobEvent, JobStatus


def _event(kind: EventType, attempt: int, progress: float | None = None) -> JobEvent:
    return JobEvent(event=kind, job_id="j", model="tiny.en", attempt=attempt, progress=progress)


def _record(status: JobStatus, attempts: int, progress: float = 0.0) -> JobRecord:
    return JobRecord(id="j", status=status, attempts=attempts, progress=progress)


def test_a_hand_back_queues_the_running_job_again_with_its_checkpoint() -> None:
    record = advance(_record(JobStatus.PROCESSING, 1, 0.2), _event(EventType.REQUEUED, 1, 0.7))
    assert record is not None
    assert record.status is JobStatus.QUEUED and record.progress == 0.7 and record.attempts == 1
    # The next daemon takes it as the same attempt.
    again = advance(record, _event(EventType.STARTED, 1, 0.7))
    assert again is not None and again.status is JobStatus.PROCESSING


def test_a_late_hand_back_never_undoes_newer_news() -> None:
    assert advance(_record(JobStatus.PROCESSING, 2), _event(EventType.REQUEUED, 1)) is None
    assert advance(_record(JobStatus.SUCCEEDED, 1), _event(EventType.REQUEUED, 1)) is None
    assert advance(_record(JobStatus.QUEUED, 0), _event(EventType.REQUEUED, 1)) is None
