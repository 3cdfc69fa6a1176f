"""amqps:// with certificate verification: a node with a TLS listener signed by a test CA."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from stack import JFK, JFK_WORDS, Stack, normalise
from stt_daemon.localbroker import LocalRabbitNode, free_port

pytestmark = pytest.mark.integration


class TLSNode:
    """A private node whose AMQP port speaks TLS only, and the CA that signed it."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.tls_port = free_port()
        d = Path(tempfile.mkdtemp(prefix="stt-rabbit-tls-"))
        self.ca_file = d / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        server.private_key_pem.write_to_path(str(d / "server.key"))
        server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
        self.node = LocalRabbitNode(
            base_dir=d,
            extra_config=(
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {self.ca_file}\n"
                f"ssl_options.certfile = {d / 'server.pem'}\n"
                f"ssl_options.keyfile = {d / 'server.key'}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            ),
        )

    def url(self, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"amqps://guest:guest@localhost:{self.tls_port}/" + (f"?{params}" if params else "")


@pytest.fixture(scope="module")
def tls_node() -> Iterator[TLSNode]:
    tls = TLSNode()
    tls.node.start()
    try:
        yield tls
    finally:
        tls.node.stop()
        tls.node.cleanup()


async def test_jobs_run_over_a_verified_tls_connection(tls_node: TLSNode, tmp_path: Path) -> None:
    stack = Stack(amqp_url=tls_node.url(cafile=str(tls_node.ca_file)), data_dir=tmp_path)
    try:
        gw = await stack.gateway()
        await stack.daemon()
        job = await gw.submit(JFK)
        final = await gw.wait_final(job["id"])
        assert final["status"] == "succeeded"
        async with gw.client() as client:
            text = (await client.get(f"/v1/jobs/{job['id']}/result")).json()["text"]
        assert JFK_WORDS in normalise(text)
    finally:
        await stack.stop_all()


async def test_an_untrusted_certificate_is_refused(tls_node: TLSNode, tmp_path: Path) -> None:
    # No cafile: the system's authorities do not know the test CA, so nothing connects.
    stack = Stack(amqp_url=tls_node.url(), data_dir=tmp_path)
    try:
        gw = await stack.gateway(wait_ready=False)
        deadline = time.monotonic() + 20
        while "CERTIFICATE_VERIFY_FAILED" not in gw.proc.output():
            assert time.monotonic() < deadline, gw.proc.output()[-3000:]
            await asyncio.sleep(0.2)
        async with gw.client() as client:
            assert (await client.get("/readyz")).status_code == 503
            response = await client.post("/v1/jobs", files={"file": ("a.flac", JFK.read_bytes())})
            assert response.status_code == 503
    finally:
        await stack.stop_all()
