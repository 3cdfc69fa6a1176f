"""Prometheus metrics of a real gateway and a real daemon, and request ids in their logs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack import JFK, Stack
from stt_daemon.localbroker import free_port

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (None when absent)."""
    return samples.get((name, frozenset(labels.items())))


async def scrape_until(url: str, done: Callable[[Samples], bool], timeout: float = 60.0) -> Samples:
    """Scrape until ``done`` holds (counters trail the HTTP answers by a moment)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            response = await client.get(url)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
            samples = parse(response.text)
            if done(samples) or time.monotonic() > deadline:
                return samples
            await asyncio.sleep(0.3)


async def access_lines(
    lines: Callable[[], list[dict[str, Any]]], request_id: str
) -> list[dict[str, Any]]:
    """The ``http.request`` lines of one request, once there is one (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        found = [
            line
            for line in lines()
            if line.get("event") == "http.request" and line.get("request_id") == request_id
        ]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_counts_timings_routes_and_request_ids(stack: Stack) -> None:
    gw = await stack.gateway()
    metrics_port = free_port()
    daemon = await stack.daemon(STT_METRICS_PORT=str(metrics_port))
    async with gw.client() as client:
        response = await client.post(
            "/v1/jobs",
            files={"file": ("jfk.flac", JFK.read_bytes(), "audio/flac")},
            headers={"X-Request-ID": "itest-submit-1"},
        )
        assert response.status_code == 202
        assert response.headers["X-Request-ID"] == "itest-submit-1"
        # Not a form: refused before it reaches the broker.
        assert (await client.post("/v1/jobs", content=b"x")).status_code == 415
    ok = response.json()
    bad = await gw.submit(b"this is not audio", name="junk.wav")
    assert (await gw.wait_final(ok["id"]))["status"] == "succeeded"
    failed = await gw.wait_final(bad["id"])
    assert failed["status"] == "failed"
    code = failed["error"]["code"]

    gateway = await scrape_until(
        f"{gw.url}/metrics",
        lambda s: get(s, "stt_gateway_jobs_finished_total", model="tiny.en", status="failed") == 1,
    )
    finished = "stt_gateway_jobs_finished_total"
    assert get(gateway, finished, model="tiny.en", status="succeeded") == 1
    assert get(gateway, finished, model="tiny.en", status="failed") == 1
    assert get(gateway, "stt_gateway_jobs_submitted_total", model="tiny.en") == 2
    assert get(gateway, "stt_gateway_jobs_refused_total", reason="invalid") == 1
    # Polled by wait_final: counted under the route's template, never under a job id.
    polls = get(
        gateway,
        "stt_gateway_http_requests_total",
        route="/v1/jobs/{job_id}",
        method="GET",
        status="200",
    )
    assert polls is not None and polls >= 2
    assert (
        get(
            gateway,
            "stt_gateway_http_requests_total",
            route="/v1/jobs",
            method="POST",
            status="202",
        )
        == 2
    )
    labels = {value for _, pairs in gateway for _, value in pairs}
    assert ok["id"] not in labels and bad["id"] not in labels
    assert get(gateway, "stt_gateway_queue_depth", model="tiny.en") == 0

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    jobs = "stt_daemon_jobs_total"
    worker = await scrape_until(
        url, lambda s: get(s, jobs, model="tiny.en", outcome="failed", error_code=code) == 1
    )
    assert get(worker, jobs, model="tiny.en", outcome="succeeded", error_code="") == 1
    assert get(worker, jobs, model="tiny.en", outcome="failed", error_code=code) == 1
    assert get(worker, "stt_daemon_real_time_factor_count", model="tiny.en") == 1
    rtf = get(worker, "stt_daemon_real_time_factor_sum", model="tiny.en")
    assert rtf is not None and 0 < rtf < 2
    assert get(worker, "stt_daemon_transcription_seconds_count", model="tiny.en") == 1
    audio = get(worker, "stt_daemon_audio_seconds_total", model="tiny.en")
    assert audio == pytest.approx(11.0, abs=0.2)
    assert get(worker, "stt_daemon_jobs_in_flight", model="tiny.en") == 0

    # The id the client sent is on the gateway's access line and the daemon's job line.
    access = await access_lines(gw.proc.log_lines, "itest-submit-1")
    assert [(a["method"], a["route"], a["status"]) for a in access] == [("POST", "/v1/jobs", 202)]
    done = [
        line
        for line in daemon.log_lines()
        if line.get("event") == "job.done" and line.get("job_id") == ok["id"]
    ]
    assert [line.get("request_id") for line in done] == ["itest-submit-1"]


async def test_request_id_is_made_when_missing_and_on_every_line(stack: Stack) -> None:
    gw = await stack.gateway()
    async with gw.client() as client:
        response = await client.get("/v1/jobs/no-such-job")
    assert response.status_code == 404
    made = response.headers["X-Request-ID"]
    assert len(made) == 32
    # The access line is written once the response has gone: give it a moment.
    access = await access_lines(gw.proc.log_lines, made)
    assert [(a["route"], a["path"], a["status"]) for a in access] == [
        ("/v1/jobs/{job_id}", "/v1/jobs/no-such-job", 404)
    ]


async def test_queue_depth_shows_jobs_waiting_for_a_daemon(stack: Stack) -> None:
    gw = await stack.gateway()
    first = await gw.submit(JFK)
    second = await gw.submit(JFK)
    depth = "stt_gateway_queue_depth"
    samples = await scrape_until(f"{gw.url}/metrics", lambda s: get(s, depth, model="tiny.en") == 2)
    assert get(samples, depth, model="tiny.en") == 2

    await stack.daemon(STT_METRICS_PORT="0")
    for job in (first, second):
        assert (await gw.wait_final(job["id"]))["status"] == "succeeded"
    samples = await scrape_until(f"{gw.url}/metrics", lambda s: get(s, depth, model="tiny.en") == 0)
    assert get(samples, depth, model="tiny.en") == 0


async def test_metrics_answer_while_the_broker_is_unreachable(stack: Stack) -> None:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    gw = await stack.gateway(wait_ready=False, STT_AMQP_URL=nowhere)
    async with gw.client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    samples = parse(response.text)
    assert not any(name == "stt_gateway_queue_depth" for name, _ in samples)
    assert get(
        samples, "stt_gateway_http_requests_total", route="/healthz", method="GET", status="200"
    )
