"""The status store's contract, run against both backends: SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.store import JobRecord, StatusStore, open_store
from storejobs import RESULT, event, with_job
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobStatus,
)


@dataclass
class Backend:
    """Opens store instances on one shared backing (a database file, or a Redis namespace)."""

    kind: str
    url: str
    namespace: str
    opened: list[StatusStore] = field(default_factory=list)

    def open(self, result_ttl: int = 0) -> StatusStore:
        """A new store instance (another gateway, or the same one after a restart)."""
        store = open_store(self.url, namespace=self.namespace, result_ttl=result_ttl)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each test runs once per backend; Redis keys live under a namespace of the test's own."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        b = Backend("sqlite", f"sqlite:///{tmp_path}/status.db", namespace)
    else:
        b = Backend("redis", request.getfixturevalue("redis_url"), namespace)
    try:
        yield b
    finally:
        for store in b.opened:
            await store.close()
        if b.kind == "redis":  # leave nothing behind on a shared STT_TEST_REDIS_URL
            client = aioredis.Redis.from_url(b.url)
            async for key in client.scan_iter(f"{namespace}:*"):
                await client.delete(key)
            await client.aclose()


async def _wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_status_moves_forward_and_never_back(backend: Backend) -> None:
    store = backend.open()
    await with_job(store)
    assert await store.apply(event(EventType.STARTED, attempt=1))
    assert await store.apply(event(EventType.PROGRESS, progress=0.5))
    assert not await store.apply(event(EventType.PROGRESS, progress=0.4))  # late, smaller
    assert await store.apply(event(EventType.SUCCEEDED, result=RESULT))
    # Duplicates and stragglers after the final state change nothing.
    assert not await store.apply(event(EventType.STARTED, attempt=2))
    assert not await store.apply(event(EventType.PROGRESS, progress=0.9))
    assert not await store.apply(
        event(EventType.FAILED, error=ErrorInfo(code=ErrorCode.INTERNAL, message="late"))
    )
    record = await store.get("j1")
    assert record is not None
    assert record.status is JobStatus.SUCCEEDED
    assert record.result == RESULT
    assert record.error is None
    assert record.progress == 1.0
    assert record.started_at is not None and record.finished_at is not None


async def test_final_event_arriving_first_still_wins(backend: Backend) -> None:
    store = backend.open()
    await with_job(store)
    assert await store.apply(event(EventType.SUCCEEDED, result=RESULT))
    assert not await store.apply(event(EventType.STARTED))
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.SUCCEEDED


async def test_events_for_unknown_jobs_create_them(backend: Backend) -> None:
    """Jobs from outside producers become visible to polling too."""
    store = backend.open()
    await store.apply(event(EventType.STARTED, job_id="outside"))
    record = await store.get("outside")
    assert record is not None and record.status is JobStatus.PROCESSING


async def test_create_never_overwrites_and_discard_only_drops_queued(backend: Backend) -> None:
    store = backend.open()
    await with_job(store, owner="a")
    await store.apply(event(EventType.STARTED))
    await store.create(JobRecord(id="j1", status=JobStatus.QUEUED, owner="b"))
    await store.discard("j1")
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.PROCESSING and record.owner == "a"

    await with_job(store, "never-published", owner="a")
    assert await store.count_active("a") == 2
    await store.discard("never-published")
    assert await store.get("never-published") is None
    assert await store.count_active("a") == 1


async def test_statuses_survive_reopening(backend: Backend) -> None:
    store = backend.open()
    await with_job(store)
    await store.apply(event(EventType.SUCCEEDED, result=RESULT))
    await store.close()
    backend.opened.remove(store)
    reopened = backend.open()
    record = await reopened.get("j1")
    assert record is not None and record.result == RESULT
    assert await reopened.get("missing") is None


async def test_active_jobs_are_counted_per_owner(backend: Backend) -> None:
    store = backend.open()
    for n, owner in enumerate(["a", "a", "b", None]):
        await with_job(store, f"j{n}", owner)
    await store.apply(event(EventType.STARTED, job_id="j0"))
    await store.apply(event(EventType.SUCCEEDED, result=RESULT))  # j1, owner a
    assert await store.count_active("a") == 1
    assert await store.count_active("b") == 1
    assert await store.count_active(None) == 1
    assert await store.count_active("nobody") == 0
    first = await store.get("j0")
    assert first is not None and first.owner == "a"


async def test_final_jobs_and_keys_expire_after_the_retention(backend: Backend) -> None:
    store = backend.open(result_ttl=1)
    await with_job(store, "done", owner="a")
    await with_job(store, "running", owner="a")
    await store.apply(event(EventType.SUCCEEDED, job_id="done", result=RESULT))
    await store.apply(event(EventType.STARTED, job_id="running"))
    assert await store.claim_idempotency("a", "k", "done") is None
    assert (await store.get("done")) is not None  # kept until the retention ends

    async def gone() -> bool:
        return await store.get("done") is None

    await _wait_until(gone)
    await store.purge_expired()
    # Unfinished jobs never expire; the key went with the retention, so it binds anew.
    running = await store.get("running")
    assert running is not None and running.status is JobStatus.PROCESSING
    assert await store.count_active("a") == 1
    assert await store.claim_idempotency("a", "k", "again") is None


async def test_nothing_expires_without_retention(backend: Backend) -> None:
    store = backend.open(result_ttl=0)
    await with_job(store)
    await store.apply(
        event(EventType.FAILED, error=ErrorInfo(code=ErrorCode.BAD_AUDIO, message="x"))
    )
    await asyncio.sleep(1.5)
    assert await store.purge_expired() == 0
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.FAILED


async def test_sqlite_purge_deletes_expired_rows(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/status.db", result_ttl=1)
    await with_job(store, "done")
    await with_job(store, "queued")
    await store.apply(event(EventType.CANCELLED, job_id="done"))
    await asyncio.sleep(1.2)
    assert await store.purge_expired() == 1
    await store.close()
    with sqlite3.connect(tmp_path / "status.db") as db:
        assert [row[0] for row in db.execute("SELECT id FROM jobs")] == ["queued"]


async def test_idempotency_keys_bind_once_per_owner(backend: Backend) -> None:
    store = backend.open()
    assert await store.claim_idempotency("a", "key-1", "job-1") is None
    assert await store.claim_idempotency("a", "key-1", "job-2") == "job-1"
    assert await store.claim_idempotency("b", "key-1", "job-3") is None  # another owner
    assert await store.claim_idempotency(None, "key-1", "job-4") is None  # no owner
    assert await store.claim_idempotency(None, "key-1", "job-5") == "job-4"
    assert await store.claim_idempotency("a", "key-2", "job-6") is None  # another key
    # Owners and keys holding separators do not collide.
    assert await store.claim_idempotency("a:key-1", "x", "job-7") is None
    assert await store.claim_idempotency("a", "key-1:x", "job-8") is None
    # A released key (its publish failed) binds anew.
    await store.release_idempotency("a", "key-1")
    assert await store.claim_idempotency("a", "key-1", "job-9") is None
    assert await backend.open().claim_idempotency("a", "key-1", "job-10") == "job-9"


async def test_concurrent_claims_from_two_stores_bind_one_job(backend: Backend) -> None:
    stores = [backend.open(), backend.open()]
    ids = [f"job-{n}" for n in range(20)]
    answers = await asyncio.gather(
        *(stores[n % 2].claim_idempotency("a", "same", job_id) for n, job_id in enumerate(ids))
    )
    winners = [job_id for job_id, bound in zip(ids, answers, strict=True) if bound is None]
    assert len(winners) == 1
    assert {bound for bound in answers if bound is not None} == {winners[0]}


async def test_concurrent_events_from_two_stores_never_regress(backend: Backend) -> None:
    """Two gateways' recorders apply a storm of events to one job at the same moment."""
    stores = [backend.open(), backend.open()]
    await with_job(stores[0], owner="a")
    await stores[0].apply(event(EventType.STARTED))
    steps = [n / 100 for n in range(1, 51)]
    random.shuffle(steps)
    seen: list[tuple[JobStatus, float]] = []
    storming = True

    async def watch() -> None:
        while storming:
            record = await stores[1].get("j1")
            assert record is not None
            seen.append((record.status, record.progress))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    progress = [
        stores[n % 2].apply(event(EventType.PROGRESS, progress=p)) for n, p in enumerate(steps)
    ]
    await asyncio.gather(*progress)
    record = await stores[1].get("j1")
    assert record is not None and record.progress == 0.5  # the largest, whatever the order

    # The final event races a second storm of (late) progress reports: it wins.
    late = [
        stores[n % 2].apply(event(EventType.PROGRESS, progress=0.6 + n / 200)) for n in range(50)
    ]
    late.insert(25, stores[1].apply(event(EventType.SUCCEEDED, result=RESULT)))
    await asyncio.gather(*late)
    storming = False
    await watcher

    record = await stores[0].get("j1")
    assert record is not None
    assert record.status is JobStatus.SUCCEEDED and record.progress == 1.0
    assert record.result == RESULT
    assert await stores[0].count_active("a") == 0
    progresses = [p for _, p in seen]
    assert progresses == sorted(progresses), "progress went backwards"
    ranks = [status.rank for status, _ in seen]
    assert ranks == sorted(ranks), "status went backwards"


