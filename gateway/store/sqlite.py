"""SQLite status store (WAL): the embedded default."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.store.base import JobRecord, advance
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
    error TEXT
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
)


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _row(record: JobRecord) -> tuple[Any, ...]:
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
    """

    def __init__(self, path: Path) -> None:
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
        self._db.execute(_ACTIVE_INDEX)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
        return cls(Path(url.removeprefix("sqlite:///")))

    def _upsert(self, record: JobRecord) -> None:
        placeholders = ",".join("?" * len(_COLUMNS))
        self._db.execute(
            f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})",
            _row(record),
        )

    async def create(self, record: JobRecord) -> None:
        """Insert unless the job exists already (an event may have created it)."""
        placeholders = ",".join("?" * len(_COLUMNS))
        self._db.execute(
            f"INSERT OR IGNORE INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})",
            _row(record),
        )

    async def discard(self, job_id: str) -> None:
        """Delete a job that was never accepted."""
        self._db.execute("DELETE FROM jobs WHERE id = ? AND status = 'queued'", (job_id,))

    async def get(self, job_id: str) -> JobRecord | None:
        """Fetch one job."""
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
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

    async def ping(self) -> None:
        """A trivial query."""
        self._db.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        """Close the connection."""
        self._db.close()
