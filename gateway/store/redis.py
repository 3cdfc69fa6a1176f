"""Redis status store: one store shared by several gateways.

Keys, under the deployment's namespace (``STT_NAMESPACE``, so that deployments
can share one Redis):

- ``<ns>:job:<id>``: the job record as JSON, but its transcript; final jobs carry an
  EXPIRE of the retention;
- ``<ns>:result:<id>``: the transcript's JSON, with the same EXPIRE: a status poll reads
  the record without it, and the transcript is decoded only when read (records
  written before it had a key of its own hold it inline, and still read);
- ``<ns>:active:<owner>``: the set of the owner's unfinished job ids (the quota's count);
- ``<ns>:idem:<owner, key>``: the job id bound to an idempotency key, with its own EXPIRE.

Every change to a job is a read-modify-write under WATCH/MULTI: the forward-only
rules in ``advance()`` decide in Python, and the write is dropped and retried if
another gateway changed the job in between (optimistic locking).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlparse

import redis.asyncio as aioredis
from pydantic import BeforeValidator, TypeAdapter
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from gateway.store.base import (
    JobRecord,
    advance,
    idempotency_ttl,
    owner_scope,
    result_json,
    stored_options,
)
from stt_daemon.common.backoff import Backoff
from stt_daemon.common.protocol import JobEvent, JobStatus
from stt_daemon.common.urls import redact

SCHEMES = ("redis", "rediss", "unix")


def _read_options(data: Any) -> Any:
    """A stored record's options read as the SQLite store reads them.

    Records written before ``live`` was a field of its own hold it inside their
    options, and options a newer JobOptions refuses read as None.
    """
    if isinstance(data, dict) and isinstance(data.get("options"), dict):
        options, live = stored_options(data["options"])
        return {**data, "options": options, "live": data.get("live") is True or live}
    return data


_RECORD = TypeAdapter(Annotated[JobRecord, BeforeValidator(_read_options)])
#: Left out of the job's key: the transcript has a key of its own.
_RESULT = {"result"}
#: Optimistic transactions lost in a row before giving up (each loss means another write won).
_MAX_TRIES = 100
#: Waits after a lost transaction: 1 ms doubling up to 50 ms, jittered so that rivals spread.
_RACE_BACKOFF = Backoff(base=0.001, cap=0.05, jitter=True)

# Bind a key unless it is bound already; answer the id bound before (nil when this call bound it).
_CLAIM = """
local bound = redis.call('GET', KEYS[1])
if bound then return bound end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

#: What a transaction queues once it has decided: writes on the pipeline after MULTI.
Write = Callable[[Pipeline], None]


class StoreConflict(RuntimeError):
    """A job changed under every one of our tries (should not happen outside a storm)."""


def check_url(url: str) -> None:
    """Raise ValueError naming the problem unless ``url`` is a usable Redis URL."""
    parsed, shown = urlparse(url), redact(url)
    hint = "use redis://host:6379/0, rediss://host:6380/0 or unix:///path/redis.sock?db=0"
    if parsed.scheme not in SCHEMES:
        raise ValueError(f"invalid STT_STATUS_URL {shown!r}: {hint}")
    try:
        parsed.port  # noqa: B018 - urlparse checks the port only when asked
    except ValueError:
        raise ValueError(f"invalid STT_STATUS_URL {shown!r}: the port is not a number") from None
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ValueError(f"invalid STT_STATUS_URL {shown!r}: no socket path; {hint}")
        return
    if not parsed.hostname:
        raise ValueError(f"invalid STT_STATUS_URL {shown!r}: no host; {hint}")
    # redis-py would silently use db 0 for a path that is not a number.
    db = parsed.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"invalid STT_STATUS_URL {shown!r}: the database must be a number")


