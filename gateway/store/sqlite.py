"""SQLite status store (WAL): the embedded default."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.store.base import JobRecord, advance, idempotency_ttl, owner_scope
from stt_daemon.protocol import ErrorInfo, JobEvent, JobStatus, TranscriptResult

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
    expires_at REAL
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
)


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
        json.dumps(record.options) if record.options is not None else None,
        record.filename,
        _ts(record.created_at),
        _ts(record.started_at),
        _ts(record.finished_at),
        _ts(record.updated_at),
        record.progress,
        record.attempts,
        record.worker,
        record.result.model_dump_json() if record.result else None,
        record.error.model_dump_json() if record.error else None,
        expires_at,
    )


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        status=JobStatus(row["status"]),
        owner=row["owner"],
        model=row["model"],
        options=json.loads(row["options"]) if row["options"] else None,
        filename=row["filename"],
        created_at=_dt(row["created_at"]),
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        updated_at=_dt(row["updated_at"]),
        progress=row["progress"],
        attempts=row["attempts"],
        worker=row["worker"],
        result=TranscriptResult.model_validate_json(row["result"]) if row["result"] else None,
        error=ErrorInfo.model_validate_json(row["error"]) if row["error"] else None,
    )


class SQLiteStore:
    """One connection used from the event loop.

    Calls are made directly on the loop: with WAL and ``synchronous=NORMAL`` a
    read or a small write takes microseconds and never waits for an fsync, which
    is cheaper than a hop to a thread. Each call is atomic because the loop runs
    one at a time; several gateways on one file are serialised by SQLite's lock.
    ``result_ttl`` (seconds, 0 = forever) is how long final jobs are kept.
    """

    def __init__(self, path: Path, result_ttl: int = 0) -> None:
        self._ttl = result_ttl
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "owner" not in columns:  # a database made before API keys existed
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
        if "expires_at" not in columns:  # a database made before retention existed
            self._db.execute("ALTER TABLE jobs ADD COLUMN expires_at REAL")
        self._db.execute(_ACTIVE_INDEX)
        self._db.execute(_EXPIRY_INDEX)
        self._db.execute(_IDEMPOTENCY)

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

    def _upsert(self, record: JobRecord) -> None:
        placeholders = ",".join("?" * len(_COLUMNS))
        self._db.execute(
            f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})",
            _row(record, self._expiry(record)),
        )

    async def create(self, record: JobRecord) -> None:
        """Insert unless the job exists already (an event may have created it)."""
        placeholders = ",".join("?" * len(_COLUMNS))
        self._db.execute(
            f"INSERT OR IGNORE INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})",
            _row(record, self._expiry(record)),
        )

    async def discard(self, job_id: str) -> None:
        """Delete a job that was never accepted."""
        self._db.execute("DELETE FROM jobs WHERE id = ? AND status = 'queued'", (job_id,))

    async def get(self, job_id: str) -> JobRecord | None:
        """Fetch one job; one past its retention is gone even before the purge deletes it."""
        row = self._db.execute(
            "SELECT * FROM jobs WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (job_id, time.time()),
        ).fetchone()
        return _record(row) if row else None

    async def apply(self, event: JobEvent) -> bool:
        """Read-modify-write in one immediate transaction (safe across processes)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            updated = advance(await self.get(event.job_id), event)
            if updated is not None:
                self._upsert(updated)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return updated is not None

    async def count_active(self, owner: str | None) -> int:
        """Jobs of this owner still queued or processing."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE owner IS ? AND status IN ('queued', 'processing')",
            (owner,),
        ).fetchone()
        return int(row[0])

    async def claim_idempotency(self, owner: str | None, key: str, job_id: str) -> str | None:
        """Insert the binding unless a live one exists, in one immediate transaction."""
        scope, now = owner_scope(owner), time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "DELETE FROM idempotency WHERE scope = ? AND key = ? AND expires_at <= ?",
                (scope, key, now),
            )
            self._db.execute(
                "INSERT OR IGNORE INTO idempotency (scope, key, job_id, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (scope, key, job_id, now + idempotency_ttl(self._ttl)),
            )
            row = self._db.execute(
                "SELECT job_id FROM idempotency WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        bound = str(row[0])
        return None if bound == job_id else bound

    async def release_idempotency(self, owner: str | None, key: str) -> None:
        """Delete the binding."""
        self._db.execute(
            "DELETE FROM idempotency WHERE scope = ? AND key = ?", (owner_scope(owner), key)
        )

    async def purge_expired(self) -> int:
        """Delete final jobs and idempotency keys past their expiry."""
        now = time.time()
        jobs = self._db.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,)).rowcount
        self._db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
        return int(jobs)

    async def ping(self) -> None:
        """A trivial query."""
        self._db.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        """Close the connection."""
        self._db.close()
