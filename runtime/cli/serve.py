"""``reverb serve``: build the service, then run it behind the HTTP server (http_server.py)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..settings import Settings
from .flags import add_settings, settings_from


def add_parsers(sub, common) -> None:
    s = sub.add_parser("serve", help="serve models over HTTP", description="Serve models over HTTP: the OpenAI "
                       "dialect under /v1 and the gateway dialect at /api/endpoint.", parents=common)
    add_settings(s, "serve")
    s.set_defaults(run=run)


def run(args) -> int:
    from ..api.app import create_app
    from ..service import build
    from .http_server import run as run_http

    settings = settings_from(args)
    if not settings.api_keys and not _ledger_has_keys(settings):
        key = "rk-" + secrets.token_urlsafe(24)
        settings = settings.with_(api_keys=(key,))
        print(f"reverb: no API key configured; this run accepts: {key}\n"
              f"reverb: (choose your own with --api-key or REVERB_API_KEY)", flush=True)
    # Built before the server starts, so a bad catalogue, model file or template is one clear error line, not a
    # traceback from inside the ASGI lifespan.
    service = build(settings)
    app = create_app(settings, service=service)

    def announce(url: str) -> None:
        print(f"reverb: serving {', '.join(app.state.model_names)} at {url}", flush=True)
        if settings.ui:
            print(f"reverb: web page at {url}/ui", flush=True)
        if settings.ready_file:
            tmp = Path(str(settings.ready_file) + ".tmp")
            tmp.write_text(url + "\n")
            os.replace(tmp, settings.ready_file)

    try:
        return run_http(app, settings, announce)
    finally:
        if settings.ready_file:
            settings.ready_file.unlink(missing_ok=True)


def _ledger_has_keys(settings: Settings) -> bool:
    from ..errors import ConfigError
    from ..ledger import Ledger
    try:  # create=False: asking must not create a ledger in someone's home directory
        ledger = Ledger(settings.db_target, create=False, busy_timeout=settings.db_busy_timeout)
    except ConfigError:
        if "://" in settings.db_target:
            raise  # an unreachable database server is an error here too; a missing file is not (serve makes it)
        return False
    try:
        return ledger.has_active_keys()
    finally:
        ledger.close()
