"""A job: its options, where its audio is, the message a daemon takes from a job queue."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stt_daemon.common.protocol.base import SCHEMA_VERSION, Task, _Wire, utcnow


class Diarize(StrEnum):
    """How speakers are told apart."""

    NONE = "none"
    #: Each channel of a multi-channel recording is one speaker.
    CHANNELS = "channels"
    #: Voices told apart in one channel (speaker embeddings, clustered).
    SPEAKERS = "speakers"


#: The most speakers a hint may name: more than any meeting we expect, and a bound on
#: the clustering's work.
MAX_SPEAKERS = 32


class JobOptions(_Wire):
    """How to transcribe. Every field is optional; Whisper's defaults apply when absent."""

    model: str = "tiny.en"
    #: ISO 639-1 code; absent = detect (reported with its probability).
    language: str | None = Field(default=None, min_length=2, max_length=8)
    task: Task = Task.TRANSCRIBE
    word_timestamps: bool = False
    #: Initial prompt: spelling, names, style of the previous context.
    prompt: str | None = Field(default=None, max_length=2000)
    #: Words or phrases to favour (comma-separated), e.g. product names.
    hotwords: str | None = Field(default=None, max_length=1000)
    #: Skip silence with Silero VAD before decoding.
    vad_filter: bool = False
    beam_size: int | None = Field(default=None, ge=1, le=10)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    diarize: Diarize = Diarize.NONE
    #: With ``diarize=speakers``: how many speakers there are, when known; or bounds
    #: on the estimate. Absent: estimated (one voice alone comes out as one speaker).
    num_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    min_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    #: Where the gateway POSTs the final result (signed); see docs/api/webhooks.md.
    callback_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://")
    #: Let a long recording be split at pauses and its parts run on several daemons
    #: (see ``STT_SPLIT_SECONDS``); false keeps it one job, in one daemon.
    split: bool = True

    @model_validator(mode="after")
    def _speaker_hints_agree(self) -> JobOptions:
        # Checked here, so a producer on the broker gets the same answer as an HTTP caller.
        hints = [
            name
            for name in ("num_speakers", "min_speakers", "max_speakers")
            if getattr(self, name) is not None
        ]
        if hints and self.diarize is not Diarize.SPEAKERS:
            raise ValueError(f"{', '.join(hints)} needs diarize=speakers")
        if self.num_speakers is not None and (
            self.min_speakers is not None or self.max_speakers is not None
        ):
            raise ValueError("give num_speakers, or min_speakers/max_speakers, not both")
        low, high = self.min_speakers, self.max_speakers
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_speakers ({low}) is more than max_speakers ({high})")
        return self


class AudioRef(_Wire):
    """Claim check: where the audio lies in the blob store and how to verify it."""

    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    content_type: str | None = None
    filename: str | None = None


class PartInfo(_Wire):
    """Which part of a fanned-out recording a job message carries."""

    index: int = Field(ge=0)
    count: int = Field(ge=2)
    #: Where the part starts in the whole recording, seconds.
    offset: float = Field(ge=0)


class JobMessage(_Wire):
    """A job on the request exchange (JSON body)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str = Field(min_length=1, max_length=128)
    options: JobOptions = JobOptions()
    audio: AudioRef | None = None
    submitted_at: datetime = Field(default_factory=utcnow)
    #: The gateway request that submitted the job (``X-Request-ID``), for the daemon's logs.
    request_id: str | None = Field(default=None, max_length=128)
    #: Set by daemons on the parts of a long recording: ``job_id`` is then the whole
    #: recording's, and its events report on that job.
    part: PartInfo | None = None


class InboundJob(BaseModel):
    """A decoded job: the message plus its audio bytes when they came inline."""

    model_config = ConfigDict(frozen=True)

    message: JobMessage
    inline_audio: bytes | None = None
    #: The broker user that published the job, as RabbitMQ validated it (``user_id``),
    #: carried across the daemons' own copies; "" when the publisher did not say.
    producer: str | None = None

    @property
    def job_id(self) -> str:
        """The job's id (also the AMQP message_id)."""
        return self.message.job_id
