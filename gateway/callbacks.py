"""Webhooks: a signed POST to a job's ``callback_url`` when the job ends.

Delivered by a consumer of the results exchange with its own durable queue
(shared by all gateways), so a callback due while every gateway is down is
sent when one comes back. Each request carries
``X-STT-Signature: sha256=<hex HMAC-SHA256 of the body with STT_CALLBACK_SECRET>``.

One delivery of the queue is one try, bounded by ``STT_CALLBACK_TIMEOUT``; a
try to repeat later waits in a delay queue (:mod:`gateway.callback_delays`),
not in the gateway, and a destination host gets ``STT_CALLBACK_PER_HOST``
calls at once: one tenant's slow receiver cannot hold the calls of others.
Destinations are checked by :mod:`gateway.egress` at connect time. Only events
whose broker-checked ``user_id`` is a trusted publisher's are sent (see
:mod:`gateway.trust`): a forged ``job.succeeded`` must not reach a receiver
under our signature.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from gateway.callback_delays import DelayQueues
from gateway.config import GatewaySettings
from gateway.egress import EgressPolicy, EgressRefused, check_callback_url, redact_url
from gateway.trust import believed, trusted_publishers
from gateway.webhook_http import webhook_client
from stt_daemon.common import amqp
from stt_daemon.common.backoff import Backoff
from stt_daemon.common.protocol import DecodeError, EventType, JobEvent, decode_event
from stt_daemon.common.topology import Names

log = structlog.get_logger("gateway.callbacks")

FINAL_EVENTS = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED)
#: Statuses worth another try; any other 4xx means the receiver refuses for good.
RETRYABLE = {408, 425, 429}
#: Headers of a call that waited in a delay queue: tries made, times put off (host busy).
ATTEMPTS_HEADER = "x-stt-callback-attempts"
DEFERRALS_HEADER = "x-stt-callback-deferrals"
MAX_DELAY_S = 300.0
#: A call put off because its host is busy waits at least this long, at most the
#: backoff of this many tries: a backlog for one host must not spin in the broker.
MIN_DEFER_MS = 1000
DEFER_STEPS = 5
#: Seconds a call may wait for a busy host's slot before being put off.
SLOT_WAIT_S = 1.0


class Outcome(enum.Enum):
    """What one try came to."""

    DELIVERED = "delivered"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    BUSY = "busy"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(event: JobEvent) -> bytes:
    """What the receiver gets: the job's id, final status, result or error."""
    body: dict[str, Any] = {
        "id": event.job_id,
        "status": event.status.value,
        "model": event.model,
        "finished_at": event.timestamp.isoformat(),
        "result": event.result.model_dump(mode="json") if event.result else None,
        "error": event.error.model_dump(mode="json") if event.error else None,
    }
    return json.dumps(body, ensure_ascii=False).encode()


@dataclass(frozen=True)
class RetryPlan:
    """How many tries a call gets and how long it waits between them."""

    max_attempts: int
    backoff: float

    def delay_ms(self, attempt: int) -> int:
        """The wait after the ``attempt``-th failed try (exponential, capped).

        No jitter: each distinct wait is a delay queue of its own (delays_ms).
        """
        return round(Backoff(self.backoff, MAX_DELAY_S).delay(attempt) * 1000)

    def defer_ms(self, deferral: int) -> int:
        """The wait of a call put off for the ``deferral``-th time."""
        return max(MIN_DEFER_MS, self.delay_ms(min(deferral, DEFER_STEPS)))

    def delays_ms(self) -> set[int]:
        """Every delay a call may wait: one delay queue each."""
        retries = {self.delay_ms(a) for a in range(1, self.max_attempts)}
        return retries | {self.defer_ms(d) for d in range(1, DEFER_STEPS + 1)}


