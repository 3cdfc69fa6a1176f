"""Exchange, queue and dead-letter names and the one function that declares them.

Every process (gateway, daemon, tests) calls :func:`declare_topology` at start;
declarations are idempotent, so jobs queue durably even before any daemon runs.
This module imports nothing else of ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_model_name(name: str) -> str:
    """Model names become routing keys and queue names: keep them plain."""
    if not _MODEL_NAME.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (max 64)"
        )
    return name


@dataclass(frozen=True)
class Names:
    """All broker names, derived from one prefix (tests use a unique prefix each)."""

    prefix: str = "stt"

    @property
    def jobs_exchange(self) -> str:
        """Direct exchange; the routing key is the model name."""
        return f"{self.prefix}.jobs"

    def job_queue(self, model: str) -> str:
        """The quorum queue of one model."""
        return f"{self.prefix}.jobs.{check_model_name(model)}"

    @property
    def quarantine_exchange(self) -> str:
        """Direct exchange of redelivered jobs, run apart from the others; key = model."""
        return f"{self.prefix}.quarantine"

    def quarantine_queue(self, model: str) -> str:
        """Where a model's redelivered jobs wait to run one at a time per daemon."""
        return f"{self.prefix}.quarantine.{check_model_name(model)}"

    @property
    def live_exchange(self) -> str:
        """Direct exchange of live-transcription windows; key = model."""
        return f"{self.prefix}.live"

    def live_queue(self, model: str) -> str:
        """Where a model's live windows wait (briefly: they expire) for any daemon."""
        return f"{self.prefix}.live.{check_model_name(model)}"

    @property
    def dead_exchange(self) -> str:
        """Fanout exchange that receives dead-lettered jobs."""
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        """Where dead-lettered jobs wait for a person."""
        return f"{self.prefix}.dead"

    @property
    def results_exchange(self) -> str:
        """Topic exchange of job events; routing keys are ``job.<event>``."""
        return f"{self.prefix}.results"

    @property
    def recorder_queue(self) -> str:
        """The status store's queue on the results exchange (shared by all gateways)."""
        return f"{self.prefix}.recorder"

    @property
    def callbacks_queue(self) -> str:
        """The webhook sender's queue on the results exchange (shared by all gateways)."""
        return f"{self.prefix}.callbacks"

    def callback_retry_queue(self, delay_ms: int) -> str:
        """Where webhook calls wait ``delay_ms`` before going back to the callbacks queue."""
        return f"{self.prefix}.callbacks.retry.{delay_ms}ms"

    @property
    def control_exchange(self) -> str:
        """Topic exchange for gateways and daemons: daemon.*, gateway.*, job.cancel."""
        return f"{self.prefix}.control"

    @property
    def cancel_stream(self) -> str:
        """Stream of cancellations, kept a day, read from the start by every daemon."""
        return f"{self.prefix}.cancellations"


#: Live windows a model's live queue holds (about one per open session).
LIVE_QUEUE_LENGTH = 1000
#: Longest a live window may wait in its queue; sessions ask for less per window.
LIVE_WINDOW_TTL_MS = 10_000


@dataclass(frozen=True)
class QueueLimits:
    """Limits applied to every job queue."""

    max_queued: int = 1000
    #: Broker-side backstop against a job that kills every worker that takes it.
    #: Daemons give up earlier, by themselves (see ``DaemonSettings.max_attempts``),
    #: so that the job is reported failed; this limit only catches what they cannot.
    delivery_limit: int = 10


def broker_max_length(max_queued: int) -> int:
    """The ``x-max-length`` that makes the queue hold exactly ``max_queued`` jobs.

    RabbitMQ 3.10 quorum queues with ``reject-publish`` confirm one publish more than
    ``x-max-length`` (the limit is checked before the enqueue), so ask for one less.
    """
    return max(max_queued - 1, 0)


@dataclass
class Topology:
    """Declared exchanges and queues, as seen from one channel."""

    names: Names
    jobs_exchange: AbstractExchange
    results_exchange: AbstractExchange
    control_exchange: AbstractExchange | None = None
    quarantine_exchange: AbstractExchange | None = None
    job_queues: dict[str, AbstractQueue] = field(default_factory=dict)
    dead_queue: AbstractQueue | None = None
    recorder_queue: AbstractQueue | None = None
    live_exchange: AbstractExchange | None = None


#: Every durable queue here is a quorum queue (replicated, survives a node's loss),
#: except the cancellation stream.
DURABLE_QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


