"""The broker contract as outside producers and downstream consumers use it (no gateway needed)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from audiofiles import repeated
from stack import HOTWORDS, JFK, JFK_WORDS, Stack, drain_dead_letters, event_tap, normalise
from stt_daemon.common.protocol import SCHEMA_VERSION, decode_event
from stt_daemon.common.topology import QueueLimits, declare_topology

pytestmark = pytest.mark.integration


async def _jobs_exchange(channel: AbstractChannel, stack: Stack) -> aio_pika.abc.AbstractExchange:
    topology = await declare_topology(channel, stack.names, ["tiny.en"], QueueLimits())
    return topology.jobs_exchange


async def test_downstream_consumer_receives_started_progress_and_succeeded(
    stack: Stack, channel: AbstractChannel
) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(JFK)
        done = await tap.wait_for(job["id"], ("job.succeeded", "job.failed"))
    assert done.event == "job.succeeded"
    assert done.result is not None and JFK_WORDS in normalise(done.result.text)
    kinds = [e.event.value for e in tap.of(job["id"])]
    assert kinds[0] == "job.started"
    assert "job.progress" in kinds
    assert kinds.count("job.succeeded") == 1
    progress = tap.progress(job["id"])
    assert progress == sorted(progress) and all(0 < p < 1 for p in progress)


async def test_raw_audio_producer_with_direct_reply_to(
    stack: Stack, channel: AbstractChannel
) -> None:
    """An AMQP-only producer: raw audio body, options in headers, answer by RPC."""
    await stack.daemon()
    exchange = await _jobs_exchange(channel, stack)
    reply_queue = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    replies: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await reply_queue.consume(replies.put, no_ack=True)
    job_id, correlation = str(uuid.uuid4()), uuid.uuid4().hex
    await exchange.publish(
        aio_pika.Message(
            JFK.read_bytes(),
            content_type="audio/flac",
            message_id=job_id,
            reply_to="amq.rabbitmq.reply-to",
            correlation_id=correlation,
            headers={"word_timestamps": "true"},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key="tiny.en",
    )
    reply = await asyncio.wait_for(replies.get(), timeout=120)
    assert reply.correlation_id == correlation
    event = decode_event(reply.body)
    assert event.job_id == job_id
    assert event.event == "job.succeeded"
    assert event.result is not None
    assert JFK_WORDS in normalise(event.result.text)
    assert event.result.segments[0].words


async def test_claim_check_producer_and_gateway_sees_the_job(
    stack: Stack, channel: AbstractChannel
) -> None:
    """A JSON job naming a blob in the shared store; the recorder records it for polling.

    The deployment signs claim checks (STT_CLAIM_SECRET): a trusted internal producer
    signs its own with the shared secret (stt_daemon.common.claims.ClaimSigner).
    """
    gw = await stack.gateway()
    await stack.daemon()
    blob = stack.data_dir / "blobs" / "outside-producer.mp3"
    data = HOTWORDS.read_bytes()
    blob.write_bytes(data)
    job_id = str(uuid.uuid4())
    body = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "options": {"model": "tiny.en", "language": "en"},
        "audio": {
            "url": blob.as_uri(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        },
    }
    exchange = await _jobs_exchange(channel, stack)
    encoded = json.dumps(body).encode()
    await exchange.publish(
        aio_pika.Message(
            encoded,
            content_type="application/json",
            message_id=job_id,
            headers=stack.signer.sign(encoded),
        ),
        routing_key="tiny.en",
    )
    final = await gw.wait_final(job_id)
    assert final["status"] == "succeeded"
    async with gw.client() as client:
        result = (await client.get(f"/v1/jobs/{job_id}/result")).json()
    assert "comfy" in normalise(result["text"])
    # Blobs are deleted once their job is final.
    for _ in range(50):
        if not blob.exists():
            break
        await asyncio.sleep(0.1)
    assert not blob.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"schema_version": 99, "job_id": "x"}', "application/json", "schema_version"),
        (b"<xml/>", "text/xml", "unsupported content_type"),
    ],
)
async def test_malformed_job_messages_fail_and_are_dead_lettered(
    stack: Stack, channel: AbstractChannel, body: bytes, content_type: str, reason: str
) -> None:
    await stack.daemon()
    exchange = await _jobs_exchange(channel, stack)
    job_id = str(uuid.uuid4())
    async with event_tap(channel, stack.names) as tap:
        await exchange.publish(
            aio_pika.Message(body, content_type=content_type, message_id=job_id),
            routing_key="tiny.en",
        )
        failed = await tap.wait_for(job_id, ("job.failed",), timeout=30)
    assert failed.error is not None and failed.error.code == "bad_message"
    assert reason in failed.error.message
    dead = await drain_dead_letters(channel, stack.names, 1)
    assert [m.message_id for m in dead] == [job_id]


async def test_bad_audio_fails_dead_letters_and_daemon_keeps_working(
    stack: Stack, channel: AbstractChannel
) -> None:
    gw = await stack.gateway()
    daemon = await stack.daemon()
    async with event_tap(channel, stack.names) as tap:
        garbage = await gw.submit(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, name="photo.mp3")
        failed = await tap.wait_for(garbage["id"], ("job.failed", "job.succeeded"))
        assert failed.event == "job.failed"
        assert failed.error is not None and failed.error.code == "bad_audio"
        # Exactly one attempt: permanent errors are never requeued.
        assert [e.attempt for e in tap.of(garbage["id"], "job.started")] == [1]
        good = await gw.submit(JFK)
        ok = await tap.wait_for(good["id"], ("job.succeeded", "job.failed"))
    assert ok.event == "job.succeeded"
    dead = await drain_dead_letters(channel, stack.names, 1)
    assert [m.message_id for m in dead] == [garbage["id"]]
    status = await gw.wait_final(garbage["id"])
    assert status["status"] == "failed" and "not a readable audio" in status["error"]["message"]
    assert daemon.popen.poll() is None


async def test_prefetch_jobs_really_run_at_once_and_log_one_line_each(
    stack: Stack, channel: AbstractChannel, tmp_path: Path
) -> None:
    """STT_PREFETCH=3: three jobs in flight together, the fourth waits in the queue."""
    speech = repeated(JFK, 3, tmp_path / "jfk-x3.flac")
    gw = await stack.gateway()
    daemon = await stack.daemon()
    async with event_tap(channel, stack.names) as tap:
        jobs = [await gw.submit(speech) for _ in range(4)]
        ids = [job["id"] for job in jobs]
        for job_id in ids:
            await tap.wait_for(job_id, ("job.succeeded",))
    first_done = min(e.timestamp for e in tap.events if e.event == "job.succeeded")
    started = [e for e in tap.events if e.event == "job.started"]
    started_before_first_done = {e.job_id for e in started if e.timestamp < first_done}
    assert len(started_before_first_done) == 3
    for _ in range(50):  # the log line follows the ack, which follows the event
        done_lines = [line for line in daemon.log_lines() if line["event"] == "job.done"]
        if len(done_lines) == len(ids):
            break
        await asyncio.sleep(0.1)
    assert sorted(line["job_id"] for line in done_lines) == sorted(ids)
    for line in done_lines:
        assert line["status"] == "succeeded"
        assert line["audio_s"] == pytest.approx(33.0, abs=0.1)
        assert line["transcribe_s"] > 0 and line["decode_s"] >= 0 and line["total_s"] > 0
