"""The resource API (/v1/jobs), health probes and HTTP error handling, on real parts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest

from stack import JFK, JFK_WORDS, Stack, normalise
from stt_daemon.common.topology import QueueLimits, declare_topology
from stt_daemon.localbroker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]


async def test_job_lifecycle_with_word_timestamps(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    async with gw.client() as client:
        response = await client.post(
            "/v1/jobs",
            files={"file": ("jfk.flac", JFK.read_bytes(), "audio/flac")},
            data={"word_timestamps": "true", "language": "en"},
        )
        assert response.status_code == 202
        job = response.json()
        assert job["status"] == "queued"
        assert job["model"] == "tiny.en"
        assert job["filename"] == "jfk.flac"
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"

        final = await gw.wait_final(job["id"])
        assert final["status"] == "succeeded"
        assert final["progress"] == 1.0
        assert final["created_at"] <= final["started_at"] <= final["finished_at"]
        assert final["error"] is None

        result = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    assert JFK_WORDS in normalise(result["text"])
    assert result["language"] == "en"
    assert result["duration"] == pytest.approx(11.0, abs=0.1)
    segments = result["segments"]
    assert segments and all(s["start"] < s["end"] for s in segments)
    words = [w for s in segments for w in s["words"]]
    assert "country" in normalise(" ".join(w["word"] for w in words))
    assert all(0 <= w["start"] <= w["end"] <= 11.5 for w in words)


async def test_result_too_early_is_409_and_progress_is_reported(stack: Stack) -> None:
    gw = await stack.gateway()
    job = await gw.submit(JFK)
    async with gw.client() as client:
        early = await client.get(f"/v1/jobs/{job['id']}/result")
        assert early.status_code == 409
        assert "not ready" in early.json()["detail"]
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued"


async def test_bad_requests_get_clear_json_errors(stack: Stack) -> None:
    gw = await stack.gateway()
    async with gw.client() as client:
        unknown = await client.post(
            "/v1/jobs", files={"file": ("a.flac", JFK.read_bytes())}, data={"model": "large-v9"}
        )
        assert unknown.status_code == 400
        assert "large-v9" in unknown.json()["detail"] and "tiny.en" in unknown.json()["detail"]

        bad_task = await client.post(
            "/v1/jobs", files={"file": ("a.flac", JFK.read_bytes())}, data={"task": "summarise"}
        )
        assert bad_task.status_code == 422
        assert "task" in bad_task.json()["detail"]

        no_file = await client.post("/v1/jobs", files={"audio": ("a.flac", JFK.read_bytes())})
        assert no_file.status_code == 422
        assert "'file'" in no_file.json()["detail"]

        empty = await client.post("/v1/jobs", files={"file": ("a.flac", b"")})
        assert empty.status_code == 422

        not_multipart = await client.post(
            "/v1/jobs", content=b"raw", headers={"content-type": "audio/flac"}
        )
        assert not_multipart.status_code == 415
    # Nothing refused was left behind in the blob store.
    assert not [p for p in (stack.data_dir / "blobs").iterdir()]


def _multipart(boundary: str, payload_size: int) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        chunk = b"\0" * 65536
        for _ in range(payload_size // len(chunk)):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return body()


async def test_upload_limit_is_enforced_while_streaming(stack: Stack) -> None:
    gw = await stack.gateway(STT_MAX_UPLOAD_MB="1")
    boundary = "xyzzy"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    async with gw.client() as client:
        # Chunked, no Content-Length: refused once the stream passes the limit.
        response = await client.post(
            "/v1/jobs", content=_multipart(boundary, 3 * 1024 * 1024), headers=headers
        )
        assert response.status_code == 413
        assert "STT_MAX_UPLOAD_MB" in response.json()["detail"]
        # With a Content-Length that says too much: refused before reading.
        big = b"\0" * (2 * 1024 * 1024)
        response = await client.post("/translate", files={"file": ("big.wav", big)})
        assert response.status_code == 413
    assert not [p for p in (stack.data_dir / "blobs").iterdir()]


async def test_health_and_readiness(stack: Stack) -> None:
    gw = await stack.gateway()
    async with gw.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"broker": "ok", "store": "ok"}


async def test_broker_unreachable_gives_503_never_202(stack: Stack) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    gw = await stack.gateway(wait_ready=False, STT_AMQP_URL=dead)
    async with gw.client() as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] == "unreachable"
        for path in ("/v1/jobs", "/translate"):
            response = await client.post(path, files={"file": ("a.flac", JFK.read_bytes())})
            assert response.status_code == 503, path
            assert "Retry-After" in response.headers
            assert "Traceback" not in response.text
        assert (await client.get("/healthz")).status_code == 200


async def test_conflicting_queue_settings_are_reported_not_swallowed(
    stack: Stack, channel: aio_pika.abc.AbstractChannel
) -> None:
    # Someone declared the model queue with other limits first.
    await declare_topology(channel, stack.names, ["tiny.en"], QueueLimits(max_queued=5))
    gw = await stack.gateway(wait_ready=False, STT_MAX_QUEUED="50")
    line = await gw.proc.wait_for_log("broker.not_ready", timeout=30)
    assert "PRECONDITION_FAILED" in line["error"] or "inequivalent" in line["error"]
    async with gw.client() as client:
        assert (await client.get("/readyz")).status_code == 503
        response = await client.post("/v1/jobs", files={"file": ("a.flac", JFK.read_bytes())})
        assert response.status_code == 503


async def test_openapi_lists_both_apis(stack: Stack) -> None:
    gw = await stack.gateway()
    async with httpx.AsyncClient(base_url=gw.url) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/translate",
        "/status/{task_id}",
        "/result/{task_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/result",
        "/healthz",
        "/readyz",
    ):
        assert path in paths
