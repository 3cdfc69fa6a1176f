"""The status store's interface and its record type."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, overload

import structlog
from pydantic import GetCoreSchemaHandler, ValidationError
from pydantic_core import core_schema

from stt_daemon.common.protocol import (
    ErrorInfo,
    EventType,
    JobEvent,
    JobOptions,
    JobStatus,
    TranscriptResult,
)

log = structlog.get_logger("gateway.store")

#: Lifetime of an idempotency key when results are kept forever (``STT_RESULT_TTL=0``).
IDEMPOTENCY_TTL_WITHOUT_RETENTION = 24 * 3600
#: Longest ``Idempotency-Key`` accepted.
MAX_IDEMPOTENCY_KEY = 255


class StoredResult:
    """A job's transcript, kept as the store's JSON until something reads it.

    A status poll reads the whole record but never the transcript, so it never
    parses it: set to the JSON (``str`` or ``bytes``), the transcript is decoded on
    first read, once. Set to a ``TranscriptResult`` (or None), it is that.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        # The instance's own attribute of the same name holds the value, so that
        # pydantic (which fills a dataclass's __dict__ directly) and this agree.
        self._name = name

    @overload
    def __get__(self, record: None, owner: Any) -> None: ...
    @overload
    def __get__(self, record: object, owner: Any) -> TranscriptResult | None: ...
    def __get__(self, record: object | None, owner: Any) -> TranscriptResult | None:
        """The transcript (decoded now if it was still JSON); the default on the class."""
        if record is None:
            return None
        value = record.__dict__.get(self._name)
        if isinstance(value, str | bytes):
            value = record.__dict__[self._name] = TranscriptResult.model_validate_json(value)
        return value

    def __set__(self, record: object, value: TranscriptResult | str | bytes | None) -> None:
        """Keep ``value``: a transcript, its JSON (decoded when first read) or None."""
        record.__dict__[self._name] = value

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """For pydantic, a record's result is a transcript or None."""
        return handler.generate_schema(TranscriptResult | None)


def result_json(record: JobRecord) -> str | bytes | None:
    """The record's transcript as JSON, without decoding it when it is still JSON."""
    value = record.__dict__.get("result")
    return value.model_dump_json() if isinstance(value, TranscriptResult) else value


@dataclass
class JobRecord:
    """What the gateway knows about one job."""

    id: str
    status: JobStatus
    #: Who submitted it: the id of an API key (never the key), None without keys.
    owner: str | None = None
    model: str | None = None
    options: JobOptions | None = None
    #: A live session's record (gateway/livesessions.py), not an uploaded job's.
    live: bool = False
    filename: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    progress: float = 0.0
    attempts: int = 0
    worker: str | None = None
    result: StoredResult = StoredResult()
    error: ErrorInfo | None = None
    #: The broker user that published the job (``amqp.broker_user`` of the gateway for
    #: its own jobs, ``JobEvent.producer`` for outside producers' jobs; "" for a publisher
    #: that gave no ``user_id``); None for records made before producers were recorded.
    producer: str | None = None


def stored_options(stored: dict[str, Any]) -> tuple[JobOptions | None, bool]:
    """A record's options as the stores keep them (JSON, with ``live`` inside): ``(options, live)``.

    Options a newer JobOptions no longer accepts read as None: a status poll must
    still answer for a job submitted before the change.
    """
    live = stored.get("live") is True
    try:
        return JobOptions.model_validate(stored), live
    except ValidationError:
        log.warning("store.options_unreadable", fields=sorted(stored))
        return None, live


def options_json(record: JobRecord) -> dict[str, Any] | None:
    """The record's options as the stores keep them: JSON, ``"live": true`` inside for a session."""
    if record.options is None:
        return None
    stored = record.options.model_dump(mode="json")
    return {**stored, "live": True} if record.live else stored


def advance(record: JobRecord | None, event: JobEvent, *, result_ttl: int = 0) -> JobRecord | None:
    """The record after ``event``, or None when the event changes nothing.

    Status only moves forward (queued -> processing -> succeeded | failed), so a
    duplicate or late event never regresses a job; the first final event wins.
    The one step back is ``job.requeued``: the daemon running the job stopped and
    handed it back, so it is queued again (see :func:`_is_handback`).

    Only the job's own producer's events count (see :func:`_is_foreign`), and an event
    older than the retention (``result_ttl`` seconds, 0 = forever) never creates a
    record: its job may have finished and been purged, and must stay gone.
    """
    if record is None:
        if _is_past_retention(event, result_ttl):
            return None
        record = _first_record(event)
    elif _is_foreign(record, event) or _is_stale(record, event):
        return None
    record.status = event.status
    record.updated_at = event.timestamp
    record.model = record.model or event.model
    if record.options is None and event.options is not None:
        record.options = event.options
    if event.attempt is not None:
        record.attempts = max(record.attempts, event.attempt)
    record.worker = event.worker or record.worker
    if event.status.is_final:
        _finish(record, event)
    else:
        _progress(record, event)
    return record


