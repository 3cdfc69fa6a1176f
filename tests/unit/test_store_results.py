"""Transcripts in the status store: kept apart, decoded only when read, old layouts still read."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.store import JobRecord, StatusStore, open_store
from storejobs import backing_of
from stt_daemon.common.protocol import (
    EventType,
    JobEvent,
    JobStatus,
    Segment,
    TranscriptResult,
)

RESULT = TranscriptResult(
    text="hello there",
    language="en",
    duration=2.0,
    model="tiny.en",
    segments=[Segment(id=0, start=0.0, end=2.0, text="hello there")],
)


class Backing:
    """One store's backing, with a hand on its raw storage (a SQLite file, a Redis namespace)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url, self.namespace = url, namespace
        self.store: StatusStore = open_store(url, namespace=namespace, result_ttl=3600)

    async def spoil_transcript(self, job_id: str) -> None:
        """Overwrite the stored transcript with JSON that cannot be a transcript."""
        if self.url.startswith("sqlite"):
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                db.execute("UPDATE jobs SET result = '{\"text\": 1}' WHERE id = ?", (job_id,))
        else:
            client = aioredis.Redis.from_url(self.url)
            await client.set(f"{self.namespace}:result:{job_id}", b'{"text": 1}', keepttl=True)
            await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def backing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backing]:
    """Each test once per backend; Redis keys under a namespace of the test's own."""
    async with backing_of(Backing, request, tmp_path) as b:
        yield b


async def _finished(store: StatusStore, job_id: str = "j1") -> None:
    await store.create(JobRecord(id=job_id, status=JobStatus.QUEUED, model="tiny.en"))
    event = JobEvent(event=EventType.SUCCEEDED, job_id=job_id, model="tiny.en", result=RESULT)
    assert await store.apply(event)


async def test_the_transcript_comes_back_whole(backing: Backing) -> None:
    await _finished(backing.store)
    record = await backing.store.get("j1")
    assert record is not None and record.status is JobStatus.SUCCEEDED
    assert record.result == RESULT


async def test_a_status_read_never_decodes_the_transcript(backing: Backing) -> None:
    await _finished(backing.store)
    await backing.spoil_transcript("j1")
    # The status, the progress, the finish time: all there without the transcript.
    record = await backing.store.get("j1")
    assert record is not None and record.status is JobStatus.SUCCEEDED
    assert record.progress == 1.0 and record.finished_at is not None
    # A late duplicate of the final event reads the job too, and changes nothing.
    late = JobEvent(event=EventType.FAILED, job_id="j1", model="tiny.en")
    assert not await backing.store.apply(late)
    # Only reading the transcript decodes it.
    with pytest.raises(ValidationError):
        _ = record.result


async def test_events_after_the_final_one_keep_the_transcript(backing: Backing) -> None:
    await _finished(backing.store)
    for kind in (EventType.PROGRESS, EventType.FAILED, EventType.SUCCEEDED):
        assert not await backing.store.apply(JobEvent(event=kind, job_id="j1", model="tiny.en"))
    record = await backing.store.get("j1")
    assert record is not None and record.result == RESULT


async def test_redis_expires_the_transcript_with_its_job(redis_url: str) -> None:
    backing = Backing(redis_url, f"t{uuid.uuid4().hex[:10]}")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await _finished(backing.store)
        keys = [f"{backing.namespace}:{kind}:j1" for kind in ("job", "result")]
        ttls = [await client.ttl(key) for key in keys]
        assert all(0 < ttl <= 3600 for ttl in ttls), ttls
        await client.delete(*keys)
    finally:
        await backing.store.close()
        await client.aclose()


async def test_a_discarded_job_leaves_no_transcript(backing: Backing) -> None:
    await backing.store.create(JobRecord(id="j2", status=JobStatus.QUEUED))
    await backing.store.discard("j2")
    assert await backing.store.get("j2") is None


async def test_redis_reads_a_record_that_holds_its_transcript_inline(redis_url: str) -> None:
    """Records written before the transcript had a key of its own still read."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    client = aioredis.Redis.from_url(redis_url)
    store = open_store(redis_url, namespace=namespace)
    old = (
        '{"id": "old", "status": "succeeded", "owner": null, "model": "tiny.en",'
        ' "options": {"model": "tiny.en", "language": "en"}, "filename": "a.wav",'
        ' "created_at": "2024-05-01T10:00:00Z", "started_at": null, "finished_at":'
        ' "2024-05-01T10:00:05Z", "updated_at": null, "progress": 1.0, "attempts": 1,'
        f' "worker": "w", "result": {RESULT.model_dump_json()}, "error": null,'
        ' "producer": "stt-gateway"}'
    )
    try:
        await client.set(f"{namespace}:job:old", old)
        record = await store.get("old")
        assert record is not None and record.status is JobStatus.SUCCEEDED
        assert record.result == RESULT and record.filename == "a.wav"
    finally:
        await store.close()
        await client.delete(f"{namespace}:job:old")
        await client.aclose()


async def test_sqlite_reads_a_database_of_the_previous_version(tmp_path: Path) -> None:
    """A data directory written before this version opens and reads as it was."""
    path = tmp_path / "status.db"
    finished = datetime(2024, 5, 1, 10, 0, 5, tzinfo=UTC)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, owner TEXT, model TEXT,"
            " options TEXT, filename TEXT, created_at TEXT, started_at TEXT, finished_at TEXT,"
            " updated_at TEXT, progress REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL"
            " DEFAULT 0, worker TEXT, result TEXT, error TEXT, expires_at REAL, producer TEXT)"
        )
        db.execute(
            "INSERT INTO jobs (id, status, model, options, finished_at, progress, result)"
            " VALUES ('before', 'succeeded', 'tiny.en', ?, ?, 1.0, ?)",
            (
                '{"model": "tiny.en", "language": "en"}',
                finished.isoformat(),
                RESULT.model_dump_json(),
            ),
        )
    store = open_store(f"sqlite:///{path}")
    try:
        record = await store.get("before")
        assert record is not None and record.status is JobStatus.SUCCEEDED
        assert record.finished_at == finished and record.result == RESULT
    finally:
        await store.close()
