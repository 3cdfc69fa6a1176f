"""Daemons announcing what they serve (GET /v1/models) and job cancellation (DELETE)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from audiofiles import repeated
from stack import JFK, EventTap, Gateway, Stack, event_tap
from stt_daemon.common.protocol import JobEvent
from stt_daemon.models import resolve

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]

FAST = {"STT_ANNOUNCE_INTERVAL": "0.5"}


async def _models(gw: Gateway) -> dict[str, dict[str, Any]]:
    async with gw.client() as client:
        body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    return {m["id"]: m for m in body["data"]}


async def _wait_models(gw: Gateway, want: dict[str, int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {name: m["daemons"] for name, m in (await _models(gw)).items()}
        if seen == want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"models never became {want}; last {seen}")


async def _daemon_report(
    tap: EventTap, job_id: str, kinds: tuple[str, ...], timeout: float = 30
) -> JobEvent:
    """The job's first event of these kinds from a daemon (the gateway reports a
    cancellation too, as soon as it is asked: its events name no worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports = [e for e in tap.of(job_id) if e.event in kinds and e.worker is not None]
        if reports:
            return reports[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {kinds} from a daemon for {job_id}; saw {tap.of(job_id)}")


async def test_models_list_follows_live_daemons(stack: Stack) -> None:
    gw = await stack.gateway(environ=FAST)
    assert await _models(gw) == {}
    first = await stack.daemon(environ=FAST)
    await _wait_models(gw, {"tiny.en": 1})
    model = (await _models(gw))["tiny.en"]
    assert model["capacity"] == 3 and model["queue"].endswith(".jobs.tiny.en")
    second = await stack.daemon(environ=FAST)
    await _wait_models(gw, {"tiny.en": 2})
    first.signal(signal.SIGKILL)  # says nothing: drops out after three silent intervals
    await _wait_models(gw, {"tiny.en": 1})
    second.signal(signal.SIGTERM)  # says goodbye: drops out at once
    await _wait_models(gw, {}, timeout=3)


async def test_models_served_only_by_daemons_are_accepted(stack: Stack) -> None:
    """A daemon may serve a model the gateway was not configured with."""
    tiny = resolve("tiny.en").path
    gw = await stack.gateway(environ=FAST)
    async with gw.client() as client:
        refused = await client.post(
            "/v1/jobs", files={"file": ("a.flac", JFK.read_bytes())}, data={"model": "mine"}
        )
        assert refused.status_code == 400
        assert "mine" in refused.json()["detail"] and "tiny.en" in refused.json()["detail"]
    await stack.daemon(environ=FAST, STT_MODELS=f"mine={tiny}")
    await _wait_models(gw, {"mine": 1})
    job = await gw.submit(JFK, model="mine")
    final = await gw.wait_final(job["id"])
    assert final["status"] == "succeeded" and final["model"] == "mine"


async def test_cancelled_queued_job_is_skipped(stack: Stack, channel: AbstractChannel) -> None:
    gw = await stack.gateway()
    job = await gw.submit(JFK)
    async with gw.client() as client:
        cancelled = await client.delete(f"/v1/jobs/{job['id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert (await client.delete(f"/v1/jobs/{job['id']}")).status_code == 409
        assert (await client.delete("/v1/jobs/nope")).status_code == 404
        result = await client.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 409 and "cancelled" in result.json()["detail"]
        assert (await client.get(f"/status/{job['id']}")).json() == {"status": "failed"}
    async with event_tap(channel, stack.names) as tap:
        # A daemon started after the cancellation still skips the job.
        await stack.daemon()
        event = await tap.wait_for(job["id"], ("job.cancelled", "job.started"), timeout=60)
        after = await gw.submit(JFK)
        await tap.wait_for(after["id"], ("job.succeeded",))
    assert event.event == "job.cancelled"
    assert not tap.of(job["id"], "job.started")
    assert (await gw.wait_final(job["id"]))["status"] == "cancelled"


async def test_cancelling_a_running_job_stops_it(
    stack: Stack, channel: AbstractChannel, tmp_path: Path
) -> None:
    speech = repeated(JFK, 8, tmp_path / "long.flac")
    gw = await stack.gateway()
    daemon = await stack.daemon(STT_PREFETCH="1")
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(speech)
        await tap.wait_for(job["id"], ("job.progress",))
        async with gw.client() as client:
            assert (await client.delete(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"
        stopped = await _daemon_report(tap, job["id"], ("job.cancelled", "job.succeeded"))
        assert stopped.event == "job.cancelled"
        # The daemon carries on with the next job.
        nxt = await gw.submit(JFK)
        assert (await tap.wait_for(nxt["id"], ("job.succeeded", "job.failed"))).event == (
            "job.succeeded"
        )
    assert daemon.popen.poll() is None
    assert not tap.of(job["id"], "job.succeeded")
