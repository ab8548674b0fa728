"""Prometheus metrics (served at ``GET /metrics``): the one prometheus_client user.

The metrics live in a registry owned by the app (no process globals). Queue depth and active slots are read from
the backends when scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..generation import Hooks
from ..ledger import RequestRecord
from ..money import credits

LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
GAP_BUCKETS = (.001, .0025, .005, .0075, .01, .015, .02, .03, .05, .1, .25, 1)


class Metrics(Hooks):
    """The service's hooks as Prometheus metrics, for the models of ``registry`` and those ``models`` has loaded
    (``loader.Models``, read when scraped). Passed to ``service.build(hooks=Metrics)``."""

    def __init__(self, registry, models):
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
        self.loads = Counter("reverb_model_loads", "Model loads (at start and on demand)", ["model", "outcome"],
                             registry=r)
        self.load_time = Histogram("reverb_model_load_seconds", "Time to load a model", ["model"],
                                   buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=r)
        r.register(_BackendCollector(models))
        self._models = set(registry.specs)

    def model_label(self, model: str | None) -> str:
        """A label bounded by the catalogue: a name a client made up becomes ``unknown``."""
        if model is None or model == "-":
            return "-"
        return model if model in self._models else "unknown"

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def token_gap(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)

    def model_loaded(self, model: str, seconds: float, ok: bool) -> None:
        label = self.model_label(model)
        self.loads.labels(label, "loaded" if ok else "failed").inc()
        if ok:
            self.load_time.labels(label).observe(seconds)

    def settled(self, record: RequestRecord, price: int) -> None:
        model = self.model_label(record.model)
        if record.status != "rejected":
            self.tokens.labels(model, "prompt").inc(record.prompt_tokens)
            self.tokens.labels(model, "completion").inc(record.completion_tokens)
            self.credit.labels(model).inc(credits(price))
        self.outcomes.labels(model, record.status).inc()


class _BackendCollector:
    def __init__(self, models):
        self.models = models   # loader.Models: the backends loaded when scraped

    def describe(self):
        return []

    def collect(self):
        queue = GaugeMetricFamily("reverb_queue_depth", "Requests waiting for a slot", labels=["model"])
        active = GaugeMetricFamily("reverb_active_slots", "Slots running a request", labels=["model"])
        slots = GaugeMetricFamily("reverb_slots", "Slots configured", labels=["model"])
        ctx = GaugeMetricFamily("reverb_context_tokens", "Context tokens per request (prompt + completion)",
                                labels=["model"])
        reused = CounterMetricFamily("reverb_reused_prompt_tokens", "Prompt tokens served from a cached prefix",
                                     labels=["model"])
        cached = GaugeMetricFamily("reverb_prompt_cache_bytes", "Host memory holding cached prompt prefixes",
                                   labels=["model"])
        entries = GaugeMetricFamily("reverb_prompt_cache_entries", "Prompt prefixes cached in host memory",
                                    labels=["model"])
        threads = GaugeMetricFamily("reverb_threads", "llama.cpp threads decoding now (they follow the CPU the "
                                    "process gets unless --threads is given)", labels=["model"])
        drafts = CounterMetricFamily("reverb_draft_tokens", "Draft tokens decoded after a stream's next token and "
                                     "verified by its sampler (source: prediction, forced by a grammar, ngram), and "
                                     "how many were accepted", labels=["model", "source", "result"])
        for name, backend in self.models.backends.items():
            st = backend.stats()
            for source, drafted, accepted in st.drafts:
                drafts.add_metric([name, source, "drafted"], drafted)
                drafts.add_metric([name, source, "accepted"], accepted)
            queue.add_metric([name], st.waiting)
            active.add_metric([name], st.active)
            slots.add_metric([name], st.slots)
            ctx.add_metric([name], backend.info.ctx)
            reused.add_metric([name], st.reused_tokens)
            cached.add_metric([name], st.cached_prompt_bytes)
            entries.add_metric([name], st.cached_prompts)
            if st.threads:
                threads.add_metric([name], st.threads)
        return [queue, active, slots, ctx, reused, cached, entries, threads, drafts]
