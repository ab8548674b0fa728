"""``reverb serve``: build the service, then run it under uvicorn (the only uvicorn user besides the plugin)."""

from __future__ import annotations

import asyncio
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
    import uvicorn

    from ..api.app import create_app
    from ..service import build

    settings = settings_from(args)
    if not settings.api_keys and not _ledger_has_keys(settings):
        key = "rk-" + secrets.token_urlsafe(24)
        settings = settings.with_(api_keys=(key,))
        print(f"reverb: no API key configured; this run accepts: {key}\n"
              f"reverb: (choose your own with --api-key or REVERB_API_KEY)", flush=True)
    # Built before uvicorn starts, so a bad catalogue, model file or template is one clear error line, not a
    # traceback from inside the ASGI lifespan.
    service = build(settings)
    app = create_app(settings, service=service)
    # limit_concurrency: past that many open connections uvicorn answers 503 (slowloris headers cannot exhaust
    # the process); h11_max_incomplete_event_size caps header bytes.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on", limit_concurrency=settings.max_connections,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=32 * 1024)

    class Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful drain on SIGTERM/SIGINT the process exits 0 instead of
        re-raising the signal: a drained server has done nothing wrong, and CI scripts read the exit code."""

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return asyncio.run(_serve(Server(config), settings))


async def _serve(server, settings: Settings) -> int:
    async def announce():
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        sock = server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        print(f"reverb: serving {', '.join(server.config.app.state.model_names)} at {url}", flush=True)
        if settings.ready_file:
            tmp = Path(str(settings.ready_file) + ".tmp")
            tmp.write_text(url + "\n")
            os.replace(tmp, settings.ready_file)

    task = asyncio.create_task(announce())
    await server.serve()
    task.cancel()
    if settings.ready_file:
        settings.ready_file.unlink(missing_ok=True)
    return 0 if server.started else 1


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
