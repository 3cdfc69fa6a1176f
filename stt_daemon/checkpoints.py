"""Resumable jobs: the segments done so far, kept beside the audio, so no one does them twice.

A daemon that stops (gracefully, or by a crash) loses the transcription it was
running. For a long recording that can be many minutes of work. So while it
transcribes, a job records its *completed Whisper windows* and, every
``STT_CHECKPOINT_SECONDS`` of work and when the daemon stops, writes them to a
small JSON file in the blob store, which every daemon shares already. Whoever
takes the job next starts Whisper at the next window (``clip_timestamps``, so
the mel features are the very same), with the same prompt tokens and language
as the uninterrupted run had there, and prepends the saved segments: the result
matches an uninterrupted run.

Only whole windows count: Whisper decodes 30 s windows one after another, and a
window's segments are final only once the next window has started (its start,
``seek``, depends on where the last segment ended).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ValidationError

from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import InboundJob, Segment

log = structlog.get_logger("stt_daemon.checkpoints")

#: faster-whisper conditions each window on at most the last 223 tokens; keep one more.
PROMPT_TOKENS = 224
#: faster-whisper's default ``prompt_reset_on_temperature``: a window decoded hotter
#: than this starts the prompt afresh after it.
PROMPT_RESET_TEMPERATURE = 0.5


class Checkpoint(BaseModel):
    """What a job had finished when it was saved."""

    version: Literal[1] = 1
    job_id: str
    #: The part of a fanned-out recording, or None for a whole one.
    part: int | None = None
    #: Audio and options: a checkpoint of other audio or other options is never used.
    fingerprint: str
    duration: float
    #: Where the next window starts, seconds.
    start: float
    segments: list[Segment]
    #: Whisper's prompt at ``start``: the tokens since the last reset (the job's own
    #: prompt excluded: the engine adds it back unless ``prompt_reset``).
    prompt_tokens: list[int] = []
    prompt_reset: bool = False
    language: str | None = None
    language_probability: float | None = None

    @property
    def fraction(self) -> float:
        """How much of the audio is done."""
        return min(self.start / self.duration, 1.0) if self.duration > 0 else 0.0


def fingerprint(job: InboundJob) -> str:
    """A digest of the job's audio and options."""
    digest = hashlib.sha256()
    if job.message.audio is not None:
        digest.update(job.message.audio.sha256.encode())
    elif job.inline_audio is not None:
        digest.update(hashlib.sha256(job.inline_audio).hexdigest().encode())
    digest.update(job.message.options.model_dump_json().encode())
    return digest.hexdigest()


class CheckpointStore:
    """Checkpoint files in the blob store, one per job (or part)."""

    def __init__(self, blobs: BlobStore) -> None:
        self._root = blobs.root

    def path(self, job: InboundJob) -> Path:
        """The file of ``job``'s checkpoint (named by a hash: job ids are untrusted text)."""
        part = job.message.part.index if job.message.part is not None else "whole"
        key = hashlib.sha256(f"{job.job_id}\0{part}".encode()).hexdigest()[:32]
        return self._root / f"ckpt-{key}.json"

    def load(self, job: InboundJob) -> Checkpoint | None:
        """The job's checkpoint, if there is a usable one (blocking)."""
        path = self.path(job)
        try:
            checkpoint = Checkpoint.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.warning("checkpoint.unreadable", path=str(path), error=str(exc)[:200])
            return None
        if checkpoint.job_id != job.job_id or checkpoint.fingerprint != fingerprint(job):
            log.warning("checkpoint.ignored", reason="other audio or options than this job's")
            return None
        return checkpoint

    def save(self, job: InboundJob, checkpoint: Checkpoint) -> None:
        """Write atomically: a reader sees the old checkpoint or the new one (blocking)."""
        path = self.path(job)
        fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=self._root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(checkpoint.model_dump_json().encode())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def drop(self, job: InboundJob) -> None:
        """Forget the job's checkpoint (its result is out); missing is fine."""
        with contextlib.suppress(FileNotFoundError):
            self.path(job).unlink()


