"""The daemon's Prometheus metrics, served on ``STT_METRICS_PORT`` by a tiny HTTP thread.

Each :class:`DaemonMetrics` has a registry of its own (not the process-global
default), so that several handlers in one test process never share counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Literal

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger("stt_daemon.metrics")

#: ``split``: a long recording was cut into parts and they were published;
#: ``part``: one part of such a recording was transcribed.
Outcome = Literal[
    "succeeded", "failed", "cancelled", "retried", "handed_back", "abandoned", "split", "part"
]

#: Seconds of transcription: tiny.en does 11 s of speech in under a second,
#: a large model on a CPU can take many minutes over an hour of audio.
TRANSCRIBE_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Processing seconds per audio second: 0.05 is a fast GPU, above 1 falls behind real time.
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


class DaemonMetrics:
    """Job outcomes, jobs in flight, transcription time, real-time factor and audio seconds."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._models: frozenset[str] | None = None
        self.jobs = Counter(
            "stt_daemon_jobs",
            "Deliveries handled, by outcome (failures by error code).",
            ["model", "outcome", "error_code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "stt_daemon_jobs_in_flight",
            "Deliveries being handled right now.",
            ["model"],
            registry=self.registry,
        )
        self.transcription_seconds = Histogram(
            "stt_daemon_transcription_seconds",
            "Seconds spent transcribing one successful job (decoding excluded).",
            ["model"],
            buckets=TRANSCRIBE_BUCKETS,
            registry=self.registry,
        )
        self.real_time_factor = Histogram(
            "stt_daemon_real_time_factor",
            "Transcription seconds per second of audio, per successful job.",
            ["model"],
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "stt_daemon_audio_seconds",
            "Seconds of audio transcribed by successful jobs.",
            ["model"],
            registry=self.registry,
        )

    def serves(self, models: Iterable[str]) -> None:
        """The models loaded here: any other name an outside producer sends is labelled "other"."""
        self._models = frozenset(models)

    def label(self, model: str | None) -> str:
        """A bounded ``model`` label (names come from messages, so from anyone)."""
        if not model:
            return "unknown"
        return model if self._models is None or model in self._models else "other"

    def job_finished(
        self,
        model: str | None,
        outcome: Outcome,
        *,
        error_code: str | None = None,
        audio_s: float | None = None,
        transcribe_s: float | None = None,
    ) -> None:
        """Count one delivery's outcome; a success also records its timings."""
        label = self.label(model)
        self.jobs.labels(label, outcome, error_code or "").inc()
        if outcome not in ("succeeded", "part") or not audio_s:
            return
        self.audio_seconds.labels(label).inc(audio_s)
        if transcribe_s is not None:
            self.transcription_seconds.labels(label).observe(transcribe_s)
            self.real_time_factor.labels(label).observe(transcribe_s / audio_s)

    @contextlib.contextmanager
    def running(self, model: str | None) -> Iterator[None]:
        """Count a delivery as in flight for the duration of the block."""
        gauge = self.in_flight.labels(self.label(model))
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``port`` in a daemon thread (0 = do not serve)."""
        if port == 0:
            return
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            # Transcribing matters more than being scraped: say so and go on.
            log.error("metrics.not_served", port=port, error=str(exc))
            return
        log.info("metrics.serving", port=port, host=addr)
