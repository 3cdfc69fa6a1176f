"""Claim-check blob store: the gateway writes uploads, daemons read them.

Only ``file://`` directories are supported (a volume shared by gateways and
daemons). Reads are confined to the store's root, so a job message naming any
other path is refused rather than read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from stt_daemon.common.protocol import AudioRef, ErrorCode

_CHUNK = 1024 * 1024


class BlobError(Exception):
    """A blob that cannot be used: missing, outside the store, or not what was promised."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BLOB_MISSING) -> None:
        super().__init__(message)
        self.code = code


class BlobTooLarge(BlobError):
    """More bytes arrived than the limit allows."""


class BlobWriter:
    """Streams one upload to a temporary file, hashing as it goes."""

    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=store.root)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append data; raises BlobTooLarge past the limit (the partial file is removed)."""
        self.size += len(data)
        if self.size > self._max:
            self.abort()
            raise BlobTooLarge(f"upload exceeds {self._max} bytes")
        self._hash.update(data)
        self._file.write(data)

    def commit(self, key: str, content_type: str | None, filename: str | None) -> AudioRef:
        """Move the finished upload to its final name and return its claim check."""
        self._file.close()
        final = self._store.root / key
        self._tmp.replace(final)
        return AudioRef(
            url=final.as_uri(),
            sha256=self._hash.hexdigest(),
            size=self.size,
            content_type=content_type,
            filename=filename,
        )

    def abort(self) -> None:
        """Drop the partial upload."""
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class BlobStore:
    """A directory of uploaded audio, addressed by ``file://`` URLs."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise ValueError(f"unsupported blob URL {url!r}: only file:///dir is supported")
        self.root = Path(unquote(parsed.path)).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def writer(self, max_bytes: int) -> BlobWriter:
        """Start a new upload."""
        return BlobWriter(self, max_bytes)

    def put(self, key: str, data: bytes, content_type: str | None = None) -> AudioRef:
        """Store bytes already in memory."""
        writer = self.writer(len(data))
        writer.write(data)
        return writer.commit(key, content_type, None)

    def path_of(self, url: str) -> Path:
        """The local path of a blob URL, refusing anything outside the root."""
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise BlobError(f"audio URL {url!r} is not a file:// URL of this blob store")
        path = Path(unquote(parsed.path)).resolve()
        if path.parent != self.root:
            raise BlobError(f"audio URL {url!r} is outside the blob store")
        return path

    def verified_path(self, ref: AudioRef) -> Path:
        """The blob's path after checking its size and sha256 (blocking: run in a thread)."""
        path = self.path_of(ref.url)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BlobError(
                f"audio blob {ref.url} does not exist (deleted or never stored)"
            ) from None
        if size != ref.size:
            raise BlobError(
                f"audio blob is {size} bytes, the job says {ref.size}", ErrorCode.CHECKSUM_MISMATCH
            )
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != ref.sha256:
            raise BlobError(
                "audio blob sha256 does not match the job's", ErrorCode.CHECKSUM_MISMATCH
            )
        return path

    def delete(self, url: str) -> None:
        """Remove a blob; missing is fine (deletion is idempotent)."""
        with contextlib.suppress(FileNotFoundError, BlobError):
            self.path_of(url).unlink()
