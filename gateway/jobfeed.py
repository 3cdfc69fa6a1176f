"""Job events for this gateway process's streams (``GET /v1/jobs/{id}/events``, ``stream=true``).

The recorder's queue is shared by all gateways (competing consumers), so each sees
only some of the events. The feed gives each gateway process a queue of its own:
server-named, exclusive and auto-deleted with its connection, bound to the results
exchange with ``job.#``, and it hands each event to the streams that follow its job.

It consumes for as long as the gateway runs, not only while a stream is open: a
stream must not miss what happens while a consumer or binding is being set up (round
trips to the broker), and after a reconnect the robust channel restores one steady
consumer. The cost is a copy of each event per gateway; one about a job that no
stream follows is dropped by its ``job_id`` header, undecoded.

Only events from trusted publishers are handed on, as the recorder believes them
(:mod:`gateway.trust`), and only those that name the job's
producer, as the status store applies them. The store stays the truth: a stream
checks it every few seconds, so one whose final event was lost (it came before the
stream subscribed, or while the broker was out of reach) still ends, with that event
made from the record.

Everything is bounded: streams per process (``STT_MAX_EVENT_STREAMS``), events waiting
per stream (``STREAM_QUEUE``: a slow client loses progress events, never a final
one), events waiting on the broker for this gateway (``FEED_QUEUE_LENGTH``, oldest
dropped), and each stream's duration (the route's limit).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Collection
from contextlib import suppress
from typing import Annotated

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from fastapi import Depends
from starlette.requests import HTTPConnection

from gateway.config import GatewaySettings
from gateway.store import JobRecord, StatusStore
from gateway.trust import believed, trusted_publishers
from stt_daemon.common.protocol import (
    DecodeError,
    EventType,
    JobEvent,
    JobStatus,
    decode_event,
    utcnow,
)
from stt_daemon.common.topology import Names

log = structlog.get_logger("gateway.jobfeed")

#: Events one stream may have waiting to be sent (a slow client's progress is dropped).
STREAM_QUEUE = 64
#: Events the broker keeps for this gateway while it lags; past it the oldest go.
FEED_QUEUE_LENGTH = 10_000
#: Events this gateway holds unacknowledged (they are handed on at once).
FEED_PREFETCH = 256
#: Seconds between two looks at the status store while a stream waits.
STORE_RECHECK_S = 2.0
#: The event a final status is reported by.
FINAL_EVENTS = {
    JobStatus.SUCCEEDED: EventType.SUCCEEDED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
}


class TooManyStreams(Exception):
    """This gateway process has ``STT_MAX_EVENT_STREAMS`` streams open already."""


class StreamTimeout(Exception):
    """A stream reached its longest duration before its job ended."""


class Subscription:
    """One stream's bounded queue of events about one job."""

    def __init__(self, feed: JobFeed, limit: int) -> None:
        self._feed = feed
        self._limit = limit
        self._events: deque[JobEvent] = deque()
        self._wake = asyncio.Event()
        self.job_id: str | None = None
        self.closed = False
        #: Events dropped because the stream's client read too slowly.
        self.dropped = 0

    def follow(self, job_id: str) -> None:
        """Receive the events of ``job_id`` from now on."""
        self.job_id = job_id
        self._feed._followers.setdefault(job_id, set()).add(self)

    def offer(self, event: JobEvent) -> None:
        """Queue an event; when full, progress gives way (a final event never does)."""
        if len(self._events) >= self._limit and not self._make_room(event):
            self.dropped += 1
            return
        self._events.append(event)
        self._wake.set()

    def _make_room(self, event: JobEvent) -> bool:
        # The oldest progress goes first (a newer one says more); a status that is not
        # final gives way to a final event only.
        victim = next((e for e in self._events if e.event is EventType.PROGRESS), None)
        if victim is None and event.status.is_final:
            victim = next((e for e in self._events if not e.status.is_final), None)
        if victim is None:
            return False
        self._events.remove(victim)
        self.dropped += 1
        return True

    async def get(self, wait: float) -> JobEvent | None:
        """The next event, or None when none came within ``wait`` seconds."""
        if not self._events:
            self._wake.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._wake.wait()
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        """Stop receiving and give the stream's slot back (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._feed._release(self)


class JobFeed:
    """This process's copy of the results exchange, fanned out to the open streams."""

    def __init__(
        self,
        names: Names,
        trusted: Collection[str],
        *,
        max_streams: int = 100,
        stream_queue: int = STREAM_QUEUE,
    ) -> None:
        self._names = names
        self._trusted = frozenset(trusted)
        self.max_streams = max_streams
        self._stream_queue = stream_queue
        self._open = 0
        self._followers: dict[str, set[Subscription]] = {}
        #: Events refused because their publisher is not trusted.
        self.untrusted = 0

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> JobFeed:
        """The feed configured by ``STT_MAX_EVENT_STREAMS`` and ``STT_EVENT_PUBLISHERS``."""
        return cls(
            settings.names, trusted_publishers(settings), max_streams=settings.max_event_streams
        )

    @property
    def open_streams(self) -> int:
        """Streams open now."""
        return self._open

    def open(self, job_id: str | None = None) -> Subscription:
        """A stream's subscription (following ``job_id`` if given); TooManyStreams when full."""
        if self._open >= self.max_streams:
            raise TooManyStreams(
                f"this gateway has {self.max_streams} event streams open "
                "(STT_MAX_EVENT_STREAMS); try again shortly"
            )
        self._open += 1
        subscription = Subscription(self, self._stream_queue)
        if job_id is not None:
            subscription.follow(job_id)
        return subscription

    def _release(self, subscription: Subscription) -> None:
        self._open -= 1
        if subscription.job_id is None:
            return
        followers = self._followers.get(subscription.job_id)
        if followers is not None:
            followers.discard(subscription)
            if not followers:
                del self._followers[subscription.job_id]

    def dispatch(self, event: JobEvent) -> int:
        """Hand an event to the streams of its job; how many got it."""
        followers = self._followers.get(event.job_id, ())
        for subscription in followers:
            subscription.offer(event)
        return len(followers)

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Declare this process's queue on the results exchange and consume it."""
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=FEED_PREFETCH)
        exchange = await channel.get_exchange(self._names.results_exchange, ensure=True)
        queue = await channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-max-length": FEED_QUEUE_LENGTH}
        )
        await queue.bind(exchange, routing_key="job.#")
        await queue.consume(self._on_message)
        log.info("jobfeed.started", queue=queue.name, max_streams=self.max_streams)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Acked first: the feed only tells streams sooner what the store will say.
        await message.ack()
        if not self._followers or not self._wanted(message):
            return
        if not believed(message, self._trusted):
            # The recorder warns about these (each is seen there once); not again here.
            self.untrusted += 1
            log.debug("jobfeed.untrusted_event", user_id=message.user_id)
            return
        try:
            event = decode_event(message.body)
        except DecodeError as exc:
            log.debug("jobfeed.bad_event", error=str(exc))
            return
        self.dispatch(event)

    def _wanted(self, message: AbstractIncomingMessage) -> bool:
        """False for an event whose ``job_id`` header names a job that no stream follows."""
        job_id = (message.headers or {}).get("job_id")
        if isinstance(job_id, bytes):
            job_id = job_id.decode(errors="replace")
        return not isinstance(job_id, str) or job_id in self._followers


