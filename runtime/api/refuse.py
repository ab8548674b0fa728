"""One way to refuse a request, wherever it is refused (Host guard, auth, a handler, 404, 405): the ledger row,
the access log's error code, and the error body in the path's dialect."""

from __future__ import annotations

from starlette.responses import Response

from ..errors import RateLimited, ReverbError
from .errors import error_response


async def refuse(scope, err: BaseException) -> Response:
    """The response for ``err``. Logs the refusal in the ledger unless a generation already owns its row."""
    state = scope["state"]
    ctx = state["ctx"]
    code = err.code if isinstance(err, ReverbError) else "internal_error"
    state["error_code"] = code
    if isinstance(err, RateLimited):
        state["ratelimit"] = err.limits
    service = state.get("service")
    if service is not None and state.get("generation") is None:
        await service.reject(ctx, err if isinstance(err, ReverbError) else ReverbError("internal error"))
    return error_response(err, ctx.dialect, ctx.request_id)
