"""A fake gateway behind httpx.MockTransport, for the client's and the ``stt`` command's tests."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from typing import Any

import httpx

from gateway.client import SttClient

Handler = Callable[[httpx.Request], httpx.Response]


def job_body(
    job_id: str, status: str = "queued", progress: float = 0.0, **extra: Any
) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": status,
        "model": "tiny.en",
        "progress": progress,
        "error": None,
        "created_at": "2026-11-25T10:46:33.911324Z",
        **extra,
    }


def form_fields(request: httpx.Request) -> dict[str, Any]:
    """The multipart form of a request: text fields as str, files as (filename, type, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.content, policy=email.policy.HTTP)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        # A form part has a name, and decode=True gives its bytes.
        assert isinstance(name, str) and isinstance(payload, bytes)
        if part.get_filename():
            fields[name] = (part.get_filename(), part.get_content_type(), payload)
        else:
            fields[name] = payload.decode()
    return fields


def client_for(handler: Handler, **kwargs: Any) -> SttClient:
    return SttClient("http://gw.test", transport=httpx.MockTransport(handler), **kwargs)


class FakeGateway:
    """Answers like the gateway: a job moves one step per poll; files named bad* fail,
    cancel* are cancelled, refused* get a 422."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.steps: dict[str, list[dict[str, Any]]] = {}
        self.polls: dict[str, int] = {}

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts == ["v1", "jobs"]:
            return self._create(form_fields(request)["file"][0])
        job = self.jobs.get(parts[2]) if len(parts) > 2 else None
        if job is None:
            return httpx.Response(404, json={"detail": "job not found"})
        if len(parts) == 4:
            return self._result(job, request.url.params.get("format", "json"))
        self.polls[job["id"]] = self.polls.get(job["id"], 0) + 1
        if self.steps[job["id"]]:
            job.update(self.steps[job["id"]].pop(0))
        return httpx.Response(200, json=job)

    def _create(self, filename: str) -> httpx.Response:
        if filename.startswith("refused"):
            return httpx.Response(422, json={"detail": "invalid job options: beam_size"})
        job_id = f"job-{len(self.jobs) + 1}"
        self.jobs[job_id] = job_body(job_id, filename=filename)
        running = {"status": "processing", "progress": 0.5}
        final: dict[str, Any] = {"status": "succeeded", "progress": 1.0}
        if filename.startswith("bad"):
            error = {"code": "bad_audio", "message": "not a readable audio or video file"}
            final = {"status": "failed", "error": error}
        if filename.startswith("cancel"):
            final = {"status": "cancelled"}
        self.steps[job_id] = [running, dict(running), final]
        return httpx.Response(202, json=self.jobs[job_id])

    def _result(self, job: dict[str, Any], fmt: str) -> httpx.Response:
        text = f"hello from {job['filename']}"
        if fmt in ("json", "verbose_json"):
            return httpx.Response(200, json={"text": text, "segments": []})
        if fmt == "srt":
            return httpx.Response(200, text=f"1\n00:00:00,000 --> 00:00:01,000\n{text}\n")
        return httpx.Response(200, text=f"{text}\n")
