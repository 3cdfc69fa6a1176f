"""SQLite status store (WAL): the embedded default."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.store.base import (
    JobRecord,
    advance,
    idempotency_ttl,
    options_json,
    owner_scope,
    result_json,
    stored_options,
)
from gateway.store.dbthread import Connection
from stt_daemon.common.protocol import ErrorInfo, JobEvent, JobStatus

#: Seconds a write waits for another process's lock on the database before giving up.
LOCK_TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    owner TEXT,
    model TEXT,
    options TEXT,
    filename TEXT,
    created_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT,
    progress REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    result TEXT,
    error TEXT,
    expires_at REAL,
    producer TEXT
)
"""
# Retention: final jobs carry their expiry (unix seconds) and are purged past it.
_EXPIRY_INDEX = """
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL
"""
# Idempotency keys: ``scope`` is the owner in an unambiguous text form (NULLs are
# never equal in a SQLite key, so a NULL owner could not be unique).
_IDEMPOTENCY = """
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
)
"""
# Serves the concurrent-job quota: a key's unfinished jobs, counted often.
_ACTIVE_INDEX = """
CREATE INDEX IF NOT EXISTS jobs_active_by_owner ON jobs (owner)
WHERE status IN ('queued', 'processing')
"""
# Columns added after the first release, with their types: ALTER TABLE adds each to a
# database made before it existed, so an old data directory keeps working.
_ADDED_COLUMNS = {"owner": "TEXT", "expires_at": "REAL", "producer": "TEXT"}
_COLUMNS = (
    "id",
    "status",
    "owner",
    "model",
    "options",
    "filename",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "progress",
    "attempts",
    "worker",
    "result",
    "error",
    "expires_at",
    "producer",
)
_INSERT = f"INTO jobs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _row(record: JobRecord, expires_at: float | None) -> tuple[Any, ...]:
    return (
        record.id,
        record.status.value,
        record.owner,
        record.model,
        # ``live`` goes inside, as it always has: the column's JSON keeps its shape.
        json.dumps(options_json(record)) if record.options is not None else None,
        record.filename,
        _ts(record.created_at),
        _ts(record.started_at),
        _ts(record.finished_at),
        _ts(record.updated_at),
        record.progress,
        record.attempts,
        record.worker,
        result_json(record),
        record.error.model_dump_json() if record.error else None,
        expires_at,
        record.producer,
    )


def _record(row: sqlite3.Row) -> JobRecord:
    options, live = stored_options(json.loads(row["options"])) if row["options"] else (None, False)
    return JobRecord(
        id=row["id"],
        status=JobStatus(row["status"]),
        owner=row["owner"],
        model=row["model"],
        options=options,
        live=live,
        filename=row["filename"],
        created_at=_dt(row["created_at"]),
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        updated_at=_dt(row["updated_at"]),
        progress=row["progress"],
        attempts=row["attempts"],
        worker=row["worker"],
        # As stored: decoded only if read (a status poll never does).
        result=row["result"] or None,
        error=ErrorInfo.model_validate_json(row["error"]) if row["error"] else None,
        producer=row["producer"],
    )


def _create_schema(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(_SCHEMA)
    columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
    for name, kind in _ADDED_COLUMNS.items():
        if name not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    db.execute(_ACTIVE_INDEX)
    db.execute(_EXPIRY_INDEX)
    db.execute(_IDEMPOTENCY)


def _statement(sql: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], None]:
    """Work that runs one statement (and hands no cursor back across threads)."""

    def work(db: sqlite3.Connection) -> None:
        db.execute(sql, params)

    return work