class Tracker:
    """Follows one transcription window by window and saves what is complete.

    The engine calls :meth:`add` for every segment (from its worker thread) and,
    when it knows a window is over, :meth:`complete`; the tracker saves a
    checkpoint every ``interval`` seconds of work, and once more on :meth:`flush`.
    """

    def __init__(
        self,
        job: InboundJob,
        resume: Checkpoint | None,
        save: Callable[[Checkpoint], None],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resume = resume
        self._base = Checkpoint(
            job_id=job.job_id,
            part=job.message.part.index if job.message.part is not None else None,
            fingerprint=fingerprint(job),
            duration=resume.duration if resume is not None else 0.0,
            start=0.0,
            segments=[],
        )
        self._committed = resume or self._base
        self._window: float | None = None
        self._pending: list[tuple[Segment, Sequence[int], float]] = []
        self._save = save
        self._interval = interval
        self._clock = clock
        self._saved_at = clock()
        self._saved_start = self._committed.start
        self._lock = threading.Lock()

    @property
    def committed(self) -> Checkpoint:
        """Everything complete so far."""
        return self._committed

    def add(
        self,
        segment: Segment,
        window: float | None,
        tokens: Sequence[int] = (),
        temperature: float = 0.0,
    ) -> None:
        """A segment of the window that starts at ``window`` seconds (None: unknown)."""
        with self._lock:
            if window is None:
                return  # no window boundaries to rely on (batched or VAD decoding)
            if self._window is not None and window > self._window:
                self._commit(window)
            self._window = window
            self._pending.append((segment, tokens, temperature))
        self._maybe_save()

    def complete(self, next_start: float) -> None:
        """Every segment added so far is final; the next window starts at ``next_start``."""
        with self._lock:
            self._commit(next_start)
            self._window = None
        self._maybe_save()

    def begin(self, duration: float, language: str | None, probability: float | None) -> None:
        """The run's audio length and language (kept: a resumed run does not detect it again)."""
        update = {"duration": duration, "language": language, "language_probability": probability}
        with self._lock:
            self._base = self._base.model_copy(update=update)
            if self._committed.language is None:
                self._committed = self._committed.model_copy(update=update)
            else:
                self._committed = self._committed.model_copy(update={"duration": duration})

    def flush(self) -> Checkpoint | None:
        """Save now if anything was completed since the last save; the saved checkpoint."""
        with self._lock:
            checkpoint = self._committed
            if checkpoint.start <= self._saved_start:
                return checkpoint if checkpoint.start > 0 else None
            self._saved_start = checkpoint.start
            self._saved_at = self._clock()
        self._save(checkpoint)
        return checkpoint

    def save_quietly(self) -> Checkpoint | None:
        """:meth:`flush`, where a failure to write only loses the shortcut (blocking)."""
        try:
            return self.flush()
        except OSError as exc:
            log.warning("checkpoint.not_saved", error=str(exc))
            return None

    def _commit(self, next_start: float) -> None:
        if not self._pending and next_start <= self._committed.start:
            return
        tokens = list(self._committed.prompt_tokens)
        reset = self._committed.prompt_reset
        segments = list(self._committed.segments)
        hot = False
        for segment, seg_tokens, temperature in self._pending:
            segments.append(segment.model_copy(update={"id": len(segments)}))
            tokens.extend(seg_tokens)
            hot = hot or temperature > PROMPT_RESET_TEMPERATURE
        if hot:
            # As faster-whisper does after a window it had to decode hot.
            tokens, reset = [], True
        self._committed = self._committed.model_copy(
            update={
                "start": max(next_start, self._committed.start),
                "segments": segments,
                "prompt_tokens": tokens[-PROMPT_TOKENS:],
                "prompt_reset": reset,
                "language": self._committed.language or self._base.language,
                "language_probability": (
                    self._committed.language_probability or self._base.language_probability
                ),
            }
        )
        self._pending = []

    def _maybe_save(self) -> None:
        # A checkpoint is an optimisation: a full disk must not fail the job.
        if self._interval > 0 and self._clock() - self._saved_at >= self._interval:
            self.save_quietly()
