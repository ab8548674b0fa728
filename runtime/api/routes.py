"""The dialect table: every path, its handler, the dialect it speaks (error format) and its ledger endpoint name.

Middleware, error handlers, the access log and the ledger all ask this table, so a path is named the same way
whether its request was served or refused. Paths not in the table are named ``unknown`` (their raw text is never
stored) and speak the OpenAI dialect, except under ``/api/endpoint``. A path may end in one ``{parameter}``
segment (``/v1/models/{model}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import completions, embeddings, gateway, openai, ops, ui

OPENAI, GATEWAY = "openai", "gateway"


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]
    endpoint: str                 # the ledger's and the metrics' name for it
    dialect: str
    handler: Callable
    public: bool = False          # answered without a key


ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", ("POST",), "chat.completions", OPENAI, openai.chat_completions),
    Route("/api/v1/chat/completions", ("POST",), "chat.completions", OPENAI, openai.chat_completions),
    Route("/v1/completions", ("POST",), "completions", OPENAI, completions.completions),
    Route("/api/v1/completions", ("POST",), "completions", OPENAI, completions.completions),
    Route("/v1/embeddings", ("POST",), "embeddings", OPENAI, embeddings.embeddings),
    Route("/api/v1/embeddings", ("POST",), "embeddings", OPENAI, embeddings.embeddings),
    Route("/v1/models", ("GET",), "models", OPENAI, openai.list_models),
    Route("/api/v1/models", ("GET",), "models", OPENAI, openai.list_models),
    Route("/v1/models/{model}", ("GET",), "models", OPENAI, openai.get_model),
    Route("/api/v1/models/{model}", ("GET",), "models", OPENAI, openai.get_model),
    Route("/api/endpoint", ("POST",), "gateway", GATEWAY, gateway.endpoint),
    Route("/health", ("GET",), "health", OPENAI, ops.health, public=True),
    Route("/metrics", ("GET",), "metrics", OPENAI, ops.metrics),
    Route("/openapi.json", ("GET",), "openapi", OPENAI, ops.openapi),
    # the web page (api/ui.py): its files are public, its data comes from the routes above with the user's key;
    # not served with --no-ui
    Route("/", ("GET",), "ui", OPENAI, ui.root, public=True),
    Route("/ui", ("GET",), "ui", OPENAI, ui.index, public=True),
    Route("/ui/{file}", ("GET",), "ui", OPENAI, ui.asset, public=True),
)
_BY_PATH = {r.path: r for r in ROUTES if "{" not in r.path}
_BY_PREFIX = {r.path[:r.path.index("{")]: r for r in ROUTES if "{" in r.path}  # "/v1/models/" -> its route
UNKNOWN = "unknown"


def lookup(path: str) -> Route | None:
    route = _BY_PATH.get(path) or _BY_PATH.get(path.rstrip("/"))
    if route is None:
        head, _, last = path.rpartition("/")
        if last:
            route = _BY_PREFIX.get(head + "/")
    return route


def dialect_of(path: str) -> str:
    route = lookup(path)
    if route is not None:
        return route.dialect
    return GATEWAY if path.startswith("/api/endpoint") else OPENAI


def endpoint_of(path: str) -> str:
    route = lookup(path)
    return route.endpoint if route is not None else UNKNOWN