class HostSlots:
    """At most ``limit`` calls in flight per destination and ``limit`` more waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._users: Counter[str] = Counter()

    async def acquire(self, key: str, wait: float) -> bool:
        """Take a slot within ``wait`` seconds; False (at once when crowded) otherwise."""
        if self._users[key] >= 2 * self.limit:
            return False
        gate = self._gates.setdefault(key, asyncio.Semaphore(self.limit))
        self._users[key] += 1
        try:
            async with asyncio.timeout(wait):
                await gate.acquire()
        except TimeoutError:
            self._leave(key)
            return False
        except BaseException:
            self._leave(key)
            raise
        return True

    def release(self, key: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        self._gates[key].release()
        self._leave(key)

    def _leave(self, key: str) -> None:
        self._users[key] -= 1
        if self._users[key] <= 0:  # forget idle hosts: the map stays small
            del self._users[key], self._gates[key]


class CallbackSender:
    """Consumes final events and POSTs those with a ``callback_url``, one try a delivery."""

    def __init__(
        self,
        names: Names,
        secret: bytes,
        *,
        retry: RetryPlan,
        http: httpx.AsyncClient,
        delays: DelayQueues | None = None,
        policy: EgressPolicy | None = None,
        per_host: int = 4,
        timeout: float = 10.0,
        prefetch: int = 64,
        trusted: Collection[str] | None = None,
    ) -> None:
        self._names = names
        #: Broker users whose events are sent; None checks nothing (tests that feed
        #: deliveries by hand): from_settings always gives the set.
        self._trusted = frozenset(trusted) if trusted is not None else None
        self.untrusted = 0
        self._secret = secret
        self._retry = retry
        self._http = http
        self._delays = delays
        self._policy = policy or EgressPolicy()
        self._slots = HostSlots(per_host)
        self._timeout = timeout
        # A slow host holds at most 2 * per_host deliveries (in flight and waiting):
        # leave room for several at once and still some for everyone else.
        self._prefetch = max(prefetch, 8 * per_host)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> CallbackSender:
        """The sender configured by ``STT_CALLBACK_*`` (the secret must be set)."""
        if settings.callback_secret is None:
            raise ValueError("callbacks need STT_CALLBACK_SECRET")
        policy = EgressPolicy.parse(settings.callback_allow)
        retry = RetryPlan(settings.callback_max_attempts, settings.callback_backoff)

        async def connect() -> AbstractRobustConnection:
            url, heartbeat = settings.amqp_url, settings.heartbeat
            return await amqp.connect(url, "stt-gateway callbacks", heartbeat)

        return cls(
            settings.names,
            settings.callback_secret.get_secret_value().encode(),
            retry=retry,
            http=webhook_client(
                policy,
                connect_timeout=settings.callback_connect_timeout,
                timeout=settings.callback_timeout,
            ),
            delays=DelayQueues(
                settings.names,
                retry.delays_ms(),
                connect,
                settings.publish_timeout,
                # Calls coming back from a delay queue must be as trusted as the event.
                user=amqp.broker_user(settings.amqp_url),
            ),
            policy=policy,
            per_host=settings.callback_per_host,
            timeout=settings.callback_timeout,
            trusted=trusted_publishers(settings),
        )

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Declare the callbacks queue (and delay queues) and consume it."""
        if self._delays is not None:
            await self._delays.start()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        exchange = await channel.get_exchange(self._names.results_exchange, ensure=True)
        queue = await channel.declare_queue(
            self._names.callbacks_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for event in FINAL_EVENTS:
            await queue.bind(exchange, routing_key=event.value)
        await queue.consume(self._on_event)
        log.info(
            "callbacks.started",
            per_host=self._slots.limit,
            max_attempts=self._retry.max_attempts,
            allowed=self._policy.describe(),
        )

    async def close(self) -> None:
        """Close the HTTP client and the delay queues' connection."""
        await self._http.aclose()
        if self._delays is not None:
            await self._delays.close()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        if self._trusted is not None and not believed(message, self._trusted):
            # Not from a daemon (nor back from our own delay queues): never sent.
            self.untrusted += 1
            log.warning(
                "callbacks.untrusted_event",
                user_id=message.user_id,
                routing_key=message.routing_key,
                message_id=message.message_id,
            )
            await message.reject(requeue=False)
            return
        try:
            event = decode_event(message.body)
        except DecodeError:
            await message.reject(requeue=False)
            return
        url = event.options.callback_url if event.options else None
        if not url:
            await message.ack()
            return
        headers = message.headers or {}
        attempts = _count(headers.get(ATTEMPTS_HEADER))
        deferrals = _count(headers.get(DEFERRALS_HEADER))
        delivery_id = message.message_id or event.job_id
        outcome = await self.attempt(url, event, delivery_id, attempts + 1)
        if outcome is Outcome.RETRY:
            later = {ATTEMPTS_HEADER: attempts + 1, DEFERRALS_HEADER: deferrals}
            await self._later(message, later, self._retry.delay_ms(attempts + 1))
        elif outcome is Outcome.BUSY:
            later = {ATTEMPTS_HEADER: attempts, DEFERRALS_HEADER: deferrals + 1}
            await self._later(message, later, self._retry.defer_ms(deferrals + 1))
        else:
            await message.ack()

    async def _later(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], delay_ms: int
    ) -> None:
        try:
            if self._delays is None:
                raise RuntimeError("no delay queues")
            await self._delays.put(message, headers, delay_ms)
        except Exception as exc:
            # The broker cannot take it now: hand the delivery back, after a pause so
            # that a broker in trouble is not also sent the same call in a loop.
            log.warning("callback.not_rescheduled", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def attempt(self, url: str, event: JobEvent, delivery_id: str, attempt: int) -> Outcome:
        """Try once to POST ``event`` to ``url``; say what should happen next."""
        bound = log.bind(job_id=event.job_id, url=redact_url(url), attempt=attempt)
        try:
            key = check_callback_url(url, self._policy).key
        except EgressRefused as exc:
            bound.warning("callback.refused", reason=str(exc))
            return Outcome.GAVE_UP
        if not await self._slots.acquire(key, SLOT_WAIT_S):
            bound.debug("callback.host_busy", host=key)
            return Outcome.BUSY
        try:
            retry, detail = await self._post(url, event, delivery_id)
        except EgressRefused as exc:
            bound.warning("callback.refused", reason=str(exc))
            return Outcome.GAVE_UP
        finally:
            self._slots.release(key)
        if retry is None:
            bound.info("callback.delivered")
            return Outcome.DELIVERED
        if not retry or attempt >= self._retry.max_attempts:
            bound.warning("callback.gave_up", reason=detail)
            return Outcome.GAVE_UP
        delay = self._retry.delay_ms(attempt) / 1000
        bound.info("callback.retry", reason=detail, delay_s=delay)
        return Outcome.RETRY

    async def _post(self, url: str, event: JobEvent, delivery_id: str) -> tuple[bool | None, str]:
        """None when delivered; otherwise (worth retrying?, why)."""
        body = payload(event)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "stt-jobs-webhook/1",
            "X-STT-Signature": sign(self._secret, body),
            "X-STT-Event": event.event.value,
            "X-STT-Delivery": delivery_id,
        }
        try:
            # One deadline for the whole try: per-operation timeouts alone let a
            # receiver that sends a byte every few seconds hold the call for ever.
            async with asyncio.timeout(self._timeout):
                async with self._http.stream("POST", url, content=body, headers=headers) as resp:
                    status = resp.status_code  # the body is never read: no need, no risk
        except TimeoutError:
            return True, f"no answer within {self._timeout:g}s"
        except httpx.InvalidURL:
            return False, "invalid URL"
        except httpx.HTTPError as exc:
            return True, type(exc).__name__ + (f": {exc}" if str(exc) else "")
        if 200 <= status < 300:
            return None, ""
        return status >= 500 or status in RETRYABLE, f"HTTP {status}"


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
