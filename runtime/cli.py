"""The ``reverb`` command: serve, models, keys, usage (and the model tools in ``cli_models``).

The only uvicorn user. Each sub-command builds Settings once and passes them down.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .config import Settings
from .errors import ReverbError
from .registry import format_money, parse_money


def _common_parent() -> argparse.ArgumentParser:
    """Options every sub-command accepts, wherever they appear on the line."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--models", dest="models_path", type=Path, help="path of models.toml")
    p.add_argument("--db", type=Path, help="ledger database (default: ~/.local/share/reverb/ledger.sqlite3)")
    return p


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reverb", description="Serve GGUF chat models offline.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = [_common_parent()]

    s = sub.add_parser("serve", help="serve models over HTTP", parents=common)
    s.add_argument("--model", action="append", dest="model_names", help="model name from models.toml (repeatable)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--api-key", action="append", dest="api_keys", help="accept this key (repeatable; "
                   "also REVERB_API_KEY); such keys have unlimited credit")
    s.add_argument("--threads", type=int, help="llama.cpp threads for decoding (default: CPU count)")
    s.add_argument("--threads-batch", type=int, help="llama.cpp threads for prompt prefill")
    s.add_argument("--ctx", type=int, help="context tokens per slot (default: the model's models.toml ctx)")
    s.add_argument("--parallel", type=int, help="slots decoded together (default 4)")
    s.add_argument("--batch", type=int, help="tokens per decode step (default 512)")
    s.add_argument("--ubatch", type=int, help="llama.cpp physical batch (default 32, see README)")
    s.add_argument("--prefill-chunk", type=int, help="prompt tokens per slot per step (default 128)")
    s.add_argument("--flash-attn", choices=["on", "off"], help="flash attention (default on)")
    s.add_argument("--max-queue", type=int, help="requests waiting for a slot before 503 (default 64)")
    s.add_argument("--queue-timeout", type=float, help="seconds a request may wait for a slot (default 60)")
    s.add_argument("--log-bodies", action="store_true", default=None, help="store request bodies in the ledger")
    s.add_argument("--pull", action="store_true", default=None, help="download missing hub models first")
    s.add_argument("--offline", action="store_true", default=None, help="never touch the network")
    s.add_argument("--ready-file", type=Path, help="write the base URL here once the server accepts requests")
    s.add_argument("--metrics-public", action="store_true", default=None, help="serve /metrics without a key")
    s.add_argument("--log-format", choices=["console", "json"], help="access log format")
    s.add_argument("--allowed-host", action="append", dest="allowed_hosts",
                   help="also answer to this Host name (repeatable; '*' disables the check)")
    s.add_argument("--cors-origin", action="append", dest="cors_origins",
                   help="send CORS headers for this origin (repeatable; '*' for any, never with credentials)")
    s.add_argument("--max-body-bytes", type=int, help="largest request body (default 1 MiB)")
    s.add_argument("--max-tokens-cap", type=int, help="largest max_tokens a request may ask for (default 8192)")
    s.add_argument("--stream-write-timeout", type=float, help="seconds a stream may wait on a client that does "
                   "not read before it is aborted (default 30)")
    s.add_argument("--body-timeout", type=float, help="seconds for a request body to arrive (default 30)")
    s.add_argument("--max-connections", type=int, help="open connections before 503 (default 256)")
    s.add_argument("--db-max-mb", type=float, help="cap the ledger's size; past it requests fail closed")

    k = sub.add_parser("keys", help="manage API keys and credit")
    ks = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create", help="create a key; prints it once, as the last line", parents=common)
    kc.add_argument("name")
    kc.add_argument("--credit", default="0", help="starting credit, e.g. 5 or 0.25")
    ks.add_parser("list", help="list keys with balances", parents=common)
    kr = ks.add_parser("revoke", help="revoke a key", parents=common)
    kr.add_argument("name")
    kt = ks.add_parser("topup", help="add credit to a key", parents=common)
    kt.add_argument("name")
    kt.add_argument("amount")

    u = sub.add_parser("usage", help="per-key, per-model totals from the ledger", parents=common)
    u.add_argument("--key", help="only this key name")
    u.add_argument("--since", help="ISO date/time, or a duration such as 1h, 7d")

    sub.add_parser("models", help="list the catalogue", parents=common)

    c = sub.add_parser("chat", help="chat with a model in the terminal", parents=common)
    c.add_argument("--model", help="model name (default: the catalogue's default)")
    c.add_argument("--url", help="talk to a running server instead of loading the model here")
    c.add_argument("--api-key", help="key for --url (default: REVERB_API_KEY)")
    c.add_argument("--max-tokens", type=int, default=512)
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--seed", type=int)
    c.add_argument("--system", help="a system message to start the conversation with")

    from . import cli_models
    cli_models.add_parsers(sub, common)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "chat":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    elif getattr(args, "log_format", None) == "json":
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "serve":
            return serve(args)
        if args.cmd == "keys":
            return keys(args)
        if args.cmd == "usage":
            return usage(args)
        if args.cmd == "chat":
            from . import chat
            return chat.main(args)
        from . import cli_models
        return cli_models.run(args)
    except ReverbError as e:
        print(f"reverb: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _settings(args, **extra) -> Settings:
    fields = {k: getattr(args, k, None) for k in ("models_path", "db")}
    return Settings.build(**fields, **extra)


def serve(args) -> int:
    import uvicorn

    from .api.app import create_app

    flash = None if args.flash_attn is None else args.flash_attn == "on"
    settings = _settings(
        args, models=tuple(args.model_names) if args.model_names else None, host=args.host, port=args.port,
        api_keys=tuple(args.api_keys) if args.api_keys else None, threads=args.threads,
        threads_batch=args.threads_batch, ctx=args.ctx, parallel=args.parallel, batch=args.batch, ubatch=args.ubatch,
        prefill_chunk=args.prefill_chunk, flash_attn=flash, max_queue=args.max_queue,
        queue_timeout=args.queue_timeout, log_bodies=args.log_bodies, pull=args.pull, offline=args.offline,
        ready_file=args.ready_file, metrics_public=args.metrics_public, log_format=args.log_format,
        allowed_hosts=tuple(args.allowed_hosts) if args.allowed_hosts else None,
        cors_origins=tuple(args.cors_origins) if args.cors_origins else None,
        max_body_bytes=args.max_body_bytes, max_tokens_cap=args.max_tokens_cap,
        stream_write_timeout=args.stream_write_timeout, body_timeout=args.body_timeout,
        max_connections=args.max_connections, db_max_mb=args.db_max_mb)
    if not settings.api_keys and not _ledger_has_keys(settings):
        key = "rk-" + secrets.token_urlsafe(24)
        settings = settings.with_(api_keys=(key,))
        print(f"reverb: no API key configured; this run accepts: {key}\n"
              f"reverb: (choose your own with --api-key or REVERB_API_KEY)", flush=True)
    from .service import build
    # Built before uvicorn starts, so a bad catalogue, model file or template is one clear error line, not a
    # traceback from inside the ASGI lifespan.
    service = build(settings)
    app = create_app(settings, service=service)
    # limit_concurrency: past that many open connections uvicorn answers 503 (slowloris headers cannot exhaust
    # the process); h11_max_incomplete_event_size caps header bytes.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on", limit_concurrency=settings.max_connections,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=32 * 1024)
    server = _Server(config)
    return asyncio.run(_run(server, settings))


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful drain on SIGTERM/SIGINT the process exits 0 instead of
        re-raising the signal: a drained server has done nothing wrong, and CI scripts read the exit code."""

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server


def _Server(config):  # noqa: N802 - a factory standing in for the class, which needs uvicorn imported
    return _server_class()(config)


async def _run(server, settings: Settings) -> int:
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
    from .ledger import Ledger
    if not settings.db_path.exists():  # asking must not create a ledger in someone's home directory
        return False
    ledger = Ledger(settings.db_path)
    try:
        return ledger.has_active_keys()
    finally:
        ledger.close()


def _ledger(args):
    from .ledger import Ledger
    return Ledger(_settings(args).db_path)


def keys(args) -> int:
    ledger = _ledger(args)
    try:
        if args.keys_cmd == "create":
            credit = _money(args.credit)
            raw = ledger.create_key(args.name, credit)
            print(f"created key '{args.name}' with credit {format_money(credit)}; it is shown only once:")
            print(raw)
        elif args.keys_cmd == "list":
            print(f"{'name':<24} {'balance':>14} {'held':>12}  {'created':<27} revoked")
            for k in ledger.list_keys():
                print(f"{k['name']:<24} {format_money(k['balance']):>14} {format_money(k['held']):>12}  "
                      f"{k['created_at']:<27} {k['revoked_at'] or '-'}")
        elif args.keys_cmd == "revoke":
            ledger.revoke(args.name)
            print(f"revoked key '{args.name}'")
        elif args.keys_cmd == "topup":
            balance = ledger.topup(args.name, _money(args.amount))
            print(f"key '{args.name}' balance: {format_money(balance)}")
    finally:
        ledger.close()
    return 0


def _money(text: str) -> int:
    from .errors import ConfigError
    try:
        return parse_money(text)
    except ValueError as e:
        raise ConfigError(f"bad amount: {e}") from None


def parse_since(text: str | None) -> str | None:
    """'1h', '7d', '30m' or an ISO date/time -> the ISO UTC form the ledger stores."""
    from .errors import ConfigError
    if text is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        when = datetime.now(timezone.utc) - timedelta(**{units[text[-1]]: int(text[:-1])})
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"--since: not a date or duration: {text!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def usage(args) -> int:
    ledger = _ledger(args)
    try:
        rows = ledger.usage(key=args.key, since=parse_since(args.since))
    finally:
        ledger.close()
    print(f"{'key':<20} {'model':<16} {'requests':>8} {'ok':>6} {'cancel':>6} {'failed':>6} {'reject':>6} "
          f"{'prompt_tok':>10} {'compl_tok':>10} {'price':>12}")
    for r in rows:
        print(f"{r['key']:<20} {r['model']:<16} {r['requests']:>8} {r['completed']:>6} {r['cancelled']:>6} "
              f"{r['failed']:>6} {r['rejected']:>6} {r['prompt_tokens']:>10} {r['completion_tokens']:>10} "
              f"{format_money(r['price']):>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
