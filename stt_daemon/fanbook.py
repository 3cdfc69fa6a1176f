"""The fan-out's books: a split recording's state in the blob store every daemon shares.

Files are named after a hash of the job id (see fanout.py for what each means to
the daemons): ``fan-<h>.json`` the manifest, ``fan-<h>-<i>.result.json`` part
``i``'s transcript, ``fan-<h>.merge`` the merge claim, ``fan-<h>-<i>-<token>.wav``
part ``i``'s audio.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from pydantic import BaseModel

from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import AudioRef, TranscriptResult


class Manifest(BaseModel):
    """What the merge needs to know about a split recording."""

    job_id: str
    duration: float
    language: str | None
    language_probability: float | None
    #: (offset, length) of each part, seconds, in order.
    parts: list[tuple[float, float]]


def stem(job_id: str) -> str:
    """The common start of a recording's file names."""
    # Job ids come from producers: never let them shape a file name.
    return "fan-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


class FanBook:
    """Reads and writes a split recording's manifest, part results, merge claim and part audio."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs

    # -- the manifest: present while the recording is unsettled ------------------

    def write_manifest(self, manifest: Manifest) -> None:
        """Open the books of a split recording (before any part is published)."""
        _write_atomically(self._path(manifest.job_id, ".json"), manifest.model_dump_json().encode())

    def manifest(self, job_id: str) -> Manifest | None:
        """The recording's manifest; None once it is settled."""
        try:
            return Manifest.model_validate_json(self._path(job_id, ".json").read_bytes())
        except FileNotFoundError:
            return None

    def is_active(self, job_id: str) -> bool:
        """False once the recording was merged, failed or cancelled."""
        return self._path(job_id, ".json").exists()

    def settle(self, job_id: str) -> None:
        """Close the books: parts still queued will skip, their results are dropped."""
        # The manifest first: from this moment on, parts know the job is settled.
        self._path(job_id, ".json").unlink(missing_ok=True)
        for path in self._blobs.root.glob(f"{stem(job_id)}-*.result.json"):
            path.unlink(missing_ok=True)
        self._path(job_id, ".merge").unlink(missing_ok=True)

    # -- part audio ---------------------------------------------------------------

    def put_audio(self, job_id: str, index: int, token: str, wav: bytes) -> AudioRef:
        """Store part ``index``'s audio; ``token`` keeps a re-split off an earlier split's files."""
        return self._blobs.put(f"{stem(job_id)}-{index}-{token}.wav", wav, "audio/wav")

    def delete_audio(self, ref: AudioRef) -> None:
        """Drop a part's audio that no job will read."""
        self._blobs.delete(ref.url)

    # -- part results and the merge claim ------------------------------------------

    def write_result(self, job_id: str, index: int, result: TranscriptResult) -> None:
        """Keep part ``index``'s transcript."""
        _write_atomically(self._result_path(job_id, index), result.model_dump_json().encode())

    def drop_result(self, job_id: str, index: int) -> None:
        """Forget part ``index``'s transcript (the recording was settled meanwhile)."""
        self._result_path(job_id, index).unlink(missing_ok=True)

    def finished(self, job_id: str, count: int) -> list[int]:
        """Indexes of the parts whose transcripts are in."""
        return [i for i in range(count) if self._result_path(job_id, i).exists()]

    def results(self, job_id: str, count: int) -> list[TranscriptResult]:
        """Every part's transcript, in order (all must be in)."""
        return [
            TranscriptResult.model_validate_json(self._result_path(job_id, i).read_bytes())
            for i in range(count)
        ]

    def claim_merge(self, job_id: str, index: int) -> bool:
        """True for the part that merges: the first to claim, or that part again."""
        path = self._path(job_id, ".merge")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                return path.read_text().strip() == str(index)
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(index))
        return True

    def _path(self, job_id: str, suffix: str) -> Path:
        return self._blobs.root / f"{stem(job_id)}{suffix}"

    def _result_path(self, job_id: str, index: int) -> Path:
        return self._path(job_id, f"-{index}.result.json")


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole file or none of it (rename is atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    tmp.replace(path)
