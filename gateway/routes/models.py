"""``GET /v1/models``: the models live daemons serve right now (OpenAI's list shape)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.auth import REQUIRE_KEY
from gateway.services import ServicesDep

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[REQUIRE_KEY])


@router.get("")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    """Models with at least one live daemon, with how many serve each and how busy they are."""
    served = services.fleet.served()
    data = [
        {
            "id": name,
            "object": "model",
            "owned_by": "stt-jobs",
            "daemons": len(daemons),
            "multilingual": any(name in d.multilingual for d in daemons),
            "capacity": sum(d.prefetch for d in daemons),
            "in_flight": sum(d.in_flight for d in daemons),
            "queue": services.settings.names.job_queue(name),
        }
        for name, daemons in sorted(served.items())
    ]
    return {"object": "list", "data": data}
