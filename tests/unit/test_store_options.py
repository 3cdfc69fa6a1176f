"""Job options in the status store: typed in the record, stored as the JSON they always were."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.routes.jobs import JobView
from gateway.store import JobRecord, StatusStore, open_store
from storejobs import backing_of
from stt_daemon.common.protocol import JobOptions, JobStatus

OPTIONS = JobOptions(model="tiny.en", language="en", word_timestamps=True)


class Backing:
    """One store, with a hand on its raw storage (a SQLite file, a Redis namespace)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url, self.namespace = url, namespace
        self.store: StatusStore = open_store(url, namespace=namespace)

    async def write_old(self, job_id: str, options: dict[str, object]) -> None:
        """Store a queued job as an earlier version wrote it: its options a bare JSON dict."""
        if self.url.startswith("sqlite"):
            await self.store.ping()  # the schema exists once the store has been used
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                db.execute(
                    "INSERT INTO jobs (id, status, model, options) VALUES (?, 'queued', ?, ?)",
                    (job_id, "tiny.en", json.dumps(options)),
                )
            return
        record = {"id": job_id, "status": "queued", "model": "tiny.en", "options": options}
        client = aioredis.Redis.from_url(self.url)
        await client.set(f"{self.namespace}:job:{job_id}", json.dumps(record))
        await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def backing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backing]:
    """Each test once per backend; Redis keys under a namespace of the test's own."""
    async with backing_of(Backing, request, tmp_path) as b:
        yield b


async def test_options_read_back_typed(backing: Backing) -> None:
    await backing.store.create(JobRecord(id="j1", status=JobStatus.QUEUED, options=OPTIONS))
    record = await backing.store.get("j1")
    assert record is not None and record.options == OPTIONS and not record.live


async def test_a_live_sessions_record_reads_back_live(backing: Backing) -> None:
    live = JobRecord(id="s1", status=JobStatus.PROCESSING, options=OPTIONS, live=True)
    await backing.store.create(live)
    record = await backing.store.get("s1")
    assert record is not None and record.live and record.options == OPTIONS


async def test_records_of_before_read_their_options_and_live_flag(backing: Backing) -> None:
    """Records written while options were a dict, "live" inside for a session, still read."""
    await backing.write_old("old", {"model": "tiny.en", "language": "en", "live": True})
    record = await backing.store.get("old")
    assert record is not None and record.live
    assert record.options == JobOptions(model="tiny.en", language="en")


async def test_options_that_no_longer_validate_read_as_none(backing: Backing) -> None:
    """A status poll still answers for a job whose options a newer JobOptions refuses."""
    await backing.write_old("stale", {"model": "tiny.en", "beam_size": 99})
    record = await backing.store.get("stale")
    assert record is not None and record.status is JobStatus.QUEUED and record.options is None


async def test_sqlite_keeps_live_inside_the_options_column(tmp_path: Path) -> None:
    """The column keeps its shape, so a gateway of the previous version reads it too."""
    backing = Backing(f"sqlite:///{tmp_path}/status.db", "t")
    try:
        live = JobRecord(id="s1", status=JobStatus.PROCESSING, options=OPTIONS, live=True)
        await backing.store.create(live)
        with sqlite3.connect(tmp_path / "status.db") as db:
            (column,) = db.execute("SELECT options FROM jobs WHERE id = 's1'").fetchone()
        assert json.loads(column) == {**OPTIONS.model_dump(mode="json"), "live": True}
    finally:
        await backing.store.close()


def test_the_api_shows_options_as_json_with_live_for_a_session() -> None:
    plain = JobView.of(JobRecord(id="j1", status=JobStatus.QUEUED, options=OPTIONS))
    live = JobView.of(JobRecord(id="s1", status=JobStatus.QUEUED, options=OPTIONS, live=True))
    assert plain.options == OPTIONS.model_dump(mode="json") and "live" not in plain.options
    assert live.options == {**OPTIONS.model_dump(mode="json"), "live": True}
    assert JobView.of(JobRecord(id="j2", status=JobStatus.QUEUED)).options is None
