"""Dead letters: the jobs in ``<ns>.dead``, the audio they keep, and ``stt-dead`` to handle them.

A job that is dead-lettered (failed for good, or out of attempts) keeps its claim
check's audio, so that it can be run again once its cause is fixed. The daemon
that dead-letters it writes a *mark* beside the audio in the blob store
(``dead-<hash>.json``): the job, why it failed, and the blob's size and sha256 as
verified then. The mark is what makes the audio the dead letter's own:

- audio that did not match the job's claim check (``checksum_mismatch``: the URL
  may name another job's file) is never marked, so never deleted by this module;
- the sweep (:func:`sweep`, run by every daemon every tenth of ``STT_RESULT_TTL``,
  at most every 5 minutes, and by ``stt-dead sweep``) deletes marked audio whose
  mark is older than ``STT_RESULT_TTL``, if the file still has the marked sha256.
  It looks at marks only, never at the broker: it cannot take the audio of a job
  that is queued or running, and it does not have to read the dead queue (each
  read of a quorum queue counts as a delivery);
- a replay removes the mark: the audio belongs to a live job again, which deletes
  it when it succeeds, or marks it again if it dies again.

``stt-dead`` (deadletter_cli.py) is the operator's command around these.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from pydantic import BaseModel, ValidationError

from stt_daemon.common.blobs import BlobError, BlobStore
from stt_daemon.common.protocol import AudioRef, DecodeError, ErrorInfo, InboundJob, decode_job
from stt_daemon.quarantine import copy_of

log = structlog.get_logger("stt_daemon.deadletters")

MARK_GLOB = "dead-*.json"
#: Headers the broker adds when it dead-letters: a replayed job starts clean.
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
#: What ``x-death``'s reason means, when no mark says more.
_BROKER_REASONS = {
    "rejected": "rejected (no reason recorded)",
    "delivery_limit": "delivery limit reached (dead-lettered by the broker)",
    "expired": "expired in its queue",
    "maxlen": "dropped by a full queue",
}


class Mark(BaseModel):
    """Why a job was dead-lettered, and the audio it keeps (if it is verifiably its own)."""

    message_id: str
    job_id: str
    error: ErrorInfo | None = None
    #: The blob, its size and sha256 when the daemon verified them; None: nothing kept.
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    kept_at: datetime


def mark_path(root: Path, message_id: str) -> Path:
    """Where the mark of a dead letter lies (ids come from producers: hashed, never a path)."""
    return root / f"dead-{hashlib.sha256(message_id.encode()).hexdigest()[:32]}.json"


def keep(blobs: BlobStore, message_id: str, job: InboundJob, error: ErrorInfo | None) -> Mark:
    """Mark a dead-lettered job (blocking); its audio is kept only if it matches the claim."""
    ref = job.message.audio
    mark = Mark(message_id=message_id, job_id=job.job_id, error=error, kept_at=datetime.now(UTC))
    if ref is not None:
        try:
            blobs.verified_path(ref)
        except BlobError as exc:
            # Missing, or not what the job says: perhaps another job's file. Not ours.
            log.info("blob.not_kept", url=ref.url, reason=str(exc))
        else:
            mark = mark.model_copy(update={"url": ref.url, "size": ref.size, "sha256": ref.sha256})
    path = mark_path(blobs.root, message_id)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(mark.model_dump_json())
    tmp.replace(path)
    return mark


def read_mark(root: Path, message_id: str) -> Mark | None:
    """The mark of a dead letter, if a daemon left one."""
    try:
        return Mark.model_validate_json(mark_path(root, message_id).read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def forget(root: Path, message_id: str) -> None:
    """Drop a mark: the job runs again (its audio is a live job's) or is purged."""
    mark_path(root, message_id).unlink(missing_ok=True)


def delete_kept_audio(blobs: BlobStore, mark: Mark) -> bool:
    """Delete the audio a mark keeps, if the file is still the one marked; True if deleted."""
    if mark.url is None or mark.sha256 is None or mark.size is None:
        return False
    try:
        blobs.verified_path(AudioRef(url=mark.url, sha256=mark.sha256, size=mark.size))
    except BlobError:
        return False  # gone already, or another file under that name now
    blobs.delete(mark.url)
    return True


def sweep(blobs: BlobStore, retention: float, now: float | None = None) -> int:
    """Delete marks older than ``retention`` seconds and their audio (blocking); how many."""
    now = time.time() if now is None else now
    swept = 0
    for path in blobs.root.glob(MARK_GLOB):
        try:
            if now - path.stat().st_mtime <= retention:
                continue
            mark = Mark.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            continue  # another daemon swept it
        except ValidationError:
            mark = None
        if mark is not None:
            delete_kept_audio(blobs, mark)
        path.unlink(missing_ok=True)
        swept += 1
    return swept


async def sweep_periodically(blobs: BlobStore, retention: float) -> None:
    """Sweep every tenth of the retention (at most 5 minutes apart) until cancelled."""
    interval = min(max(retention / 10, 1.0), 300.0)
    while True:
        await asyncio.sleep(interval)
        try:
            swept = await asyncio.to_thread(sweep, blobs, retention)
        except OSError as exc:
            log.warning("deadletters.sweep_failed", error=f"{type(exc).__name__}: {exc}")
            continue
        if swept:
            log.info("deadletters.swept", marks=swept, retention_s=retention)


# -- the dead queue ----------------------------------------------------------------


@dataclass
class DeadLetter:
    """One message of the dead queue, as ``stt-dead`` shows it."""

    message: AbstractIncomingMessage
    key: str
    job_id: str
    model: str
    part: str
    reason: str
    died_at: datetime | None
    audio: str
    mark: Mark | None

    def matches(self, wanted: set[str]) -> bool:
        """Named by one of ``wanted``: its job id or its message id."""
        return self.job_id in wanted or self.key in wanted


def _death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]  # the latest first
    return {}


