"""API keys, tenants and per-key limits on a real gateway (real broker, real daemon and model)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from stack import JFK, JFK_WORDS, Gateway, Stack, normalise, stt

pytestmark = pytest.mark.integration

# Distinctive keys, so the test can tell whether one leaked into the gateway's output.
K1 = f"k1-{uuid.uuid4().hex}"
K2 = f"k2-{uuid.uuid4().hex}"
KEYS = f"{K1},{K2}"
UNKNOWN = {"detail": "job not found"}


def bearer(key: str) -> dict[str, str]:
    """The header every client sends."""
    return {"Authorization": f"Bearer {key}"}


def audio() -> dict[str, tuple[str, bytes]]:
    """A multipart ``file`` part with the JFK recording."""
    return {"file": ("jfk.flac", JFK.read_bytes())}


async def submit(client: httpx.AsyncClient, key: str) -> str:
    """POST /v1/jobs with this key; the job id."""
    response = await client.post("/v1/jobs", files=audio(), headers=bearer(key))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def wait_final(gw: Gateway, job_id: str, key: str, timeout: float = 120) -> dict[str, Any]:
    """Poll the job with this key until it is final."""
    deadline = time.monotonic() + timeout
    async with gw.client(headers=bearer(key)) as client:
        while time.monotonic() < deadline:
            response = await client.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return body
            await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} not final within {timeout}s")


def ws_url(gw: Gateway) -> str:
    """The original API's websocket."""
    return gw.url.replace("http://", "ws://") + "/ws/test"


async def test_every_endpoint_but_the_probes_needs_a_key(stack: Stack) -> None:
    gw = await stack.gateway(STT_API_KEYS=KEYS)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/jobs", {"files": audio()}),
        ("GET", "/v1/jobs/x", {}),
        ("GET", "/v1/jobs/x/result", {}),
        ("DELETE", "/v1/jobs/x", {}),
        ("POST", "/translate", {"files": audio()}),
        ("GET", "/status/x", {}),
        ("GET", "/result/x", {}),
        ("GET", "/v1/models", {}),
        ("GET", "/metrics", {}),
    ]
    async with gw.client() as client:
        for method, path, kwargs in requests:
            for headers in ({}, bearer("wrong"), {"Authorization": K1}, bearer(K1 + "x")):
                response = await client.request(method, path, headers=headers, **kwargs)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert set(response.json()) == {"detail"}
        # The OpenAI routes refuse in OpenAI's shape.
        for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            response = await client.post(
                path, files=audio(), data={"model": "whisper-1"}, headers=bearer("wrong")
            )
            assert response.status_code == 401
            error = response.json()["error"]
            assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        # Probes stay open; the API description is not served with keys (STT_API_DOCS=auto).
        for path in ("/healthz", "/readyz"):
            assert (await client.get(path)).status_code == 200, path
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert (await client.get(path, headers=bearer(K1))).status_code == 404, path
        # The right key passes.
        models = await client.get("/v1/models", headers=bearer(K2))
        assert models.status_code == 200 and models.json()["object"] == "list"
        assert (await client.get("/status/x", headers=bearer(K1))).status_code == 404
        assert (await client.get("/metrics", headers=bearer(K1))).status_code == 200
    # The websocket refuses the handshake itself.
    for headers in ({}, bearer("wrong")):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(gw), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403
    # The official client raises its usual exception.
    wrong = openai.AsyncOpenAI(api_key="wrong", base_url=gw.url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await wrong.audio.transcriptions.create(model="whisper-1", file=JFK)
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
    line = await gw.proc.wait_for_log("auth.enabled")
    assert line["keys"] == 2
    assert K1 not in gw.proc.output() and K2 not in gw.proc.output()


async def test_a_job_is_visible_only_to_the_key_that_made_it(stack: Stack) -> None:
    gw = await stack.gateway(STT_API_KEYS=KEYS)
    async with gw.client() as client:
        # No daemon yet: the job stays queued, so a cancel by the other key could still bite.
        job_id = await submit(client, K1)
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/result"),
            ("DELETE", f"/v1/jobs/{job_id}"),
            ("GET", "/v1/jobs/no-such-job"),
        ]:
            response = await client.request(method, path, headers=bearer(K2))
            assert response.status_code == 404, (method, path, response.text)
            assert response.json() == UNKNOWN  # the same answer as an unknown id
        for path in (f"/status/{job_id}", f"/result/{job_id}"):
            response = await client.get(path, headers=bearer(K2))
            assert response.status_code == 404
            assert response.json() == {"detail": "Invalid task ID"}
        await stack.daemon()
        done = await wait_final(gw, job_id, K1)
        assert done["status"] == "succeeded"  # K2's cancel did nothing
        result = await client.get(f"/v1/jobs/{job_id}/result", headers=bearer(K1))
        assert JFK_WORDS in normalise(result.json()["text"])
        assert (await client.get(f"/status/{job_id}", headers=bearer(K1))).json() == {
            "status": "finished"
        }
        assert (
            await client.get(f"/v1/jobs/{job_id}/result", headers=bearer(K2))
        ).status_code == 404

        # The original API and its websocket record the caller too.
        translated = await client.post("/translate", files=audio(), headers=bearer(K2))
        task_id = translated.json()["task_id"]
        async with websockets.connect(
            ws_url(gw), additional_headers=bearer(K2), max_size=None
        ) as ws:
            await ws.send(JFK.read_bytes())
            ws_task = json.loads(await ws.recv())["task_id"]
        for tid in (task_id, ws_task):
            assert (await client.get(f"/status/{tid}", headers=bearer(K1))).status_code == 404
            assert (await wait_final(gw, tid, K2))["status"] == "succeeded"


