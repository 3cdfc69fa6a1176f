"""Jepsen-style accounting for fault tests: every accepted job ends exactly once.

After a fault, count like Jepsen does: take every job the gateway accepted (every
202) and check the history the system reports for it. Each must reach one final
status, in the status store and on the results exchange (none lost, none stuck);
its final events must agree (never ``succeeded`` and ``failed`` for one job); and
duplicates that redelivery may cause must carry the same transcript, the one the
store serves.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from stack import EventTap, Gateway
from stt_daemon.common.protocol import JobEvent

FINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")


@dataclass
class History:
    """The checked history: each accepted job's final events and its record in the store."""

    finals: dict[str, list[JobEvent]]
    records: dict[str, dict[str, Any]]

    def final(self, job_id: str) -> JobEvent:
        """The final event the store applied (the first one published)."""
        return self.finals[job_id][0]

    def status(self, job_id: str) -> str:
        """The job's final status in the store."""
        status: str = self.records[job_id]["status"]
        return status

    def with_status(self, status: str) -> list[str]:
        """Ids of the jobs that ended with this status."""
        return [job_id for job_id, record in self.records.items() if record["status"] == status]


async def check_history(
    gw: Gateway,
    tap: EventTap,
    accepted: list[str],
    timeout: float = 180.0,
    settle: float = 3.0,
) -> History:
    """Wait until every accepted job is final, then assert the count; return the history."""
    assert len(set(accepted)) == len(accepted), "the gateway gave two jobs the same id"
    deadline = time.monotonic() + timeout
    for job_id in accepted:
        await tap.wait_for(job_id, FINAL_EVENTS, timeout=max(1.0, deadline - time.monotonic()))
    # A stale worker or a redelivery may still publish a duplicate: give it time to show.
    await asyncio.sleep(settle)
    finals = {job_id: _finals(tap, job_id) for job_id in accepted}
    records = {}
    problems: list[str] = []
    for job_id in accepted:
        records[job_id] = record = await gw.wait_final(job_id, timeout=30)
        problems += _problems(job_id, finals[job_id], record)
        if record["status"] == "succeeded":
            problems += await _served_result(gw, job_id, finals[job_id])
    strangers = {e.job_id for e in tap.events} - set(accepted)
    if strangers:
        problems.append(f"events for jobs never accepted: {sorted(strangers)}")
    assert not problems, "history does not check out:\n" + "\n".join(problems)
    return History(finals, records)


def _finals(tap: EventTap, job_id: str) -> list[JobEvent]:
    events = [e for e in tap.of(job_id) if e.event in FINAL_EVENTS]
    return sorted(events, key=lambda e: e.timestamp)


def _problems(job_id: str, finals: list[JobEvent], record: dict[str, Any]) -> list[str]:
    """What is wrong with one job's final events and stored record."""
    kinds = {e.event.value for e in finals}
    if len(kinds) != 1:
        return [f"{job_id}: final events disagree: {sorted(kinds)}"]
    (kind,) = kinds
    problems = []
    if record["status"] != finals[0].status.value:
        problems.append(f"{job_id}: store says {record['status']}, the events say {kind}")
    texts = {e.result.text for e in finals if e.result is not None}
    if len(texts) > 1:
        problems.append(f"{job_id}: {len(texts)} distinct results from duplicates: {texts}")
    if kind == "job.succeeded" and len(texts) != 1:
        problems.append(f"{job_id}: succeeded without a result")
    return problems


async def _served_result(gw: Gateway, job_id: str, finals: list[JobEvent]) -> list[str]:
    """The store serves the one result every duplicate carried."""
    async with gw.client() as client:
        response = await client.get(f"/v1/jobs/{job_id}/result")
    if response.status_code != 200:
        return [f"{job_id}: result not served: {response.status_code} {response.text}"]
    published = finals[0].result
    if published is None or response.json()["text"] != published.text:
        return [f"{job_id}: the store serves another result than the one published"]
    return []
