"""Every response carries ``X-Request-ID``, the 500 of an unhandled exception included.

The gateway's own app (``create_app``) with a route that raises and a status store that
raises; its lifespan is not run, so no broker is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.fleet import Fleet
from gateway.services import Services
from gateway.store import JobRecord, StoreBusy
from stt_daemon.common.blobs import BlobStore

SECRET = "s3cret-token-in-the-exception"


class BrokenStore:
    """A status store whose reads raise what a bug or an outage would."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def get(self, job_id: str) -> JobRecord | None:
        raise self.error


def _app(tmp_path: Path, store: Any) -> FastAPI:
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en"])
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"database password is {SECRET}")

    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,
        broker=None,  # type: ignore[arg-type]
        fleet=Fleet(settings.names),
    )
    return app


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app without its lifespan (no ``with``), answering exceptions as a server would."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    app = _app(tmp_path, BrokenStore(KeyError(SECRET)))
    yield TestClient(app, raise_server_exceptions=False)
    structlog.contextvars.clear_contextvars()


def _assert_plain_500(response: Any) -> None:
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "internal server error"}
    assert SECRET not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize("path", ["/boom", "/v1/jobs/some-job"])
def test_an_unhandled_exception_is_a_json_500_with_the_request_id(
    client: TestClient, path: str
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = client.get(path, headers={"X-Request-ID": "req-42"})
    _assert_plain_500(response)
    assert response.headers["x-request-id"] == "req-42"
    # The server's log has what the client does not: the exception, under the request id.
    [failed] = [line for line in logs if line["event"] == "request.failed"]
    assert failed["request_id"] == "req-42" and failed["log_level"] == "error"
    assert failed["exc_info"] is True and failed["path"] == path
    [access] = [line for line in logs if line["event"] == "http.request"]
    assert access["status"] == 500 and access["request_id"] == "req-42"


def test_a_500_gets_a_new_request_id_when_the_client_sent_none(client: TestClient) -> None:
    response = client.get("/boom")
    _assert_plain_500(response)
    assert len(response.headers["x-request-id"]) == 32


def test_a_locked_sqlite_store_is_a_503_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = _app(tmp_path, BrokenStore(StoreBusy("the status database stayed locked")))
    response = TestClient(app, raise_server_exceptions=False).get("/v1/jobs/some-job")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "the status store is unavailable; try again shortly"}
    assert response.headers["x-request-id"]
