"""A job's recording, fetched and decoded to a work file: from its claim check or inline."""

from __future__ import annotations

import io
from pathlib import Path

from stt_daemon.audio import PcmFile, decode_to_file
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import Diarize, InboundJob


def load_recording(
    job: InboundJob, blobs: BlobStore, max_seconds: float, work_dir: Path
) -> PcmFile:
    """Verify and decode the job's audio (blocking); AudioError or BlobError when it cannot."""
    per_channel = job.message.options.diarize is Diarize.CHANNELS
    source: io.BytesIO | Path
    if job.inline_audio is not None:
        source = io.BytesIO(job.inline_audio)
    else:
        assert job.message.audio is not None  # decode_job guarantees one or the other
        source = blobs.verified_path(job.message.audio)
    return decode_to_file(source, max_seconds, work_dir, per_channel)
