"""What the routes share: settings, blob store, status store, broker link, and job submission."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

import structlog
from fastapi import Depends, Header, HTTPException
from pydantic import ValidationError
from starlette.requests import HTTPConnection

from gateway.broker import BrokerLink, BrokerUnavailable, QueueFull, UnroutableJob
from gateway.config import GatewaySettings
from gateway.egress import EgressPolicy, EgressRefused, check_callback_url
from gateway.fleet import Fleet
from gateway.livesessions import LiveSessions
from gateway.metrics import GatewayMetrics
from gateway.requestid import current_request_id
from gateway.store import JobRecord, StatusStore
from gateway.store.base import MAX_IDEMPOTENCY_KEY, advance
from stt_daemon.common.amqp import broker_user
from stt_daemon.common.blobs import BlobStore, BlobWriter
from stt_daemon.common.languages import unsupported_language
from stt_daemon.common.protocol import (
    CancelRequest,
    Diarize,
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobMessage,
    JobOptions,
    JobStatus,
)

log = structlog.get_logger("gateway.services")

#: Seconds a cancellation waits for the recorder to show it in the store, and how
#: often it looks (an idle recorder takes a few milliseconds).
CANCEL_WAIT_S = 3.0
CANCEL_POLL_S = 0.02


class InvalidOptions(HTTPException):
    """422: job options that do not validate, each problem in a sentence.

    ``param`` names the field at fault when one is (OpenAI's errors carry it); a rule
    between fields (``num_speakers needs diarize=speakers``) names none.
    """

    def __init__(self, exc: ValidationError) -> None:
        errors = exc.errors()
        problems = []
        for error in errors:
            # A rule between fields has no location, and pydantic prefixes its sentence.
            message = error["msg"].removeprefix("Value error, ")
            loc = ".".join(map(str, error["loc"]))
            problems.append(f"{loc}: {message}" if loc else message)
        super().__init__(422, f"invalid job options: {'; '.join(problems)}")
        first = errors[0]["loc"] if errors else ()
        self.param = str(first[0]) if first else None


@dataclass
class Services:
    """Long-lived objects owned by the app's lifespan."""

    settings: GatewaySettings
    blobs: BlobStore
    store: StatusStore
    broker: BrokerLink
    fleet: Fleet
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    #: Live-transcription sessions (set by the app's lifespan).
    live: LiveSessions | None = None

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
            raise InvalidOptions(exc) from None
        if options.callback_url:
            try:  # names are checked again, resolved, at each call (gateway/egress.py)
                check_callback_url(
                    options.callback_url, EgressPolicy.parse(self.settings.callback_allow)
                )
            except EgressRefused as exc:
                raise HTTPException(422, f"invalid job options: callback_url: {exc}") from None
        self._check_language_support(options)
        self._check_speaker_support(options)
        return options

    def _check_language_support(self, options: JobOptions) -> None:
        """Refuse early what the live daemons of an English-only model would refuse later."""
        daemons = self.fleet.served().get(options.model, [])
        if not daemons:  # none announced yet: the daemon that takes the job decides
            return
        multilingual = any(options.model in d.multilingual for d in daemons)
        problem = unsupported_language(options.model, options.language, multilingual=multilingual)
        if problem is not None:
            raise HTTPException(400, problem)

    def _check_speaker_support(self, options: JobOptions) -> None:
        """Refuse ``diarize=speakers`` early when every live daemon of the model would refuse it."""
        if options.diarize is not Diarize.SPEAKERS:
            return
        daemons = self.fleet.served().get(options.model, [])
        if daemons and not any(d.speakers for d in daemons):
            raise HTTPException(
                422,
                f"invalid job options: diarize=speakers: no daemon serving model "
                f"{options.model!r} can tell speakers apart (none has its speaker model "
                "loaded); leave diarize out, or use diarize=channels when each speaker "
                "has a channel of their own",
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
        _check_idempotency_key(idempotency_key, blob)
        await self._check_active_quota(owner, blob)
        job_id = str(uuid.uuid4())
        # Bound for the rest of the request: its access line (gateway/requestid.py) and
        # every later line name the job, whichever route submitted it.
        structlog.contextvars.bind_contextvars(job_id=job_id)
        ref = blob.commit(job_id, content_type, filename)
        job = JobMessage(job_id=job_id, options=options, audio=ref, request_id=current_request_id())
        record = self._queued_record(job, owner=owner, filename=filename)
        # Recorded before publishing, so that no event can ever find the job missing.
        await self.store.create(record)
        if idempotency_key is not None:
            repeated = await self._repeated_job(record, idempotency_key, ref.url)
            if repeated is not None:
                # Ours was dropped: the request answers with the earlier job.
                structlog.contextvars.bind_contextvars(job_id=repeated.id)
                return repeated
        await self._publish(job, ref.url, owner=owner, idempotency_key=idempotency_key)
        self.metrics.job_submitted(options.model)
        return record

    def _queued_record(
        self, job: JobMessage, *, owner: str | None, filename: str | None
    ) -> JobRecord:
        """The store's record of a job about to be published."""
        return JobRecord(
            id=job.job_id,
            status=JobStatus.QUEUED,
            owner=owner,
            model=job.options.model,
            options=job.options,
            filename=filename,
            created_at=job.submitted_at,
            updated_at=job.submitted_at,
            # The user our jobs are published as: only events about jobs it published count.
            producer=broker_user(self.settings.amqp_url),
        )

    async def _publish(
        self, job: JobMessage, blob_url: str, *, owner: str | None, idempotency_key: str | None
    ) -> None:
        """Publish the job; on a refusal, undo what submitting it did and re-raise."""
        try:
            await self.broker.publish_job(job)
        except (QueueFull, BrokerUnavailable, UnroutableJob) as exc:
            await self.store.discard(job.job_id)
            self.blobs.delete(blob_url)
            if idempotency_key is not None:  # so that the client's retry can submit
                await self.store.release_idempotency(owner, idempotency_key)
            self.metrics.job_refused(exc)
            # The client never gets this id: the refusal's access line names no job.
            structlog.contextvars.unbind_contextvars("job_id")
            raise

    async def _repeated_job(self, record: JobRecord, key: str, blob_url: str) -> JobRecord | None:
        """The job an earlier request with this key made (ours is dropped), or None: ours counts.

        Our job is recorded before the key is bound, so the job a key names always exists.
        """
        bound = await self.store.claim_idempotency(record.owner, key, record.id)
        if bound is None:
            return None
        await self.store.discard(record.id)
        self.blobs.delete(blob_url)
        existing = await self.store.get(bound)
        if existing is None:
            # The first request's publish failed a moment ago; it is releasing the key.
            raise HTTPException(
                409, "the first request with this Idempotency-Key failed; send the request again"
            )
        return existing

    async def _check_active_quota(self, owner: str | None, blob: BlobWriter) -> None:
        """429 when the caller already has ``STT_KEY_MAX_ACTIVE`` unfinished jobs.

        Not atomic with the submission: concurrent submissions of one key may overshoot.
        """
        limit = self.settings.key_max_active
        if limit and await self.store.count_active(owner) >= limit:
            blob.abort()
            raise HTTPException(
                429,
                f"this API key already has {limit} unfinished jobs (STT_KEY_MAX_ACTIVE); "
                "wait for one to finish",
                headers={"Retry-After": str(self.settings.retry_after)},
            )

    async def cancel(self, job_id: str, *, owner: str | None) -> JobRecord:
        """Cancel a job that is not final yet: daemons skip it, or stop it if it runs.

        The answer shows the job as the store has it once the recorder applied the
        cancellation (or the final status that beat it).
        """
        record = await self.job_or_404(job_id, owner=owner)
        if record.status.is_final:
            raise HTTPException(409, f"job is already {record.status.value}")
        # Broker first: if the daemons cannot be told, nothing changes (503).
        await self.broker.publish_cancel(CancelRequest(job_id=job_id))
        # Then the status, as an event on the results exchange: the recorder is the one
        # writer of the store, and streams and other consumers hear of it as they hear
        # of the daemons' events. No options: a webhook is the daemon's to trigger, when
        # it skips or stops the job. Should this publish fail (503), the daemons still
        # report the job cancelled when they come to it.
        error = ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled on request")
        event = JobEvent(
            event=EventType.CANCELLED,
            job_id=job_id,
            model=record.model,
            error=error,
            producer=record.producer,
        )
        await self.broker.publish_result_event(event)
        return await self._recorded(record, event)

    async def _recorded(self, record: JobRecord, event: JobEvent) -> JobRecord:
        """The job once the store shows it final, waiting up to ``CANCEL_WAIT_S``.

        A poll right after the answer must not see the job still running. Past the
        wait (a recorder far behind, a store in trouble), the answer is the job as the
        event will leave it, and the store catches up when the recorder gets there.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_S
        current: JobRecord | None = record
        while loop.time() < deadline:
            await asyncio.sleep(CANCEL_POLL_S)
            current = await self.store.get(record.id)
            if current is None or current.status.is_final:
                break
        if current is not None and current.status.is_final:
            return current
        log.warning("cancel.not_yet_recorded", job_id=record.id, waited_s=CANCEL_WAIT_S)
        return advance(current or record, event) or current or record

    async def job_or_404(
        self, job_id: str, detail: str = "job not found", *, owner: str | None
    ) -> JobRecord:
        """The job, or a 404 when there is none or it belongs to another API key.

        ``owner`` is the caller's (None when auth is off): another key's job answers exactly
        like an unknown id, so ids cannot be probed.
        """
        record = await self.store.get(job_id)
        if record is None or record.owner != owner:
            raise HTTPException(404, detail)
        return record


def _check_idempotency_key(key: str | None, blob: BlobWriter) -> None:
    """400 for an ``Idempotency-Key`` that is empty or too long."""
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        blob.abort()
        raise HTTPException(
            400, f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} characters long"
        )


def get_services(conn: HTTPConnection) -> Services:
    """The app's services (HTTP requests and websockets alike)."""
    services: Services = conn.app.state.services
    return services


async def services_dependency(conn: HTTPConnection) -> Services:
    """Dependency: ``get_services``, as a coroutine so that FastAPI runs it on the event
    loop instead of sending a plain ``def`` to a worker thread on every request."""
    return get_services(conn)


ServicesDep = Annotated[Services, Depends(services_dependency)]
#: The ``Idempotency-Key`` request header: repeats of a submission with it make one job.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Repeats with the same key (per API key) answer the first request's job.",
    ),
]
