"""The gateway's Prometheus metrics: HTTP traffic, submissions, recorded outcomes, queue depth.

One :class:`GatewayMetrics` (with a registry of its own, not the process-global
default) per app, so that several apps in one test process never collide.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from contextvars import ContextVar

import structlog
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.broker import BrokerUnavailable, QueueFull, UnroutableJob
from gateway.requestid import route_template
from stt_daemon.common.protocol import JobEvent
from stt_daemon.common.topology import Names

log = structlog.get_logger("gateway.metrics")

#: Routes that take a job; a 4xx from them before the job reaches the broker is a refusal.
SUBMIT_ROUTES = frozenset(
    {"/v1/jobs", "/translate", "/v1/audio/transcriptions", "/v1/audio/translations"}
)
#: Methods get their own label value; anything else a client invents is "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Seconds; the OpenAI-compatible endpoints wait for the transcript, hence the long tail.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: A scrape must answer even while the broker hangs.
QUEUE_DEPTH_TIMEOUT = 2.0

# Set per request by the middleware; Services.submit marks it so the middleware
# does not count a refusal twice. A list: context copies share the same object.
_submit_seen: ContextVar[list[bool] | None] = ContextVar("stt_submit_seen", default=None)


def refusal_reason(exc: Exception) -> str:
    """The ``reason`` label of a job the broker did not take."""
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, UnroutableJob):
        return "unroutable"
    if isinstance(exc, BrokerUnavailable):
        return "broker_unavailable"
    return "error"


def early_refusal_reason(status: int) -> str:
    """The ``reason`` label of a submission refused before it reached the broker."""
    if status in (401, 403):
        return "unauthorized"
    if status == 429:
        return "rate_limited"  # per-key request rate or unfinished-job quota
    return "invalid"


class GatewayMetrics:
    """Every metric of one gateway app, and the queue-depth probe."""

    def __init__(self, names: Names | None = None) -> None:
        self.registry = CollectorRegistry()
        self.names = names or Names()
        self._connection: AbstractRobustConnection | None = None
        self.http_requests = Counter(
            "stt_gateway_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "stt_gateway_http_request_duration_seconds",
            "Seconds from request to the end of the response, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "stt_gateway_jobs_submitted",
            "Jobs the broker confirmed, by model.",
            ["model"],
            registry=self.registry,
        )
        self.jobs_refused = Counter(
            "stt_gateway_jobs_refused",
            "Submissions refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "stt_gateway_jobs_finished",
            "Final statuses written to the status store by this gateway, by model and status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "stt_gateway_queue_depth",
            "Jobs ready in a model's queue (read from the broker at scrape time).",
            ["model"],
            registry=self.registry,
            # Several workers: the value the latest scrape read (any worker's) wins.
            multiprocess_mode="mostrecent",
        )

        self.live_sessions = Gauge(
            "stt_gateway_live_sessions",
            "Live-transcription sessions open on this gateway.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.live_windows = Counter(
            "stt_gateway_live_windows",
            "Live windows sent to daemons, by outcome (answered, missed: no answer in time).",
            ["outcome"],
            registry=self.registry,
        )
        self.live_window_latency = Histogram(
            "stt_gateway_live_window_seconds",
            "Seconds from sending a live window to its answer.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def live_window(self, outcome: str, seconds: float | None) -> None:
        """One live window's outcome, with its latency when answered."""
        self.live_windows.labels(outcome).inc()
        if seconds is not None:
            self.live_window_latency.observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition format; with several workers, all of theirs summed."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        # Set by ``gateway.__main__`` for worker processes: each writes its samples to
        # files there, and whichever worker answers the scrape adds them all up.
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def job_submitted(self, model: str) -> None:
        """A job the broker confirmed."""
        self._seen()
        self.jobs_submitted.labels(model).inc()

    def job_refused(self, exc: Exception) -> None:
        """A job the broker did not take (full, down, unroutable)."""
        self._seen()
        self.jobs_refused.labels(refusal_reason(exc)).inc()

    def event_recorded(self, event: JobEvent) -> None:
        """An event applied to the status store; final ones are counted."""
        status = event.event.status
        if status.is_final:
            self.jobs_finished.labels(event.model or "unknown", status.value).inc()

    def request_done(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one HTTP request; a refused submission counts as such."""
        route = route_template(scope)
        method = scope["method"] if scope["method"] in _METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_latency.labels(route, method).observe(seconds)
        seen = _submit_seen.get()
        reached_broker = seen is not None and seen[0]
        submission = method == "POST" and route in SUBMIT_ROUTES
        if submission and 400 <= status < 500 and not reached_broker:
            self.jobs_refused.labels(early_refusal_reason(status)).inc()

    def _seen(self) -> None:
        seen = _submit_seen.get()
        if seen is not None:
            seen[0] = True

    async def attach(self, connection: AbstractRobustConnection) -> None:
        """Broker link callback: queue depths are read on this connection."""
        self._connection = connection

    async def refresh_queue_depths(self, models: Iterable[str]) -> None:
        """Read each model queue's ready count (passive declare); no gauge when unknown."""
        self.queue_depth.clear()
        conn = self._connection
        if conn is None or conn.is_closed or not conn.connected.is_set():
            return
        try:
            async with asyncio.timeout(QUEUE_DEPTH_TIMEOUT):
                await self._read_depths(conn, list(models))
        except Exception as exc:
            log.warning("metrics.queue_depth_failed", error=f"{type(exc).__name__}: {exc}")

    async def _read_depths(self, conn: AbstractRobustConnection, models: list[str]) -> None:
        # A channel of its own: a passive declare of a missing queue closes its channel,
        # and that must never be the recorder's.
        channel = await conn.channel()
        try:
            for model in models:
                queue = await channel.declare_queue(self.names.job_queue(model), passive=True)
                result = queue.declaration_result
                self.queue_depth.labels(model).set(result.message_count or 0)
        finally:
            await channel.close()


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (pure ASGI)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        token = _submit_seen.set([False])

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request_done(scope, status, time.perf_counter() - started)
            _submit_seen.reset(token)