async def test_events_of_another_producer_change_nothing(backend: Backend) -> None:
    """An outside producer reusing a gateway job's id (as message_id) cannot touch the job."""
    store = backend.open()
    await store.create(JobRecord(id="j1", status=JobStatus.QUEUED, owner="a", producer="gw"))
    failure = ErrorInfo(code=ErrorCode.BAD_AUDIO, message="not audio")
    for producer in ("mallory", ""):  # another user; a publisher that gave no user_id
        assert not await store.apply(event(EventType.FAILED, error=failure, producer=producer))
        assert not await store.apply(event(EventType.STARTED, producer=producer))
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.QUEUED and record.error is None
    assert await store.count_active("a") == 1
    # The job's own producer's events still count.
    assert await store.apply(event(EventType.SUCCEEDED, result=RESULT, producer="gw"))
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.producer == "gw"


async def test_jobs_created_by_events_belong_to_their_producer(backend: Backend) -> None:
    store = backend.open()
    assert await store.apply(event(EventType.STARTED, job_id="outside", producer="acme"))
    assert not await store.apply(event(EventType.FAILED, job_id="outside", producer="mallory"))
    assert await store.apply(event(EventType.PROGRESS, job_id="outside", progress=0.5))
    await store.close()
    backend.opened.remove(store)
    record = await backend.open().get("outside")  # the producer is stored, not only held
    assert record is not None and record.producer == "acme"
    assert record.status is JobStatus.PROCESSING and record.progress == 0.5