def _first_record(event: JobEvent) -> JobRecord:
    """The record an event makes for a job the store has not seen (an outside producer's)."""
    return JobRecord(
        id=event.job_id,
        status=JobStatus.QUEUED,
        model=event.model,
        created_at=event.timestamp,
        producer=event.producer,
    )


def _progress(record: JobRecord, event: JobEvent) -> None:
    """A running job's progress moves forward; a handed-back one's is its checkpoint's."""
    if event.status is JobStatus.PROCESSING:
        record.started_at = record.started_at or event.timestamp
        if event.progress is not None:
            record.progress = max(record.progress, event.progress)
    elif event.status is JobStatus.QUEUED and event.progress is not None:
        # What its checkpoint holds: the next daemon starts from there.
        record.progress = event.progress


def _finish(record: JobRecord, event: JobEvent) -> None:
    """A final event's outcome: its time, its transcript or error."""
    record.finished_at = event.timestamp
    record.started_at = record.started_at or event.timestamp
    record.result = event.result
    record.error = event.error
    if event.status is JobStatus.SUCCEEDED:
        record.progress = 1.0


def _is_foreign(record: JobRecord, event: JobEvent) -> bool:
    """An event about a job another broker user published.

    An outside producer who publishes a job (or a body that fails) under the id of a
    gateway's job must not fail or overwrite that job. None on either side (an old
    record, an old daemon) cannot be told apart, so it is let through.
    """
    return (
        record.producer is not None
        and event.producer is not None
        and record.producer != event.producer
    )


def _is_past_retention(event: JobEvent, result_ttl: int) -> bool:
    """An event older than final jobs are kept: a duplicate or straggler of a purged job."""
    if result_ttl <= 0:
        return False
    stamp = event.timestamp
    if stamp.tzinfo is None:  # a producer's naive timestamp: the protocol's clock is UTC
        stamp = stamp.replace(tzinfo=UTC)
    return stamp < datetime.now(UTC) - timedelta(seconds=result_ttl)


def _is_handback(record: JobRecord, event: JobEvent) -> bool:
    """A hand-back of the attempt that is running now (not of an older one)."""
    return (
        event.event is EventType.REQUEUED
        and record.status is JobStatus.PROCESSING
        and (event.attempt or 0) >= record.attempts
    )


def _is_stale(record: JobRecord, event: JobEvent) -> bool:
    if _is_handback(record, event):
        return False
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

    async def claim_idempotency(self, owner: str | None, key: str, job_id: str) -> str | None:
        """Bind (owner, key) to ``job_id``; the job already bound, or None if this call bound it."""
        ...

    async def release_idempotency(self, owner: str | None, key: str) -> None:
        """Unbind (owner, key): the job it named was never accepted, so a retry may submit."""
        ...

    async def purge_expired(self) -> int:
        """Delete final jobs past their retention; how many went (0 where the backend expires)."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be used."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def owner_scope(owner: str | None) -> str:
    """An unambiguous text form of an owner (``null`` for none), for keys and columns."""
    return json.dumps(owner)


def idempotency_ttl(result_ttl: int) -> int:
    """Seconds an idempotency key lives: as long as results, or a day if they are kept forever."""
    return result_ttl or IDEMPOTENCY_TTL_WITHOUT_RETENTION


def purge_interval(result_ttl: int) -> float:
    """Seconds between two purges: a tenth of the retention, at most five minutes."""
    return max(min(result_ttl / 10, 300.0), 0.1)


async def purge_periodically(store: StatusStore, result_ttl: int) -> None:
    """Delete expired jobs now and then until cancelled (nothing to do without retention)."""
    if result_ttl <= 0:
        return
    interval = purge_interval(result_ttl)
    while True:
        await asyncio.sleep(interval)
        try:
            purged = await store.purge_expired()
        except Exception as exc:
            # A store that is down now may be back next time; the expired rows can wait.
            log.warning("store.purge_failed", error=str(exc))
            continue
        if purged:
            log.info("store.purged", jobs=purged)
