"""``GET /metrics``: the gateway's Prometheus metrics (text exposition format)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.auth import REQUIRE_KEY
from gateway.services import ServicesDep

# Behind the API key like every endpoint but the probes: it tells traffic and models.
router = APIRouter(tags=["metrics"], dependencies=[REQUIRE_KEY])


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics; queue depths are read from the broker now (2 s at most)."""
    await services.metrics.refresh_queue_depths(services.accepted_models())
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
