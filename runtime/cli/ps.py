"""``reverb ps``: what a running server has loaded (``GET /api/ps``, an operator's route)."""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlsplit

from ..errors import ConfigError, RemoteError


def add_parsers(sub, common) -> None:
    p = sub.add_parser("ps", help="the models a running server has loaded: memory, slots, requests, idle time")
    p.add_argument("--url", default=os.environ.get("REVERB_URL", "http://127.0.0.1:8000"),
                   help="the server (default: $REVERB_URL, else http://127.0.0.1:8000)")
    p.add_argument("--api-key", dest="ps_key", help="an operator key of that server (default: $REVERB_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the server's JSON as it is")
    p.set_defaults(run=run)


def fetch(url: str, key: str) -> dict:
    """GET /api/ps. Raises ConfigError for a bad URL, RemoteError for anything the server does not answer well."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url must look like http://host:port, not {url!r}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = cls(parts.hostname, parts.port, timeout=30)
        conn.request("GET", parts.path.rstrip("/") + "/api/ps", headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise RemoteError(f"cannot reach {url}: {e} (is `reverb serve` running there? see --url)") from None
    try:
        body = json.loads(raw)
    except ValueError:
        raise RemoteError(f"{url} answered HTTP {resp.status} with something that is not JSON") from None
    if resp.status != 200:
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
        raise RemoteError(f"the server said {resp.status}: {message}")
    return body


def run(args) -> int:
    body = fetch(args.url, args.ps_key or os.environ.get("REVERB_API_KEY", ""))
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    rows = body.get("data", [])
    if not rows:
        print("no model loaded" + (" (models load on their first request)" if body.get("on_demand") else ""))
        return 0
    print(f"{'MODEL':<32} {'MEMORY':>9} {'CTX':>6} {'SLOTS':>5} {'RUNNING':>7} {'WAITING':>7} {'IDLE':>8}  UNLOADS")
    for m in rows:
        if m.get("loading"):
            print(f"{m['model'][:32]:<32} loading...")
            continue
        memory = f"{m['memory_bytes'] / 2**20:.0f} MiB" if m.get("memory_bytes") else m.get("provider", "-")
        until = m.get("unloads_in_seconds")
        unloads = "never" if until is None and not m.get("running") else ("-" if until is None else f"in {until:g} s")
        print(f"{m['model'][:32]:<32} {memory:>9} {m['ctx']:>6} {m['slots']:>5} {m['running']:>7} {m['waiting']:>7} "
              f"{m['idle_seconds']:>7.0f}s  {unloads}")
    return 0
