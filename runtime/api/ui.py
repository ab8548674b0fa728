"""The web page's files (``/ui``, ``/ui/{file}``): public, read once from the package, sent with a strict
Content-Security-Policy.

The page is plain ES modules and CSS under ``runtime/ui/static/`` (no build step). Its files hold no data: every
figure it shows comes from the API with the key the user typed, sent as a Bearer header to this origin. Each file
in that directory is a route of its own (routes.py), so no other path is ever read from disk. With ``--no-ui``
these routes, and the page's data routes (uidata.py), answer 404.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import NotFound

STATIC = Path(__file__).resolve().parent.parent / "ui" / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Everything from this origin only; no inline script or style, no eval, no plugins, no framing, no <base>, no form
# posts anywhere. Trusted Types with no policy make any assignment of a string to innerHTML (or a script URL) throw
# in browsers that support them, so model text can only ever become DOM text.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
       "require-trusted-types-for 'script'; trusted-types 'none'")
HEADERS = {"content-security-policy": CSP, "x-frame-options": "DENY", "x-content-type-options": "nosniff",
           "referrer-policy": "no-referrer", "cross-origin-opener-policy": "same-origin",
           "cross-origin-resource-policy": "same-origin", "cache-control": "no-cache"}


@lru_cache(maxsize=1)
def files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, content type, ETag) for every servable file, read once."""
    out: dict[str, tuple[bytes, str, str]] = {}
    if not STATIC.is_dir():   # an install without the page's files: no page, and the API serves on
        return out
    for path in sorted(STATIC.iterdir()):
        kind = TYPES.get(path.suffix)
        if kind is not None and path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            out[path.name] = (data, kind, '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
    return out


def enabled(request: Request) -> None:
    """Raises NotFound when the page is off (--no-ui): its routes answer as if they did not exist."""
    if not request.state.service.settings.ui:
        raise NotFound("Unknown path")


def _send(request: Request, name: str) -> Response:
    enabled(request)
    found = files().get(name)
    if found is None:
        raise NotFound("Unknown path")
    data, kind, etag = found
    headers = {**HEADERS, "etag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=kind, headers=headers)


async def index(request: Request) -> Response:
    return _send(request, "index.html")


async def asset(request: Request) -> Response:
    return _send(request, request.url.path.rsplit("/", 1)[-1])


async def root(request: Request) -> Response:
    """``/``: the page lives at /ui."""
    enabled(request)
    return RedirectResponse("/ui", status_code=307, headers={"cache-control": "no-cache"})
