"""Metrics and request ids without a broker: the daemon's handler with fakes, a small ASGI app."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from gateway.broker import QueueFull
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.requestid import RequestIdMiddleware, current_request_id
from stack import JFK
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobOptions,
    Segment,
    TranscriptResult,
)
from stt_daemon.config import DaemonSettings
from stt_daemon.handler import JobHandler
from stt_daemon.localbroker import free_port
from stt_daemon.metrics import DaemonMetrics


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value (None when absent)."""
    return samples(text).get((name, frozenset(labels.items())))


# --- the daemon ---------------------------------------------------------------------------


@dataclass
class FakeMessage:
    """The parts of an aio-pika delivery the handler uses."""

    body: bytes
    content_type: str | None = "audio/flac"
    message_id: str | None = "job-1"
    headers: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None
    routing_key: str | None = "tiny.en"
    #: The publisher's broker user, as RabbitMQ checked it.
    user_id: str | None = None
    #: The delivery's channel, still open.
    channel: Any = field(default_factory=lambda: SimpleNamespace(is_closed=False))

    async def ack(self) -> None:
        pass

    async def nack(self, requeue: bool = True) -> None:
        pass

    async def reject(self, requeue: bool = False) -> None:
        pass


class FakeEvents:
    """Publishes nowhere."""

    async def publish(self, event: JobEvent) -> None:
        pass


class FakeEngine:
    """Answers at once, as if it had heard one segment."""

    name = "tiny.en"
    multilingual = False

    def transcribe(
        self,
        audio: Any,
        options: JobOptions,
        on_progress: Any,
        cancelled: threading.Event,
        tracker: Any = None,
    ) -> TranscriptResult:
        return TranscriptResult(
            text="words",
            language="en",
            duration=audio.samples / 16000,
            model=options.model,
            segments=[Segment(id=0, start=0.0, end=1.0, text="words")],
        )


def _handler(tmp_path: Path) -> JobHandler:
    settings = DaemonSettings(data_dir=tmp_path, retry_backoff=0)
    blobs = BlobStore((tmp_path / "b").as_uri())
    return JobHandler(settings, {"tiny.en": FakeEngine()}, blobs, FakeEvents())  # type: ignore[dict-item, arg-type]


async def test_handler_counts_outcomes_and_audio_seconds(tmp_path: Path) -> None:
    handler = _handler(tmp_path)
    await handler.handle(FakeMessage(JFK.read_bytes()))  # type: ignore[arg-type]
    await handler.handle(FakeMessage(b"not audio at all", message_id="job-2"))  # type: ignore[arg-type]
    # An outside producer's made-up model must not become a label of its own.
    made_up = FakeMessage(JFK.read_bytes(), message_id="job-3", headers={"model": "nope"})
    await handler.handle(made_up)  # type: ignore[arg-type]

    text = generate_latest(handler.metrics.registry).decode()
    jobs = "stt_daemon_jobs_total"
    assert value(text, jobs, model="tiny.en", outcome="succeeded", error_code="") == 1
    assert value(text, jobs, model="tiny.en", outcome="failed", error_code="bad_audio") == 1
    assert value(text, jobs, model="other", outcome="failed", error_code="unknown_model") == 1
    assert value(text, "stt_daemon_audio_seconds_total", model="tiny.en") == pytest.approx(
        11.0, abs=0.1
    )
    assert value(text, "stt_daemon_real_time_factor_count", model="tiny.en") == 1
    assert value(text, "stt_daemon_transcription_seconds_count", model="tiny.en") == 1
    assert value(text, "stt_daemon_jobs_in_flight", model="tiny.en") == 0


def test_only_successes_feed_the_histograms() -> None:
    metrics = DaemonMetrics()
    metrics.job_finished("tiny.en", "retried")
    metrics.job_finished("tiny.en", "succeeded", audio_s=10.0, transcribe_s=0.5)

    text = generate_latest(metrics.registry).decode()
    assert value(text, "stt_daemon_real_time_factor_count", model="tiny.en") == 1
    assert value(text, "stt_daemon_real_time_factor_sum", model="tiny.en") == pytest.approx(0.05)
    # 0.05 falls in the 0.05 bucket, not in the 0.02 one.
    assert value(text, "stt_daemon_real_time_factor_bucket", model="tiny.en", le="0.02") == 0
    assert value(text, "stt_daemon_real_time_factor_bucket", model="tiny.en", le="0.05") == 1


async def test_daemon_metrics_port_serves_the_registry() -> None:
    metrics = DaemonMetrics()
    metrics.job_finished("tiny.en", "cancelled")
    port = free_port()
    metrics.serve(port, addr="127.0.0.1")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    text = response.text
    assert value(text, "stt_daemon_jobs_total", model="tiny.en", outcome="cancelled", error_code="")


def test_port_in_use_is_logged_not_fatal() -> None:
    port = free_port()
    DaemonMetrics().serve(port, addr="127.0.0.1")
    with capture_logs() as logs:
        DaemonMetrics().serve(port, addr="127.0.0.1")
    assert [entry["event"] for entry in logs] == ["metrics.not_served"]


# --- the gateway --------------------------------------------------------------------------


