"""``stt-dead``: list, replay, purge and sweep dead letters from a terminal.

The dead letters themselves (marks, sweeps, replays) are deadletters.py's; this is
the command around them, whose table and messages are its output to the operator.
It reads ``STT_AMQP_URL``, ``STT_NAMESPACE`` and ``STT_BLOB_URL`` like a daemon;
run it with the daemons' broker user, whose copies of a job the daemons believe
about its producer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import aio_pika
from aio_pika.abc import AbstractChannel

from stt_daemon.common import amqp
from stt_daemon.common.blobs import BlobStore
from stt_daemon.config import DaemonSettings
from stt_daemon.deadletters import DeadLetter, describe, purge, replay, sweep, take_all


def _age(when: datetime | None) -> str:
    if when is None:
        return "?"
    seconds = (datetime.now(UTC) - when.astimezone(UTC)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _blob_store(settings: DaemonSettings) -> BlobStore | None:
    """The blob store, if this host has it (never created here)."""
    path = Path(unquote(urlparse(settings.resolved_blob_url).path))
    return BlobStore(settings.resolved_blob_url) if path.is_dir() else None


def _print_table(letters: Sequence[DeadLetter]) -> None:
    rows = [("JOB", "PART", "MODEL", "AGE", "AUDIO", "REASON")]
    rows += [(d.job_id, d.part, d.model, _age(d.died_at), d.audio, d.reason[:120]) for d in letters]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[5]]))


async def _handle(args: argparse.Namespace, settings: DaemonSettings) -> int:
    blobs = _blob_store(settings)
    root = blobs.root if blobs is not None else None
    if args.command == "sweep":
        if blobs is None or settings.result_ttl <= 0:
            print("nothing to sweep (no blob store here, or STT_RESULT_TTL=0)")
            return 0
        print(f"swept {await asyncio.to_thread(sweep, blobs, settings.result_ttl)} dead letters")
        return 0
    connection = await amqp.connect(settings.amqp_url, "stt-dead", settings.heartbeat)
    try:
        # Confirms, and returns that raise: a replayed job must never vanish unrouted.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        letters = [describe(m, root) for m in await take_all(channel, settings.names.dead_queue)]
        if args.command == "list":
            _print_table(letters)
            return 0
        wanted = set(args.job or ())
        chosen = [d for d in letters if args.all or d.matches(wanted)]
        missing = wanted - {d.job_id for d in chosen} - {d.key for d in chosen}
        for name in sorted(missing):
            print(f"{name}: not in {settings.names.dead_queue}", file=sys.stderr)
        failed = await _act(args.command, chosen, channel, settings, blobs)
        return 1 if failed or missing else 0
    finally:
        # Dead letters not acked go back to the dead queue as they were.
        await connection.close()


async def _act(
    command: str,
    letters: Sequence[DeadLetter],
    channel: AbstractChannel,
    settings: DaemonSettings,
    blobs: BlobStore | None,
) -> int:
    """Replay or purge each dead letter; how many could not be."""
    failed = 0
    jobs = await channel.get_exchange(settings.names.jobs_exchange)
    for letter in letters:
        name = letter.job_id + (f" part {letter.part}" if letter.part else "")
        if command == "purge":
            deleted = await purge(letter, blobs)
            print(f"purged {name}" + (" and its audio" if deleted else ""))
            continue
        if letter.audio == "no":
            print(f"not replayed {name}: its audio is gone (purge it)", file=sys.stderr)
            failed += 1
            continue
        try:
            user = amqp.broker_user(settings.amqp_url)
            root = blobs.root if blobs is not None else None
            await replay(letter, jobs, user, root, settings.publish_timeout)
        except Exception as exc:  # unroutable, refused (full queue), broker trouble
            print(f"not replayed {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"replayed {name} -> {settings.names.job_queue(letter.model)}")
    return failed


def parser() -> argparse.ArgumentParser:
    """``stt-dead``'s arguments."""
    top = argparse.ArgumentParser(
        prog="stt-dead",
        description="List, replay or purge dead-lettered jobs (STT_AMQP_URL, STT_NAMESPACE, "
        "STT_BLOB_URL as for the daemons; run it as the daemons' broker user).",
    )
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the dead letters: job, model, age, audio kept, reason")
    for command, help_text in (
        ("replay", "publish dead letters to their job queue again, attempts reset"),
        ("purge", "drop dead letters and the audio they kept"),
    ):
        action = sub.add_parser(command, help=help_text)
        which = action.add_mutually_exclusive_group(required=True)
        which.add_argument("--job", action="append", metavar="ID", help="a job id (repeatable)")
        which.add_argument("--all", action="store_true", help="every dead letter")
    sub.add_parser("sweep", help="delete kept audio older than STT_RESULT_TTL now")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point."""
    args = parser().parse_args(argv)
    settings = DaemonSettings()
    try:
        return asyncio.run(_handle(args, settings))
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        print(f"stt-dead: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
