"""The daemon's metrics and liveness, served on ``STT_METRICS_PORT`` by a tiny HTTP thread.

Each :class:`DaemonMetrics` has a registry of its own (not the process-global
default), so that several handlers in one test process never share counts.

The server runs in its own thread, so it would answer while the event loop is
stuck (a blocking call on the loop, a deadlock): ``/livez`` asks the
:class:`LoopWatchdog` instead, which a task on the loop stamps every second, and
answers 503 once the stamp is older than ``STT_LOOP_STALL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)

log = structlog.get_logger("stt_daemon.metrics")

#: ``split``: a long recording was cut into parts and they were published;
#: ``part``: one part of such a recording was transcribed.
Outcome = Literal[
    "succeeded", "failed", "cancelled", "retried", "handed_back", "abandoned", "split", "part"
]

#: Seconds of transcription: tiny.en does 11 s of speech in under a second,
#: a large model on a CPU can take many minutes over an hour of audio.
TRANSCRIBE_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Seconds of the speaker step: voice prints of a short clip take a tenth of a second,
#: an hour of speech minutes; labelling a whole recording about a second.
DIARIZATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: A live step takes a fraction of a second to a few: finer buckets.
LIVE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
#: Processing seconds per audio second: 0.05 is a fast GPU, above 1 falls behind real time.
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
#: Paths of the liveness answer (``/healthz`` as the gateway names it); any other is metrics.
LIVENESS_PATHS = ("/livez", "/healthz")


class LoopWatchdog:
    """Knows when the event loop last ran a beat: the daemon's sign of life."""

    def __init__(self, stall_after: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.stall_after = stall_after
        self._clock = clock
        #: When the loop last beat; None until :meth:`run` starts (then nothing is judged).
        self._stamp: float | None = None

    def beat(self) -> None:
        """The loop is running (called on the loop)."""
        self._stamp = self._clock()

    def verdict(self) -> tuple[bool, str]:
        """(alive?, why), from any thread: stalled when the last beat is too old."""
        stamp = self._stamp
        if stamp is None:
            return True, "ok (loop not watched yet)"
        age = self._clock() - stamp
        if age > self.stall_after:
            return (
                False,
                f"event loop stalled: no beat for {age:.1f} s (limit {self.stall_after:g} s)",
            )
        return True, f"ok (loop beat {age:.1f} s ago)"

    async def run(self, interval: float = 1.0) -> None:
        """Beat every ``interval`` seconds until cancelled; log a stall once it is over."""
        while True:
            last, now = self._stamp, self._clock()
            self._stamp = now
            if last is not None and now - last > self.stall_after:
                # Said once it is over: while stalled, nothing on the loop can speak.
                log.error(
                    "daemon.loop_stalled", stalled_s=round(now - last, 1), limit_s=self.stall_after
                )
            await asyncio.sleep(interval)


class _QuietHandler(WSGIRequestHandler):
    """No access line per scrape or probe on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """One thread a request, none of them keeping the process alive."""

    daemon_threads = True


class DaemonMetrics:
    """Job outcomes, jobs in flight, transcription time, real-time factor and audio seconds."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._models: frozenset[str] | None = None
        #: What ``/livez`` answers from; the daemon runs its beat on its loop.
        self.watchdog = LoopWatchdog()
        self._server: WSGIServer | None = None
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
        self._diarization_metrics()
        # process_resident_memory_bytes and friends: the speaker model's memory (and
        # every model's) shows there; this registry is not the global one that has them.
        ProcessCollector(registry=self.registry)

        self.live_windows = Counter(
            "stt_daemon_live_windows",
            "Live-transcription windows taken, by outcome (answered, expired unanswered).",
            ["outcome"],
            registry=self.registry,
        )
        self.live_window_seconds = Histogram(
            "stt_daemon_live_window_seconds",
            "Seconds from taking a live window to answering it.",
            buckets=LIVE_BUCKETS,
            registry=self.registry,
        )

    def _diarization_metrics(self) -> None:
        self.diarization_seconds = Histogram(
            "stt_daemon_diarization_seconds",
            "Seconds of the diarize=speakers step: step=voiceprints (a recording's or a "
            "part's speaker embeddings), step=label (clustering a whole recording).",
            ["step"],
            buckets=DIARIZATION_BUCKETS,
            registry=self.registry,
        )
        self.diarization_jobs = Counter(
            "stt_daemon_diarization_jobs",
            "diarize=speakers recordings, by outcome: diarized (labelled), refused "
            "(diarization off, or no usable speaker model on this daemon).",
            ["outcome"],
            registry=self.registry,
        )
        self.diarization_available = Gauge(
            "stt_daemon_diarization_available",
            "1 when this daemon runs diarize=speakers jobs, 0 when it refuses them.",
            registry=self.registry,
        )
        self.diarization_model_bytes = Gauge(
            "stt_daemon_diarization_model_bytes",
            "Resident memory the speaker model added when it was loaded (0: not loaded).",
            registry=self.registry,
        )

    def diarization_ready(self, available: bool, model_bytes: int | None) -> None:
        """Whether this daemon diarizes, and what loading its speaker model cost."""
        self.diarization_available.set(1 if available else 0)
        self.diarization_model_bytes.set(model_bytes or 0)

    def diarization_step(self, step: Literal["voiceprints", "label"], seconds: float) -> None:
        """Time one run of the speaker step."""
        self.diarization_seconds.labels(step).observe(seconds)

    def diarization_job(self, outcome: Literal["diarized", "refused"]) -> None:
        """Count one diarize=speakers recording: labelled, or refused here."""
        self.diarization_jobs.labels(outcome).inc()

    def live_window(self, outcome: str, seconds: float | None = None) -> None:
        """Count one live window (``answered`` with its time, or ``expired``)."""
        self.live_windows.labels(outcome).inc()
        if seconds is not None:
            self.live_window_seconds.observe(seconds)

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
        """Serve ``/metrics`` and ``/livez`` on ``port`` in a daemon thread (0 = do not serve)."""
        if port == 0:
            return
        try:
            family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("Server", (_Server,), {"address_family": family})
            self._server = make_server(
                addr, port, self._app(), server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            # Transcribing matters more than being scraped: say so and go on.
            log.error("metrics.not_served", port=port, error=str(exc))
            return
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics.serving", port=port, host=addr)

    def close(self) -> None:
        """Stop serving (tests; a daemon's server lives as long as its process)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self) -> Callable[..., list[bytes]]:
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            if environ.get("PATH_INFO") not in LIVENESS_PATHS:
                return metrics_app(environ, start_response)  # type: ignore[no-any-return]
            alive, why = self.watchdog.verdict()
            body = (why + "\n").encode()
            headers = [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
            start_response("200 OK" if alive else "503 Service Unavailable", headers)
            return [body]

        return app
