"""The gateway's live-window client: one request, one answer, through the broker.

A window goes to ``<ns>.live.<model>`` with RabbitMQ's direct reply-to, an
``expiration`` and a deadline header equal to the time this gateway will wait,
so that no daemon transcribes a window nobody awaits. Answers are matched to
their request by ``correlation_id``; one that comes too late is dropped.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import DeliveryError, PublishError
from pamqp.commands import Basic

from stt_daemon.common.amqp import broker_user
from stt_daemon.common.liveprotocol import LiveReply, WindowOptions, decode_reply, encode_window
from stt_daemon.common.protocol import DecodeError
from stt_daemon.common.topology import Names

log = structlog.get_logger("gateway.live")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class LiveUnavailable(Exception):
    """The window could not be sent: no broker, no daemon queue for the model, or full."""


class LiveTimeout(Exception):
    """No daemon answered the window in time (it expires in its queue)."""


class LiveClient:
    """Sends windows and awaits their answers on one channel (direct reply-to)."""

    def __init__(self, names: Names, amqp_url: str, publish_timeout: float) -> None:
        self._names = names
        self._user = broker_user(amqp_url)
        self._publish_timeout = publish_timeout
        self._channel: AbstractChannel | None = None
        self._waiting: dict[str, asyncio.Future[LiveReply]] = {}
        self.late = 0

    @property
    def ready(self) -> bool:
        """True while a channel is open."""
        return self._channel is not None and not self._channel.is_closed

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Open the channel and consume direct reply-to (before anything is published)."""
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
        await replies.consume(self._on_reply, no_ack=True)
        self._channel = channel
        log.info("live.client_started")

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        waiter = self._waiting.pop(message.correlation_id or "", None)
        if waiter is None or waiter.done():
            self.late += 1
            return
        try:
            waiter.set_result(decode_reply(message.body))
        except DecodeError as exc:
            waiter.set_exception(LiveUnavailable(f"unreadable answer: {exc}"))

    async def transcribe(
        self, model: str, pcm: bytes, options: WindowOptions, *, wait: float
    ) -> LiveReply:
        """Send one window; its answer, or LiveTimeout / LiveUnavailable."""
        channel = self._channel
        if channel is None or channel.is_closed:
            raise LiveUnavailable("the message broker is not reachable")
        correlation = uuid.uuid4().hex
        waiter: asyncio.Future[LiveReply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = waiter
        message = encode_window(
            pcm,
            options,
            wait=wait,
            reply_to=DIRECT_REPLY_TO,
            correlation_id=correlation,
            user_id=self._user,
        )
        try:
            exchange = await channel.get_exchange(self._names.live_exchange, ensure=False)
            async with asyncio.timeout(self._publish_timeout):
                await exchange.publish(message, routing_key=model, mandatory=True)
            async with asyncio.timeout(wait):
                return await waiter
        except TimeoutError:
            raise LiveTimeout(f"no answer within {wait:.1f} s") from None
        except PublishError:
            raise LiveUnavailable(f"no live queue serves model {model!r}") from None
        except DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                raise LiveUnavailable(f"the live queue of {model!r} is full") from None
            raise LiveUnavailable(f"window not sent: {exc}") from None
        finally:
            self._waiting.pop(correlation, None)
