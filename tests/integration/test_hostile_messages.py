"""Claim checks that lie: missing blobs, wrong checksums, URLs outside the blob store.

An outside producer names the audio by URL. The daemon must read nothing but
the job's own blob in the store, and must fail each such job with a reason,
dead-letter it, and carry on with the next one.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from stack import JFK, Stack, drain_dead_letters, event_tap
from stt_daemon.common.protocol import SCHEMA_VERSION
from stt_daemon.common.topology import QueueLimits, declare_topology

pytestmark = pytest.mark.integration

DATA = JFK.read_bytes()
GOOD_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("missing", "blob_missing", "does not exist"),
        ("tampered", "checksum_mismatch", "sha256"),
        ("short", "checksum_mismatch", "bytes"),
        ("outside", "blob_missing", "outside the blob store"),
        ("traversal", "blob_missing", "outside the blob store"),
        ("concat", "blob_missing", "not a file:// URL"),
        ("http", "blob_missing", "not a file:// URL"),
    ],
)
async def test_lying_claim_checks_fail_and_are_dead_lettered(
    stack: Stack, channel: AbstractChannel, case: str, code: str, reason: str
) -> None:
    await stack.daemon()
    blobs = stack.data_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    real = blobs / "real.flac"
    real.write_bytes(DATA)
    secret = stack.data_dir / "secret.flac"  # speech, but not the job's blob
    secret.write_bytes(DATA)
    url, sha, size = {
        "missing": ((blobs / "gone.flac").as_uri(), GOOD_SHA, len(DATA)),
        "tampered": (real.as_uri(), "0" * 64, len(DATA)),
        "short": (real.as_uri(), GOOD_SHA, len(DATA) + 1),
        "outside": (secret.as_uri(), GOOD_SHA, len(DATA)),
        "traversal": (f"file://{blobs}/../secret.flac", GOOD_SHA, len(DATA)),
        "concat": (f"concat:{real}|{secret}", GOOD_SHA, len(DATA)),
        "http": ("http://127.0.0.1:1/a.flac", GOOD_SHA, len(DATA)),
    }[case]
    job_id = str(uuid.uuid4())
    body = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "options": {"model": "tiny.en"},
        "audio": {"url": url, "sha256": sha, "size": size},
    }
    topology = await declare_topology(channel, stack.names, ["tiny.en"], QueueLimits())
    async with event_tap(channel, stack.names) as tap:
        # Signed as the deployment's gateways sign: what a lying claim check from a
        # trusted producer meets (an unsigned one is refused before: test_tenancy.py).
        encoded = json.dumps(body).encode()
        await topology.jobs_exchange.publish(
            aio_pika.Message(
                encoded,
                content_type="application/json",
                message_id=job_id,
                headers=stack.signer.sign(encoded),
            ),
            routing_key="tiny.en",
        )
        failed = await tap.wait_for(job_id, ("job.failed", "job.succeeded"), timeout=60)
    assert failed.event == "job.failed", failed
    assert failed.error is not None and failed.error.code == code, failed.error
    assert reason in failed.error.message
    assert not tap.of(job_id, "job.progress")  # nothing was transcribed
    dead = await drain_dead_letters(channel, stack.names, 1)
    assert [m.message_id for m in dead] == [job_id]
    assert secret.exists()  # and nothing outside the store was touched
    # A failed job keeps its audio (a checksum that does not match may be someone
    # naming another job's file: deleting it would destroy that job).
    assert real.exists()
