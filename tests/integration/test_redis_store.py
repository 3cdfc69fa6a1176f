"""The Redis status store on real parts: gateways sharing one Redis, restarts, retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from stack import JFK, JFK_WORDS, Gateway, Stack, normalise
from stt_daemon.localbroker import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at what the gateways wrote."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def _result_text(gw: Gateway, job_id: str) -> str:
    async with gw.client() as client:
        response = await client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200, response.text
    text: str = response.json()["text"]
    return text


async def test_gateways_share_jobs_results_and_survive_restarts(
    stack: Stack, redis_url: str, redis_client: aioredis.Redis
) -> None:
    # Both gateways run a recorder on the same queue (competing consumers): each
    # event is written to Redis by one of them, and both must see every job.
    gw_a = await stack.gateway(STT_STATUS_URL=redis_url)
    gw_b = await stack.gateway(STT_STATUS_URL=redis_url)
    await stack.daemon()
    jobs = [await gw.submit(JFK) for gw in (gw_a, gw_b, gw_a, gw_b)]
    for job in jobs:
        for gw in (gw_a, gw_b):
            final = await gw.wait_final(job["id"])
            assert final["status"] == "succeeded", final
            assert JFK_WORDS in normalise(await _result_text(gw, job["id"]))

    # The statuses are in Redis under the deployment's namespace, with the retention set.
    key = f"{stack.namespace}:job:{jobs[0]['id']}"
    assert 0 < await redis_client.ttl(key) <= 7 * 24 * 3600
    assert not (stack.data_dir / "status.db").exists()

    for proc in stack.procs:
        if proc.name == "gateway":
            await proc.stop()
    restarted = await stack.gateway(STT_STATUS_URL=redis_url)
    for job in jobs:
        final = await restarted.wait_final(job["id"], timeout=10)
        assert final["status"] == "succeeded" and final["finished_at"] is not None
        assert JFK_WORDS in normalise(await _result_text(restarted, job["id"]))


async def test_job_lifecycle_on_redis(stack: Stack, redis_url: str) -> None:
    gw = await stack.gateway(STT_STATUS_URL=redis_url)
    await stack.daemon()
    job = await gw.submit(JFK, language="en")
    assert job["status"] == "queued"
    final = await gw.wait_final(job["id"])
    assert final["status"] == "succeeded"
    assert final["progress"] == 1.0 and final["attempts"] == 1
    assert final["created_at"] <= final["started_at"] <= final["finished_at"]
    assert JFK_WORDS in normalise(await _result_text(gw, job["id"]))
    async with gw.client() as client:
        legacy = await client.get(f"/status/{job['id']}")
        assert legacy.json() == {"status": "finished"}
        assert (await client.get("/v1/jobs/no-such-job")).status_code == 404


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_finished_jobs_expire_after_the_retention(
    stack: Stack, redis_url: str, backend: str
) -> None:
    stack.env["STT_RESULT_TTL"] = "3"
    if backend == "redis":
        stack.env["STT_STATUS_URL"] = redis_url
    gw = await stack.gateway()
    await stack.daemon()
    job = await gw.submit(JFK)
    assert (await gw.wait_final(job["id"]))["status"] == "succeeded"
    deadline = time.monotonic() + 30
    async with gw.client() as client:
        while (response := await client.get(f"/v1/jobs/{job['id']}")).status_code == 200:
            assert time.monotonic() < deadline, "the finished job did not expire"
            await asyncio.sleep(0.3)
        # Gone exactly like a job that never existed.
        assert response.status_code == 404
        assert response.json() == {"detail": "job not found"}
        assert (await client.get(f"/v1/jobs/{job['id']}/result")).status_code == 404
    if backend == "sqlite":
        # The gateway's purge task deletes the row (Redis expires the key by itself).
        purged = await gw.proc.wait_for_log("store.purged", timeout=30)
        assert purged["jobs"] == 1


async def test_readyz_reports_an_unreachable_redis(stack: Stack) -> None:
    gw = await stack.gateway(wait_ready=False, STT_STATUS_URL=f"redis://127.0.0.1:{free_port()}/0")
    async with gw.client() as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["store"].startswith("error")
        # Reads answer 503 with a sentence too, never a 500.
        job = await client.get("/v1/jobs/some-id")
        assert job.status_code == 503, job.text
        assert job.json() == {"detail": "the status store is unavailable; try again shortly"}
