"""Jobs and events the status store tests write (tests/unit/test_store*.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import redis.asyncio as aioredis

from gateway.store import JobRecord, StatusStore
from stt_daemon.common.protocol import EventType, JobEvent, JobStatus, TranscriptResult

RESULT = TranscriptResult(text="hello", language="en", duration=1.0, model="tiny.en", segments=[])


def event(kind: EventType, job_id: str = "j1", **fields: object) -> JobEvent:
    return JobEvent(event=kind, job_id=job_id, model="tiny.en", **fields)  # type: ignore[arg-type]


async def with_job(store: StatusStore, job_id: str = "j1", owner: str | None = None) -> None:
    await store.create(
        JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            owner=owner,
            model="tiny.en",
            created_at=datetime.now(UTC),
        )
    )


class HasStore(Protocol):
    """What :func:`backing_of` closes: a test's hand on one store."""

    store: StatusStore


B = TypeVar("B", bound=HasStore)


@contextlib.asynccontextmanager
async def backing_of(
    make: Callable[[str, str], B], request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[B]:
    """``make(url, namespace)`` on the backend ``request.param`` names, cleaned up after.

    SQLite in a file of the test's own; Redis (the session's server) with keys under a
    namespace of the test's own, deleted after the store is closed.
    """
    namespace = f"t{uuid.uuid4().hex[:10]}"
    url = (
        f"sqlite:///{tmp_path}/status.db"
        if request.param == "sqlite"
        else request.getfixturevalue("redis_url")
    )
    backing = make(url, namespace)
    try:
        yield backing
    finally:
        await backing.store.close()
        if not url.startswith("sqlite"):
            client = aioredis.Redis.from_url(url)
            async for key in client.scan_iter(f"{namespace}:*"):
                await client.delete(key)
            await client.aclose()
