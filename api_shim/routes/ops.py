"""`/healthz`, `/readyz` and `/metrics`: for orchestrators and Prometheus, with no auth or rate limit."""

# No `from __future__ import annotations`: FastAPI resolves the route signatures at runtime.

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from api_shim.models import HealthBody, NotReadyBody, ReadyBody
from api_shim.readiness import Readiness


def ops_router(readiness: Readiness) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz", response_model=HealthBody, summary="The process is up")
    async def healthz() -> HealthBody:
        return HealthBody()

    @router.get(
        "/readyz",
        response_model=ReadyBody,
        responses={503: {"model": NotReadyBody, "description": "A readiness check failed."}},
        summary="Redis answers and every required queue has a live worker",
    )
    async def readyz() -> Any:
        failing = await readiness.failing()
        if failing:
            return JSONResponse(
                {"detail": f"not ready: {', '.join(failing)}", "failing": failing}, status_code=503
            )
        return ReadyBody(checks=[name for name, _ in readiness.checks])

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition."}},
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        try:
            from ragfleet.metrics import render_latest  # type: ignore[import-not-found,unused-ignore]
        except ImportError:  # the metrics module is optional; the default registry still works
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
        content, content_type = render_latest()
        return Response(content, media_type=content_type)

    return router
