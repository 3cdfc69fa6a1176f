"""Tenancy at the broker: what an outside producer can and cannot do to other jobs.

Each attack of issue 10 is replayed by a client connected as the producer role
(stt_daemon/roles.py) on a real RabbitMQ node, against a deployment whose
daemons and gateways run as their own roles and sign claim checks. The victim
is always a job submitted through the gateway; after each attack it must still
succeed with its own transcript.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError

from stack import HOTWORDS, JFK, Gateway, Stack, event_tap, normalise
from stt_daemon.common.protocol import SCHEMA_VERSION, decode_event

pytestmark = pytest.mark.integration

#: Words tiny.en hears in every copy of jfk.flac (the victim's transcript).
JFK_SURE = "what your country can do for you"


@pytest.fixture(autouse=True)
def _roles(stack: Stack) -> None:
    if "producer" not in stack.roles:
        pytest.skip("broker roles need the private test node (not STT_TEST_AMQP_URL)")


@asynccontextmanager
async def connected(stack: Stack, role: str) -> AsyncIterator[AbstractRobustConnection]:
    """A connection as ``role``'s broker user."""
    connection = await aio_pika.connect_robust(stack.url_of(role))
    try:
        yield connection
    finally:
        await connection.close()


async def _victim(stack: Stack) -> tuple[Gateway, str]:
    """A gateway and a job submitted through it, queued (no daemon runs yet)."""
    gw = await stack.gateway()
    job = await gw.submit(JFK)
    return gw, job["id"]


async def _assert_victim_unharmed(gw: Gateway, job_id: str) -> None:
    final = await gw.wait_final(job_id)
    assert final["status"] == "succeeded", final
    async with gw.client() as client:
        result = (await client.get(f"/v1/jobs/{job_id}/result")).json()
    assert JFK_SURE in normalise(result["text"]), result["text"]


async def _refused(action: Any) -> str:
    """Run ``action``; return the broker's refusal (fail if there was none)."""
    try:
        await action
    except (AMQPError, asyncio.CancelledError) as exc:
        return str(exc)
    raise AssertionError("the broker allowed it")


async def _never_called(message: AbstractIncomingMessage) -> None:
    """A consumer callback for a consume the broker refuses."""


async def test_a_producer_cannot_peek_at_take_or_kill_queued_jobs(stack: Stack) -> None:
    gw, job_id = await _victim(stack)
    names = stack.names
    async with connected(stack, "producer") as producer:
        for queue_name in (names.job_queue("tiny.en"), names.quarantine_queue("tiny.en")):
            # basic.get (+ nack, ten times, was the way to kill a job): refused.
            channel = await producer.channel()
            queue = await channel.get_queue(queue_name, ensure=False)
            refusal = await _refused(queue.get(no_ack=False, fail=False))
            assert "ACCESS_REFUSED" in refusal
            channel = await producer.channel()
            queue = await channel.get_queue(queue_name, ensure=False)
            assert "ACCESS_REFUSED" in await _refused(queue.consume(_never_called))
            # Nor purge or delete it.
            channel = await producer.channel()
            assert "ACCESS_REFUSED" in await _refused(channel.queue_delete(queue_name))
    await stack.daemon()
    await _assert_victim_unharmed(gw, job_id)
    final = await gw.wait_final(job_id)
    assert final["attempts"] == 1  # never delivered to anyone else


@pytest.mark.parametrize("target", ["quarantine", "results", "control", "default"])
async def test_a_producer_publishes_only_to_the_jobs_exchange(stack: Stack, target: str) -> None:
    await stack.gateway()  # declares the topology
    names = stack.names
    exchange_name, key = {
        "quarantine": (names.quarantine_exchange, "tiny.en"),
        "results": (names.results_exchange, "job.succeeded"),
        "control": (names.control_exchange, "job.cancel"),
        "default": ("", names.recorder_queue),  # straight into the status store's queue
    }[target]
    forged = json.dumps(
        {"schema_version": SCHEMA_VERSION, "event": "job.succeeded", "job_id": "x"}
    ).encode()
    async with connected(stack, "producer") as producer:
        channel = await producer.channel(publisher_confirms=True)
        exchange = (
            channel.default_exchange
            if not exchange_name
            else await channel.get_exchange(exchange_name, ensure=False)
        )
        refusal = await _refused(
            exchange.publish(aio_pika.Message(forged, message_id="x"), routing_key=key)
        )
        assert "ACCESS_REFUSED" in refusal


