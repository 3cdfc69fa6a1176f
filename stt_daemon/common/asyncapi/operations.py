"""The operations of the AsyncAPI document: who sends and who receives what, on which channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stt_daemon.common.asyncapi.channels import JOBS

#: AMQP operation bindings.
_PERSISTENT_CONFIRMED = {"deliveryMode": 2, "mandatory": True}
_ACKED = {"ack": True}
_JOB_REPLY_TEXT = (
    "Optional: with reply_to (and correlation_id) set on the job, the daemon also sends "
    "the job's final event there."
)


@dataclass(frozen=True)
class Reply:
    """Where the answer to an operation's message goes."""

    channel: str
    messages: tuple[str, ...]


@dataclass(frozen=True)
class OperationSpec:
    """Who sends or receives which messages on a channel."""

    id: str
    action: str
    channel: str
    messages: tuple[str, ...]
    tags: tuple[str, ...]
    summary: str
    description: str
    amqp: dict[str, Any] = field(default_factory=dict)
    reply: Reply | None = None


_JOB_REPLY = Reply("jobReplies", ("jobEvent",))
_LIVE_REPLY = Reply("liveReplies", ("liveReply",))


#: Jobs and live windows: submitting, running, moving them.
JOB_OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec(
        id="submitJob",
        action="send",
        channel="jobs",
        messages=JOBS,
        tags=("producer", "gateway"),
        summary="Submit a job",
        description=(
            "Routing key = the model. With publisher confirms: a nack means the model's "
            "queue is full, a basic.return that no queue serves the model. " + _JOB_REPLY_TEXT
        ),
        amqp=_PERSISTENT_CONFIRMED,
        reply=_JOB_REPLY,
    ),
    OperationSpec(
        id="publishJobPart",
        action="send",
        channel="jobs",
        messages=("jobClaimCheck",),
        tags=("daemon",),
        summary="Publish the parts of a long recording",
        description=(
            "A daemon cuts a long recording at pauses and publishes each part as a signed "
            "claim check with a `part` field; the parts keep the job's reply_to."
        ),
        amqp=_PERSISTENT_CONFIRMED,
    ),
    OperationSpec(
        id="runJob",
        action="receive",
        channel="jobQueue",
        messages=JOBS,
        tags=("daemon",),
        summary="Run a model's jobs",
        description=(
            "Acked once the final event is published and confirmed. A permanent error "
            "rejects the job to the dead letters at once; a transient one hands a copy back "
            "(confirmed, then acked) after a backoff, until the attempts run out."
        ),
        amqp=_ACKED,
        reply=_JOB_REPLY,
    ),
    OperationSpec(
        id="quarantineJob",
        action="send",
        channel="quarantine",
        messages=JOBS,
        tags=("daemon",),
        summary="Move a redelivered job to quarantine",
        description=(
            "A copy keeping body, headers and properties (but user_id, now the daemon's: the "
            "producer moves to a header), with the deliveries so far in a header; a nack "
            "(full quarantine) leaves the job where it was."
        ),
        amqp=_PERSISTENT_CONFIRMED,
    ),
    OperationSpec(
        id="runQuarantinedJob",
        action="receive",
        channel="quarantineQueue",
        messages=JOBS,
        tags=("daemon",),
        summary="Run redelivered jobs one at a time",
        description="As runJob, with prefetch 1.",
        amqp=_ACKED,
        reply=_JOB_REPLY,
    ),
    OperationSpec(
        id="readDeadLetters",
        action="receive",
        channel="deadQueue",
        messages=JOBS,
        tags=("daemon",),
        summary="List, replay or purge dead letters",
        description=(
            "`stt-dead` reads the queue with basic.get; a replay publishes a copy to the "
            "jobs exchange (attempts reset, `x-death` headers removed), confirmed, then acks."
        ),
        amqp=_ACKED,
    ),
    OperationSpec(
        id="sendLiveWindow",
        action="send",
        channel="liveWindows",
        messages=("liveWindow",),
        tags=("gateway",),
        summary="Transcribe a live window",
        description=(
            "With reply_to = direct reply-to and an expiration; `mandatory`: a return "
            "means no daemon serves the model, a nack that its live queue is full."
        ),
        amqp={"mandatory": True},
        reply=_LIVE_REPLY,
    ),
    OperationSpec(
        id="answerLiveWindow",
        action="receive",
        channel="liveQueue",
        messages=("liveWindow",),
        tags=("daemon",),
        summary="Answer live windows",
        description=(
            "A window past its deadline header is skipped; a refused one (content type, "
            "size, options) is answered with `error`."
        ),
        amqp=_ACKED,
        reply=_LIVE_REPLY,
    ),
)

