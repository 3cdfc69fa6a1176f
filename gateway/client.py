"""A small Python client for the gateway's ``/v1/jobs`` API.

Standalone on purpose: it imports only httpx and the standard library, so
``pip install "stt-jobs[client]"`` is enough on a machine that only submits jobs.

    with SttClient("http://stt.internal:8000") as stt:
        job = stt.submit("meeting.flac", language="en")
        job = stt.wait(job.id)
        print(stt.result(job.id, format="text"))
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
#: Statuses after which a job never changes again.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: Result formats answered as JSON (the others are text).
JSON_FORMATS = frozenset({"json", "verbose_json", "diarized_json"})

AudioSource = str | os.PathLike[str] | bytes


class SttError(Exception):
    """The gateway refused a request: the HTTP status and the ``detail`` it answered."""

    def __init__(self, status_code: int | None, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The detail as one sentence (FastAPI's validation lists included)."""
        if isinstance(self.detail, list):
            return "; ".join(_validation_item(item) for item in self.detail)
        return str(self.detail)

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"{self.status_code}: {self.message}"


class SttConnectionError(SttError):
    """No HTTP answer at all: the gateway is unreachable or did not answer in time."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, detail)


def _validation_item(item: Any) -> str:
    # FastAPI answers 422 on a bad query parameter with a list of {loc, msg, ...}.
    if isinstance(item, dict) and "msg" in item:
        loc = ".".join(str(part) for part in item.get("loc", ()))
        return f"{loc}: {item['msg']}" if loc else str(item["msg"])
    return str(item)


@dataclass(frozen=True)
class Job:
    """A job as the gateway reports it; ``raw`` keeps every field of the answer."""

    id: str
    status: str
    model: str | None
    progress: float
    error: dict[str, Any] | None
    created_at: datetime | None
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        """Build a job from the gateway's JSON."""
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            model=data.get("model"),
            progress=float(data.get("progress") or 0.0),
            error=data.get("error"),
            created_at=_parse_time(data.get("created_at")),
            raw=dict(data),
        )

    @property
    def is_final(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in FINAL_STATUSES

    @property
    def filename(self) -> str | None:
        """The name the audio was uploaded under."""
        name = self.raw.get("filename")
        return str(name) if name is not None else None

    @property
    def reason(self) -> str:
        """Why the job did not succeed, for people (empty when it did)."""
        if not self.error:
            return {"failed": "no reason given", "cancelled": "cancelled"}.get(self.status, "")
        code, message = self.error.get("code"), self.error.get("message")
        return f"{code}: {message}" if code else str(message)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _form_value(value: bool | int | float | str) -> str:
    # Form fields are text; the gateway reads booleans as "true"/"false".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _user_agent() -> str:
    try:
        version = metadata.version("stt-jobs")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"stt-jobs-client/{version}"


@contextmanager
def _audio_part(source: AudioSource, filename: str | None) -> Iterator[tuple[str, Any, str]]:
    """The multipart ``file`` tuple; a path is opened (streamed), not read into memory."""
    if isinstance(source, bytes):
        name = filename or "audio"
        yield name, source, _content_type(name)
        return
    path = Path(source)
    name = filename or path.name
    with path.open("rb") as fh:
        yield name, fh, _content_type(name)


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class SttClient:
    """Synchronous client for the gateway: submit, poll, wait, fetch results, cancel."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30,
        *,
        max_tries: int = 5,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``url`` and ``api_key`` default to ``$STT_URL`` (else 127.0.0.1:8000) and
        ``$STT_API_KEY``; ``max_tries`` and ``max_retry_wait`` bound ``submit``'s retries
        of 429/503; ``transport`` is httpx's (tests pass an ``httpx.MockTransport``)."""
        self.url = (url or os.environ.get("STT_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("STT_API_KEY")
        headers = {"User-Agent": _user_agent()}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.max_tries = max(1, max_tries)
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> SttClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; transport failures become SttConnectionError."""
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise SttConnectionError(f"no answer from {self.url} in time ({exc})") from exc
        except httpx.TransportError as exc:
            raise SttConnectionError(f"cannot reach the gateway at {self.url} ({exc})") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request that must succeed (2xx), else SttError with the server's detail."""
        response = self._send(method, path, **kwargs)
        _raise_for_status(response)
        return response

    def submit(
        self,
        path_or_bytes: AudioSource,
        *,
        filename: str | None = None,
        model: str | None = None,
        language: str | None = None,
        task: str | None = None,
        word_timestamps: bool | None = None,
        prompt: str | None = None,
        hotwords: str | None = None,
        vad_filter: bool | None = None,
        beam_size: int | None = None,
        temperature: float | None = None,
        diarize: str | None = None,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        callback_url: str | None = None,
        split: bool | None = None,
    ) -> Job:
        """Upload audio as a new job (only the options given are sent).

        ``diarize="speakers"`` tells voices apart; ``num_speakers`` (or ``min_speakers``
        and ``max_speakers``) say how many there are, when known (the gateway checks them).

        429 (queue full) and 503 (broker unavailable) answers that carry ``Retry-After``
        are retried after the time they ask for, at most ``max_tries`` times in all.
        """
        options = {
            "model": model,
            "language": language,
            "task": task,
            "word_timestamps": word_timestamps,
            "prompt": prompt,
            "hotwords": hotwords,
            "vad_filter": vad_filter,
            "beam_size": beam_size,
            "temperature": temperature,
            "diarize": diarize,
            "num_speakers": num_speakers,
            "min_speakers": min_speakers,
            "max_speakers": max_speakers,
            "callback_url": callback_url,
            "split": split,
        }
        data = {k: _form_value(v) for k, v in options.items() if v is not None}
        response = self._post_job(path_or_bytes, filename, data)
        _raise_for_status(response)
        return Job.from_dict(response.json())

    def _post_job(
        self, source: AudioSource, filename: str | None, data: dict[str, str]
    ) -> httpx.Response:
        """POST /v1/jobs, again after a 429/503's Retry-After, at most ``max_tries`` times."""
        for attempt in range(1, self.max_tries + 1):
            with _audio_part(source, filename) as part:
                response = self._send("POST", "/v1/jobs", files={"file": part}, data=data)
            wait = self._retry_wait(response)
            if wait is None or attempt == self.max_tries:
                break
            time.sleep(wait)
        return response

    def _retry_wait(self, response: httpx.Response) -> float | None:
        """Seconds to wait before submitting again, or None when it is not worth it."""
        # Only a 429/503 that says when to come back is transient; a 503 without
        # Retry-After (no queue for the model) will not heal by itself.
        retry_after = response.headers.get("Retry-After")
        if response.status_code not in (429, 503) or retry_after is None:
            return None
        return min(retry_after_seconds(retry_after), self.max_retry_wait)

    def get(self, job_id: str) -> Job:
        """The job's status, progress and error."""
        return Job.from_dict(self._request("GET", f"/v1/jobs/{job_id}").json())

    def result(self, job_id: str, format: str = "json") -> str | dict[str, Any]:
        """The transcript: a dict for ``json``/``verbose_json``/``diarized_json``, else text
        (srt, vtt, rttm...)."""
        response = self._request("GET", f"/v1/jobs/{job_id}/result", params={"format": format})
        if format in JSON_FORMATS:
            body: dict[str, Any] = response.json()
            return body
        return response.text

    def wait(
        self,
        job_id: str,
        *,
        poll: float = 0.5,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is final; ``on_progress(job)`` is called on every poll.

        Raises TimeoutError when ``timeout`` seconds pass first (the job goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.is_final:
                return job
            if deadline is not None and time.monotonic() + poll > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout}s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> Job:
        """Ask the gateway to cancel the job; returns the job as it stands after."""
        response = self._request("DELETE", f"/v1/jobs/{job_id}")
        body = response.json() if response.content else None
        if isinstance(body, dict) and "id" in body and "status" in body:
            return Job.from_dict(body)
        return self.get(job_id)

    def models(self) -> list[dict[str, Any]]:
        """The models the gateway serves, each a dict with at least ``id``."""
        body = self._request("GET", "/v1/models").json()
        if isinstance(body, dict):
            body = body.get("data", body.get("models", []))
        items = body if isinstance(body, list) else []
        return [item if isinstance(item, dict) else {"id": str(item)} for item in items]


def _raise_for_status(response: httpx.Response) -> None:
    """SttError with the gateway's ``detail`` for any answer outside 2xx."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
    else:
        detail = response.text.strip() or response.reason_phrase
    raise SttError(response.status_code, detail)
