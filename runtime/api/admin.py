"""``/v1/me`` (any key), and the admin routes (admin keys only: ``reverb keys create NAME --admin``, or a dev key
from ``--api-key``): keys and teams over HTTP and the admin log (organization usage and costs: orgusage.py).

Every change is written to the ledger's admin log with the admin key that made it (manage.py). Settings use the
ledger's names (``rpm``, ``tpm``, ``max_parallel``, ``models``, ``budget``, ``period``, ``tz``, ``expires``,
``team``, ``admin``); money (``credit``, ``budget``, ``amount``) is in credit, as a number or decimal text.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ConfigError, InvalidRequest, PermissionDenied
from ..models.registry import format_money, parse_money
from ..ledger.manage import KEY_COLUMNS, TEAM_COLUMNS
from ..ledger.records import printable
from .body import read_json

MONEY = ("balance", "held", "budget")


def admin_of(request: Request):
    """The caller's account if it is an admin's (or a dev key's). Raises PermissionDenied."""
    account = request.state.ctx.account
    if account is None or not account.operator:
        raise PermissionDenied("This route needs an admin key (reverb keys create NAME --admin)")
    return account


async def _call(request: Request, fn, *args, **kw):
    """A ledger management call off the event loop; its ConfigError is the client's 400."""
    try:
        return await request.state.service.db(lambda: fn(*args, **kw))
    except ConfigError as e:
        raise InvalidRequest(e.message) from None


def _money(value, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequest(f"'{param}' must be an amount of credit", param=param)
    try:
        return parse_money(value)
    except (ValueError, ArithmeticError):
        raise InvalidRequest(f"'{param}' must be an amount of credit, e.g. 5 or \"0.25\"", param=param) from None


async def _settings(request: Request, known: dict, *extra: str) -> tuple[dict, dict]:
    """(settings, the extra fields) from a JSON body; budget in credit -> micro-units. Raises InvalidRequest
    naming a field that is neither."""
    body = await read_json(request, request.state.service.settings)
    taken = {k: body.pop(k) for k in extra if k in body}
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        field = printable(unknown[0])[:64]
        raise InvalidRequest(f"unknown field '{field}' (known: {', '.join([*extra, *known])})", param=field)
    if "budget" in body:
        body["budget"] = _money(body["budget"], "budget")
    return body, taken


def _out(item: dict) -> dict:
    """Money as decimal credit text, as everywhere in the CLI."""
    out = {k: (format_money(v) if k in MONEY and isinstance(v, int) else v) for k, v in item.items()}
    if isinstance(out.get("usage"), dict) and out["usage"].get("budget"):
        b = out["usage"]["budget"]
        out["usage"] = {**out["usage"], "budget": {**b, **{k: format_money(b[k]) for k in ("amount", "used", "left")}}}
    return out


def _name(body: dict, field: str = "name") -> str:
    name = body.get(field)
    if not isinstance(name, str):
        raise InvalidRequest(f"'{field}' must be a string", param=field)
    return name


async def list_keys(request: Request) -> JSONResponse:
    admin_of(request)
    keys = await _call(request, request.state.service.ledger.list_keys)
    return JSONResponse({"object": "list", "data": [_out(k) for k in keys]})


async def create_key(request: Request) -> JSONResponse:
    by = admin_of(request)
    settings, extra = await _settings(request, KEY_COLUMNS, "name", "credit")
    name = _name(extra)
    credit = _money(extra.get("credit", 0), "credit") or 0
    ledger = request.state.service.ledger
    raw = await _call(request, ledger.create_key, name, credit, by=by, **settings)
    shown = await _call(request, ledger.show_key, name)
    return JSONResponse({**_out(shown), "key": raw}, status_code=201)


async def key(request: Request) -> JSONResponse:
    """GET: a key with what it uses now; POST / PATCH: change its settings; DELETE: revoke it."""
    by = admin_of(request)
    name, ledger = request.path_params["name"], request.state.service.ledger
    if request.method == "DELETE":
        await _call(request, ledger.revoke, name, by=by)
        return JSONResponse({"name": name, "revoked": True})
    if request.method == "GET":
        return JSONResponse(_out(await _call(request, ledger.show_key, name)))
    settings, _ = await _settings(request, KEY_COLUMNS)
    return JSONResponse(_out(await _call(request, ledger.update_key, name, by=by, **settings)))


async def topup(request: Request) -> JSONResponse:
    """``{"key": NAME, "amount": 5}`` or ``{"team": NAME, "amount": 5}``."""
    by = admin_of(request)
    body = await read_json(request, request.state.service.settings)
    amount = _money(body.get("amount"), "amount")
    if not amount:
        raise InvalidRequest("'amount' must be a positive amount of credit", param="amount")
    ledger = request.state.service.ledger
    if "team" in body:
        balance = await _call(request, ledger.topup_team, _name(body, "team"), amount, by=by)
        return JSONResponse({"team": body["team"], "balance": format_money(balance)})
    balance = await _call(request, ledger.topup, _name(body, "key"), amount, by=by)
    return JSONResponse({"key": body["key"], "balance": format_money(balance)})


async def rotate(request: Request) -> JSONResponse:
    """``{"key": NAME}``: a new secret (shown once), same name, settings, credit and history."""
    by = admin_of(request)
    body = await read_json(request, request.state.service.settings)
    name = _name(body, "key")
    raw = await _call(request, request.state.service.ledger.rotate, name, by=by)
    return JSONResponse({"name": name, "key": raw})


async def list_teams(request: Request) -> JSONResponse:
    admin_of(request)
    teams = await _call(request, request.state.service.ledger.list_teams)
    return JSONResponse({"object": "list", "data": [_out(t) for t in teams]})


async def create_team(request: Request) -> JSONResponse:
    by = admin_of(request)
    settings, extra = await _settings(request, TEAM_COLUMNS, "name", "credit")
    credit = _money(extra.get("credit"), "credit")
    team = await _call(request, request.state.service.ledger.create_team, _name(extra), credit, by=by, **settings)
    return JSONResponse(_out(team), status_code=201)


async def team(request: Request) -> JSONResponse:
    """GET: a team with its keys and what it uses now; POST / PATCH: change its settings."""
    by = admin_of(request)
    name, ledger = request.path_params["name"], request.state.service.ledger
    if request.method == "GET":
        return JSONResponse(_out(await _call(request, ledger.show_team, name)))
    settings, _ = await _settings(request, TEAM_COLUMNS)
    return JSONResponse(_out(await _call(request, ledger.update_team, name, by=by, **settings)))


async def admin_log(request: Request) -> JSONResponse:
    admin_of(request)
    rows = await _call(request, request.state.service.ledger.admin_log, 1000)
    return JSONResponse({"object": "list", "data": rows})


async def me(request: Request) -> JSONResponse:
    """Any key: its credit, budget left and when it resets, limits and what is used of them, allowed models."""
    account = request.state.ctx.account
    service = request.state.service
    models = [n for n in service.backends if account.may_use(n)]
    if account.key_id is None:   # a dev key from the command line: no limits of any kind
        return JSONResponse({"name": account.name, "unlimited": True, "admin": True, "allowed_models": models})
    out = await service.db(service.ledger.me, account.key_id)
    out["credit"] = {k: format_money(v) for k, v in out["credit"].items()}
    for where in (out, out.get("team") or {}):
        budget = (where.get("limits") or {}).get("budget")
        if budget:
            where["limits"]["budget"] = {**budget, **{k: format_money(budget[k]) for k in ("amount", "used", "left")}}
    if out.get("team") and out["team"]["credit"]:
        out["team"]["credit"] = {"balance": format_money(out["team"]["credit"]["balance"])}
    out["allowed_models"] = models
    return JSONResponse({"unlimited": False, **out})
