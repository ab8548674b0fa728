"""``reverb serve``: build the service, then run it behind the HTTP server (http_server.py)."""

from __future__ import annotations

import errno
import os
import secrets
import socket
from pathlib import Path

from ..errors import ConfigError
from ..settings import Settings
from .flags import add_settings, settings_from

ANY_HOST = ("0.0.0.0", "::", "")


def add_parsers(sub, common) -> None:
    s = sub.add_parser("serve", help="serve models over HTTP", description="Serve models over HTTP: the OpenAI "
                       "dialect under /v1 and the gateway dialect at /api/endpoint.", parents=common)
    s.add_argument("model_refs", nargs="*", metavar="MODEL", help="models to serve: catalogue names, .gguf files or "
                   "hf.co/OWNER/REPO[:QUANT] (pulled if needed); same as --model")
    add_settings(s, "serve")
    s.set_defaults(run=run)


def run(args) -> int:
    from ..api.app import create_app
    from ..api.metrics import Metrics
    from ..service import build
    from .http_server import run as run_http

    named = tuple(args.model_refs) + tuple(args.models or ())
    settings = settings_from(args, models=named or None)
    if settings.exit_with_parent:   # before the model loads: a runner killed during start-up leaves nothing either
        from .parent import exit_with_parent
        exit_with_parent()
    if not settings.api_keys and not _ledger_has_keys(settings):
        key = "rk-" + secrets.token_urlsafe(24)
        settings = settings.with_(api_keys=(key,))
        print(f"reverb: no API key configured; this run accepts: {key}\n"
              f"reverb: (choose your own with --api-key or REVERB_API_KEY)", flush=True)
    check_bind(settings.host, settings.port)   # before a model load that a taken port would waste
    # Built before the server starts, so a bad catalogue, model file or template is one clear error line, not a
    # traceback from inside the ASGI lifespan.
    service = build(settings, hooks=Metrics)
    app = create_app(settings, service=service)

    def announce(url: str) -> None:
        if settings.host in ANY_HOST:   # 0.0.0.0 is where it listens, not an address anyone can open
            port = url.rsplit(":", 1)[1]
            url = f"http://127.0.0.1:{port}"
        print(banner(service, url), flush=True)
        if settings.host in ANY_HOST:
            print(f"reverb: listening on every interface: other machines reach it as http://"
                  f"{socket.gethostname()}:{port} (or this machine's address); give each name they use with "
                  "--allowed-host NAME, or requests naming it are refused", flush=True)
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


def banner(service, url: str) -> str:
    """The start-up line: what is served, how (context, slots, threads), where, and how to stop."""
    s = service.settings
    loaded = [(name, b) for name, b in service.backends.items() if b.info.provider == "llama.cpp"]
    parts = [f"{name} (context {b.info.ctx})" for name, b in loaded]
    parts += [name for name, b in service.backends.items() if b.info.provider != "llama.cpp"]
    what = ", ".join(parts) or "no model yet"
    if s.on_demand:
        others = [n for n in service.models.servable if n not in service.backends]
        what += f"; on demand: {', '.join(others) or 'none'}"
    # the count a loaded model decodes with now (it follows the free cores unless --threads fixes it)
    n = max((b.stats().threads for _, b in loaded), default=0) or s.threads
    threads = f"{n} threads" if n else "threads as the free cores allow"
    engine = f"{s.parallel} slots, {threads}" if loaded or s.on_demand else ""
    return f"reverb: serving {what} at {url}" + (f" [{engine}]" if engine else "") + " - Ctrl-C to stop"


def check_bind(host: str, port: int) -> None:
    """Raises ConfigError with what to do when ``host:port`` cannot be bound (a taken port, an unknown host)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise ConfigError(f"--host {host!r} is not an address of this machine; use 127.0.0.1 (this machine only) "
                          "or 0.0.0.0 (every interface)") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use (another reverb?); stop it, or choose another "
                                  "port with --port (--port 0 picks a free one)") from None
            if e.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
                raise ConfigError(f"--host {host} is not an address of this machine; use 127.0.0.1 (this machine "
                                  "only) or 0.0.0.0 (every interface)") from None
            if e.errno == errno.EACCES:
                raise ConfigError(f"port {port} needs privileges here; choose one above 1023 with --port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


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