def _get(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
    # One past its retention is gone even before the purge deletes it.
    row = db.execute(
        "SELECT * FROM jobs WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
        (job_id, time.time()),
    ).fetchone()
    return _record(row) if row else None


class SQLiteStore:
    """Two connections, each used from a thread of its own, never from the event loop.

    A write may wait up to ``lock_timeout`` seconds for another gateway process's
    lock (then :class:`StoreBusy`); the wait blocks the writer's thread, so the event
    loop and its other requests go on. Reads have their own connection and thread:
    with WAL they never wait for a writer, so polls stay fast while a write waits.
    Writes run in the order they were made, each atomic (a savepoint in the writer's
    transaction, see ``dbthread.Connection``); a write is answered once committed.
    ``result_ttl`` (seconds, 0 = forever) is how long final jobs are kept.
    """

    def __init__(self, path: Path, result_ttl: int = 0, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self._ttl = result_ttl
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Connection(
            path, "sqlite-store-write", lock_timeout, _create_schema, batch_writes=True
        )
        try:  # opened once the writer has made the schema
            self._reader = Connection(
                path, "sqlite-store-read", lock_timeout, lambda db: None, batch_writes=False
            )
        except BaseException:
            self._writer.stop()
            raise

    @classmethod
    def from_url(cls, url: str, result_ttl: int = 0) -> SQLiteStore:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
        path = url.removeprefix("sqlite:///")
        if path == url or not path:
            raise ValueError(
                f"invalid STT_STATUS_URL {url!r}: use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        return cls(Path(path), result_ttl)

    def _expiry(self, record: JobRecord) -> float | None:
        # Counted from when the final status is recorded, which is when the job finished.
        if record.status.is_final and self._ttl > 0:
            return time.time() + self._ttl
        return None

    async def create(self, record: JobRecord) -> None:
        """Insert unless the job exists already (an event may have created it)."""
        await self._writer.run(
            _statement(f"INSERT OR IGNORE {_INSERT}", _row(record, self._expiry(record)))
        )

    async def discard(self, job_id: str) -> None:
        """Delete a job that was never accepted."""
        await self._writer.run(
            _statement("DELETE FROM jobs WHERE id = ? AND status = 'queued'", (job_id,))
        )

    async def get(self, job_id: str) -> JobRecord | None:
        """Fetch one job; one past its retention is gone even before the purge deletes it."""
        return await self._reader.run(lambda db: _get(db, job_id))

    async def apply(self, event: JobEvent) -> bool:
        """Read-modify-write in the writer's transaction (safe across processes)."""

        def work(db: sqlite3.Connection) -> bool:
            updated = advance(_get(db, event.job_id), event, result_ttl=self._ttl)
            if updated is None:
                return False
            db.execute(f"INSERT OR REPLACE {_INSERT}", _row(updated, self._expiry(updated)))
            return True

        return await self._writer.run(work)

    async def count_active(self, owner: str | None) -> int:
        """Jobs of this owner still queued or processing."""
        row = await self._reader.run(
            lambda db: db.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner IS ? AND status IN ('queued', 'processing')",
                (owner,),
            ).fetchone()
        )
        return int(row[0])

    async def claim_idempotency(self, owner: str | None, key: str, job_id: str) -> str | None:
        """Insert the binding unless a live one exists (in the writer's transaction)."""
        scope = owner_scope(owner)

        def work(db: sqlite3.Connection) -> str:
            now = time.time()
            db.execute(
                "DELETE FROM idempotency WHERE scope = ? AND key = ? AND expires_at <= ?",
                (scope, key, now),
            )
            db.execute(
                "INSERT OR IGNORE INTO idempotency (scope, key, job_id, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (scope, key, job_id, now + idempotency_ttl(self._ttl)),
            )
            row = db.execute(
                "SELECT job_id FROM idempotency WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
            return str(row[0])

        bound = await self._writer.run(work)
        return None if bound == job_id else bound

    async def release_idempotency(self, owner: str | None, key: str) -> None:
        """Delete the binding."""
        await self._writer.run(
            _statement(
                "DELETE FROM idempotency WHERE scope = ? AND key = ?", (owner_scope(owner), key)
            )
        )

    async def purge_expired(self) -> int:
        """Delete final jobs and idempotency keys past their expiry."""

        def work(db: sqlite3.Connection) -> int:
            now = time.time()
            jobs = db.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,)).rowcount
            db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
            return int(jobs)

        return await self._writer.run(work)

    async def ping(self) -> None:
        """A trivial query (on the reader: it answers even while a write waits for a lock)."""
        await self._reader.run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close both connections."""
        await self._reader.close()
        await self._writer.close()
