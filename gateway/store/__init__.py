"""Status store: one interface, one implementation per backend."""

from __future__ import annotations

from gateway.store.base import JobRecord, StatusStore
from gateway.store.sqlite import SQLiteStore


def open_store(url: str) -> StatusStore:
    """Open the store named by ``STT_STATUS_URL``."""
    if url.startswith("sqlite://"):
        return SQLiteStore.from_url(url)
    raise ValueError(f"unsupported STT_STATUS_URL {url!r}: use sqlite:///path/to/status.db")


__all__ = ["JobRecord", "StatusStore", "open_store"]
