"""Operators' routes: ``/health`` (no key), ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .openapi import document


async def health(request: Request) -> JSONResponse:
    service = request.state.service
    models = {}
    for name, backend in service.backends.items():
        st = backend.stats()
        models[name] = {"slots": st.slots, "active": st.active, "waiting": st.waiting,
                        "ctx_per_slot": backend.info.ctx, "reused_prompt_tokens": st.reused_tokens}
    return JSONResponse({"status": "ok", "models": models})


async def metrics(request: Request) -> Response:
    return Response(request.state.service.hooks.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document(request.state.service.settings))