async def test_reusing_a_gateway_jobs_id_does_not_touch_that_job(
    stack: Stack, channel: AbstractChannel
) -> None:
    """A garbage body and a real job, both under the victim's message_id."""
    gw, job_id = await _victim(stack)
    async with (
        event_tap(channel, stack.names) as tap,
        connected(stack, "producer") as producer,
    ):
        pchannel = await producer.channel(publisher_confirms=True)
        jobs = await pchannel.get_exchange(stack.names.jobs_exchange, ensure=False)
        await jobs.publish(
            aio_pika.Message(
                b"{garbage",
                content_type="application/json",
                message_id=job_id,
                user_id="stt-producer",  # named (RabbitMQ checks it is true) ...
            ),
            routing_key="tiny.en",
        )
        await jobs.publish(
            # ... or anonymous: neither is the gateway.
            aio_pika.Message(HOTWORDS.read_bytes(), content_type="audio/mpeg", message_id=job_id),
            routing_key="tiny.en",
        )
        await stack.daemon()
        await _assert_victim_unharmed(gw, job_id)
        # The intruder's two jobs ran and were reported, under its own name.
        await tap.wait_for(job_id, ("job.failed",))
        finals = [e for e in tap.of(job_id) if e.status.is_final]
        by_producer = {(e.producer, e.event) for e in finals}
        assert ("stt-producer", "job.failed") in by_producer
        assert ("", "job.succeeded") in by_producer
        assert ("stt-gateway", "job.succeeded") in by_producer
    # Still the gateway's job and transcript after every event was applied.
    await asyncio.sleep(1.0)
    async with gw.client() as client:
        view = (await client.get(f"/v1/jobs/{job_id}")).json()
        text = (await client.get(f"/v1/jobs/{job_id}/result")).json()["text"]
    assert view["status"] == "succeeded"
    assert JFK_SURE in normalise(text) and "comfy" not in normalise(text)


async def test_forged_claim_checks_are_refused_and_touch_no_audio(stack: Stack) -> None:
    """Naming the victim's audio file: unsigned, with a wrong checksum, or a copy of a
    signed claim check sent back with the intruder's own ``reply_to``."""
    gw, job_id = await _victim(stack)
    blobs = [p for p in (stack.data_dir / "blobs").iterdir() if not p.name.startswith(".")]
    assert len(blobs) == 1
    victim_blob = blobs[0]
    data = victim_blob.read_bytes()

    def claim(sha: str, forged_id: str) -> bytes:
        return json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "job_id": forged_id,
                "options": {"model": "tiny.en"},
                "audio": {"url": victim_blob.as_uri(), "sha256": sha, "size": len(data)},
            }
        ).encode()

    right_sha = hashlib.sha256(data).hexdigest()
    unsigned = claim(right_sha, f"steal-{uuid.uuid4().hex}")
    wrong_sha = claim("0" * 64, job_id)
    # What a gateway signed (reply_to none), replayed with another reply_to.
    replayed = claim(right_sha, f"replay-{uuid.uuid4().hex}")
    signature = stack.signer.sign(replayed)
    async with connected(stack, "producer") as producer:
        pchannel = await producer.channel(publisher_confirms=True)
        replies = await pchannel.declare_queue(exclusive=True)
        jobs = await pchannel.get_exchange(stack.names.jobs_exchange, ensure=False)
        for body, headers in ((unsigned, {}), (wrong_sha, {}), (replayed, signature)):
            await jobs.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    message_id=json.loads(body)["job_id"],
                    reply_to=replies.name,
                    headers=headers,
                ),
                routing_key="tiny.en",
            )
        await stack.daemon()
        answers = []
        async with replies.iterator() as stream:
            async for message in stream:
                await message.ack()
                answers.append(decode_event(message.body))
                if len(answers) == 3:
                    break
    for event in answers:
        assert event.event == "job.failed", event
        assert event.error is not None and event.error.code == "forbidden", event.error
        assert event.result is None
    await _assert_victim_unharmed(gw, job_id)


