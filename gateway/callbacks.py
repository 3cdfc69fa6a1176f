"""Webhooks: a signed POST to a job's ``callback_url`` when the job ends.

Delivered by a consumer of the results exchange with its own durable queue
(shared by all gateways), so a callback due while every gateway is down is
sent when one comes back. Each request carries
``X-STT-Signature: sha256=<hex HMAC-SHA256 of the body with STT_CALLBACK_SECRET>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from typing import Any

import httpx
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from stt_daemon.protocol import DecodeError, EventType, JobEvent, decode_event
from stt_daemon.topology import Names

log = structlog.get_logger("gateway.callbacks")

FINAL_EVENTS = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED)
#: Statuses worth another try; any other 4xx means the receiver refuses for good.
RETRYABLE = {408, 425, 429}


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


class CallbackSender:
    """Consumes final events and POSTs those with a ``callback_url``, with retries."""

    def __init__(
        self,
        names: Names,
        secret: bytes,
        *,
        max_attempts: int,
        backoff: float,
        timeout: float = 10.0,
        prefetch: int = 32,
    ) -> None:
        self._names = names
        self._secret = secret
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._prefetch = prefetch
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Declare the callbacks queue and consume it."""
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        exchange = await channel.get_exchange(self._names.results_exchange, ensure=True)
        queue = await channel.declare_queue(
            self._names.callbacks_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for event in FINAL_EVENTS:
            await queue.bind(exchange, routing_key=event.value)
        await queue.consume(self._on_event)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode_event(message.body)
        except DecodeError:
            await message.reject(requeue=False)
            return
        url = event.options.callback_url if event.options else None
        if url:
            await self.deliver(url, event, delivery_id=message.message_id or event.job_id)
        # Acked after the last attempt either way: a receiver that keeps failing
        # must not hold the queue (RabbitMQ would close the channel after 30 min).
        await message.ack()

    async def deliver(self, url: str, event: JobEvent, delivery_id: str) -> bool:
        """POST with exponential backoff and jitter; True once a 2xx came back."""
        body = payload(event)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "stt-jobs-webhook/1",
            "X-STT-Signature": sign(self._secret, body),
            "X-STT-Event": event.event.value,
            "X-STT-Delivery": delivery_id,
        }
        bound = log.bind(job_id=event.job_id, url=url)
        for attempt in range(1, self._max_attempts + 1):
            retry, detail = await self._post(url, body, headers)
            if retry is None:
                bound.info("callback.delivered", attempt=attempt)
                return True
            if not retry or attempt == self._max_attempts:
                bound.warning("callback.gave_up", attempt=attempt, reason=detail)
                return False
            delay = min(300.0, self._backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            bound.info("callback.retry", attempt=attempt, reason=detail, delay_s=round(delay, 2))
            await asyncio.sleep(delay)
        return False

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[bool | None, str]:
        """None when delivered; otherwise (worth retrying?, why)."""
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return True, f"{type(exc).__name__}: {exc}"
        if response.is_success:
            return None, ""
        status = response.status_code
        return status >= 500 or status in RETRYABLE, f"HTTP {status}"
