"""create_app(settings) -> Starlette. The lifespan builds the service (models, scheduler, ledger) and owns it;
nothing lives in module globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..config import Settings
from ..errors import InvalidRequest, MethodNotAllowed, NotFound, ReverbError
from . import gateway, openai
from .auth import BearerAuth, RequestContext
from .guard import Cors, HostGuard
from .errors import error_response
from .observe import AccessLog, Metrics, metrics_endpoint
from .openapi import openapi_endpoint

log = logging.getLogger("reverb.http")


async def health(request: Request) -> JSONResponse:
    service = request.state.service
    models = {}
    for name, rt in service.runtimes.items():
        st = rt.scheduler.stats()
        models[name] = {"slots": st.slots, "active": st.active, "waiting": st.waiting,
                        "ctx_per_slot": rt.ctx, "reused_prompt_tokens": st.reused_tokens}
    return JSONResponse({"status": "ok", "models": models})


async def _reverb_error(request: Request, exc: ReverbError):
    state = request.state
    path = request.url.path
    state.error_code = exc.code
    await state.service.reject(getattr(state, "account", None),
                               endpoint="gateway" if path.rstrip("/") == "/api/endpoint" else path,
                               model=exc.model, request_id=state.request_id, error=exc, started=state.started)
    return error_response(exc, path, state.request_id)


async def _http_error(request: Request, exc: HTTPException):
    if exc.status_code == 404:
        err: ReverbError = NotFound(f"Unknown path {request.url.path}")
    elif exc.status_code == 405:
        err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}")
    else:
        err = InvalidRequest(str(exc.detail or "bad request"))
    return error_response(err, request.url.path, request.state.request_id)


async def _unexpected(request: Request, exc: Exception):
    log.exception("unhandled error in %s", request.url.path)
    return error_response(exc, request.url.path, getattr(request.state, "request_id", None))


def create_app(settings: Settings, service=None, build=None) -> Starlette:
    """The ASGI app. ``service``: an already built Service (tests); else ``build(settings)`` runs at start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        svc = service
        if svc is None:
            from ..service import build as build_service
            svc = await asyncio.to_thread(build or build_service, settings)
        svc.hooks = Metrics(svc)
        try:
            yield {"service": svc}
        finally:
            await asyncio.to_thread(svc.close)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/api/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/api/v1/models", openai.list_models, methods=["GET"]),
        Route("/api/endpoint", gateway.endpoint, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]
    public = {"/metrics"} if settings.metrics_public else set()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestContext), Middleware(AccessLog, json_format=settings.log_format == "json"),
                    Middleware(HostGuard, bind_host=settings.host, extra=settings.allowed_hosts),
                    Middleware(Cors, origins=settings.cors_origins),
                    Middleware(BearerAuth, public_paths=public)],
        exception_handlers={ReverbError: _reverb_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.model_names = list(service.runtimes) if service is not None else list(settings.models)
    return app
