"""The ledger's usage in the shape of OpenAI's organization APIs, for dashboards that read them (admin keys only):

- ``GET /v1/organization/usage/completions``: ``start_time`` (Unix seconds, required), ``end_time``,
  ``bucket_width`` (``1m``, ``1h``, ``1d``), ``group_by`` (``api_key_id`` = the key's name, ``model``,
  ``project_id`` = the team's name; ``user_id``, ``batch``, ``service_tier`` are accepted and always null),
  ``limit`` (buckets per page), ``page`` (the cursor ``next_page`` gave). Chat, completions and gateway requests
  that ran (refusals are not model requests).
- ``GET /v1/organization/costs``: the same times, ``bucket_width`` ``1d``, ``group_by`` ``project_id`` (team) and
  ``line_item`` (the model); every charged request, embeddings included. ``currency`` is ``usd`` because dashboards
  expect it: the value is the ledger's credit.

Buckets start at ``start_time`` and are ``bucket_width`` long; every bucket in range is listed, empty or not.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest
from ..money import credits
from .admin import admin_of

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}       # (default, most) buckets per page, as OpenAI
COST_LIMITS = {"1d": (7, 180)}
COMPLETIONS = ("chat.completions", "completions", "gateway", "responses")
USAGE_GROUPS = {"api_key_id": "key", "model": "model", "project_id": "team", "user_id": None, "batch": None,
                "service_tier": None}
COST_GROUPS = {"project_id": "team", "line_item": "model"}


def _int(request: Request, name: str, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None:
        if default is None:
            raise InvalidRequest(f"'{name}' is required (Unix seconds)", param=name)
        return default
    if not text.isdigit() or len(text) > 12:
        raise InvalidRequest(f"'{name}' must be a whole number", param=name)
    return int(text)


def _query(request: Request, widths: dict, limits: dict, groups: dict) -> tuple:
    width_name = request.query_params.get("bucket_width", "1d")
    if width_name not in widths or width_name not in limits:
        raise InvalidRequest(f"'bucket_width' must be one of {', '.join(limits)}", param="bucket_width")
    width = widths[width_name]
    start = _int(request, "page", _int(request, "start_time"))
    end = _int(request, "end_time", int(time.time()) + 1)   # default: now, this second's requests included
    if end <= start:
        raise InvalidRequest("'end_time' must be after 'start_time'", param="end_time")
    default, most = limits[width_name]
    limit = _int(request, "limit", default)
    if not 1 <= limit <= most:
        raise InvalidRequest(f"'limit' must be from 1 to {most} for bucket_width {width_name}", param="limit")
    group_by = []
    for value in request.query_params.getlist("group_by") + request.query_params.getlist("group_by[]"):
        for g in value.split(","):
            if g not in groups:
                raise InvalidRequest(f"'group_by' values are {', '.join(groups)}", param="group_by")
            group_by.append(g)
    return width, start, end, limit, group_by


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(prefix: str) -> int:
    """A row's time prefix (day, hour or minute) -> Unix seconds."""
    text = prefix + {10: "T00:00", 13: ":00", 16: ""}[len(prefix)]
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


async def _buckets(request: Request, width: int, start: int, end: int, limit: int, group_by: list, groups: dict,
                   endpoints=None) -> tuple[list, int | None]:
    """[(bucket start, bucket end, {group values: totals})], next page start or None."""
    stop = min(end, start + limit * width)
    grain = "day" if width == 86400 and start % 86400 == 0 else "hour" if width >= 3600 and start % 3600 == 0 \
        else "minute"
    by = [grain] + sorted({groups[g] for g in group_by if groups[g]})
    ledger = request.state.service.ledger
    rows = await request.state.service.db(lambda: ledger.usage_by(by, _iso(start), _iso(stop),
                                                                  endpoints=endpoints))
    out = [(b, b + width, {}) for b in range(start, stop, width)]
    for r in rows:
        i = (_epoch(r[grain]) - start) // width
        if 0 <= i < len(out):
            key = tuple((g, r[groups[g]] if groups[g] else None) for g in group_by)
            total = out[i][2].setdefault(key, {"requests": 0, "served": 0, "prompt": 0, "completion": 0, "price": 0})
            total["requests"] += r["requests"]
            total["served"] += r["requests"] - r["rejected"]
            total["prompt"] += r["prompt_tokens"]
            total["completion"] += r["completion_tokens"]
            total["price"] += r["price"]
    return out, (stop if stop < end else None)


def _page(data: list, next_start: int | None) -> JSONResponse:
    return JSONResponse({"object": "page", "data": data, "has_more": next_start is not None,
                         "next_page": str(next_start) if next_start is not None else None})


def _group_value(name: str, value):
    return None if value == "-" else value


async def usage_completions(request: Request) -> JSONResponse:
    admin_of(request)
    width, start, end, limit, group_by = _query(request, WIDTHS, LIMITS, USAGE_GROUPS)
    buckets, nxt = await _buckets(request, width, start, end, limit, group_by, USAGE_GROUPS, COMPLETIONS)
    data = []
    for b_start, b_end, groups in buckets:
        results = []
        for key, t in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if not t["served"]:
                continue
            result = {"object": "organization.usage.completions.result", "input_tokens": t["prompt"],
                      "output_tokens": t["completion"], "input_cached_tokens": 0, "input_audio_tokens": 0,
                      "output_audio_tokens": 0, "num_model_requests": t["served"], "project_id": None,
                      "user_id": None, "api_key_id": None, "model": None, "batch": None, "service_tier": None}
            result.update({g: _group_value(g, v) for g, v in key})
            results.append(result)
        data.append({"object": "bucket", "start_time": b_start, "end_time": b_end, "results": results})
    return _page(data, nxt)


async def costs(request: Request) -> JSONResponse:
    admin_of(request)
    width, start, end, limit, group_by = _query(request, WIDTHS, COST_LIMITS, COST_GROUPS)
    buckets, nxt = await _buckets(request, width, start, end, limit, group_by, COST_GROUPS)
    data = []
    for b_start, b_end, groups in buckets:
        results = []
        for key, t in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if not t["price"]:
                continue
            result = {"object": "organization.costs.result", "amount": {"value": credits(t["price"]),
                                                                        "currency": "usd"},
                      "line_item": None, "project_id": None}
            result.update({g: _group_value(g, v) for g, v in key})
            results.append(result)
        data.append({"object": "bucket", "start_time": b_start, "end_time": b_end, "results": results})
    return _page(data, nxt)
