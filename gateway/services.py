"""What the routes share: settings, blob store, status store, broker link, and job submission."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from pydantic import ValidationError
from starlette.requests import HTTPConnection

from gateway.broker import BrokerLink, BrokerUnavailable, QueueFull, UnroutableJob
from gateway.config import GatewaySettings
from gateway.fleet import Fleet
from gateway.store import JobRecord, StatusStore
from stt_daemon.blobs import BlobStore, BlobWriter
from stt_daemon.protocol import (
    CancelRequest,
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobMessage,
    JobOptions,
    JobStatus,
)


@dataclass
class Services:
    """Long-lived objects owned by the app's lifespan."""

    settings: GatewaySettings
    blobs: BlobStore
    store: StatusStore
    broker: BrokerLink
    fleet: Fleet

    def accepted_models(self) -> list[str]:
        """Models a job may ask for: those configured here (their queues exist even
        while no daemon runs) and those live daemons announce."""
        configured = self.settings.model_names
        return [*configured, *sorted(set(self.fleet.served()) - set(configured))]

    def job_options(self, fields: dict[str, Any]) -> JobOptions:
        """Validate the job options of a request (400/422 with a clear message)."""
        model = fields.get("model") or self.settings.model_names[0]
        accepted = self.accepted_models()
        if model not in accepted:
            served = ", ".join(accepted)
            raise HTTPException(400, f"unknown model {model!r}; models served here: {served}")
        unknown = sorted(set(fields) - set(JobOptions.model_fields))
        if unknown:
            # A typo (``lang``, ``word-timestamps``) must not silently mean "default".
            known = ", ".join(JobOptions.model_fields)
            raise HTTPException(422, f"unknown field(s) {', '.join(unknown)}; accepted: {known}")
        raw = {k: v for k, v in fields.items() if v != ""}
        raw["model"] = model
        if raw.get("callback_url") and self.settings.callback_secret is None:
            raise HTTPException(400, "callback_url needs STT_CALLBACK_SECRET set on the gateway")
        try:
            options = JobOptions.model_validate(raw)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise HTTPException(422, f"invalid job options: {errors}") from None
        self._check_language_support(options)
        return options

    def _check_language_support(self, options: JobOptions) -> None:
        """Refuse early what the live daemons of an English-only model would refuse later."""
        if (options.language or "en") == "en":
            return
        daemons = self.fleet.served().get(options.model, [])
        if daemons and not any(options.model in d.multilingual for d in daemons):
            raise HTTPException(
                400,
                f"model {options.model!r} is English-only and cannot transcribe "
                f"language={options.language}; use a multilingual model such as 'base'",
            )

    async def submit(
        self,
        blob: BlobWriter,
        options: JobOptions,
        *,
        filename: str | None,
        content_type: str | None,
        owner: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobRecord:
        """Store the audio, record the job, publish it; 202-worthy only once confirmed.

        ``owner`` is the id of the caller's API key; ``idempotency_key`` is the
        client's ``Idempotency-Key`` header (scoped to the owner).
        """
        job_id = str(uuid.uuid4())
        ref = blob.commit(job_id, content_type, filename)
        job = JobMessage(job_id=job_id, options=options, audio=ref)
        record = JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            owner=owner,
            model=options.model,
            options=options.model_dump(mode="json"),
            filename=filename,
            created_at=job.submitted_at,
            updated_at=job.submitted_at,
        )
        # Recorded before publishing, so that no event can ever find the job missing.
        await self.store.create(record)
        try:
            await self.broker.publish_job(job)
        except (QueueFull, BrokerUnavailable, UnroutableJob):
            await self.store.discard(job_id)
            self.blobs.delete(ref.url)
            raise
        return record

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that is not final yet: daemons skip it, or stop it if it runs."""
        record = await self.job_or_404(job_id)
        if record.status.is_final:
            raise HTTPException(409, f"job is already {record.status.value}")
        # Broker first: if the daemons cannot be told, nothing changes (503).
        await self.broker.publish_cancel(CancelRequest(job_id=job_id))
        error = ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled on request")
        await self.store.apply(
            JobEvent(event=EventType.CANCELLED, job_id=job_id, model=record.model, error=error)
        )
        return await self.job_or_404(job_id)

    async def job_or_404(self, job_id: str, detail: str = "job not found") -> JobRecord:
        """The job, or a 404."""
        record = await self.store.get(job_id)
        if record is None:
            raise HTTPException(404, detail)
        return record


def get_services(conn: HTTPConnection) -> Services:
    """Dependency: the app's services (HTTP requests and websockets alike)."""
    services: Services = conn.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
