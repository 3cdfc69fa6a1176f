"""The SQLite status store under another process's lock: it waits off the event loop, in time."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.store import StoreBusy, open_store
from gateway.store.sqlite import SQLiteStore
from storejobs import event, with_job
from stt_daemon.common.protocol import (
    EventType,
    JobStatus,
)


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
        await with_job(store)
        other = _lock(tmp_path / "status.db")
        ticker = Ticker()
        write = asyncio.create_task(store.apply(event(EventType.STARTED)))
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
            await with_job(store)
        assert 0.4 < time.monotonic() - started < 2.0
        assert await ticker.stop() < 0.2
        other.execute("ROLLBACK")
        await with_job(store)  # the lock is gone: the next write goes through
        assert await store.get("j1") is not None
    finally:
        other.close()
        await store.close()


async def test_sqlite_writes_made_together_fail_alone(tmp_path: Path) -> None:
    """Concurrent writes share a transaction; one that raises takes none of the others down."""
    store = open_store(f"sqlite:///{tmp_path}/status.db")
    try:
        for n in range(10):
            await with_job(store, f"j{n}")
        with sqlite3.connect(tmp_path / "status.db") as db:  # a row that will not load
            db.execute("UPDATE jobs SET error = 'not json' WHERE id = 'j3'")
        outcomes = await asyncio.gather(
            *(store.apply(event(EventType.STARTED, job_id=f"j{n}")) for n in range(10)),
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
