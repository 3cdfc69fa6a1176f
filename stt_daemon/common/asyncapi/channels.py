"""The channels of the AsyncAPI document, from the declared topology.

A channel is either a routing key on an exchange (what a publisher addresses) or a
queue (what a consumer reads). Exchange types, queue arguments and bindings come
from :func:`~stt_daemon.common.asyncapi.topologyscan.scan`; an exchange or queue declared
there that this module does not describe stops the generator, so the document
cannot leave one out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stt_daemon.common.asyncapi.messages import ATTEMPTS_HEADER, CALLBACK_HEADERS
from stt_daemon.common.asyncapi.topologyscan import (
    Binding,
    Declared,
    Queue,
    any_delay,
    any_model,
    scan,
)
from stt_daemon.common.protocol import HELLO_ROUTING_KEY, EventType
from stt_daemon.common.topology import Names

#: Every job, from a gateway, a producer, or a daemon's copy.
JOBS = ("jobClaimCheck", "jobRawAudio")


@dataclass(frozen=True)
class ChannelSpec:
    """One channel: where messages go (or wait), and which."""

    id: str
    address: str | None
    title: str
    description: str
    messages: tuple[str, ...]
    binding: dict[str, Any]
    #: (name in the address, component parameter)
    parameters: tuple[tuple[str, str], ...] = ()


def channels(names: Names) -> list[ChannelSpec]:
    """The channels of the topology declared under ``names``."""
    declared = scan(names)
    _add_callbacks_queue(names, declared)
    routes = [
        *_job_routes(names, declared),
        *_result_routes(names, declared),
        *_control_routes(names, declared),
    ]
    unknown = set(declared.exchanges) - {spec.binding["exchange"]["name"] for spec in routes}
    if unknown:
        raise RuntimeError(f"exchanges declared but not described in the document: {unknown}")
    return [*routes, *_replies(), *_queues(names, declared)]


def _add_callbacks_queue(names: Names, declared: Declared) -> None:
    """The webhook sender's queue, which the gateway declares itself (gateway/callbacks.py)."""
    finals = [e.value for e in EventType if e.status.is_final]
    declared.queues[names.callbacks_queue] = Queue(
        names.callbacks_queue,
        durable=True,
        exclusive=False,
        auto_delete=False,
        arguments={"x-queue-type": "quorum"},
        bindings=[Binding(names.results_exchange, key) for key in finals],
    )


def _on(declared: Declared, exchange: str) -> dict[str, Any]:
    """The AMQP binding of a routing key on ``exchange``, as declared."""
    found = declared.exchanges[exchange]
    return {
        "is": "routingKey",
        "exchange": {
            "name": found.name,
            "type": found.type,
            "durable": found.durable,
            "autoDelete": found.auto_delete,
        },
    }


def _key(declared: Declared, queue: str) -> str:
    """The routing key ``queue`` is bound with (its one binding)."""
    (binding,) = declared.queues[queue].bindings
    assert binding.routing_key is not None
    return binding.routing_key


def _job_routes(names: Names, d: Declared) -> list[ChannelSpec]:
    """Where jobs and live windows are published: the model is the routing key."""
    model = (("model", "model"),)
    return [
        ChannelSpec(
            id="jobs",
            address="{model}",
            title="Jobs, by model",
            description=(
                "Jobs for one model. Publish with publisher confirms and `mandatory`: a "
                "basic.return means no queue serves the model, a nack that its queue is full. "
                "Daemons publish here too: the parts of a long recording, and jobs handed back "
                "by a daemon that stops."
            ),
            messages=JOBS,
            binding=_on(d, names.jobs_exchange),
            parameters=model,
        ),
        ChannelSpec(
            id="quarantine",
            address="{model}",
            title="Redelivered jobs, by model",
            description=(
                "Daemons only: a daemon running several jobs at once moves a job that comes "
                "back after a crash here (confirmed, then acks the original), so that it runs "
                "alone and only the culprit uses up its attempts."
            ),
            messages=JOBS,
            binding=_on(d, names.quarantine_exchange),
            parameters=model,
        ),
        ChannelSpec(
            id="liveWindows",
            address="{model}",
            title="Live windows, by model",
            description=(
                "A live session's current window of audio, about once a second, for any "
                "daemon of the model; answered over direct reply-to."
            ),
            messages=("liveWindow",),
            binding=_on(d, names.live_exchange),
            parameters=model,
        ),
    ]