class RedisStore:
    """The status store on Redis; ``result_ttl`` (seconds, 0 = forever) keeps final jobs."""

    def __init__(self, url: str, namespace: str = "stt", result_ttl: int = 0) -> None:
        check_url(url)
        self._redis = aioredis.Redis.from_url(
            url,
            # Bounded waits: /readyz must answer "not ready", not hang, when Redis is away.
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
        )
        self._ns = namespace
        self._ttl = result_ttl
        self._claim = self._redis.register_script(_CLAIM)

    def _job_key(self, job_id: str) -> str:
        return f"{self._ns}:job:{job_id}"

    def _result_key(self, job_id: str) -> str:
        return f"{self._ns}:result:{job_id}"

    def _active_key(self, owner: str | None) -> str:
        return f"{self._ns}:active:{owner_scope(owner)}"

    def _idem_key(self, owner: str | None, key: str) -> str:
        # JSON of the pair: an owner or key holding ':' cannot collide with another pair.
        return f"{self._ns}:idem:{json.dumps([owner, key])}"

    def _put(self, pipe: Pipeline, record: JobRecord) -> None:
        """Queue the writes that store ``record`` and keep its owner's active set right."""
        final = record.status.is_final
        expiry = self._ttl if final and self._ttl > 0 else None
        pipe.set(self._job_key(record.id), _RECORD.dump_json(record, exclude=_RESULT), ex=expiry)
        transcript = result_json(record)
        if transcript is not None:
            pipe.set(self._result_key(record.id), transcript, ex=expiry)
        if final:
            pipe.srem(self._active_key(record.owner), record.id)
        else:
            pipe.sadd(self._active_key(record.owner), record.id)

    def _drop(self, pipe: Pipeline, record: JobRecord) -> None:
        pipe.delete(self._job_key(record.id), self._result_key(record.id))
        pipe.srem(self._active_key(record.owner), record.id)

    async def _transact(
        self, job_id: str, decide: Callable[[JobRecord | None], Write | None]
    ) -> bool:
        """Read the job, let ``decide`` pick the writes, commit them unless the job changed."""
        key = self._job_key(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            for attempt in range(_MAX_TRIES):
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    write = decide(_RECORD.validate_json(raw) if raw is not None else None)
                    if write is None:
                        return False  # leaving the pipeline's block unwatches
                    pipe.multi()  # type: ignore[no-untyped-call]
                    write(pipe)
                    await pipe.execute()
                    return True
                except WatchError:
                    # Another gateway wrote the job between our read and our write:
                    # read again and decide again (with jitter, so that rivals spread).
                    await asyncio.sleep(_RACE_BACKOFF.delay(attempt + 1))
        raise StoreConflict(f"job {job_id} changed under {_MAX_TRIES} tries in a row")

    async def create(self, record: JobRecord) -> None:
        """Store a new job unless it exists already (an event may have created it)."""

        def decide(current: JobRecord | None) -> Write | None:
            return None if current is not None else lambda pipe: self._put(pipe, record)

        await self._transact(record.id, decide)

    async def discard(self, job_id: str) -> None:
        """Delete a job that was never accepted, if it is still queued."""

        def decide(current: JobRecord | None) -> Write | None:
            if current is None or current.status is not JobStatus.QUEUED:
                return None
            return lambda pipe: self._drop(pipe, current)

        await self._transact(job_id, decide)

    async def get(self, job_id: str) -> JobRecord | None:
        """Fetch one job (an expired one is gone); its transcript is decoded when read."""
        raw, transcript = await self._redis.mget(self._job_key(job_id), self._result_key(job_id))
        if raw is None:
            return None
        record = _RECORD.validate_json(raw)
        if transcript is not None:
            record.result = transcript
        return record

    async def apply(self, event: JobEvent) -> bool:
        """Apply an event with ``advance()``, atomically across gateways."""

        def decide(current: JobRecord | None) -> Write | None:
            updated = advance(current, event, result_ttl=self._ttl)
            return None if updated is None else lambda pipe: self._put(pipe, updated)

        return await self._transact(event.job_id, decide)

    async def count_active(self, owner: str | None) -> int:
        """Size of the owner's set of unfinished jobs."""
        return int(await self._redis.scard(self._active_key(owner)))

    async def claim_idempotency(self, owner: str | None, key: str, job_id: str) -> str | None:
        """Bind the key in one script run (atomic in Redis)."""
        ttl = idempotency_ttl(self._ttl)
        bound = await self._claim(keys=[self._idem_key(owner, key)], args=[job_id, ttl])
        return bound.decode() if isinstance(bound, bytes) else None

    async def release_idempotency(self, owner: str | None, key: str) -> None:
        """Delete the binding."""
        await self._redis.delete(self._idem_key(owner, key))

    async def purge_expired(self) -> int:
        """Nothing to do: Redis expires final jobs and keys by itself."""
        return 0

    async def ping(self) -> None:
        """PING; raises when Redis is unreachable."""
        await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
