"""The daemon's lifecycle: connect, consume with bounded concurrency, drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from stt_daemon.common import amqp
from stt_daemon.common.backoff import Backoff
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.topology import Topology, declare_topology
from stt_daemon.config import DaemonSettings
from stt_daemon.control import Cancellations, ControlPlane
from stt_daemon.deadletters import sweep_periodically
from stt_daemon.engine import Engine
from stt_daemon.events import EventPublisher
from stt_daemon.fanout import FanOut
from stt_daemon.handback import Handback
from stt_daemon.handler import JobHandler
from stt_daemon.live import LiveGate, LiveServer
from stt_daemon.metrics import DaemonMetrics
from stt_daemon.quarantine import Quarantine
from stt_daemon.speakers.step import SpeakerStep

log = structlog.get_logger("stt_daemon.worker")

#: Waits between tries to reach the broker: exact, as the log line says them.
RECONNECT = Backoff(base=1.0, cap=15.0)


class StopRequested(Exception):
    """The daemon was asked to stop before it could reach its broker."""


async def connect(
    settings: DaemonSettings, role: str, stop: asyncio.Event | None = None
) -> AbstractRobustConnection:
    """A robust connection named after this worker and its role (seen in the management UI).

    The first connection is retried too: a daemon started before its broker
    (compose, Kubernetes) waits for it instead of exiting, until ``stop`` is set.
    """
    delays = RECONNECT.delays()
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            return await amqp.connect(
                settings.amqp_url, f"stt-daemon {settings.worker_name} {role}", settings.heartbeat
            )
        except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            delay = next(delays)
            log.warning(
                "broker.unreachable",
                role=role,
                # Which broker, without its password: the first thing to check.
                tried=amqp.addresses(settings.amqp_url),
                error=str(exc) or type(exc).__name__,
                retry_in_s=delay,
            )
            # Wake at once when asked to stop: SIGTERM must not wait for the broker.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    raise StopRequested(role)


class Daemon:
    """Consumes job queues and runs each delivery as a task until asked to stop."""

    def __init__(
        self,
        settings: DaemonSettings,
        engines: Mapping[str, Engine],
        metrics: DaemonMetrics | None = None,
        speakers: SpeakerStep | None = None,
    ) -> None:
        self._settings = settings
        self._engines = engines
        self._metrics = metrics
        self._speakers = speakers
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[AbstractQueue, str]] = []

    def request_stop(self) -> None:
        """Signal-safe: only sets an event; run() does the actual shutdown."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until request_stop(), then shut down in steps; chores run meanwhile."""
        chores = self._start_chores()
        try:
            await self._serve()
        finally:
            for task in chores:
                task.cancel()
            await asyncio.gather(*chores, return_exceptions=True)

    def _start_chores(self) -> list[asyncio.Task[None]]:
        """The loop's beat behind ``/livez`` and the sweep of dead letters' old audio."""
        settings = self._settings
        chores = []
        if self._metrics is not None:
            # First: a loop stuck from now on, in connecting too, fails the liveness probe.
            self._metrics.watchdog.stall_after = settings.loop_stall_seconds
            chores.append(asyncio.create_task(self._metrics.watchdog.run(), name="watchdog"))
        if settings.result_ttl > 0:
            sweep = sweep_periodically(BlobStore(settings.resolved_blob_url), settings.result_ttl)
            chores.append(asyncio.create_task(sweep, name="dead-audio-sweep"))
        return chores

    async def _serve(self) -> None:
        connections = await self._connect()
        if connections is None:
            log.info("daemon.stopped", reason="asked to stop before the broker answered")
            return
        consume_conn, publish_conn, control_conn = connections
        try:
            publish_channel = await publish_conn.channel(publisher_confirms=True)
            topology = await declare_topology(
                publish_channel, self._settings.names, self._engines, self._settings.queue_limits
            )
            cancellations = Cancellations()
            handler = await self._handler(publish_conn, publish_channel, topology, cancellations)
            live = self._live_server()
            await live.start(consume_conn, publish_channel)
            control = await self._control(control_conn, topology, cancellations)
            await self._start_consumers(consume_conn, handler)
            log.info("daemon.ready", models=list(self._engines), prefetch=self._settings.prefetch)
            await self._stop.wait()
            await self._shutdown(handler)
            await control.stop()
        finally:
            # Closed last so heartbeats keep flowing while in-flight jobs finish.
            await consume_conn.close()
            await publish_conn.close()
            await control_conn.close()

    async def _connect(self) -> list[AbstractRobustConnection] | None:
        """The consume, publish and control connections; None when asked to stop first."""
        try:
            return [
                await connect(self._settings, role, self._stop)
                # Two connections: a broker memory alarm blocks publishers, and must not
                # also stall the consumer side (acks, heartbeats) of the same connection.
                # The control plane reads a stream: in a cluster, a node whose replica of
                # it is not running yet closes the whole connection (RESOURCE_ERROR). That
                # must not stop job consumption, so the stream gets a connection of its own.
                for role in ("consume", "publish", "control")
            ]
        except StopRequested:
            return None

    async def _handler(
        self,
        publish_conn: AbstractRobustConnection,
        publish_channel: AbstractChannel,
        topology: Topology,
        cancellations: Cancellations,
    ) -> JobHandler:
        """The job handler, publishing its events on the results exchange."""
        settings = self._settings
        events = EventPublisher(
            publish_channel,
            topology.results_exchange,
            settings.publish_timeout,
            publish_conn,
            user_id=settings.broker_user,
            namespace=settings.names.prefix,
        )
        blobs = BlobStore(settings.resolved_blob_url)
        return JobHandler(
            settings,
            self._engines,
            blobs,
            events,
            cancellations,
            self._metrics,
            await self._quarantine(publish_conn),
            await self._fanout(publish_conn, blobs),
            await self._handback(publish_conn),
            self._speakers,
        )

    async def _control(
        self,
        control_conn: AbstractRobustConnection,
        topology: Topology,
        cancellations: Cancellations,
    ) -> ControlPlane:
        """The control plane, started and caught up with the stream's past commands."""
        control = ControlPlane(
            self._settings, self._engines, lambda: len(self._tasks), cancellations, self._speakers
        )
        assert topology.control_exchange is not None
        await control.start(await control_conn.channel(), topology.control_exchange)
        await control.caught_up()
        return control

    def _live_server(self) -> LiveServer:
        """Answers live windows; one gate for all models, since they share the CPU."""
        gate = LiveGate()
        for engine in self._engines.values():
            if hasattr(engine, "gate"):
                engine.gate = gate
        settings = self._settings
        return LiveServer(
            settings.names,
            self._engines,
            gate,
            prefetch=settings.live_prefetch,
            worker=settings.worker_name,
            user_id=settings.broker_user,
            metrics=self._metrics,
        )

    async def _quarantine(self, conn: AbstractRobustConnection) -> Quarantine | None:
        """Where redelivered jobs go; None when this daemon runs one job at a time anyway."""
        if self._settings.prefetch == 1:
            return None
        # A channel of its own, so that a job that cannot be routed raises, not vanishes.
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(self._settings.names.quarantine_exchange)
        return Quarantine(exchange, self._settings.publish_timeout, self._settings.broker_user)

    async def _handback(self, conn: AbstractRobustConnection) -> Handback:
        """Where stopping hands running jobs back (confirmed; an unroutable copy raises)."""
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        return Handback(channel, self._settings.publish_timeout, self._settings.broker_user)

    async def _fanout(self, conn: AbstractRobustConnection, blobs: BlobStore) -> FanOut:
        """Publishes the parts of long recordings to the job queues."""
        # Confirms, and returns that raise: a part must never vanish unrouted.
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        settings = self._settings
        return FanOut(
            blobs,
            await channel.get_exchange(settings.names.jobs_exchange),
            split_seconds=settings.split_seconds,
            part_seconds=settings.part_seconds,
            publish_timeout=settings.publish_timeout,
            signer=settings.claim_signer,
            daemon_user=settings.broker_user,
        )

    async def _start_consumers(self, conn: AbstractRobustConnection, handler: JobHandler) -> None:
        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.create_task(handler.handle(message))
            # Keep a reference: the loop holds tasks only weakly.
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

        names = self._settings.names
        for model in self._engines:
            # One channel per queue: prefetch is per consumer, and quorum queues do
            # not support channel-global QoS. Quarantined jobs come one at a time,
            # so no two of them ever share a process that one of them crashes.
            for queue_name, prefetch in (
                (names.job_queue(model), self._settings.prefetch),
                (names.quarantine_queue(model), 1),
            ):
                channel = await conn.channel()
                await channel.set_qos(prefetch_count=prefetch)
                queue = await channel.get_queue(queue_name, ensure=True)
                tag = await queue.consume(on_message)
                self._consumers.append((queue, tag))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The message stays unacked and comes back when the channel closes.
            log.error("job.crashed", exc_info=task.exception())

    async def _shutdown(self, handler: JobHandler) -> None:
        in_flight = len(self._tasks)
        log.info("daemon.stopping", in_flight=in_flight, deadline_s=self._settings.shutdown_timeout)
        # Stop intake first: nothing new arrives while the running jobs finish.
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        # Then jobs that would not finish well within the deadline save their checkpoint
        # and go back to their queue at their next segment: waiting for them would make
        # a stop take minutes, and their work is kept either way.
        handler.stop(grace=self._settings.shutdown_timeout / 2)
        if self._tasks:
            _done, pending = await asyncio.wait(
                set(self._tasks), timeout=self._settings.shutdown_timeout
            )
            for task in pending:
                task.cancel()  # the handler hands the job back to the queue
            if pending:
                await asyncio.wait(pending, timeout=10)
        log.info("daemon.stopped", in_flight_at_signal=in_flight, **handler.counts)
