"""The daemon's settings (pydantic-settings, env prefix ``STT_``, also read from ``.env``)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from stt_daemon.common.cores import usable_cores
from stt_daemon.common.settings import CommonSettings
from stt_daemon.speakers.model import default_model_dir


def default_worker_name() -> str:
    """A name that tells operators which host and process did the work."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_prefetch(cores: int | None) -> int:
    """Jobs in flight: 3, or one per two cores on bigger hosts.

    Measured on 2 cores (docs/benchmarks.md): jobs side by side on one thread each
    beat one job on every thread, because CTranslate2 scales far from linearly with
    threads per call. A 16-core host would idle with 3 jobs of 5 threads each.
    """
    return max(3, (cores or 1) // 2)


class DaemonSettings(CommonSettings):
    """Settings of ``stt-daemon``."""

    #: Longest recording accepted, seconds of audio (longer ones fail at once).
    max_audio_seconds: float = Field(default=3 * 3600.0, gt=0)
    #: Seconds between two announcements of this daemon; three missed = gone.
    announce_interval: float = Field(default=5.0, gt=0)
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
    #: Port of the Prometheus ``/metrics`` endpoint (on ``metrics_host``); 0 = not served.
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