async def declare_topology(
    channel: AbstractChannel,
    names: Names,
    models: Iterable[str],
    limits: QueueLimits,
) -> Topology:
    """Declare (idempotently) everything jobs and events flow through."""
    models = list(models)
    dead_queue = await _declare_dead_letters(channel, names)
    jobs_exchange = await channel.declare_exchange(
        names.jobs_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    results_exchange = await channel.declare_exchange(
        names.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    topology = Topology(names, jobs_exchange, results_exchange, dead_queue=dead_queue)
    await _declare_job_queues(channel, topology, models, limits)
    await _declare_live_queues(channel, topology, models)
    await _declare_recorder_queue(channel, topology)
    await _declare_control(channel, topology)
    return topology


async def _declare_dead_letters(channel: AbstractChannel, names: Names) -> AbstractQueue:
    """The dead-letter fanout exchange and the one queue that keeps what reaches it."""
    dead_exchange = await channel.declare_exchange(
        names.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_queue = await channel.declare_queue(
        names.dead_queue, durable=True, arguments=DURABLE_QUORUM
    )
    await dead_queue.bind(dead_exchange)
    return dead_queue


def job_queue_arguments(names: Names, limits: QueueLimits) -> dict[str, Any]:
    """The arguments of every job queue (and quarantine queue)."""
    return {
        **DURABLE_QUORUM,
        "x-overflow": "reject-publish",
        "x-delivery-limit": limits.delivery_limit,
        "x-dead-letter-exchange": names.dead_exchange,
        # at-least-once: a dead-lettered job is kept until the dead queue confirms it.
        "x-dead-letter-strategy": "at-least-once",
        "x-max-length": broker_max_length(limits.max_queued),
    }


async def _declare_job_queues(
    channel: AbstractChannel, topology: Topology, models: list[str], limits: QueueLimits
) -> None:
    """Each model's job queue, and its quarantine queue behind the quarantine exchange."""
    names = topology.names
    topology.quarantine_exchange = await channel.declare_exchange(
        names.quarantine_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    arguments = job_queue_arguments(names, limits)
    for model in models:
        queue = await channel.declare_queue(
            names.job_queue(model), durable=True, arguments=arguments
        )
        await queue.bind(topology.jobs_exchange, routing_key=model)
        topology.job_queues[model] = queue
        # The same limit as the job queue: every job here was admitted there once, but
        # a publisher with write access to the quarantine exchange must not be able to
        # queue without bound. A full quarantine nacks, and the daemon that wanted to
        # move a job there hands it back to the job queue to try again later.
        quarantine = await channel.declare_queue(
            names.quarantine_queue(model), durable=True, arguments=arguments
        )
        await quarantine.bind(topology.quarantine_exchange, routing_key=model)


async def _declare_live_queues(
    channel: AbstractChannel, topology: Topology, models: list[str]
) -> None:
    """The live exchange and each model's live queue.

    Quorum queues too, though a window lives a few seconds and a lost one is sent
    again: a classic queue lives on one node, and while that node is down no process
    could declare it (nor start) and no session could go on. The Raft log costs
    1.5-2.3 ms per window against a classic queue (1-20 s windows, measured on the
    2-core test machine). Bounded, with a TTL that drops what nobody awaits.
    """
    names = topology.names
    topology.live_exchange = await channel.declare_exchange(
        names.live_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for model in models:
        live = await channel.declare_queue(
            names.live_queue(model),
            durable=True,
            arguments={
                **DURABLE_QUORUM,
                "x-max-length": LIVE_QUEUE_LENGTH,
                "x-overflow": "reject-publish",
                "x-message-ttl": LIVE_WINDOW_TTL_MS,
            },
        )
        await live.bind(topology.live_exchange, routing_key=model)


async def _declare_recorder_queue(channel: AbstractChannel, topology: Topology) -> None:
    """The status store's feed of job events.

    Declared here, not by the gateway alone, so that events published while no
    gateway runs are kept for the status store instead of being dropped.
    """
    recorder = await channel.declare_queue(
        topology.names.recorder_queue, durable=True, arguments=DURABLE_QUORUM
    )
    await recorder.bind(topology.results_exchange, routing_key="job.#")
    topology.recorder_queue = recorder


async def _declare_control(channel: AbstractChannel, topology: Topology) -> None:
    """The control exchange (announcements, cancellations) and the cancellation stream."""
    names = topology.names
    topology.control_exchange = await channel.declare_exchange(
        names.control_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    # A stream, not a queue: every daemon reads all of it (a daemon started after
    # a cancellation must still skip that job), and it trims itself by age.
    cancellations = await channel.declare_queue(
        names.cancel_stream,
        durable=True,
        arguments={"x-queue-type": "stream", "x-max-age": "1D"},
    )
    await cancellations.bind(topology.control_exchange, routing_key="job.cancel")


async def declare_callback_retries(
    channel: AbstractChannel, names: Names, delays_ms: Iterable[int]
) -> dict[int, AbstractQueue]:
    """Declare one delay queue per retry delay of the webhook sender.

    A call to retry later is published to the queue of its delay, without a
    consumer; when its TTL runs out the broker dead-letters it back to the
    callbacks queue. One TTL per queue keeps expiry in queue order (a message
    only expires at the head). The delays are the gateway's settings, so the
    gateway declares these, not :func:`declare_topology`.
    """
    queues: dict[int, AbstractQueue] = {}
    for delay_ms in sorted(set(delays_ms)):
        queues[delay_ms] = await channel.declare_queue(
            names.callback_retry_queue(delay_ms),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": delay_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": names.callbacks_queue,
                # at-least-once needs reject-publish: a call waiting here is not lost
                # if the callbacks queue is slow to confirm its return.
                "x-overflow": "reject-publish",
                "x-dead-letter-strategy": "at-least-once",
            },
        )
    return queues