#: Events: publishing them, and the consumers of the results exchange.
EVENT_OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec(
        id="publishJobEvent",
        action="send",
        channel="jobEvents",
        messages=("jobEvent",),
        tags=("daemon", "gateway"),
        summary="Publish a job's events",
        description=(
            "Daemons, with publisher confirms; a gateway for a job cancelled on request (at "
            "once, as well as the daemon that skips or stops it) and for a live session's end."
        ),
    ),
    OperationSpec(
        id="publishSessionEvent",
        action="send",
        channel="sessionEvents",
        messages=("sessionEvent",),
        tags=("gateway",),
        summary="Publish a live session's news",
        description="With publisher confirms, not mandatory.",
        amqp={"deliveryMode": 2, "mandatory": False},
    ),
    OperationSpec(
        id="followJobEvents",
        action="receive",
        channel="jobEvents",
        messages=("jobEvent",),
        tags=("listener",),
        summary="Follow job events",
        description=(
            "Bind a queue of your own (server-named, or durable `<ns>.listen.<name>`) with "
            "`job.#` or one event name. Believe an event only when its user_id is one of your "
            "daemons' or gateways' users."
        ),
    ),
    OperationSpec(
        id="followSessionEvents",
        action="receive",
        channel="sessionEvents",
        messages=("sessionEvent",),
        tags=("listener",),
        summary="Follow live sessions",
        description="Bind a queue of your own with `session.#`.",
    ),
    OperationSpec(
        id="recordJobEvents",
        action="receive",
        channel="recorderQueue",
        messages=("jobEvent",),
        tags=("gateway",),
        summary="Keep the status store",
        description="Applies events from trusted publishers (STT_EVENT_PUBLISHERS) only.",
        amqp=_ACKED,
    ),
    OperationSpec(
        id="sendWebhooks",
        action="receive",
        channel="callbacksQueue",
        messages=("jobEvent",),
        tags=("gateway",),
        summary="POST final events to callback URLs",
        description="A call to retry later is parked in the delay queue of its wait.",
        amqp=_ACKED,
    ),
    OperationSpec(
        id="delayWebhook",
        action="send",
        channel="callbackRetryQueue",
        messages=("jobEvent",),
        tags=("gateway",),
        summary="Park a webhook call until its next try",
        description="Through the default exchange, routing key = the delay queue's name.",
        amqp=_PERSISTENT_CONFIRMED,
    ),
)

#: Gateways and daemons telling each other things.
CONTROL_OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec(
        id="announceDaemon",
        action="send",
        channel="daemonAnnouncements",
        messages=("daemonAnnouncement",),
        tags=("daemon",),
        summary="Announce a daemon",
        description=(
            "Every announce interval, at a gateway's hello, and `daemon.down` when stopping."
        ),
        amqp={"deliveryMode": 1},
    ),
    OperationSpec(
        id="watchDaemons",
        action="receive",
        channel="daemonAnnouncements",
        messages=("daemonAnnouncement",),
        tags=("gateway",),
        summary="Know the daemons that are up",
        description="From an exclusive, auto-delete queue bound with `daemon.*`, no-ack.",
        amqp={"ack": False},
    ),
    OperationSpec(
        id="sayHello",
        action="send",
        channel="gatewayHello",
        messages=("gatewayHello",),
        tags=("gateway",),
        summary="Ask the daemons to announce themselves",
        description="Once, when the gateway starts.",
    ),
    OperationSpec(
        id="hearHello",
        action="receive",
        channel="gatewayHello",
        messages=("gatewayHello",),
        tags=("daemon",),
        summary="Announce at a gateway's hello",
        description="From an exclusive, auto-delete queue bound with `gateway.hello`, no-ack.",
        amqp={"ack": False},
    ),
    OperationSpec(
        id="cancelJob",
        action="send",
        channel="cancellations",
        messages=("cancelRequest",),
        tags=("gateway",),
        summary="Cancel a job",
        description="The cancellation stream keeps it a day.",
        amqp={"deliveryMode": 2},
    ),
    OperationSpec(
        id="readCancellations",
        action="receive",
        channel="cancelStream",
        messages=("cancelRequest",),
        tags=("daemon",),
        summary="Skip or stop cancelled jobs",
        description="Read from the first message, before the daemon takes any job.",
        amqp=_ACKED,
    ),
)


def operations() -> list[OperationSpec]:
    """Every operation, grouped by what it is about."""
    return [*JOB_OPERATIONS, *EVENT_OPERATIONS, *CONTROL_OPERATIONS]
