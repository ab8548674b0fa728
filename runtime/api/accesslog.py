"""One access-log line per request, as pure ASGI middleware; it also feeds the per-route request metrics.

The line is written when the response ends, by which time a generation's ledger row exists, so tokens and price
are the charged ones. Keys never appear: only the key's name (or ``env:<digest prefix>`` for command-line keys).
Paths are logged by their route table name, never as the raw text a client sent.

A request still running when the drain timeout ends is cancelled by uvicorn at shutdown: it is logged here as
``cancelled`` (error code ``shutdown``), answered 503 in its dialect if nothing was sent yet, and does not reach
uvicorn as an exception (which would log a traceback and answer a bare 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ..errors import RETRY_GOING_AWAY, OverloadedError
from ..money import credits
from .errors import error_response, openai_body
from .metrics import Metrics

access = logging.getLogger("reverb.access")


SETTLE_WAIT = 10.0   # seconds the line waits for the request's ledger row (a stream the client left settles after)


async def _settled(scope) -> None:
    gen = scope.get("state", {}).get("generation")
    settled = getattr(gen, "settled", None)
    if settled is None or settled.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(settled), SETTLE_WAIT)
    except Exception:   # the line is written whatever happened; the row's own path reports a failure
        pass


class AccessLog:
    def __init__(self, app, json_format: bool = False):
        self.app = app
        self.json = json_format

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]
        started = [False]
        events = [False]     # the response is an event stream (it can end with an error event)

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
                events[0] = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                for k, v in message.get("headers", []))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            state = scope.setdefault("state", {})
            state["error_code"], state["outcome"] = "shutdown", "cancelled"
            ctx = state.get("ctx")
            err = OverloadedError("The server is shutting down", retry_after=RETRY_GOING_AWAY)
            try:
                if not started[0]:
                    status[0] = 503
                    await error_response(err, ctx.dialect if ctx else "openai",
                                         ctx.request_id if ctx else None)(scope, receive, send)
                elif events[0]:  # a started stream ends as any stream that fails: one error event, no [DONE]
                    await send({"type": "http.response.body", "more_body": False,
                                "body": b"data: " + json.dumps(openai_body(err)[1]).encode() + b"\n\n"})
            except OSError:
                pass  # the client is gone already
        finally:
            try:
                await _settled(scope)
            finally:
                self._log(scope, status[0])

    def _log(self, scope, status: int) -> None:
        state = scope.get("state", {})
        service = state.get("service")
        ctx = state["ctx"]
        latency = time.monotonic() - ctx.started
        gen = state.get("generation")
        settled = gen.settled if gen is not None else None
        done = settled is not None and settled.done() and settled.exception() is None
        record = settled.result().record if done else None
        price = settled.result().price if done else 0
        model = (record.model if record else None) or getattr(gen, "model", None) or "-"
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "request_id": ctx.request_id,
            "method": scope["method"], "route": ctx.endpoint, "status": status,
            "key": ctx.account.name if ctx.account else None, "model": model,
            "prompt_tokens": record.prompt_tokens if record else 0,
            "completion_tokens": record.completion_tokens if record else 0,
            "price": credits(price), "outcome": state.get("outcome") or (record.status if record else
                                                                          ("ok" if status < 400 else "rejected")),
            "error_code": state.get("error_code"), "latency_ms": round(latency * 1000, 1),
        }
        if service is not None and isinstance(service.hooks, Metrics):
            service.hooks.requests.labels(ctx.endpoint, str(status), service.hooks.model_label(model)).inc()
            service.hooks.latency.labels(ctx.endpoint).observe(latency)
        if self.json:
            access.info(json.dumps(line, separators=(",", ":")))
        else:
            tokens = f" {line['prompt_tokens']}+{line['completion_tokens']} tok" if record else ""
            err = f" {line['error_code']}" if line["error_code"] else ""
            if record and record.status in ("cancelled", "failed") and not err:
                err = f" {record.status}"   # a stream the client left is 200 on the wire, cancelled in the ledger
            access.info(f"{line['method']} {ctx.endpoint} {status}{err} key={line['key'] or '-'} model={model}"
                        f"{tokens} price={line['price']:g} {line['latency_ms']:.0f}ms {ctx.request_id}")