async def test_the_openai_client_works_with_its_key(stack: Stack) -> None:
    gw = await stack.gateway(STT_API_KEYS=KEYS)
    await stack.daemon()
    client = openai.AsyncOpenAI(api_key=K1, base_url=gw.url + "/v1", max_retries=0, timeout=120)
    raw = await client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=JFK)
    assert JFK_WORDS in normalise(raw.parse().text)
    job_id = raw.headers["x-job-id"]
    async with gw.client() as http:
        assert (await http.get(f"/v1/jobs/{job_id}", headers=bearer(K1))).status_code == 200
        assert (await http.get(f"/v1/jobs/{job_id}", headers=bearer(K2))).status_code == 404
    models = await client.models.list()
    assert [m.id for m in models.data] == ["tiny.en"]


async def test_rate_limit_answers_429_with_retry_after(stack: Stack) -> None:
    # One token every 20 s after a burst of 2: a slow machine cannot refill one in between.
    gw = await stack.gateway(STT_API_KEYS=KEYS, STT_KEY_RATE_LIMIT="0.05", STT_KEY_RATE_BURST="2")
    async with gw.client() as client:
        statuses = [
            (await client.get("/v1/models", headers=bearer(K1))).status_code for _ in range(2)
        ]
        assert statuses == [200, 200]
        limited = await client.get("/status/x", headers=bearer(K1))
        assert limited.status_code == 429
        assert "STT_KEY_RATE_LIMIT" in limited.json()["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 20
        shaped = await client.post("/v1/audio/transcriptions", files=audio(), headers=bearer(K1))
        assert shaped.status_code == 429
        assert shaped.json()["error"]["code"] == "rate_limit_exceeded"
        assert "retry-after" in shaped.headers
        # Another key has a bucket of its own; the probes are never limited.
        assert (await client.get("/v1/models", headers=bearer(K2))).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_max_active_jobs_per_key(stack: Stack) -> None:
    # No daemon: jobs stay queued, so each key's first job stays active.
    gw = await stack.gateway(STT_API_KEYS=KEYS, STT_KEY_MAX_ACTIVE="1", STT_RETRY_AFTER="7")
    async with gw.client() as client:
        first = await submit(client, K1)
        again = await client.post("/v1/jobs", files=audio(), headers=bearer(K1))
        assert again.status_code == 429
        assert "STT_KEY_MAX_ACTIVE" in again.json()["detail"]
        assert again.headers["retry-after"] == "7"
        translate = await client.post("/translate", files=audio(), headers=bearer(K1))
        assert translate.status_code == 429
        shaped = await client.post(
            "/v1/audio/transcriptions",
            files=audio(),
            data={"model": "whisper-1"},
            headers=bearer(K1),
        )
        assert (
            shaped.status_code == 429 and "STT_KEY_MAX_ACTIVE" in shaped.json()["error"]["message"]
        )
        async with websockets.connect(ws_url(gw), additional_headers=bearer(K1)) as ws:
            await ws.send(JFK.read_bytes())
            assert json.loads(await ws.recv())["status_code"] == 429
        # Another key is still accepted.
        await submit(client, K2)
        # Once the first job is final, the key may submit again.
        cancelled = await client.delete(f"/v1/jobs/{first}", headers=bearer(K1))
        assert cancelled.json()["status"] == "cancelled"
        await submit(client, K1)
    # Refused uploads left nothing behind: only the three accepted jobs' audio.
    assert len(list((stack.data_dir / "blobs").iterdir())) == 3


async def test_without_keys_auth_is_off_and_limits_apply_to_everyone(stack: Stack) -> None:
    gw = await stack.gateway(STT_KEY_RATE_LIMIT="0.05", STT_KEY_RATE_BURST="1")
    line = await gw.proc.wait_for_log("auth.disabled")
    assert line["level"] == "warning"
    async with gw.client() as client:
        # Any Authorization header or none: all callers are the one anonymous owner.
        assert (await client.get("/status/x", headers=bearer("anything"))).status_code == 404
        assert (await client.get("/status/x")).status_code == 429


async def test_stt_cli_sends_its_api_key(stack: Stack) -> None:
    gw = await stack.gateway(STT_API_KEYS=KEYS)
    await stack.daemon()
    code, stdout, stderr = await stt(
        "transcribe", str(JFK), "--url", gw.url, "--wait", STT_API_KEY=K1
    )
    assert code == 0, stderr
    assert JFK_WORDS in normalise(stdout)
    code, _, stderr = await stt("models", "--url", gw.url)
    assert code == 1 and "401" in stderr and "API key" in stderr
    code, stdout, stderr = await stt("transcribe", str(JFK), "--url", gw.url, STT_API_KEY=K1)
    assert code == 0, stderr
    job_id = stdout.split("\t")[0]
    code, _, stderr = await stt("status", job_id, "--url", gw.url, STT_API_KEY=K2)
    assert code == 1 and "404" in stderr
    code, stdout, stderr = await stt("status", job_id, "--url", gw.url, STT_API_KEY=K1)
    assert code == 0 and json.loads(stdout)["id"] == job_id
