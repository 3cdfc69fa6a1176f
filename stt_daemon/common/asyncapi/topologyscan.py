"""What :func:`~stt_daemon.common.topology.declare_topology` declares, read without a broker.

The declaring functions run against a channel that only writes down what it is
asked to declare and bind. The AsyncAPI document is built from that record, so
its exchanges, queues and queue arguments are the code's, not a copy of them.
Per-model names are declared for a placeholder model and per-delay names for a
placeholder delay, then written with ``{model}`` and ``{delay_ms}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractChannel

from stt_daemon.common.topology import (
    Names,
    QueueLimits,
    declare_callback_retries,
    declare_topology,
)

#: A valid model name that no real name contains, then replaced by ``{model}``.
_MODEL = "MODEL-PLACEHOLDER"
#: A delay no setting uses, then replaced by ``{delay_ms}``.
_DELAY_MS = 86_399_987


@dataclass(frozen=True)
class Exchange:
    """One declared exchange."""

    name: str
    type: str
    durable: bool
    auto_delete: bool


@dataclass(frozen=True)
class Binding:
    """A queue bound to an exchange with a routing key (None: the queue's name, or unused)."""

    exchange: str
    routing_key: str | None


@dataclass
class Queue:
    """One declared queue."""

    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any]
    bindings: list[Binding] = field(default_factory=list)


@dataclass
class Declared:
    """Everything declared, by name, in the order of declaration."""

    exchanges: dict[str, Exchange] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)


class _RecordingQueue:
    def __init__(self, queue: Queue) -> None:
        self.name = queue.name
        self._queue = queue

    async def bind(self, exchange: Exchange, routing_key: str | None = None, **_: Any) -> None:
        self._queue.bindings.append(Binding(exchange.name, _named(routing_key)))


class _RecordingChannel:
    """Stands in for an aio-pika channel: declarations are written down, nothing is sent."""

    def __init__(self, declared: Declared) -> None:
        self._declared = declared

    async def declare_exchange(
        self, name: str, type: Any, durable: bool = False, auto_delete: bool = False, **_: Any
    ) -> Exchange:
        exchange = Exchange(_named(name), str(type.value), durable, auto_delete)
        self._declared.exchanges[exchange.name] = exchange
        return exchange

    async def declare_queue(
        self,
        name: str,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        **_: Any,
    ) -> _RecordingQueue:
        args = {key: _named(value) for key, value in (arguments or {}).items()}
        queue = Queue(_named(name), durable, exclusive, auto_delete, args)
        self._declared.queues[queue.name] = queue
        return _RecordingQueue(queue)


def _named(value: Any) -> Any:
    """``value`` with the placeholders written as the parameters they stand for."""
    if value == _DELAY_MS:
        return "{delay_ms}"
    if isinstance(value, str):
        return value.replace(_MODEL, "{model}").replace(str(_DELAY_MS), "{delay_ms}")
    return value


async def _declare(names: Names, limits: QueueLimits) -> Declared:
    declared = Declared()
    channel = cast(AbstractChannel, _RecordingChannel(declared))
    await declare_topology(channel, names, [_MODEL], limits)
    await declare_callback_retries(channel, names, [_DELAY_MS])
    return declared


def scan(names: Names, limits: QueueLimits | None = None) -> Declared:
    """What every process declares at start, and the gateway's webhook delay queues."""
    return asyncio.run(_declare(names, limits or QueueLimits()))


def any_model(name_of: Callable[[str], str]) -> str:
    """The name ``name_of`` gives a model, with ``{model}`` for the model."""
    return str(_named(name_of(_MODEL)))


def any_delay(name_of: Callable[[int], str]) -> str:
    """The name ``name_of`` gives a delay, with ``{delay_ms}`` for the delay."""
    return str(_named(name_of(_DELAY_MS)))
