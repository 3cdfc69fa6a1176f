"""What happens to jobs and daemons: job events, daemon announcements, cancellations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field

from stt_daemon.common.protocol.base import SCHEMA_VERSION, EventType, JobStatus, _Wire, utcnow
from stt_daemon.common.protocol.jobs import JobOptions
from stt_daemon.common.protocol.results import ErrorInfo, Segment, TranscriptResult


class JobEvent(_Wire):
    """An event on the results exchange; the routing key is ``event``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event: EventType
    job_id: str
    #: Made once with the event: a retried publish or a redelivery keeps it, the next
    #: event gets another. The AMQP message_id of every event but a job's final one.
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    model: str | None = None
    timestamp: datetime = Field(default_factory=utcnow)
    attempt: int | None = None
    worker: str | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    #: On ``job.progress``: the segments finished since the attempt's previous progress
    #: event (ids count from the recording's start), so that a transcript can be shown
    #: as it grows. Absent elsewhere, and for split recordings and ``diarize=channels``,
    #: whose segments come with the final result only. With ``diarize=speakers`` they
    #: have no speakers yet (those are found after the transcription, and may cut
    #: segments). The final ``result`` is the truth.
    segments: list[Segment] | None = None
    result: TranscriptResult | None = None
    error: ErrorInfo | None = None
    #: The job's options, on final events: consumers (webhooks, outside producers'
    #: jobs in the status store) need them without a lookup.
    options: JobOptions | None = None
    #: The broker user that published the job ("" when it did not set ``user_id``).
    #: A status store lets events change only records of the same producer, so an
    #: outside producer reusing a gateway job's id cannot touch that job.
    producer: str | None = None

    @property
    def status(self) -> JobStatus:
        """The job status this event reports."""
        return self.event.status


class DaemonAnnouncement(_Wire):
    """A daemon saying it is alive and what it serves (``daemon.up`` / ``daemon.down``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    worker: str
    models: list[str]
    #: The models among ``models`` that detect languages and translate.
    multilingual: list[str] = []  # noqa: RUF012 (pydantic copies defaults per instance)
    #: Whether it runs ``diarize=speakers`` jobs (its speaker model loaded); False
    #: from daemons that predate the field.
    speakers: bool = False
    prefetch: int
    in_flight: int = 0
    state: Literal["up", "down"] = "up"
    #: Seconds until the next announcement; silence for three of them means gone.
    interval: float
    timestamp: datetime = Field(default_factory=utcnow)


class CancelRequest(_Wire):
    """Ask the daemons to skip (queued) or stop (running) a job."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    timestamp: datetime = Field(default_factory=utcnow)
