"""The status store's contract, run against both backends: SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
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
from pydantic import ValidationError

from gateway.config import GatewaySettings
from gateway.store import JobRecord, StatusStore, StoreBusy, open_store, redacted
from gateway.store.sqlite import SQLiteStore
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobStatus,
    TranscriptResult,
)
from stt_daemon.localbroker import free_port

RESULT = TranscriptResult(text="hello", language="en", duration=1.0, model="tiny.en", segments=[])


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


def _event(kind: EventType, job_id: str = "j1", **fields: object) -> JobEvent:
    return JobEvent(event=kind, job_id=job_id, model="tiny.en", **fields)  # type: ignore[arg-type]


async def _with_job(store: StatusStore, job_id: str = "j1", owner: str | None = None) -> None:
    await store.create(
        JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            owner=owner,
            model="tiny.en",
            created_at=datetime.now(UTC),
        )
    )


async def _wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_status_moves_forward_and_never_back(backend: Backend) -> None:
    store = backend.open()
    await _with_job(store)
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


async def test_final_event_arriving_first_still_wins(backend: Backend) -> None:
    store = backend.open()
    await _with_job(store)
    assert await store.apply(_event(EventType.SUCCEEDED, result=RESULT))
    assert not await store.apply(_event(EventType.STARTED))
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.SUCCEEDED


async def test_events_for_unknown_jobs_create_them(backend: Backend) -> None:
    """Jobs from outside producers become visible to polling too."""
    store = backend.open()
    await store.apply(_event(EventType.STARTED, job_id="outside"))
    record = await store.get("outside")
    assert record is not None and record.status is JobStatus.PROCESSING


async def test_create_never_overwrites_and_discard_only_drops_queued(backend: Backend) -> None:
    store = backend.open()
    await _with_job(store, owner="a")
    await store.apply(_event(EventType.STARTED))
    await store.create(JobRecord(id="j1", status=JobStatus.QUEUED, owner="b"))
    await store.discard("j1")
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.PROCESSING and record.owner == "a"

    await _with_job(store, "never-published", owner="a")
    assert await store.count_active("a") == 2
    await store.discard("never-published")
    assert await store.get("never-published") is None
    assert await store.count_active("a") == 1


async def test_statuses_survive_reopening(backend: Backend) -> None:
    store = backend.open()
    await _with_job(store)
    await store.apply(_event(EventType.SUCCEEDED, result=RESULT))
    await store.close()
    backend.opened.remove(store)
    reopened = backend.open()
    record = await reopened.get("j1")
    assert record is not None and record.result == RESULT
    assert await reopened.get("missing") is None


async def test_active_jobs_are_counted_per_owner(backend: Backend) -> None:
    store = backend.open()
    for n, owner in enumerate(["a", "a", "b", None]):
        await _with_job(store, f"j{n}", owner)
    await store.apply(_event(EventType.STARTED, job_id="j0"))
    await store.apply(_event(EventType.SUCCEEDED, result=RESULT))  # j1, owner a
    assert await store.count_active("a") == 1
    assert await store.count_active("b") == 1
    assert await store.count_active(None) == 1
    assert await store.count_active("nobody") == 0
    first = await store.get("j0")
    assert first is not None and first.owner == "a"


async def test_final_jobs_and_keys_expire_after_the_retention(backend: Backend) -> None:
    store = backend.open(result_ttl=1)
    await _with_job(store, "done", owner="a")
    await _with_job(store, "running", owner="a")
    await store.apply(_event(EventType.SUCCEEDED, job_id="done", result=RESULT))
    await store.apply(_event(EventType.STARTED, job_id="running"))
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
    await _with_job(store)
    await store.apply(
        _event(EventType.FAILED, error=ErrorInfo(code=ErrorCode.BAD_AUDIO, message="x"))
    )
    await asyncio.sleep(1.5)
    assert await store.purge_expired() == 0
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.FAILED


async def test_sqlite_purge_deletes_expired_rows(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/status.db", result_ttl=1)
    await _with_job(store, "done")
    await _with_job(store, "queued")
    await store.apply(_event(EventType.CANCELLED, job_id="done"))
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
    await _with_job(stores[0], owner="a")
    await stores[0].apply(_event(EventType.STARTED))
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
        stores[n % 2].apply(_event(EventType.PROGRESS, progress=p)) for n, p in enumerate(steps)
    ]
    await asyncio.gather(*progress)
    record = await stores[1].get("j1")
    assert record is not None and record.progress == 0.5  # the largest, whatever the order

    # The final event races a second storm of (late) progress reports: it wins.
    late = [
        stores[n % 2].apply(_event(EventType.PROGRESS, progress=0.6 + n / 200)) for n in range(50)
    ]
    late.insert(25, stores[1].apply(_event(EventType.SUCCEEDED, result=RESULT)))
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


@pytest.mark.parametrize(
    "url",
    [
        "mysql://db/status",
        "sqlite://relative.db",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/zero",
        "redis:///0",
        "unix://",
        "status.db",
    ],
)
def test_bad_status_urls_are_refused_clearly(url: str) -> None:
    with pytest.raises(ValueError, match="STT_STATUS_URL") as caught:
        open_store(url)
    assert url in str(caught.value)
    with pytest.raises(ValidationError, match="STT_STATUS_URL"):
        GatewaySettings(status_url=url)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@cache:6380/2", "unix:///run/redis.sock?db=1"]
)
def test_redis_url_forms_are_accepted(url: str) -> None:
    assert GatewaySettings(status_url=url).status_url == url


async def test_ping_raises_when_redis_is_unreachable() -> None:
    store = open_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(aioredis.ConnectionError):
            await store.ping()
    finally:
        await store.close()


def test_passwords_stay_out_of_messages_and_logs() -> None:
    with pytest.raises(ValueError) as caught:
        open_store("redis://:s3cret@cache:port/0")
    assert "s3cret" not in str(caught.value) and "cache" in str(caught.value)
    assert redacted("redis://user:s3cret@cache:6379/0") == "redis://user:***@cache:6379/0"
    assert redacted("sqlite:////data/status.db") == "sqlite:////data/status.db"


async def test_events_of_another_producer_change_nothing(backend: Backend) -> None:
    """An outside producer reusing a gateway job's id (as message_id) cannot touch the job."""
    store = backend.open()
    await store.create(JobRecord(id="j1", status=JobStatus.QUEUED, owner="a", producer="gw"))
    failure = ErrorInfo(code=ErrorCode.BAD_AUDIO, message="not audio")
    for producer in ("mallory", ""):  # another user; a publisher that gave no user_id
        assert not await store.apply(_event(EventType.FAILED, error=failure, producer=producer))
        assert not await store.apply(_event(EventType.STARTED, producer=producer))
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.QUEUED and record.error is None
    assert await store.count_active("a") == 1
    # The job's own producer's events still count.
    assert await store.apply(_event(EventType.SUCCEEDED, result=RESULT, producer="gw"))
    record = await store.get("j1")
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.producer == "gw"