def get_feed(conn: HTTPConnection) -> JobFeed:
    """The app's job feed."""
    feed: JobFeed = conn.app.state.jobfeed
    return feed


async def _feed_dependency(conn: HTTPConnection) -> JobFeed:
    return get_feed(conn)


JobFeedDep = Annotated[JobFeed, Depends(_feed_dependency)]


def is_foreign(record: JobRecord, event: JobEvent) -> bool:
    """An event about another producer's job of the same id (the status store's rule)."""
    return (
        record.producer is not None
        and event.producer is not None
        and record.producer != event.producer
    )


def final_event(record: JobRecord) -> JobEvent:
    """The final event of a job that is final in the store, as the daemon reported it."""
    return JobEvent(
        event=FINAL_EVENTS[record.status],
        job_id=record.id,
        model=record.model,
        attempt=record.attempts or None,
        worker=record.worker,
        progress=record.progress,
        result=record.result,
        error=record.error,
        options=record.options,
        producer=record.producer,
        timestamp=record.finished_at or record.updated_at or utcnow(),
    )


async def follow(
    subscription: Subscription,
    store: StatusStore,
    record: JobRecord,
    *,
    heartbeat: float,
    limit: float,
) -> AsyncIterator[JobEvent | None]:
    """The job's events up to its final one; None when a heartbeat is due.

    ``record`` is the job as read after the subscription began, so nothing falls
    between the two. Raises StreamTimeout after ``limit`` seconds; ends without a
    final event only if the job left the store.
    """
    if record.status.is_final:
        yield final_event(record)
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline, beat, check = start + limit, start + heartbeat, start + STORE_RECHECK_S
    while True:
        now = loop.time()
        if now >= deadline:
            raise StreamTimeout(record.id)
        event = await subscription.get(min(deadline, beat, check) - now)
        now = loop.time()
        if event is not None and not is_foreign(record, event):
            yield event
            if event.status.is_final:
                return
            beat = now + heartbeat
            continue
        if now >= check:
            check = now + STORE_RECHECK_S
            stored = await _stored(store, record)
            if stored is None:
                return
            if stored.status.is_final:
                yield final_event(stored)
                return
        if now >= beat:
            beat = now + heartbeat
            yield None


async def _stored(store: StatusStore, record: JobRecord) -> JobRecord | None:
    """The job as the store has it now (None: gone); ``record`` while the store fails."""
    try:
        return await store.get(record.id)
    except Exception as exc:
        log.warning("jobfeed.store_unavailable", job_id=record.id, error=str(exc))
        return record
