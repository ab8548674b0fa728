"""Operators' routes: ``/health`` (no key), ``/metrics``, ``/openapi.json`` and ``/api/ps`` (operator keys only)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .openapi import document


async def health(request: Request) -> JSONResponse:
    """Alive and ready, nothing more: load and cache figures are behind the key, at /metrics (a keyless
    timing or cache figure would let one client learn about another's prompts)."""
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    return Response(request.state.service.hooks.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document(request.state.service.settings))


async def ps(request: Request) -> JSONResponse:
    """``reverb ps``: the models loaded now (memory, slots, running requests, idle time) and those loading; an
    operator route (api/routes.py)."""
    service = request.state.service
    return JSONResponse({"object": "list", "on_demand": service.settings.on_demand,
                         "servable": service.models.servable, "data": service.models.status()})