async def test_jobs_created_by_events_belong_to_their_producer(backend: Backend) -> None:
    store = backend.open()
    assert await store.apply(_event(EventType.STARTED, job_id="outside", producer="acme"))
    assert not await store.apply(_event(EventType.FAILED, job_id="outside", producer="mallory"))
    assert await store.apply(_event(EventType.PROGRESS, job_id="outside", progress=0.5))
    await store.close()
    backend.opened.remove(store)
    record = await backend.open().get("outside")  # the producer is stored, not only held
    assert record is not None and record.producer == "acme"
    assert record.status is JobStatus.PROCESSING and record.progress == 0.5


async def test_a_producer_unknown_on_either_side_does_not_block_events(backend: Backend) -> None:
    """Records made before producers were recorded, and events of old daemons, still apply."""
    store = backend.open()
    await _with_job(store, "old-record")  # producer None
    assert await store.apply(_event(EventType.STARTED, job_id="old-record", producer="gw"))
    await store.create(JobRecord(id="new-record", status=JobStatus.QUEUED, producer="gw"))
    assert await store.apply(_event(EventType.STARTED, job_id="new-record"))  # producer None
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
        assert await store.apply(_event(EventType.STARTED, job_id="before", producer="gw"))
        await store.create(JobRecord(id="after", status=JobStatus.QUEUED, producer="gw"))
        after = await store.get("after")
        assert after is not None and after.producer == "gw"
    finally:
        await store.close()


async def test_a_late_event_does_not_bring_back_a_purged_job(backend: Backend) -> None:
    store = backend.open(result_ttl=1)
    await _with_job(store, "done")
    final = _event(EventType.SUCCEEDED, job_id="done", result=RESULT)
    assert await store.apply(final)

    async def gone() -> bool:
        return await store.get("done") is None

    await _wait_until(gone)
    await store.purge_expired()
    # A redelivered final event, a straggling progress report: older than the retention.
    assert not await store.apply(final)
    late = _event(EventType.PROGRESS, job_id="done", progress=0.9, timestamp=final.timestamp)
    assert not await store.apply(late)
    assert await store.get("done") is None


