"""What every message shares: schema version, statuses, tasks, event and error codes, clock."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION: Literal[1] = 1


class JobStatus(StrEnum):
    """Where a job is. Final: succeeded, failed, cancelled.

    It only moves forward, but for one step back: a job handed back by a daemon
    that stopped (``job.requeued``) is queued again.
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        """Order used to refuse regressions (both final states share the top rank)."""
        return _RANK[self]

    @property
    def is_final(self) -> bool:
        """True for succeeded, failed and cancelled."""
        return self.rank == 2


_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.SUCCEEDED: 2,
    JobStatus.FAILED: 2,
    JobStatus.CANCELLED: 2,
}


class Task(StrEnum):
    """What Whisper does with the speech."""

    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


class EventType(StrEnum):
    """Event names; each is also the routing key on the results exchange."""

    STARTED = "job.started"
    PROGRESS = "job.progress"
    #: A daemon that stopped handed the job back, unharmed: it waits in the queue
    #: again (no attempt used), and resumes from its checkpoint.
    REQUEUED = "job.requeued"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @property
    def status(self) -> JobStatus:
        """The job status this event reports."""
        return {
            EventType.STARTED: JobStatus.PROCESSING,
            EventType.PROGRESS: JobStatus.PROCESSING,
            EventType.REQUEUED: JobStatus.QUEUED,
            EventType.SUCCEEDED: JobStatus.SUCCEEDED,
            EventType.FAILED: JobStatus.FAILED,
            EventType.CANCELLED: JobStatus.CANCELLED,
        }[self]


class ErrorCode(StrEnum):
    """Machine-readable failure reasons; each event also carries a sentence for people."""

    BAD_MESSAGE = "bad_message"
    BAD_AUDIO = "bad_audio"
    AUDIO_TOO_LONG = "audio_too_long"
    BLOB_MISSING = "blob_missing"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UNKNOWN_MODEL = "unknown_model"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    CANCELLED = "cancelled"
    UNSUPPORTED = "unsupported"
    #: A claim check without a valid signature, where claim checks must be signed.
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"


def utcnow() -> datetime:
    """Timezone-aware now, the only clock format on the wire."""
    return datetime.now(UTC)


class _Wire(BaseModel):
    # Unknown fields are ignored so that newer producers can add optional fields
    # without breaking older daemons; breaking changes bump SCHEMA_VERSION.
    model_config = ConfigDict(extra="ignore", frozen=True)
