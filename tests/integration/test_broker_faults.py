"""The broker breaks: crash and restart, stop_app/start_app, a cluster losing its queue leader.

Each test runs its own RabbitMQ node(s), since it kills them. Counting as Jepsen
does: every job that got a 202 ends with exactly one final status; none is lost
and none is stuck, and nothing the gateway refused during an outage got a 202.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from audiofiles import repeated
from stack import JFK, Gateway, Stack, normalise
from stt_daemon.localbroker import LocalRabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]


@pytest.fixture
def node() -> Iterator[LocalRabbitNode]:
    """A node of this test's own, on a port that stays the same across restarts."""
    broker = LocalRabbitNode()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        broker.cleanup()


@pytest.fixture
async def own_stack(node: LocalRabbitNode, tmp_path: Path) -> AsyncIterator[Stack]:
    """A deployment on the test's own node (short reconnect delays come from aio-pika)."""
    s = Stack(amqp_url=node.url, data_dir=tmp_path)
    try:
        yield s
    finally:
        await s.stop_all()


async def try_submit(gw: Gateway, data: bytes) -> httpx.Response:
    """One submission; the caller decides what the answer must be."""
    async with gw.client() as client:
        return await client.post("/v1/jobs", files={"file": ("jfk.flac", data)})


async def assert_all_finish_once(gw: Gateway, accepted: list[str], timeout: float) -> None:
    """Every accepted job ends succeeded, with the words spoken, exactly once."""
    deadline = time.monotonic() + timeout
    for job_id in accepted:
        final = await gw.wait_final(job_id, timeout=max(deadline - time.monotonic(), 5))
        assert final["status"] == "succeeded", final
    async with gw.client() as client:
        for job_id in accepted:
            result = (await client.get(f"/v1/jobs/{job_id}/result")).json()
            assert "what your country can do for you" in normalise(result["text"]), result


async def wait_ready(gw: Gateway, ready: bool, timeout: float = 60.0) -> None:
    """Wait until /readyz says ``ready`` (200) or not (503)."""
    deadline = time.monotonic() + timeout
    async with gw.client() as client:
        while time.monotonic() < deadline:
            if ((await client.get("/readyz")).status_code == 200) is ready:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"gateway never became {'ready' if ready else 'unready'}")


async def test_broker_crash_loses_no_confirmed_job_and_outage_answers_503(
    node: LocalRabbitNode, own_stack: Stack
) -> None:
    gw = await own_stack.gateway()
    daemon = await own_stack.daemon(STT_PREFETCH="1")
    audio = JFK.read_bytes()
    accepted = []
    for _ in range(6):
        response = await try_submit(gw, audio)
        assert response.status_code == 202, response.text
        accepted.append(response.json()["id"])
    # One job running, five confirmed and queued: now the node crashes.
    await gw.wait_final(accepted[0], timeout=60)
    node.kill(signal.SIGKILL)
    await wait_ready(gw, ready=False)
    for _ in range(5):
        response = await try_submit(gw, audio)
        assert response.status_code == 503, response.text  # never a 202 nobody will honour
        assert response.json()["detail"]
        await asyncio.sleep(0.3)

    node.start()
    await wait_ready(gw, ready=True, timeout=90)
    # Gateway and daemon reconnected on their own: new work is taken and done.
    late = await try_submit(gw, audio)
    assert late.status_code == 202, late.text
    accepted.append(late.json()["id"])
    await assert_all_finish_once(gw, accepted, timeout=180)
    assert daemon.popen.poll() is None, "the daemon must ride out the outage, not exit"


async def test_stop_app_start_app_brings_consumers_back(
    node: LocalRabbitNode, own_stack: Stack
) -> None:
    gw = await own_stack.gateway()
    daemon = await own_stack.daemon()
    first = await gw.submit(JFK)
    await assert_all_finish_once(gw, [first["id"]], timeout=60)

    node.ctl("stop_app")
    await wait_ready(gw, ready=False)
    node.ctl("start_app")
    await wait_ready(gw, ready=True, timeout=90)

    # The pitfall: connections come back but consumers do not. Jobs must still run.
    later = [(await gw.submit(JFK))["id"] for _ in range(3)]
    await assert_all_finish_once(gw, later, timeout=120)
    assert daemon.popen.poll() is None


@pytest.fixture
def cluster() -> Iterator[list[LocalRabbitNode]]:
    """Three nodes on this machine, joined into one cluster (quorum queues on all three)."""
    first = LocalRabbitNode()
    nodes = [first, LocalRabbitNode(cookie=first.cookie), LocalRabbitNode(cookie=first.cookie)]
    try:
        for n in nodes:
            n.start()
        for n in nodes[1:]:
            n.join(first)
        yield nodes
    finally:
        for n in nodes:
            n.stop()
            n.cleanup()


def queue_leader(nodes: list[LocalRabbitNode], queue: str) -> LocalRabbitNode:
    """The node that leads a quorum queue right now."""
    for n in nodes:
        if n.pid() is None:
            continue
        out = n.ctl("list_queues", "name", "leader", "--quiet", "--no-table-headers")
        for line in out.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return next(m for m in nodes if m.name == leader.strip())
    raise AssertionError(f"no leader found for {queue}")


async def test_cluster_survives_the_death_of_the_queue_leader(
    cluster: list[LocalRabbitNode], tmp_path: Path
) -> None:
    urls = ",".join(n.url for n in cluster)
    stack = Stack(amqp_url=urls, data_dir=tmp_path)
    try:
        gw = await stack.gateway()
        await stack.daemon(STT_PREFETCH="1")
        await stack.daemon(STT_PREFETCH="1")
        speech = repeated(JFK, 2, tmp_path / "jfk-x2.flac").read_bytes()
        accepted = []
        for _ in range(12):
            response = await try_submit(gw, speech)
            assert response.status_code == 202, response.text
            accepted.append(response.json()["id"])
        members = cluster[0].ctl("list_queues", "name", "members", "--quiet", "--no-table-headers")
        queue = stack.names.job_queue("tiny.en")
        line = next(row for row in members.splitlines() if row.startswith(queue + "\t"))
        assert all(n.name in line for n in cluster), f"not replicated on all three: {line}"

        await gw.wait_final(accepted[0], timeout=120)  # mid-run
        leader = queue_leader(cluster, queue)
        leader.kill(signal.SIGKILL)

        # Nothing is lost, and the gateway takes new work through a survivor.
        await wait_ready(gw, ready=True, timeout=90)
        deadline = time.monotonic() + 60
        while True:
            response = await try_submit(gw, speech)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                break
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, (
                f"the gateway never moved to a surviving node: {response.text}\n"
                + gw.proc.output()[-4000:]
            )
            await asyncio.sleep(1)
        await assert_all_finish_once(gw, accepted, timeout=300)
    finally:
        await stack.stop_all()
