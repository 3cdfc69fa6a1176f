"""Status store: one interface, one implementation per backend."""

from __future__ import annotations

from urllib.parse import urlparse

from gateway.store.base import JobRecord, StatusStore, purge_periodically
from gateway.store.dbthread import StoreBusy
from gateway.store.redis import SCHEMES as REDIS_SCHEMES
from gateway.store.redis import RedisStore
from gateway.store.redis import check_url as check_redis_url
from gateway.store.sqlite import SQLiteStore
from stt_daemon.common.urls import redact

#: The name the gateway's modules know ``redact`` by.
redacted = redact

_HINT = "use sqlite:///path/to/status.db or redis://host:6379/0 (also rediss://, unix://)"


def check_status_url(url: str) -> str:
    """``url`` if it names a store we can open; else ValueError saying what is wrong."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ValueError(f"invalid STT_STATUS_URL {redact(url)!r}: {_HINT}")
    elif scheme in REDIS_SCHEMES:
        check_redis_url(url)
    else:
        raise ValueError(f"unsupported STT_STATUS_URL {redact(url)!r}: {_HINT}")
    return url


def open_store(url: str, *, namespace: str = "stt", result_ttl: int = 0) -> StatusStore:
    """Open the store named by ``STT_STATUS_URL``; ``result_ttl``: seconds final jobs are kept."""
    check_status_url(url)
    if url.startswith("sqlite:"):
        return SQLiteStore.from_url(url, result_ttl)
    return RedisStore(url, namespace, result_ttl)


__all__ = [
    "JobRecord",
    "StatusStore",
    "StoreBusy",
    "check_status_url",
    "open_store",
    "purge_periodically",
    "redacted",
]
