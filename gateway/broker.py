"""The gateway's link to RabbitMQ: one connection to publish jobs, one for the recorder.

The gateway starts (and answers 503) while the broker is unreachable; a
background task keeps trying, and aio-pika's robust connection takes over once
the first connection succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, DeliveryError, PublishError
from pamqp.commands import Basic

from gateway.config import GatewaySettings
from stt_daemon.common import amqp
from stt_daemon.common.backoff import Backoff
from stt_daemon.common.liveprotocol import SessionEvent, encode_session_event
from stt_daemon.common.protocol import (
    CANCEL_ROUTING_KEY,
    CancelRequest,
    JobEvent,
    JobMessage,
    encode_cancel,
    encode_event,
    encode_job,
)
from stt_daemon.common.topology import Topology, declare_topology

log = structlog.get_logger("gateway.broker")

#: Waits between tries to reach the broker: exact, as the log line says them.
RECONNECT = Backoff(base=0.5, cap=10.0)


class BrokerUnavailable(Exception):
    """The broker cannot take the job right now (down, unreachable or too slow)."""


class QueueFull(Exception):
    """The model's queue is at ``STT_MAX_QUEUED``; the broker refused the job."""


class UnroutableJob(Exception):
    """No queue is bound for the job's model."""


OnConnected = Callable[[AbstractRobustConnection], Awaitable[None]]


class BrokerLink:
    """Connects in the background; publishes jobs with confirms and a timeout."""

    def __init__(self, settings: GatewaySettings, role: str = "publish") -> None:
        self._settings = settings
        self._signer = settings.claim_signer
        self._user = settings.broker_user
        self._role = role
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self.topology: Topology | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_connected: list[OnConnected] = []

    def on_connected(self, callback: OnConnected) -> None:
        """Run callback once the first connection is up (the recorder starts this way)."""
        self._on_connected.append(callback)

    def start(self) -> None:
        """Begin connecting in the background."""
        self._task = asyncio.create_task(self._connect_forever(), name=f"broker-{self._role}")

    @property
    def ready(self) -> bool:
        """True while connected and the topology is declared."""
        conn = self._connection
        return (
            conn is not None
            and self.topology is not None
            and not conn.is_closed
            and conn.connected.is_set()
        )

    async def _connect_forever(self) -> None:
        delays = RECONNECT.delays()
        while True:
            try:
                await self._connect_once()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next(delays)
                # Unreachable broker, or a topology that disagrees with what is
                # declared already (PRECONDITION_FAILED): say so and keep trying.
                log.warning(
                    "broker.not_ready",
                    role=self._role,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=delay,
                )
                self.topology = None
                if self._connection is not None:
                    with contextlib.suppress(Exception):
                        await self._connection.close()
                    self._connection = None
                await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        conn = await amqp.connect(
            self._settings.amqp_url, f"stt-gateway {self._role}", self._settings.heartbeat
        )
        self._connection = conn
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        self._channel = channel
        self.topology = await declare_topology(
            channel, self._settings.names, self._settings.model_names, self._settings.queue_limits
        )
        log.info("broker.connected", role=self._role)
        for callback in self._on_connected:
            await callback(conn)

    async def publish_job(self, job: JobMessage) -> None:
        """Publish a job and wait for the broker's confirm; raise a named error otherwise."""
        if not self.ready or self.topology is None:
            raise BrokerUnavailable("the message broker is not reachable")
        # Signed (with STT_CLAIM_SECRET) so that daemons run only claim checks that
        # a gateway wrote; user_id says, checked by the broker, who sent it.
        message = encode_job(job, user_id=self._user, sign=self._signer.sign)
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                await self.topology.jobs_exchange.publish(
                    message, routing_key=job.options.model, mandatory=True
                )
        except PublishError as exc:  # a Basic.Return: subclass of DeliveryError, so first
            raise UnroutableJob(job.options.model) from exc
        except DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack) and await self._queue_is_full(job.options.model):
                raise QueueFull(job.options.model) from None
            # A nack from a queue that is not full: in a cluster, its leader is
            # being re-elected after a node died. Worth a retry, not a 429; and
            # the retry gets a fresh channel, in case this one kept stale
            # knowledge of where the queue lives.
            await self._renew_channel()
            raise BrokerUnavailable(f"broker could not take the job: {exc}") from None
        except (TimeoutError, AMQPError, ConnectionError, RuntimeError) as exc:
            raise BrokerUnavailable(f"publish failed: {type(exc).__name__}") from None

    async def _renew_channel(self) -> None:
        """Publish on a new channel from now on (the old one is closed)."""
        conn, topology = self._connection, self.topology
        if conn is None or topology is None:
            return
        names = self._settings.names
        wanted = [names.jobs_exchange]
        if topology.control_exchange is not None:
            wanted.append(names.control_exchange)
        renewed = await amqp.renew_channel(
            conn,
            self._channel,
            wanted,
            limit=self._settings.publish_timeout,
            on_return_raises=True,
            owner=f"broker-{self._role}",
        )
        if renewed is None:
            return
        self._channel, exchanges = renewed
        topology.jobs_exchange = exchanges[0]
        if topology.control_exchange is not None:
            topology.control_exchange = exchanges[1]

    async def _queue_is_full(self, model: str) -> bool:
        """Whether a nack was the reject-publish overflow (the queue holds STT_MAX_QUEUED)."""
        if self._connection is None:
            return False
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                async with self._connection.channel() as channel:
                    queue = await channel.declare_queue(
                        self._settings.names.job_queue(model), passive=True
                    )
        except (TimeoutError, AMQPError, ConnectionError, RuntimeError):
            return False
        # Only ready messages count towards x-max-length.
        ready = queue.declaration_result.message_count or 0
        return ready >= self._settings.max_queued

    async def publish_result_event(self, news: JobEvent | SessionEvent) -> None:
        """Publish a job event or a live session's news on the results exchange, confirmed."""
        if not self.ready or self.topology is None:
            raise BrokerUnavailable("the message broker is not reachable")
        if isinstance(news, JobEvent):
            message, routing_key = encode_event(news, user_id=self._user), news.event.value
        else:
            message, routing_key = encode_session_event(news, user_id=self._user), news.event
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                # Not mandatory: news nobody has bound a queue to is not an error.
                await self.topology.results_exchange.publish(
                    message, routing_key=routing_key, mandatory=False
                )
        except (TimeoutError, AMQPError, ConnectionError, RuntimeError) as exc:
            raise BrokerUnavailable(f"publish failed: {type(exc).__name__}") from None

    async def publish_cancel(self, request: CancelRequest) -> None:
        """Publish a cancellation to the control exchange (its stream keeps it a day)."""
        if not self.ready or self.topology is None or self.topology.control_exchange is None:
            raise BrokerUnavailable("the message broker is not reachable")
        message = encode_cancel(request, user_id=self._user)
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                await self.topology.control_exchange.publish(
                    message, routing_key=CANCEL_ROUTING_KEY
                )
        except (TimeoutError, AMQPError, ConnectionError, RuntimeError) as exc:
            raise BrokerUnavailable(f"publish failed: {type(exc).__name__}") from None

    async def close(self) -> None:
        """Stop connecting and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._connection is not None:
            await self._connection.close()
