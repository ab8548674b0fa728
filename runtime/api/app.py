"""create_app(settings) -> Starlette. The lifespan owns the service (models, ledger); nothing lives in module
globals. Routes come from the dialect table (routes.py); every refusal goes through refuse.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from ..errors import InvalidRequest, MethodNotAllowed, NotFound, ReverbError
from ..settings import Settings
from .accesslog import AccessLog
from .auth import BearerAuth, Context
from .guard import Cors, HostGuard
from .metrics import Metrics
from .overload import Overload
from .refuse import refuse
from .routes import ROUTES

log = logging.getLogger("reverb.http")


async def _reverb_error(request: Request, exc: ReverbError):
    return await refuse(request.scope, exc)


async def _http_error(request: Request, exc: HTTPException):
    if exc.status_code == 404:
        err: ReverbError = NotFound("Unknown path")
    elif exc.status_code == 405:
        err = MethodNotAllowed(f"Method {request.method} is not allowed here")
    else:
        err = InvalidRequest(str(exc.detail or "bad request"))
    return await refuse(request.scope, err)


async def _unexpected(request: Request, exc: Exception):
    log.exception("unhandled error in %s", request.scope["state"]["ctx"].endpoint)
    return await refuse(request.scope, exc)


def create_app(settings: Settings, service=None, build=None) -> Starlette:
    """The ASGI app. ``service``: an already built Service; else ``build(settings)`` runs at start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        svc = service
        if svc is None:
            from ..service import build as build_service
            svc = await asyncio.to_thread(build or build_service, settings)
        svc.hooks = Metrics(svc)
        lease = asyncio.create_task(svc.keep_lease())   # heartbeat, sweep of expired servers, settlement retries
        try:
            yield {"service": svc}
        finally:
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
            await asyncio.to_thread(svc.close)

    public = {"/metrics"} if settings.metrics_public else set()
    app = Starlette(
        routes=[Route(r.path, r.handler, methods=list(r.methods)) for r in ROUTES],
        middleware=[Middleware(Context), Middleware(AccessLog, json_format=settings.log_format == "json"),
                    Middleware(Overload, limit=settings.max_connections),
                    Middleware(HostGuard, bind_host=settings.host, extra=settings.allowed_hosts),
                    Middleware(Cors, origins=settings.cors_origins),
                    Middleware(BearerAuth, public_paths=public)],
        exception_handlers={ReverbError: _reverb_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.model_names = list(service.backends) if service is not None else list(settings.models)
    return app
