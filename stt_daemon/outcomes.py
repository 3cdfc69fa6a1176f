"""How each delivery ended, told once: counted, metered and logged by one call.

Every way a delivery ends (succeeded, failed, cancelled, retried, handed back,
abandoned, quarantined) goes through ``Outcomes.record``, so the daemon's
counts, its ``stt_daemon_jobs_total`` metric and its canonical log lines
(``job.done`` and the others, docs/operations/metrics.md and logs.md) cannot
disagree about a job.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import structlog

from stt_daemon.common.protocol import InboundJob, TranscriptResult, utcnow
from stt_daemon.metrics import DaemonMetrics, Outcome
from stt_daemon.settling import Timings

log = structlog.get_logger("stt_daemon.handler")

#: A redelivery sent to the quarantine queue: counted and logged, not metered
#: (the job has not ended, it runs apart).
Counted = Outcome | Literal["quarantined"]


class Outcomes:
    """The daemon's per-outcome counts (for its stop line) and the one place they grow."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self.metrics = metrics
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "succeeded",
                "failed",
                "cancelled",
                "retried",
                "handed_back",
                "abandoned",
                "quarantined",
                "split",
                "part",
            ),
            0,
        )

    def record(
        self,
        outcome: Counted,
        model: str | None,
        event: str,
        /,
        *,
        warn: bool = False,
        error_code: str | None = None,
        timings: Timings | None = None,
        **fields: Any,
    ) -> None:
        """Count, meter and log one delivery's outcome: once per delivery, never more.

        ``error_code`` labels the metric and goes on the log line too.
        """
        self.counts[outcome] += 1
        if outcome != "quarantined":
            marks = timings.marks if timings is not None else {}
            self.metrics.job_finished(
                model,
                outcome,
                error_code=error_code,
                audio_s=marks.get("audio_s"),
                transcribe_s=marks.get("transcribe_s"),
            )
        if error_code is not None:
            fields["error_code"] = error_code
        (log.warning if warn else log.info)(event, **fields)

    def succeeded(
        self, job: InboundJob, attempt: int, timings: Timings, result: TranscriptResult
    ) -> None:
        """A transcript delivered: the canonical ``job.done`` line, with where its time went."""
        total = time.monotonic() - timings.started
        audio_s = timings.marks.get("audio_s", 0.0)
        transcribe_s = timings.marks.get("transcribe_s", 0.0)
        fields: dict[str, Any] = {
            "status": "succeeded",
            "model": job.message.options.model,
            "attempt": attempt,
            "language": result.language,
            "total_s": round(total, 3),
            "rtf": round(transcribe_s / audio_s, 4) if audio_s else None,
            "queue_wait_s": round((utcnow() - job.message.submitted_at).total_seconds() - total, 3),
            **timings.marks,
        }
        self.record("succeeded", job.message.options.model, "job.done", timings=timings, **fields)
