"""Dead letters keep their audio and ``stt-dead`` replays them, on a real broker with real daemons.

Two jobs die: one whose audio file no longer matches its claim check (corrupted on
disk: ``checksum_mismatch``, for good), one that ran out of attempts on a daemon
whose work directory was broken (``internal``). Both keep their audio;
``stt-dead list`` shows them; once the daemon is fixed, ``stt-dead replay`` runs
the second again and it succeeds; ``stt-dead purge`` drops the first without
deleting a file that is not verifiably its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from stack import JFK, REPO, Stack, event_tap
from stt_daemon.common.protocol import JSON_CONTENT_TYPE, AudioRef, JobMessage, JobOptions
from stt_daemon.deadletters import mark_path

pytestmark = pytest.mark.integration


def _url_of(stack: Stack, role: str) -> str:
    """The URL a process of ``role`` connects with (the stack's broker users, if it has them)."""
    url_of = getattr(stack, "url_of", None)
    return str(url_of(role)) if url_of is not None else stack.amqp_url


async def stt_dead(stack: Stack, *args: str) -> tuple[int, str, str]:
    """Run ``stt-dead ARGS`` as an operator would, with the daemons' settings."""
    env = {
        **os.environ,
        "STT_AMQP_URL": _url_of(stack, "daemon"),
        "STT_NAMESPACE": stack.namespace,
        "STT_DATA_DIR": str(stack.data_dir),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stt_daemon.deadletter_cli",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def submit(stack: Stack, channel: AbstractChannel, blob: Path) -> str:
    """Publish a claim check for ``blob`` as a gateway would (signed when the stack signs)."""
    data = blob.read_bytes()
    job_id = blob.name
    message = JobMessage(
        job_id=job_id,
        options=JobOptions(model="tiny.en", language="en"),
        audio=AudioRef(
            url=blob.as_uri(),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            content_type="audio/flac",
        ),
    )
    body = message.model_dump_json(exclude_none=True).encode()
    signer = getattr(stack, "signer", None)
    exchange = await channel.get_exchange(stack.names.jobs_exchange)
    await exchange.publish(
        aio_pika.Message(
            body,
            headers=signer.sign(body) if signer is not None else {},
            content_type=JSON_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=job_id,
        ),
        routing_key="tiny.en",
        mandatory=True,
    )
    return job_id


async def listed(stack: Stack, *job_ids: str) -> str:
    """``stt-dead list`` once every one of ``job_ids`` is in it (dead-lettering takes a moment)."""
    out = ""
    for _ in range(60):
        code, out, err = await stt_dead(stack, "list")
        assert code == 0, err
        if all(job_id in out for job_id in job_ids):
            return out
        await asyncio.sleep(0.5)
    raise AssertionError(f"not all of {job_ids} listed:\n{out}")


async def test_dead_letters_keep_their_audio_and_replay_once_fixed(
    stack: Stack, channel: AbstractChannel
) -> None:
    blobs = stack.data_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    corrupt, broken = (blobs / f"job-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for blob in (corrupt, broken):
        blob.write_bytes(JFK.read_bytes())
    async with event_tap(channel, stack.names) as tap:
        # 1. A file changed after its claim check was written: failed for good.
        daemon = await stack.daemon()
        corrupt_id = await submit(stack, channel, corrupt)
        with corrupt.open("ab") as fh:
            fh.write(b"\0" * 16)
        with_mismatch = await tap.wait_for(corrupt_id, ("job.failed",), timeout=60)
        assert with_mismatch.error is not None
        assert with_mismatch.error.code.value == "checksum_mismatch"
        await daemon.stop()

        # 2. A daemon whose work directory is a file: every attempt fails, transiently.
        not_a_dir = stack.data_dir / "not-a-directory"
        not_a_dir.write_text("")
        daemon = await stack.daemon(
            STT_WORK_DIR=str(not_a_dir), STT_MAX_ATTEMPTS="2", STT_RETRY_BACKOFF="0.05"
        )
        broken_id = await submit(stack, channel, broken)
        exhausted = await tap.wait_for(broken_id, ("job.failed",), timeout=60)
        assert exhausted.error is not None and exhausted.error.code.value == "internal"
        await daemon.stop()

        # Both dead letters kept their audio; the list says why each died.
        assert corrupt.exists() and broken.read_bytes() == JFK.read_bytes()
        out = await listed(stack, corrupt_id, broken_id)
        rows = {line.split()[0]: line for line in out.splitlines()[1:]}
        assert "checksum_mismatch" in rows[corrupt_id] and "not its own" in rows[corrupt_id]
        assert "internal: gave up after 2 attempts" in rows[broken_id]
        assert " yes " in rows[broken_id] and "tiny.en" in rows[broken_id]

        # 3. Fixed: a healthy daemon, and the job replayed.
        await stack.daemon()
        code, out, err = await stt_dead(stack, "replay", "--job", broken_id)
        assert code == 0, err
        assert f"replayed {broken_id}" in out
        done = await tap.wait_for(broken_id, ("job.succeeded",), timeout=120)
        assert done.attempt == 1  # its attempts started again
        assert done.result is not None and "ask not" in done.result.text.lower()
        for _ in range(50):  # deleted right after the ack, as any finished job's audio
            if not broken.exists():
                break
            await asyncio.sleep(0.1)
        assert not broken.exists() and not mark_path(blobs, broken_id).exists()

    # 4. Purged: the dead letter goes, the file it could not prove its own stays.
    code, out, err = await stt_dead(stack, "purge", "--job", corrupt_id)
    assert code == 0, err
    assert out.strip() == f"purged {corrupt_id}"
    assert corrupt.exists()
    code, out, _ = await stt_dead(stack, "list")
    assert code == 0 and out.splitlines()[1:] == []
    code, _, err = await stt_dead(stack, "replay", "--job", corrupt_id)
    assert code == 1 and "not in" in err