async def test_a_producer_unknown_on_either_side_does_not_block_events(backend: Backend) -> None:
    """Records made before producers were recorded, and events of old daemons, still apply."""
    store = backend.open()
    await with_job(store, "old-record")  # producer None
    assert await store.apply(event(EventType.STARTED, job_id="old-record", producer="gw"))
    await store.create(JobRecord(id="new-record", status=JobStatus.QUEUED, producer="gw"))
    assert await store.apply(event(EventType.STARTED, job_id="new-record"))  # producer None
    old = await store.get("old-record")
    assert old is not None and old.producer is None  # not claimed by the first event


async def test_sqlite_adds_the_producer_column_to_an_old_database(tmp_path: Path) -> None:
    """A data directory from before producers (no ``producer`` column) keeps working."""
    path = tmp_path / "status.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, owner TEXT, model TEXT,"
            " options TEXT, filename TEXT, created_at TEXT, started_at TEXT, finished_at TEXT,"
            " updated_at TEXT, progress REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL"
            " DEFAULT 0, worker TEXT, result TEXT, error TEXT, expires_at REAL)"
        )
        db.execute("INSERT INTO jobs (id, status) VALUES ('before', 'queued')")
    store = open_store(f"sqlite:///{path}")
    try:
        before = await store.get("before")
        assert before is not None and before.producer is None
        assert await store.apply(event(EventType.STARTED, job_id="before", producer="gw"))
        await store.create(JobRecord(id="after", status=JobStatus.QUEUED, producer="gw"))
        after = await store.get("after")
        assert after is not None and after.producer == "gw"
    finally:
        await store.close()


async def test_a_late_event_does_not_bring_back_a_purged_job(backend: Backend) -> None:
    store = backend.open(result_ttl=1)
    await with_job(store, "done")
    final = event(EventType.SUCCEEDED, job_id="done", result=RESULT)
    assert await store.apply(final)

    async def gone() -> bool:
        return await store.get("done") is None

    await _wait_until(gone)
    await store.purge_expired()
    # A redelivered final event, a straggling progress report: older than the retention.
    assert not await store.apply(final)
    late = event(EventType.PROGRESS, job_id="done", progress=0.9, timestamp=final.timestamp)
    assert not await store.apply(late)
    assert await store.get("done") is None


async def test_events_older_than_the_retention_create_no_job(backend: Backend) -> None:
    store = backend.open(result_ttl=60)
    now = datetime.now(UTC)
    old = event(EventType.STARTED, job_id="old", timestamp=now - timedelta(seconds=120))
    naive = event(
        EventType.STARTED,
        job_id="naive",
        timestamp=(now - timedelta(seconds=120)).replace(tzinfo=None),
    )
    recent = event(EventType.STARTED, job_id="recent", timestamp=now - timedelta(seconds=30))
    assert not await store.apply(old)
    assert not await store.apply(naive)
    assert await store.apply(recent)
    assert await store.get("old") is None and await store.get("naive") is None
    assert await store.get("recent") is not None
    # A job the store still has takes its old events as before.
    await with_job(store, "kept")
    assert await store.apply(
        event(EventType.STARTED, job_id="kept", timestamp=now - timedelta(seconds=120))
    )
    # Without retention nothing is too old.
    forever = backend.open(result_ttl=0)
    assert await forever.apply(old)