async def test_events_older_than_the_retention_create_no_job(backend: Backend) -> None:
    store = backend.open(result_ttl=60)
    now = datetime.now(UTC)
    old = _event(EventType.STARTED, job_id="old", timestamp=now - timedelta(seconds=120))
    naive = _event(
        EventType.STARTED,
        job_id="naive",
        timestamp=(now - timedelta(seconds=120)).replace(tzinfo=None),
    )
    recent = _event(EventType.STARTED, job_id="recent", timestamp=now - timedelta(seconds=30))
    assert not await store.apply(old)
    assert not await store.apply(naive)
    assert await store.apply(recent)
    assert await store.get("old") is None and await store.get("naive") is None
    assert await store.get("recent") is not None
    # A job the store still has takes its old events as before.
    await _with_job(store, "kept")
    assert await store.apply(
        _event(EventType.STARTED, job_id="kept", timestamp=now - timedelta(seconds=120))
    )
    # Without retention nothing is too old.
    forever = backend.open(result_ttl=0)
    assert await forever.apply(old)


class Ticker:
    """Measures the longest the event loop went without running this task."""

    def __init__(self) -> None:
        self.longest_gap = 0.0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.longest_gap


def _lock(path: Path) -> sqlite3.Connection:
    """Another process's writer, as a second connection holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO idempotency VALUES ('x', 'x', 'x', 0)")
    return other


async def test_sqlite_waits_for_a_lock_without_blocking_the_event_loop(tmp_path: Path) -> None:
    """A write waits for another process's lock off the loop; reads still answer meanwhile."""
    store = open_store(f"sqlite:///{tmp_path}/status.db")
    try:
        await _with_job(store)
        other = _lock(tmp_path / "status.db")
        ticker = Ticker()
        write = asyncio.create_task(store.apply(_event(EventType.STARTED)))
        await asyncio.sleep(2.5)
        assert not write.done(), "the write did not wait for the lock"
        started = time.monotonic()
        record = await store.get("j1")
        assert record is not None and record.status is JobStatus.QUEUED
        assert await store.count_active(None) == 1
        assert time.monotonic() - started < 0.2, "a read waited behind the locked write"
        other.execute("COMMIT")
        other.close()
        assert await asyncio.wait_for(write, 2.0)
        assert await ticker.stop() < 0.2, "the event loop was blocked"
        record = await store.get("j1")
        assert record is not None and record.status is JobStatus.PROCESSING
    finally:
        await store.close()


async def test_sqlite_gives_up_on_a_lock_held_too_long(tmp_path: Path) -> None:
    """Past ``lock_timeout`` a write fails with StoreBusy, which says what happened."""
    store = SQLiteStore(tmp_path / "status.db", lock_timeout=0.5)
    other = _lock(tmp_path / "status.db")
    try:
        ticker = Ticker()
        started = time.monotonic()
        with pytest.raises(StoreBusy, match=r"locked by another process for 0\.5 s"):
            await _with_job(store)
        assert 0.4 < time.monotonic() - started < 2.0
        assert await ticker.stop() < 0.2
        other.execute("ROLLBACK")
        await _with_job(store)  # the lock is gone: the next write goes through
        assert await store.get("j1") is not None
    finally:
        other.close()
        await store.close()


async def test_sqlite_writes_made_together_fail_alone(tmp_path: Path) -> None:
    """Concurrent writes share a transaction; one that raises takes none of the others down."""
    store = open_store(f"sqlite:///{tmp_path}/status.db")
    try:
        for n in range(10):
            await _with_job(store, f"j{n}")
        with sqlite3.connect(tmp_path / "status.db") as db:  # a row that will not load
            db.execute("UPDATE jobs SET error = 'not json' WHERE id = 'j3'")
        outcomes = await asyncio.gather(
            *(store.apply(_event(EventType.STARTED, job_id=f"j{n}")) for n in range(10)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[3], ValidationError)
        assert [o for n, o in enumerate(outcomes) if n != 3] == [True] * 9
        assert await store.count_active(None) == 10
        for n in (0, 9):
            record = await store.get(f"j{n}")
            assert record is not None and record.status is JobStatus.PROCESSING
    finally:
        await store.close()
