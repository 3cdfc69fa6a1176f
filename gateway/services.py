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
from gateway.store import JobRecord, StatusStore
from stt_daemon.blobs import BlobStore, BlobWriter
from stt_daemon.protocol import JobMessage, JobOptions, JobStatus


@dataclass
class Services:
    """Long-lived objects owned by the app's lifespan."""

    settings: GatewaySettings
    blobs: BlobStore
    store: StatusStore
    broker: BrokerLink

    def job_options(self, fields: dict[str, Any]) -> JobOptions:
        """Validate the job options of a request (400/422 with a clear message)."""
        model = fields.get("model") or self.settings.model_names[0]
        if model not in self.settings.model_names:
            served = ", ".join(self.settings.model_names)
            raise HTTPException(400, f"unknown model {model!r}; models served here: {served}")
        raw = {k: v for k, v in fields.items() if k in JobOptions.model_fields and v != ""}
        raw["model"] = model
        try:
            return JobOptions.model_validate(raw)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise HTTPException(422, f"invalid job options: {errors}") from None

    async def submit(
        self,
        blob: BlobWriter,
        options: JobOptions,
        *,
        filename: str | None,
        content_type: str | None,
    ) -> JobRecord:
        """Store the audio, record the job, publish it; 202-worthy only once confirmed."""
        job_id = str(uuid.uuid4())
        ref = blob.commit(job_id, content_type, filename)
        job = JobMessage(job_id=job_id, options=options, audio=ref)
        record = JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
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
