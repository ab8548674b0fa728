"""The dialect table: every path, its handler, the dialect it speaks (error format) and its ledger endpoint name.
The generating routes all run handler.handle with their dialect's renderers (openai.CHAT, completions.COMPLETIONS,
gateway.GATEWAY).

Middleware, error handlers, the access log and the ledger all ask this table, so a path is named the same way
whether its request was served or refused. Paths not in the table are named ``unknown`` (their raw text is never
stored) and speak the OpenAI dialect, except under ``/api/endpoint``. A path may end in one ``{parameter}``
segment (``/v1/models/{model}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import admin, completions, embeddings, gateway, messages, openai, ops, orgusage, responses, ui, uidata
from .handler import endpoint

OPENAI, GATEWAY, ANTHROPIC = "openai", "gateway", "anthropic"


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]
    endpoint: str                 # the ledger's and the metrics' name for it
    dialect: str
    handler: Callable
    public: bool = False          # answered without a key
    operator: bool = False        # only for operator keys (Account.operator: admin or dev keys)


ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", ("POST",), "chat.completions", OPENAI, endpoint(openai.CHAT)),
    Route("/api/v1/chat/completions", ("POST",), "chat.completions", OPENAI, endpoint(openai.CHAT)),
    Route("/v1/completions", ("POST",), "completions", OPENAI, endpoint(completions.COMPLETIONS)),
    Route("/api/v1/completions", ("POST",), "completions", OPENAI, endpoint(completions.COMPLETIONS)),
    Route("/v1/embeddings", ("POST",), "embeddings", OPENAI, embeddings.embeddings),
    Route("/api/v1/embeddings", ("POST",), "embeddings", OPENAI, embeddings.embeddings),
    # the models: OpenAI's shape, or Anthropic's for a client that sends anthropic-version (api/messages.py)
    Route("/v1/models", ("GET",), "models", OPENAI, messages.list_models),
    Route("/api/v1/models", ("GET",), "models", OPENAI, messages.list_models),
    Route("/v1/models/{model}", ("GET",), "models", OPENAI, messages.get_model),
    Route("/api/v1/models/{model}", ("GET",), "models", OPENAI, messages.get_model),
    # Anthropic's Messages API (docs/anthropic.md): its own error format
    Route("/v1/messages", ("POST",), "messages", ANTHROPIC, endpoint(messages.MESSAGES)),
    Route("/v1/messages/count_tokens", ("POST",), "messages.count_tokens", ANTHROPIC, messages.count_tokens),
    Route("/api/endpoint", ("POST",), "gateway", GATEWAY, endpoint(gateway.GATEWAY)),
    # issue 22: OpenAI's Responses API (api/responses.py, docs/responses.md)
    Route("/v1/responses", ("POST",), "responses", OPENAI, endpoint(responses.RESPONSES)),
    Route("/api/v1/responses", ("POST",), "responses", OPENAI, endpoint(responses.RESPONSES)),
    Route("/v1/responses/{response_id}", ("GET", "DELETE"), "responses", OPENAI, responses.stored_response),
    Route("/api/v1/responses/{response_id}", ("GET", "DELETE"), "responses", OPENAI, responses.stored_response),
    Route("/health", ("GET",), "health", OPENAI, ops.health, public=True),
    Route("/metrics", ("GET",), "metrics", OPENAI, ops.metrics, operator=True),
    Route("/openapi.json", ("GET",), "openapi", OPENAI, ops.openapi),
    # issue 25: a key's own standing; admin-only management and OpenAI-shaped organization usage (api/admin.py)
    Route("/v1/me", ("GET",), "me", OPENAI, admin.me),
    Route("/v1/admin/keys", ("GET",), "admin", OPENAI, admin.list_keys),
    Route("/v1/admin/keys", ("POST",), "admin", OPENAI, admin.create_key),
    Route("/v1/admin/keys/{name}", ("GET", "POST", "PATCH", "DELETE"), "admin", OPENAI, admin.key),
    Route("/v1/admin/teams", ("GET",), "admin", OPENAI, admin.list_teams),
    Route("/v1/admin/teams", ("POST",), "admin", OPENAI, admin.create_team),
    Route("/v1/admin/teams/{name}", ("GET", "POST", "PATCH"), "admin", OPENAI, admin.team),
    Route("/v1/admin/topup", ("POST",), "admin", OPENAI, admin.topup),
    Route("/v1/admin/rotate", ("POST",), "admin", OPENAI, admin.rotate),
    Route("/v1/admin/log", ("GET",), "admin", OPENAI, admin.admin_log),
    Route("/v1/organization/usage/completions", ("GET",), "organization", OPENAI, orgusage.usage_completions),
    Route("/v1/organization/costs", ("GET",), "organization", OPENAI, orgusage.costs),
    Route("/api/ps", ("GET",), "ps", OPENAI, ops.ps, operator=True),
    # the web page (api/ui.py): its files are public; its data comes from the routes above and its own reads
    # (api/uidata.py), with the user's key. All answer 404 with --no-ui
    Route("/", ("GET",), "ui", OPENAI, ui.root, public=True),
    Route("/ui", ("GET",), "ui", OPENAI, ui.index, public=True),
    *(Route(f"/ui/{name}", ("GET",), "ui", OPENAI, ui.asset, public=True) for name in ui.files()),
    Route("/ui/api/requests/{request_id}", ("GET",), "ui.data", OPENAI, uidata.request_price),
    Route("/ui/api/usage", ("GET",), "ui.data", OPENAI, uidata.usage),
    Route("/ui/api/last-use", ("GET",), "ui.data", OPENAI, uidata.last_use),
    Route("/ui/api/refusals", ("GET",), "ui.data", OPENAI, uidata.refusals),
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
    if path.startswith("/v1/messages"):
        return ANTHROPIC
    return GATEWAY if path.startswith("/api/endpoint") else OPENAI


def endpoint_of(path: str) -> str:
    route = lookup(path)
    return route.endpoint if route is not None else UNKNOWN