async def test_a_full_quarantine_refuses_more(stack: Stack, channel: AbstractChannel) -> None:
    """Even a user allowed to publish there cannot queue past ``STT_MAX_QUEUED``."""
    stack.env["STT_MAX_QUEUED"] = "3"
    await stack.gateway()
    exchange = await channel.get_exchange(stack.names.quarantine_exchange, ensure=False)
    accepted = 0
    for index in range(5):
        try:
            await exchange.publish(
                aio_pika.Message(b"{}", message_id=f"q{index}"), routing_key="tiny.en"
            )
            accepted += 1
        except aio_pika.exceptions.DeliveryError:
            pass
    assert accepted == 3


async def test_a_producer_gets_its_answer_and_a_listener_sees_results_only(
    stack: Stack,
) -> None:
    """The outside producers' path (audio in the body, RPC reply) and a downstream
    service's (its own queue on the results exchange) work on their least permissions."""
    gw = await stack.gateway()
    await stack.daemon()
    names = stack.names
    async with (
        connected(stack, "producer") as producer,
        connected(stack, "listener") as listener,
    ):
        lchannel = await listener.channel()
        results = await lchannel.get_exchange(names.results_exchange, ensure=False)
        feed = await lchannel.declare_queue(f"{names.prefix}.listen.test", auto_delete=True)
        await feed.bind(results, routing_key="job.succeeded")
        # A listener binding to the job exchange would see every job: refused.
        spy = await (await listener.channel()).declare_queue(exclusive=True)
        jobs_for_spy = await (await listener.channel()).get_exchange(
            names.jobs_exchange, ensure=False
        )
        assert "ACCESS_REFUSED" in await _refused(spy.bind(jobs_for_spy, routing_key="tiny.en"))

        pchannel = await producer.channel(publisher_confirms=True)
        job_id = f"outside-{uuid.uuid4().hex}"
        answered: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future()
        )

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if not answered.done():
                answered.set_result(message)

        direct = await pchannel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await direct.consume(on_reply, no_ack=True)
        jobs = await pchannel.get_exchange(names.jobs_exchange, ensure=False)
        await jobs.publish(
            aio_pika.Message(
                JFK.read_bytes(),
                content_type="audio/flac",
                message_id=job_id,
                reply_to="amq.rabbitmq.reply-to",
                # Its own user, which RabbitMQ checks: its jobs are then its own.
                user_id="stt-producer",
            ),
            routing_key="tiny.en",
        )
        reply = decode_event((await asyncio.wait_for(answered, 120)).body)
        assert reply.event == "job.succeeded" and reply.result is not None
        assert JFK_SURE in normalise(reply.result.text)
        assert reply.producer == "stt-producer"
        seen = await feed.get(timeout=30, fail=False)
        assert seen is not None and decode_event(seen.body).job_id == job_id
    # The gateway shows the outside job too (the recorder trusts the daemon's event).
    final = await gw.wait_final(job_id)
    assert final["status"] == "succeeded"


async def test_the_daemon_never_answers_into_a_queue_of_the_deployment(
    stack: Stack, channel: AbstractChannel
) -> None:
    """``reply_to`` naming the status store's queue: the daemon would post there as
    itself, a user the recorder trusts. It refuses to; the job still runs."""
    gw = await stack.gateway()
    await stack.daemon()
    job_id = f"outside-{uuid.uuid4().hex}"
    async with connected(stack, "producer") as producer:
        pchannel = await producer.channel(publisher_confirms=True)
        jobs = await pchannel.get_exchange(stack.names.jobs_exchange, ensure=False)
        await jobs.publish(
            aio_pika.Message(
                JFK.read_bytes(),
                content_type="audio/flac",
                message_id=job_id,
                reply_to=stack.names.callbacks_queue,
            ),
            routing_key="tiny.en",
        )
    final = await gw.wait_final(job_id)
    assert final["status"] == "succeeded"
    daemon = stack.procs[-1]
    for _ in range(50):
        if any(line.get("event") == "reply.not_sent" for line in daemon.log_lines()):
            break
        await asyncio.sleep(0.1)
    lines = [line for line in daemon.log_lines() if line.get("event") == "reply.not_sent"]
    assert lines and "names a queue of this deployment" in lines[0]["error"]
