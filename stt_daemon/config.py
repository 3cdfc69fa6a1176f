"""Settings (pydantic-settings, env prefix ``STT_``, also read from ``.env``)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stt_daemon.amqp import broker_user, redact, split_urls, uses_guest_remotely
from stt_daemon.claims import ClaimSigner
from stt_daemon.cores import usable_cores
from stt_daemon.speakers.model import default_model_dir
from stt_daemon.topology import Names, QueueLimits, check_model_name


def model_name(spec: str) -> str:
    """The public name of a model spec: ``tiny.en``, ``name=/dir`` or ``/dir``."""
    if "=" in spec:
        return spec.split("=", 1)[0].strip()
    if "/" in spec:
        return Path(spec).name
    return spec


class CommonSettings(BaseSettings):
    """Settings shared by the gateway and the daemons."""

    # hide_input_in_errors: a refused URL must not print its password in the error.
    model_config = SettingsConfigDict(
        env_prefix="STT_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: Default home of the SQLite status store and the blob directory.
    data_dir: Path = Path("stt-data")
    status_url: str | None = None
    blob_url: str | None = None
    models: Annotated[list[str], NoDecode] = ["tiny.en"]
    max_queued: int = Field(default=1000, ge=1)
    max_upload_mb: float = Field(default=100.0, gt=0)
    max_audio_seconds: float = Field(default=3 * 3600.0, gt=0)
    #: Prefix of every exchange and queue name (``stt`` gives ``stt.jobs``, ``stt.results``...).
    namespace: str = "stt"
    delivery_limit: int = Field(default=10, ge=2)
    heartbeat: int = Field(default=30, ge=0)
    publish_timeout: float = Field(default=10.0, gt=0)
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    #: Seconds between two announcements of a daemon; three missed = gone.
    announce_interval: float = Field(default=5.0, gt=0)
    #: Key of the HMAC that gateways put on claim checks and daemons check (the same
    #: on all of them). Set, daemons refuse unsigned claim checks; unset, they trust
    #: whoever may publish to the broker (stt_daemon/claims.py).
    claim_secret: SecretStr | None = None

    @property
    def broker_user(self) -> str:
        """The broker user this process connects as (the ``user_id`` it publishes with)."""
        return broker_user(self.amqp_url)

    @property
    def claim_signer(self) -> ClaimSigner:
        """Signs and checks claim checks with ``claim_secret``."""
        secret = self.claim_secret
        return ClaimSigner(secret.get_secret_value() if secret is not None else None)

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: str) -> str:
        for url in split_urls(value):
            if uses_guest_remotely(url):
                # RabbitMQ refuses guest off loopback anyway; say why here, at start.
                raise ValueError(
                    f"{redact(url)} uses the default guest account on a remote host: "
                    "guest is for local development only; create a user for this deployment"
                )
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one model is required")
        for spec in value:
            check_model_name(model_name(spec))
        return value

    @property
    def model_names(self) -> list[str]:
        """Public names of the configured models."""
        return [model_name(spec) for spec in self.models]

    @property
    def names(self) -> Names:
        """Broker names for this deployment."""
        return Names(self.namespace)

    @property
    def queue_limits(self) -> QueueLimits:
        """Arguments of the job queues."""
        return QueueLimits(max_queued=self.max_queued, delivery_limit=self.delivery_limit)

    @property
    def resolved_status_url(self) -> str:
        """``STT_STATUS_URL``, or SQLite under the data directory."""
        return self.status_url or f"sqlite:///{self.data_dir.resolve() / 'status.db'}"

    @property
    def resolved_blob_url(self) -> str:
        """``STT_BLOB_URL``, or a directory under the data directory."""
        return self.blob_url or (self.data_dir.resolve() / "blobs").as_uri()

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)


def default_worker_name() -> str:
    """A name that tells operators which host and process did the work."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_prefetch(cores: int | None) -> int:
    """Jobs in flight: 3, or one per two cores on bigger hosts.

    Measured on 2 cores (README, Benchmarks): jobs side by side on one thread each
    beat one job on every thread, because CTranslate2 scales far from linearly with
    threads per call. A 16-core host would idle with 3 jobs of 5 threads each.
    """
    return max(3, (cores or 1) // 2)


class DaemonSettings(CommonSettings):
    """Settings of ``stt-daemon``."""

    #: Jobs in flight per model queue; each really runs (nothing waits in a buffer).
    prefetch: int = Field(default_factory=lambda: default_prefetch(usable_cores()), ge=1)
    #: Live-transcription windows decoded at once per model (each a few hundred ms on
    #: one thread); default: one per core, at most 4.
    live_prefetch: int = Field(default_factory=lambda: min(usable_cores(), 4), ge=1)
    #: Deliveries of one job (crashes and retries included) before it is failed.
    max_attempts: int = Field(default=5, ge=1)
    #: Seconds to let running jobs finish after SIGTERM before handing them back.
    shutdown_timeout: float = Field(default=60.0, ge=0)
    #: Base of the exponential backoff (with jitter) before a transient retry.
    retry_backoff: float = Field(default=1.0, ge=0)
    #: glibc heaps (malloc arenas) the daemon may keep; 0 = glibc's default (eight per
    #: core). Two keep the peak memory of jobs in flight down (see heap.py).
    malloc_arenas: int = Field(default=2, ge=0, le=64)
    #: Blocks of this many bytes or more are mapped on their own and returned to the
    #: system when freed; 0 = glibc's sliding threshold (heap.py).
    malloc_mmap_threshold: int = Field(default=4 * 1024 * 1024, ge=0, le=32 * 1024 * 1024)
    #: Nice levels the transcription threads run below the event loop, so that the loop
    #: answers live windows and settles deliveries on time on busy cores (niceness.py);
    #: 0 = the same priority.
    compute_nice: int = Field(default=10, ge=0, le=19)
    #: CTranslate2 threads per transcription; 0 = cores divided by prefetch.
    cpu_threads: int = Field(default=0, ge=0)
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = Field(default=5, ge=1)
    #: Speech chunks decoded together per transcription (faster-whisper's batched
    #: pipeline); unset: 8 on a GPU, 0 (one window after another) on a CPU.
    batch_size: int | None = Field(default=None, ge=0, le=64)
    #: Where a job's recording is decoded to (16-bit PCM, 32 KB a second of audio): it
    #: is read from there a window at a time, never held whole in memory. Unset: the
    #: system's temporary directory.
    work_dir: Path | None = None
    #: Seconds of transcription between two checkpoints of a job (the segments done so
    #: far, in the blob store, so that whoever runs it next resumes there); 0 = only
    #: when the daemon stops. See checkpoints.py.
    checkpoint_seconds: float = Field(default=30.0, ge=0)
    #: Minimum seconds between two ``job.progress`` events of one job.
    progress_interval: float = Field(default=1.0, ge=0)
    worker_name: str = Field(default_factory=default_worker_name)
    #: The broker's delivery acknowledgement timeout (RabbitMQ ``consumer_timeout``), seconds.
    #: Jobs estimated to need more than half of it are refused (see admission.py).
    ack_timeout: float = Field(default=1800.0, gt=0)
    #: Seconds of work per second of audio assumed until a model has finished a job here.
    assumed_rtf: float = Field(default=0.5, gt=0)
    #: Port of the Prometheus ``/metrics`` endpoint (all interfaces); 0 = not served.
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    #: Interface of that endpoint: loopback unless told otherwise (containers set
    #: 0.0.0.0 so that Prometheus and the probes reach it over the pod network).
    metrics_host: str = "127.0.0.1"
    #: Recordings longer than this (seconds) are split at pauses into parts that any
    #: daemon can take, and the parts' transcripts merged; 0 = never split.
    split_seconds: float = Field(default=180.0, ge=0)
    #: The longest part of a split recording, seconds (cuts fall in its last third).
    part_seconds: float = Field(default=60.0, ge=10)
    #: ``diarize=speakers`` on this daemon: the speaker-embedding model is checked at
    #: start and loaded by the first such job (about 100 MB more memory from then on);
    #: off, such jobs fail at once as unsupported.
    diarization: bool = True
    #: Where the speaker-embedding model lies (``campplus.onnx`` and its manifest, as
    #: deploy/local/prepare-speaker-model writes them).
    speaker_model_dir: Path = Field(default_factory=default_model_dir)
    #: onnxruntime threads per speaker-embedding call (one job's voice prints at a time
    #: each; Whisper's threads run beside them).
    speaker_threads: int = Field(default=1, ge=1, le=64)
    #: ``standin`` sleeps instead of transcribing: for testing and benchmarks only.
    engine: Literal["whisper", "standin"] = "whisper"
    #: Stand-in engine: seconds of (idle) wall time per second of audio.
    standin_rtf: float = Field(default=0.05, ge=0)
    #: Seconds the event loop may go without a beat before ``/livez`` answers 503
    #: (the loop watchdog beats every second; see metrics.py).
    loop_stall_seconds: float = Field(default=30.0, gt=0)
    #: Seconds the audio of a dead-lettered job is kept for a replay (``stt-dead``), as
    #: long as the gateways keep final jobs; 0 = for ever (see deadletters.py).
    result_ttl: int = Field(default=7 * 24 * 3600, ge=0)

    @property
    def resolved_work_dir(self) -> Path:
        """``STT_WORK_DIR``, created if missing, or the system's temporary directory."""
        if self.work_dir is None:
            return Path(tempfile.gettempdir())
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    @property
    def resolved_batch_size(self) -> int:
        """``STT_BATCH_SIZE``, or what suits the device: GPUs batch, CPUs run jobs side by side."""
        if self.batch_size is not None:
            return self.batch_size
        return 8 if self.device.startswith("cuda") else 0

    @model_validator(mode="after")
    def _parts_fit(self) -> DaemonSettings:
        if self.split_seconds and self.split_seconds < self.part_seconds:
            raise ValueError(
                f"STT_SPLIT_SECONDS ({self.split_seconds:g}) must be 0 or at least "
                f"STT_PART_SECONDS ({self.part_seconds:g})"
            )
        return self

    @model_validator(mode="after")
    def _limits_agree(self) -> DaemonSettings:
        # The daemon must give up (and report the job failed) before the broker's
        # backstop drops the job into the dead-letter queue silently.
        if self.delivery_limit <= self.max_attempts:
            raise ValueError(
                f"STT_DELIVERY_LIMIT ({self.delivery_limit}) must exceed "
                f"STT_MAX_ATTEMPTS ({self.max_attempts})"
            )
        return self