def _as_text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _audio_state(job: InboundJob | None, mark: Mark | None, root: Path | None) -> str:
    if job is None:
        return "?"
    if job.inline_audio is not None:
        return "inline"
    assert job.message.audio is not None
    if root is None:
        return "?"  # no blob store on this host
    path = root / Path(unquote(urlparse(job.message.audio.url).path)).name
    if not path.is_file():
        return "no"
    return "not its own" if mark is not None and mark.url is None else "yes"


def describe(message: AbstractIncomingMessage, root: Path | None) -> DeadLetter:
    """What a dead letter is: job, model, why it died, when, and its audio."""
    headers = dict(message.headers or {})
    try:
        job: InboundJob | None = decode_job(
            message.body,
            content_type=message.content_type,
            message_id=message.message_id,
            headers=headers,
            default_model=message.routing_key or None,
        )
    except DecodeError:
        job = None
    key = message.message_id or (job.job_id if job is not None else "")
    mark = read_mark(root, key) if root is not None and key else None
    death = _death(headers)
    if mark is not None and mark.error is not None:
        reason = f"{mark.error.code.value}: {mark.error.message}"
    else:
        raw = _as_text(death.get("reason", "unknown"))
        reason = _BROKER_REASONS.get(raw, raw) if job is not None else "bad_message"
    died = death.get("time")
    part = job.message.part if job is not None else None
    return DeadLetter(
        message=message,
        key=key,
        job_id=job.job_id if job is not None else key or "?",
        model=job.message.options.model if job is not None else message.routing_key or "?",
        part=f"{part.index + 1}/{part.count}" if part is not None else "",
        reason=reason,
        died_at=died if isinstance(died, datetime) else (mark.kept_at if mark else None),
        audio=_audio_state(job, mark, root),
        mark=mark,
    )


async def take_all(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    """Every message of the queue, held unacked on ``channel`` (closing it puts them back)."""
    queue = await channel.get_queue(queue_name, ensure=True)
    taken = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        taken.append(message)
    return taken


async def replay(
    letter: DeadLetter, jobs: AbstractExchange, user: str, root: Path | None, publish_timeout: float
) -> None:
    """Publish the job again (attempts reset, confirmed), then ack its dead letter."""
    copy = copy_of(letter.message, 0, user)
    copy.headers = {k: v for k, v in copy.headers.items() if not k.startswith(_DEATH_HEADERS)}
    async with asyncio.timeout(publish_timeout):
        await jobs.publish(copy, routing_key=letter.model, mandatory=True)
    await letter.message.ack()
    if root is not None and letter.key:
        forget(root, letter.key)


async def purge(letter: DeadLetter, blobs: BlobStore | None) -> bool:
    """Drop a dead letter and the audio it kept; True if audio was deleted."""
    await letter.message.ack()
    if blobs is None or not letter.key:
        return False
    deleted = letter.mark is not None and await asyncio.to_thread(
        delete_kept_audio, blobs, letter.mark
    )
    forget(blobs.root, letter.key)
    return deleted


# -- the command line -------------------------------------------------------------
