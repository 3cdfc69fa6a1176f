"""``Idempotency-Key``: repeats of a submission make one job, on SQLite and on Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractChannel

from stack import JFK, Gateway, Stack, event_tap

pytestmark = pytest.mark.integration


def _blobs(stack: Stack) -> list[Path]:
    """Stored uploads (not the partial ones being written)."""
    return [p for p in (stack.data_dir / "blobs").iterdir() if not p.name.startswith(".")]


async def _post(
    client: httpx.AsyncClient, path: str, key: str | None, name: str = "jfk.flac"
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(path, files={"file": (name, JFK.read_bytes())}, headers=headers)


async def _concurrent(gw: Gateway, path: str, key: str, times: int = 5) -> list[dict[str, Any]]:
    async with gw.client() as client:
        answers = await asyncio.gather(*(_post(client, path, key) for _ in range(times)))
    assert [a.status_code for a in answers] == [202] * times, [a.text for a in answers]
    return [a.json() for a in answers]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_concurrent_repeats_make_one_job(
    stack: Stack, channel: AbstractChannel, redis_url: str, backend: str
) -> None:
    if backend == "redis":
        stack.env["STT_STATUS_URL"] = redis_url
    gw = await stack.gateway()
    async with event_tap(channel, stack.names) as tap:
        # No daemon yet: every job published stays in the queue, its blob on disk.
        first = await _concurrent(gw, "/v1/jobs", "upload-42")
        job_id = first[0]["id"]
        assert {a["id"] for a in first} == {job_id}
        assert len(_blobs(stack)) == 1, "a repeat stored a second upload"

        other = (await _concurrent(gw, "/v1/jobs", "upload-43", times=1))[0]["id"]
        legacy = await _concurrent(gw, "/translate", "upload-44", times=3)
        legacy_id = legacy[0]["task_id"]
        assert {a["task_id"] for a in legacy} == {legacy_id}
        assert len({job_id, other, legacy_id}) == 3
        assert len(_blobs(stack)) == 3

        # One daemon, one job at a time: the queue is worked in order, so any
        # duplicate published before the last job would have run before it ends.
        await stack.daemon(STT_PREFETCH="1")
        for done in (job_id, other, legacy_id):
            await tap.wait_for(done, ("job.succeeded",))
        assert {e.job_id for e in tap.events} == {job_id, other, legacy_id}
        assert len(tap.of(job_id, "job.succeeded")) == 1
        assert len(tap.of(job_id, "job.started")) == 1

    # A repeat after the job finished still answers it (202, the same id, its status now).
    again = (await _concurrent(gw, "/v1/jobs", "upload-42", times=1))[0]
    assert again["id"] == job_id and again["status"] == "succeeded"
    assert _blobs(stack) == [], "the repeat's upload was left behind"


async def test_bad_idempotency_keys_are_refused(stack: Stack) -> None:
    gw = await stack.gateway()
    async with gw.client() as client:
        for path in ("/v1/jobs", "/translate"):
            too_long = await _post(client, path, "k" * 256)
            assert too_long.status_code == 400
            assert "Idempotency-Key" in too_long.json()["detail"]
            empty = await _post(client, path, "")
            assert empty.status_code == 400
        longest = await _post(client, "/v1/jobs", "k" * 255)
        assert longest.status_code == 202
    assert len(_blobs(stack)) == 1  # refused uploads leave nothing behind
