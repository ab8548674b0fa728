"""The web page's own reads (``/ui/api/...``), with a key like every other data route:

- ``GET /ui/api/requests/{request_id}`` (any key, its own requests only): the charge of one request. A streamed
  answer's headers leave before its ledger row exists, so the page asks for its price here afterwards;
  ``{"pending": true}`` until the row is written.
- ``GET /ui/api/usage?since=YYYY-MM-DD&until=YYYY-MM-DD`` (admin keys): the rows of
  ``reverb usage --group-by day,key,model,team`` for those days (``until`` included), money as decimal text.
- ``GET /ui/api/last-use`` (admin keys): when each key last made a request.
- ``GET /ui/api/refusals?hours=N`` (admin keys): refusals by code in the last N hours (1 to 744).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest
from ..ledger import lookups
from ..money import format_money
from .admin import admin_of
from .ui import enabled

USAGE_GROUPS = ["day", "key", "model", "team"]
MAX_DAYS = 366


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")   # the ledger's own time format


def _day(request: Request, name: str) -> date:
    text = request.query_params.get(name, "")
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date, YYYY-MM-DD", param=name) from None


async def request_price(request: Request) -> JSONResponse:
    enabled(request)
    account = request.state.ctx.account
    request_id = request.path_params["request_id"]
    if len(request_id) > 64:
        raise InvalidRequest("'request_id' is too long", param="request_id")
    service = request.state.service
    row = await service.db(lookups.request_of, service.ledger, request_id, account.key_id, account.name)
    if row is None:
        return JSONResponse({"request_id": request_id[:64], "pending": True, "price": None})
    return JSONResponse({**row, "pending": False, "price": format_money(row["price"]), "price_micro": row["price"]})


async def usage(request: Request) -> JSONResponse:
    enabled(request)
    admin_of(request)
    since, until = _day(request, "since"), _day(request, "until")
    if until < since:
        raise InvalidRequest("'until' must not be before 'since'", param="until")
    if (until - since).days >= MAX_DAYS:
        raise InvalidRequest(f"a range of at most {MAX_DAYS} days", param="until")
    start = datetime(since.year, since.month, since.day, tzinfo=timezone.utc)
    end = datetime(until.year, until.month, until.day, tzinfo=timezone.utc) + timedelta(days=1)
    service = request.state.service
    rows = await service.db(lambda: service.ledger.usage_by(USAGE_GROUPS, _iso(start), _iso(end)))
    data = [{**r, "price": format_money(r["price"]), "price_micro": r["price"]} for r in rows]
    return JSONResponse({"object": "list", "since": since.isoformat(), "until": until.isoformat(),
                         "group_by": USAGE_GROUPS, "data": data})


async def last_use(request: Request) -> JSONResponse:
    enabled(request)
    admin_of(request)
    service = request.state.service
    return JSONResponse({"object": "list", "data": await service.db(lookups.last_use, service.ledger)})


async def refusals(request: Request) -> JSONResponse:
    enabled(request)
    admin_of(request)
    text = request.query_params.get("hours", "24")
    if not text.isdigit() or not 1 <= int(text) <= 744:
        raise InvalidRequest("'hours' must be a whole number from 1 to 744", param="hours")
    since = _iso(datetime.now(timezone.utc) - timedelta(hours=int(text)))
    service = request.state.service
    return JSONResponse({"object": "list", "since": since,
                         "data": await service.db(lookups.refusals_by_code, service.ledger, since)})