def _result_routes(names: Names, d: Declared) -> list[ChannelSpec]:
    """Where events are published: the event name is the routing key."""
    return [
        ChannelSpec(
            id="jobEvents",
            address="job.{event}",
            title="Job events",
            description=(
                "Every job's events; bind `job.#` for all, or one name. Gateways bind the status "
                "store's queue, the webhook sender's, and one exclusive queue each for their "
                "event streams."
            ),
            messages=("jobEvent",),
            binding=_on(d, names.results_exchange),
            parameters=(("event", "jobEvent"),),
        ),
        ChannelSpec(
            id="sessionEvents",
            address="session.{event}",
            title="Live sessions' news",
            description=(
                "Complete utterances as a live session commits them, and its whole transcript "
                "when it ends; published without `mandatory` (news nobody binds is dropped)."
            ),
            messages=("sessionEvent",),
            binding=_on(d, names.results_exchange),
            parameters=(("event", "sessionEvent"),),
        ),
        ChannelSpec(
            id="deadLetters",
            address=None,
            title="Dead letters",
            description=(
                "The broker dead-letters jobs here (fanout; a job keeps its routing key, the "
                "model): those a daemon rejected (permanent error, attempts used up) and those "
                "past `x-delivery-limit`, with the broker's `x-death` headers."
            ),
            messages=JOBS,
            binding=_on(d, names.dead_exchange),
        ),
    ]


def _control_routes(names: Names, d: Declared) -> list[ChannelSpec]:
    """Gateways and daemons telling each other things."""
    return [
        ChannelSpec(
            id="daemonAnnouncements",
            address="daemon.{state}",
            title="Daemon announcements",
            description=(
                "Each daemon announces itself every interval; a gateway that hears nothing for "
                "three intervals forgets it. Gateways read them from exclusive queues."
            ),
            messages=("daemonAnnouncement",),
            binding=_on(d, names.control_exchange),
            parameters=(("state", "state"),),
        ),
        ChannelSpec(
            id="gatewayHello",
            address=HELLO_ROUTING_KEY,
            title="Gateway hello",
            description=(
                "A starting gateway asks every daemon to announce itself at once (daemons read "
                "it from exclusive queues)."
            ),
            messages=("gatewayHello",),
            binding=_on(d, names.control_exchange),
        ),
        ChannelSpec(
            id="cancellations",
            address=_key(d, names.cancel_stream),
            title="Cancellations",
            description="Ask the daemons to skip a queued job or stop a running one.",
            messages=("cancelRequest",),
            binding=_on(d, names.control_exchange),
        ),
    ]


def _replies() -> list[ChannelSpec]:
    """Answers sent through the default exchange to the queue a request names."""
    default = {"is": "routingKey", "exchange": {"name": "", "type": "default"}}
    return [
        ChannelSpec(
            id="jobReplies",
            address=None,
            title="RPC replies to jobs",
            description=(
                "A job's final event, also sent to its reply_to (any queue the producer reads, "
                "or direct reply-to `amq.rabbitmq.reply-to`, consumed no-ack before publishing) "
                "with its correlation_id. Best effort: the event on the results exchange is "
                "always published. A reply_to naming a queue of the deployment is refused."
            ),
            messages=("jobEvent",),
            binding=default,
        ),
        ChannelSpec(
            id="liveReplies",
            address=None,
            title="Answers to live windows",
            description=(
                "A daemon's answer to one window, sent to the window's reply_to (direct "
                "reply-to) with its correlation_id."
            ),
            messages=("liveReply",),
            binding=default,
        ),
    ]


