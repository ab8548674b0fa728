"""Operators' routes: ``/health`` (no key), ``/metrics``, ``/openapi.json`` and ``/api/ps`` (operator keys only)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import PermissionDenied
from .openapi import document


async def health(request: Request) -> JSONResponse:
    """Alive and ready, nothing more: load and cache figures are behind the key, at /metrics (a keyless
    timing or cache figure would let one client learn about another's prompts)."""
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    return Response(request.state.service.hooks.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document(request.state.service.settings))


def _operator(request: Request) -> None:
    """Raises PermissionDenied unless the key is an operator's: a dev key (--api-key) or an admin key."""
    account = request.state.ctx.account
    if account is None or not (account.unlimited or getattr(account, "admin", False)):
        raise PermissionDenied("this route is for the server's operators (an --api-key or admin key)")


async def ps(request: Request) -> JSONResponse:
    """``reverb ps``: the models loaded now (memory, slots, running requests, idle time) and those loading."""
    _operator(request)
    service = request.state.service
    return JSONResponse({"object": "list", "on_demand": service.settings.on_demand,
                         "servable": service.models.servable, "data": service.models.status()})
