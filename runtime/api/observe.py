"""Operators' view: Prometheus metrics (``GET /metrics``) and one access-log line per request.

The metrics live in a registry owned by the app (no process globals). Queue depth and active slots are read from
the schedulers when scraped. The access log is pure ASGI middleware: it writes its line when the response ends,
by which time a generation's ledger row exists, so tokens and price are the charged ones. Keys never appear:
only the key's name (or ``env:<digest prefix>`` for command-line keys).
"""

from __future__ import annotations

import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response

from ..ledger import RequestRecord
from ..registry import MICRO
from ..service import Hooks

access = logging.getLogger("reverb.access")
LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
GAP_BUCKETS = (.001, .0025, .005, .0075, .01, .015, .02, .03, .05, .1, .25, 1)


class Metrics(Hooks):
    def __init__(self, service):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("reverb_requests", "HTTP requests", ["route", "status", "model"], registry=r)
        self.tokens = Counter("reverb_tokens", "Tokens processed", ["model", "kind"], registry=r)
        self.credit = Counter("reverb_credit_charged", "Credit charged (credit units)", ["model"], registry=r)
        self.outcomes = Counter("reverb_generations", "Finished generations", ["model", "status"], registry=r)
        self.ttft = Histogram("reverb_time_to_first_token_seconds", "Request start to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("reverb_inter_token_latency_seconds", "Time between streamed tokens", ["model"],
                             buckets=GAP_BUCKETS, registry=r)
        self.latency = Histogram("reverb_request_duration_seconds", "Request duration", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        r.register(_SchedulerCollector(service))

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def token_gap(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)

    def settled(self, record: RequestRecord, price: int) -> None:
        model = record.model or "-"
        if record.status != "rejected":
            self.tokens.labels(model, "prompt").inc(record.prompt_tokens)
            self.tokens.labels(model, "completion").inc(record.completion_tokens)
            self.credit.labels(model).inc(price / MICRO)
        self.outcomes.labels(model, record.status).inc()


class _SchedulerCollector:
    def __init__(self, service):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        queue = GaugeMetricFamily("reverb_queue_depth", "Requests waiting for a slot", labels=["model"])
        active = GaugeMetricFamily("reverb_active_slots", "Slots running a request", labels=["model"])
        slots = GaugeMetricFamily("reverb_slots", "Slots configured", labels=["model"])
        for name, rt in self.service.runtimes.items():
            st = rt.scheduler.stats()
            queue.add_metric([name], st.waiting)
            active.add_metric([name], st.active)
            slots.add_metric([name], st.slots)
        return [queue, active, slots]


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.state.service.hooks
    return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


class AccessLog:
    """One line per request: JSON with ``json=True``, else a readable console line. Also feeds the request metrics."""

    ROUTES = {"/v1/chat/completions", "/api/v1/chat/completions", "/v1/models", "/api/v1/models", "/api/endpoint",
              "/health", "/metrics", "/openapi.json"}

    def __init__(self, app, json_format: bool = False):
        self.app = app
        self.json = json_format

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            self._log(scope, status[0])

    def _log(self, scope, status: int) -> None:
        state = scope.get("state", {})
        service = state.get("service")
        route = scope["path"] if scope["path"] in self.ROUTES else "other"
        started = state.get("started", time.monotonic())
        latency = time.monotonic() - started
        gen = state.get("generation")
        record: RequestRecord | None = getattr(gen, "record", None)
        price = gen.price.result() if gen is not None and gen.price.done() and not gen.price.exception() else 0
        account = state.get("account")
        model = (record.model if record else None) or getattr(gen, "model", None) or state.get("model") or "-"
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "request_id": state.get("request_id"),
            "method": scope["method"], "path": scope["path"], "status": status,
            "key": getattr(account, "name", None), "model": model,
            "prompt_tokens": record.prompt_tokens if record else 0,
            "completion_tokens": record.completion_tokens if record else 0,
            "price": price / MICRO, "outcome": record.status if record else ("ok" if status < 400 else "rejected"),
            "error_code": state.get("error_code"), "latency_ms": round(latency * 1000, 1),
        }
        if service is not None and isinstance(service.hooks, Metrics):
            service.hooks.requests.labels(route, str(status), model).inc()
            service.hooks.latency.labels(route).observe(latency)
        if self.json:
            access.info(json.dumps(line, separators=(",", ":")))
        else:
            tokens = f" {line['prompt_tokens']}+{line['completion_tokens']} tok" if record else ""
            err = f" {line['error_code']}" if line["error_code"] else ""
            access.info(f"{line['method']} {line['path']} {status}{err} key={line['key'] or '-'} model={model}"
                        f"{tokens} price={line['price']:g} {line['latency_ms']:.0f}ms {line['request_id']}")