def _app(metrics: GatewayMetrics) -> FastAPI:
    """Routes shaped like the gateway's, behind the gateway's two middlewares."""
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, str | None]:
        structlog.get_logger("test").info("inside", job_id=job_id)
        return {"id": job_id, "request_id": current_request_id()}

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request) -> dict[str, str]:
        kind = request.query_params.get("kind")
        if kind == "invalid":
            raise HTTPException(422, "invalid")
        if kind == "full":
            metrics.job_refused(QueueFull("tiny.en"))
            raise HTTPException(429, "Queue limit reached")
        metrics.job_submitted("tiny.en")
        return {"ok": "yes"}

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def _text(metrics: GatewayMetrics) -> str:
    return generate_latest(metrics.registry).decode()


async def test_routes_are_labelled_by_template() -> None:
    metrics = GatewayMetrics()
    async with _client(_app(metrics)) as client:
        for job_id in ("a1", "b2", "c3"):
            assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 200
        assert (await client.get("/no/such/thing/42")).status_code == 404
        assert (await client.request("BREW", "/v1/jobs/a1")).status_code == 405
    text = _text(metrics)
    requests = "stt_gateway_http_requests_total"
    assert value(text, requests, route="/v1/jobs/{job_id}", method="GET", status="200") == 3
    assert value(text, requests, route="<unmatched>", method="GET", status="404") == 1
    assert value(text, requests, route="/v1/jobs/{job_id}", method="other", status="405") == 1
    assert not any("a1" in str(labels) for _, labels in samples(text))
    latency = "stt_gateway_http_request_duration_seconds_count"
    assert value(text, latency, route="/v1/jobs/{job_id}", method="GET") == 3


async def test_submissions_and_refusals_each_counted_once() -> None:
    metrics = GatewayMetrics()
    async with _client(_app(metrics)) as client:
        assert (await client.post("/v1/jobs")).status_code == 202
        assert (await client.post("/v1/jobs?kind=invalid")).status_code == 422
        assert (await client.post("/v1/jobs?kind=full")).status_code == 429
    text = _text(metrics)
    assert value(text, "stt_gateway_jobs_submitted_total", model="tiny.en") == 1
    assert value(text, "stt_gateway_jobs_refused_total", reason="invalid") == 1
    assert value(text, "stt_gateway_jobs_refused_total", reason="queue_full") == 1
    # The 429 came from the broker, not from a per-key limit.
    assert value(text, "stt_gateway_jobs_refused_total", reason="rate_limited") is None


def test_only_final_events_count_as_finished() -> None:
    metrics = GatewayMetrics()
    metrics.event_recorded(JobEvent(event=EventType.STARTED, job_id="j", model="tiny.en"))
    error = ErrorInfo(code=ErrorCode.BAD_AUDIO, message="no")
    metrics.event_recorded(
        JobEvent(event=EventType.FAILED, job_id="j", model="tiny.en", error=error)
    )
    text = _text(metrics)
    finished = "stt_gateway_jobs_finished_total"
    assert value(text, finished, model="tiny.en", status="failed") == 1
    assert value(text, finished, model="tiny.en", status="processing") is None


async def test_queue_depth_without_a_broker_is_absent_not_stale() -> None:
    metrics = GatewayMetrics()
    metrics.queue_depth.labels("tiny.en").set(7)
    await metrics.refresh_queue_depths(["tiny.en"])
    assert value(_text(metrics), "stt_gateway_queue_depth", model="tiny.en") is None


async def test_request_id_is_kept_bound_and_echoed() -> None:
    async with _client(_app(GatewayMetrics())) as client:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            response = await client.get("/v1/jobs/x", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.json()["request_id"] == "abc-123"
    inside = next(entry for entry in logs if entry["event"] == "inside")
    access = next(entry for entry in logs if entry["event"] == "http.request")
    assert inside["request_id"] == access["request_id"] == "abc-123"
    assert (access["method"], access["route"], access["status"]) == (
        "GET",
        "/v1/jobs/{job_id}",
        200,
    )


@pytest.mark.parametrize("given", ["", "x" * 129, "has space", "<script>", "a;b"])
async def test_insane_request_ids_are_replaced(given: str) -> None:
    async with _client(_app(GatewayMetrics())) as client:
        response = await client.get("/v1/jobs/x", headers={"X-Request-ID": given})
    echoed = response.headers["X-Request-ID"]
    assert echoed != given
    assert len(echoed) == 32 and echoed.isalnum()


async def test_a_crash_is_logged_with_its_request_id() -> None:
    metrics = GatewayMetrics()
    app = _app(metrics)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        structlog.get_logger("test").error("request.failed")
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.add_exception_handler(Exception, internal)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            response = await client.get("/boom", headers={"X-Request-ID": "crash-1"})
    structlog.contextvars.unbind_contextvars("request_id")
    assert response.status_code == 500
    failed = next(entry for entry in logs if entry["event"] == "request.failed")
    access = next(entry for entry in logs if entry["event"] == "http.request")
    assert failed["request_id"] == access["request_id"] == "crash-1"
    assert access["status"] == 500
    requests = "stt_gateway_http_requests_total"
    assert value(_text(metrics), requests, route="/boom", method="GET", status="500") == 1
