"""The original API ("Speech-to-Text API with Whisper"), kept byte-compatible.

``/translate`` -> ``{"task_id"}`` (202), ``/status/{id}`` -> ``{"status"}`` with
pending/finished/failed, ``/result/{id}`` -> ``{"result": text}``, and the
``/ws/test`` socket that takes audio bytes and answers a task id.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from fastapi import APIRouter, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from gateway.auth import REQUIRE_KEY, OwnerDep
from gateway.errors import BROKER_ERRORS, broker_refusal
from gateway.services import IdempotencyKey, Services, ServicesDep, get_services
from gateway.uploads import receive_upload
from stt_daemon.common.blobs import BlobTooLarge, BlobWriter
from stt_daemon.common.protocol import JobStatus

# The websocket too: a refused key closes the handshake (HTTP 403) before accept().
router = APIRouter(tags=["original API"], dependencies=[REQUIRE_KEY])
log = structlog.get_logger("gateway.compat")

INVALID_ID = "Invalid task ID"
#: The original API had no "processing" state visible to clients: pending until done.
_STATUS = {
    JobStatus.QUEUED: "pending",
    JobStatus.PROCESSING: "pending",
    JobStatus.SUCCEEDED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "failed",
}


@router.post("/translate", status_code=202)
async def translate(
    request: Request,
    services: ServicesDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Upload audio as multipart ``file``; answers ``{"task_id": ...}``."""
    upload = await receive_upload(request, services.blobs, services.settings.max_upload_bytes)
    options = services.job_options({})
    assert upload.blob is not None
    record = await services.submit(
        upload.blob,
        options,
        filename=upload.filename,
        content_type=upload.content_type,
        owner=owner,
        idempotency_key=idempotency_key,
    )
    return JSONResponse({"task_id": record.id}, status_code=202)


@router.get("/status/{task_id}")
async def status(task_id: str, services: ServicesDep, owner: OwnerDep) -> JSONResponse:
    """``{"status": "pending" | "finished" | "failed"}``."""
    record = await services.job_or_404(task_id, INVALID_ID, owner=owner)
    return JSONResponse({"status": _STATUS[record.status]})


@router.get("/result/{task_id}")
async def result(task_id: str, services: ServicesDep, owner: OwnerDep) -> JSONResponse:
    """``{"result": text}`` (and ``warnings`` if any); a failed job gives ``{"error": reason}``."""
    record = await services.job_or_404(task_id, INVALID_ID, owner=owner)
    if record.status is JobStatus.SUCCEEDED and record.result is not None:
        body: dict[str, object] = {"result": record.result.text}
        if record.result.warnings:
            # Only when there are some, so every other answer stays byte for byte the
            # original's; clients that read "result" are unaffected, and speech the text
            # leaves out (another language on tiny.en) is not dropped without a word.
            body["warnings"] = [w.model_dump(exclude_none=True) for w in record.result.warnings]
        return JSONResponse(body)
    if record.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        reason = record.error.message if record.error else "cancelled"
        return JSONResponse({"error": reason}, status_code=400)
    raise HTTPException(400, "Task has not finished yet")


@router.websocket("/ws/test")
async def ws_test(websocket: WebSocket, owner: OwnerDep) -> None:
    """Receive one binary message of audio; answer ``{"task_id": ...}`` and close."""
    services = get_services(websocket)
    await websocket.accept()
    data = await _receive_audio(websocket, services.settings.ws_timeout)
    if data is None:
        return
    if not data:
        await websocket.send_json({"detail": "the audio message is empty", "status_code": 422})
        await websocket.close(code=1003)
        return
    blob = services.blobs.writer(services.settings.max_upload_bytes)
    try:
        # Up to STT_WS_MAX_MB in one write: off the event loop, then let the bytes go.
        await asyncio.to_thread(blob.write, data)
        del data
        reply, close_code = await _submit(services, blob, owner)
    except BlobTooLarge:
        reply, close_code = {"detail": "upload too large", "status_code": 413}, 1009
    await websocket.send_json(reply)
    await websocket.close(code=close_code)


async def _receive_audio(websocket: WebSocket, limit: float) -> bytes | None:
    """The one audio message, or None once the socket was refused (and closed)."""
    try:
        # A socket that never sends must not be held open: the whole message (uvicorn
        # delivers messages whole) has STT_WS_TIMEOUT seconds from the accept.
        return await asyncio.wait_for(websocket.receive_bytes(), limit)
    except TimeoutError:
        refusal = {"detail": f"no audio message within {limit:g} s", "status_code": 408}
        code = 1008
    except (WebSocketDisconnect, KeyError, RuntimeError):
        # KeyError/RuntimeError: a text frame instead of bytes, or an early close.
        # 415 as the HTTP routes answer a body that is not multipart: wrong kind of payload.
        refusal = {"detail": "send the audio as one binary message", "status_code": 415}
        code = 1003
    with contextlib.suppress(Exception):
        await websocket.send_json(refusal)
        await websocket.close(code=code)
    return None


async def _submit(
    services: Services, blob: BlobWriter, owner: str | None
) -> tuple[dict[str, object], int]:
    """The job of the stored audio: the reply and the close code (1000, or why not)."""
    try:
        record = await services.submit(
            blob, services.job_options({}), filename=None, content_type=None, owner=owner
        )
        return {"task_id": record.id}, 1000
    except BROKER_ERRORS as exc:
        answer = broker_refusal(exc)
        assert answer is not None
        return {"detail": answer.of(exc), "status_code": answer.status}, 1013
    except HTTPException as exc:  # STT_KEY_MAX_ACTIVE reached
        return {"detail": exc.detail, "status_code": exc.status_code}, 1013