def _queue_binding(queue: Queue) -> dict[str, Any]:
    bound = [
        {"exchange": b.exchange, **({"routingKey": b.routing_key} if b.routing_key else {})}
        for b in queue.bindings
    ]
    return {
        "is": "queue",
        "queue": {
            "name": queue.name,
            "durable": queue.durable,
            "exclusive": queue.exclusive,
            "autoDelete": queue.auto_delete,
        },
        "x-arguments": queue.arguments,
        "x-bindings": bound,
    }


def _queues(names: Names, declared: Declared) -> list[ChannelSpec]:
    """What consumers read: every declared queue, each described."""
    described = _queue_texts(names)
    unknown = set(declared.queues) - set(described)
    if unknown:
        raise RuntimeError(f"queues declared but not described in the document: {unknown}")
    specs = []
    for name, queue in declared.queues.items():
        channel_id, title, text, carried = described[name]
        binding = _queue_binding(queue)
        if name == names.cancel_stream:
            binding["x-consume-arguments"] = {"x-stream-offset": "first"}
        parameters = tuple((p, p) for p in ("model", "delay_ms") if f"{{{p}}}" in name)
        specs.append(
            ChannelSpec(
                id=channel_id,
                address=name,
                title=title,
                description=text,
                messages=carried,
                binding=binding,
                parameters=parameters,
            )
        )
    return specs


#: A queue's channel id, title, description and messages.
_QueueText = tuple[str, str, str, tuple[str, ...]]


def _queue_texts(names: Names) -> dict[str, _QueueText]:
    """Each queue's channel id, title, description and messages, by queue name."""
    return {**_job_queue_texts(names), **_event_queue_texts(names)}


def _job_queue_texts(names: Names) -> dict[str, _QueueText]:
    return {
        names.dead_queue: (
            "deadQueue",
            "Dead letters",
            "Where dead-lettered jobs wait for a person (`stt-dead list`, `replay`, `purge`).",
            JOBS,
        ),
        any_model(names.job_queue): (
            "jobQueue",
            "A model's jobs",
            "Daemons of the model consume it (prefetch STT_PREFETCH) and ack a job only "
            "once its final event is confirmed. The attempt "
            f"is the broker's `x-delivery-count` + 1, plus `{ATTEMPTS_HEADER}` on a copy.",
            JOBS,
        ),
        any_model(names.quarantine_queue): (
            "quarantineQueue",
            "A model's redelivered jobs",
            "Each daemon of the model takes these one at a time (prefetch 1), next to its "
            "ordinary jobs.",
            JOBS,
        ),
        any_model(names.live_queue): (
            "liveQueue",
            "A model's live windows",
            "Any daemon of the model answers; a window that waits too long expires instead "
            "of being transcribed late.",
            ("liveWindow",),
        ),
    }


def _event_queue_texts(names: Names) -> dict[str, _QueueText]:
    return {
        names.recorder_queue: (
            "recorderQueue",
            "The status store's feed",
            "Shared by all gateways; declared by every process, so that events are kept "
            "while no gateway runs.",
            ("jobEvent",),
        ),
        names.callbacks_queue: (
            "callbacksQueue",
            "The webhook sender's feed",
            "Final events, shared by all gateways, which POST each to its job's "
            "callback_url (declared by the gateway).",
            ("jobEvent",),
        ),
        any_delay(names.callback_retry_queue): (
            "callbackRetryQueue",
            "Webhook calls waiting to be retried",
            "One per delay, declared by the gateway, with no consumer: when its TTL runs "
            "out a call goes back to the webhook sender's queue. Copies carry "
            f"`{CALLBACK_HEADERS[0]}` and `{CALLBACK_HEADERS[1]}`.",
            ("jobEvent",),
        ),
        names.cancel_stream: (
            "cancelStream",
            "Cancellations, kept a day",
            "A stream: every daemon reads all of it from the start (`x-stream-offset` "
            "first) before it takes jobs, so a job cancelled before the daemon started is "
            "skipped.",
            ("cancelRequest",),
        ),
    }
