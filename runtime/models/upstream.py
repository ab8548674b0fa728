"""The checks of a ``source = "openai"`` catalogue entry: an OpenAI-compatible upstream that reverb fronts.

Pure: reads nothing but the table. The upstream key is never in the file: ``api_key_env`` names the environment
variable that holds it, read when the server starts (``backends/upstream``).
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

from ..errors import ConfigError

ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Headers reverb sets itself (the key, framing) or that belong to one hop: never taken from the file.
RESERVED_HEADERS = {"authorization", "proxy-authorization", "host", "content-length", "content-type",
                    "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "accept"}
MAX_FALLBACKS = 8


def upstream_fields(where: str, name: str, table: dict) -> dict:
    """The ModelSpec fields of an upstream entry. Raises ConfigError naming the file, the model and the field."""
    def fail(field: str, why: str):
        return ConfigError(f"{where}: field '{field}' {why}", model=name, param=field)

    base_url, host = _base_url(table["base_url"], fail)
    model = table["model"]
    if not 0 < len(model) <= 256 or not model.isprintable():
        raise fail("model", "must be the upstream's model name (1 to 256 printable characters)")
    key_env = table.get("api_key_env")
    if key_env is not None and not ENV_RE.match(key_env):
        raise fail("api_key_env", "must be the name of an environment variable (letters, digits, '_')")
    timeout = table.get("timeout", 120.0)
    if not (math.isfinite(timeout) and 0 < timeout <= 3600):
        raise fail("timeout", "must be a number of seconds above 0 and at most 3600")
    deadline = table.get("deadline", 600.0)
    if not (math.isfinite(deadline) and 0 < deadline <= 86400):
        raise fail("deadline", "must be a number of seconds above 0 and at most 86400")
    fallbacks = table.get("fallbacks", [])
    if (len(fallbacks) > MAX_FALLBACKS or len(set(map(str, fallbacks))) != len(fallbacks)
            or not all(isinstance(f, str) and NAME_RE.match(f) for f in fallbacks)):
        raise fail("fallbacks", f"must be a list of up to {MAX_FALLBACKS} different model names")
    headers = []
    for key, value in table.get("headers", {}).items():
        if not HEADER_RE.match(key) or key.lower() in RESERVED_HEADERS:
            raise fail("headers", f"cannot set the header {key!r} (the upstream key comes from api_key_env)")
        if not isinstance(value, str) or len(value) > 4096 or not value.isprintable():
            raise fail("headers", f"the value of {key!r} must be a printable string of at most 4096 characters")
        headers.append((key, value))
    provider = table.get("provider", host)
    if not 0 < len(provider) <= 64 or not provider.isprintable():
        raise fail("provider", "must be 1 to 64 printable characters")
    return dict(base_url=base_url, upstream_model=model, api_key_env=key_env, timeout=float(timeout),
                fallbacks=tuple(fallbacks), headers=tuple(headers), provider=provider,
                deadline=float(deadline))


def _base_url(value: str, fail) -> tuple[str, str]:
    """The base URL without a trailing slash, and its host. Credentials, queries and fragments are refused: a key
    in a URL ends up in logs."""
    if len(value) > 2048 or not value.isprintable() or " " in value:
        raise fail("base_url", "must be an http:// or https:// URL")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise fail("base_url", "must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise fail("base_url", "must be an http:// or https:// URL with a host, e.g. http://gpu-box:8000/v1")
    if parts.username is not None or parts.password is not None:
        raise fail("base_url", "must not hold credentials; put the key in the variable named by api_key_env")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise fail("base_url", "must not have a query or a fragment")
    return value.rstrip("/"), parts.hostname
