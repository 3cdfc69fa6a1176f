"""One answer per broker refusal (gateway/errors.py), in each API's own shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from gateway.broker import BrokerUnavailable, QueueFull, UnroutableJob
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.routes import compat, jobs, openai
from gateway.services import Services
from gateway.store import open_store
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import JobMessage

RETRY_AFTER = 7
AUDIO = {"file": ("a.wav", b"RIFF....WAVE")}
#: Each refusal: the exception, then the status, sentence and OpenAI code every route gives.
REFUSALS = [
    (QueueFull("tiny.en"), 429, "Queue limit reached", "queue_full"),
    (
        BrokerUnavailable("publish failed: TimeoutError"),
        503,
        "the job queue is unavailable; try again shortly",
        "queue_unavailable",
    ),
    (UnroutableJob("tiny.en"), 503, "no queue accepts jobs for model tiny.en", "unroutable"),
]


class RefusingBroker:
    """Refuses every job with ``refusal``."""

    ready = True

    def __init__(self) -> None:
        self.refusal: Exception = QueueFull()

    async def publish_job(self, job: JobMessage) -> None:
        raise self.refusal


@pytest.fixture
def gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, RefusingBroker]]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en"], retry_after=RETRY_AFTER)
    broker = RefusingBroker()
    app = FastAPI()
    for module in (jobs, compat, openai):
        app.include_router(module.router)
    install_error_handlers(app, retry_after=RETRY_AFTER)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=open_store(settings.resolved_status_url),
        broker=broker,  # type: ignore[arg-type]
        fleet=Fleet(settings.names),
    )
    with TestClient(app) as client:
        yield client, broker


@pytest.mark.parametrize(("exc", "status", "detail", "code"), REFUSALS)
@pytest.mark.parametrize("path", ["/v1/jobs", "/translate"])
def test_the_gateways_own_routes_answer_detail_and_retry_after(
    gateway: tuple[TestClient, RefusingBroker],
    path: str,
    exc: Exception,
    status: int,
    detail: str,
    code: str,
) -> None:
    client, broker = gateway
    broker.refusal = exc
    response = client.post(path, files=AUDIO)
    assert (response.status_code, response.json()) == (status, {"detail": detail})
    assert response.headers["retry-after"] == str(RETRY_AFTER)


@pytest.mark.parametrize(("exc", "status", "detail", "code"), REFUSALS)
def test_the_openai_route_answers_in_openais_shape(
    gateway: tuple[TestClient, RefusingBroker], exc: Exception, status: int, detail: str, code: str
) -> None:
    client, broker = gateway
    broker.refusal = exc
    response = client.post("/v1/audio/transcriptions", files=AUDIO)
    error: dict[str, Any] = {
        "message": detail,
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": None,
        "code": code,
    }
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert response.headers["retry-after"] == str(RETRY_AFTER)


@pytest.mark.parametrize(("exc", "status", "detail", "code"), REFUSALS)
def test_the_original_socket_answers_status_and_detail(
    gateway: tuple[TestClient, RefusingBroker], exc: Exception, status: int, detail: str, code: str
) -> None:
    client, broker = gateway
    broker.refusal = exc
    with client.websocket_connect("/ws/test") as socket:
        socket.send_bytes(b"RIFF....WAVE")
        assert socket.receive_json() == {"detail": detail, "status_code": status}
