"""The one httpx user: an OpenAI-compatible upstream's chat-completions stream, with its errors made ours.

One ``httpx.AsyncClient`` per upstream entry keeps a pool of keep-alive connections, so a request does not pay
a TCP (and TLS) handshake. Each request streams (Server-Sent Events, read here with a size limit per event);
closing the response early, as a cancelled task does, closes that connection, which an upstream engine sees as
the client going away. Environment proxies and ``.netrc`` are not used (``trust_env=False``): a catalogue entry
says exactly where its requests go, and no stray credential is attached to them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

import httpx

from ...errors import OverloadedError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ...models.registry import ModelSpec
from . import wire

log = logging.getLogger("reverb.upstream")
# httpx logs each request at INFO; reverb's access log already writes one line per request (and --log-format json
# must stay JSON lines).
logging.getLogger("httpx").setLevel(logging.WARNING)

DONE = object()                 # yielded for the stream's ``data: [DONE]``
MAX_EVENT = 8 << 20             # bytes in one event: an upstream cannot make us buffer without bound
MAX_ERROR_BODY = 64 << 10
DRAIN_SECONDS = 1.0             # how long the end of a body may take after [DONE] before we drop the connection
POOL = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30)


class UpstreamClient:
    def __init__(self, spec: ModelSpec, key: str | None):
        self.spec = spec
        self._key = key
        self._headers = {"user-agent": "reverb-runtime", **dict(spec.headers)}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never the headers: one of them is the key
        return f"UpstreamClient({self.spec.name!r})"

    def _client(self) -> httpx.AsyncClient:
        # Made on first use, on the serving event loop: the pool's connections belong to that loop.
        if self._http is None:
            self._loop = asyncio.get_running_loop()
            self._http = httpx.AsyncClient(base_url=self.spec.base_url + "/", headers=self._headers,
                                           timeout=httpx.Timeout(self.spec.timeout), limits=POOL,
                                           follow_redirects=False, trust_env=False)
        return self._http

    async def events(self, body: dict, max_event: int = MAX_EVENT) -> AsyncIterator[object]:
        """The upstream's events as (parsed JSON object, its size), then ``DONE`` if it sent ``[DONE]``. An event
        over ``max_event`` bytes (at most MAX_EVENT) is refused before it is buffered whole.

        Raises UpstreamUnavailable (no connection), UpstreamTimeout, UpstreamRejected (its 4xx), UpstreamError
        (5xx, a cut or a body that is not an event stream) or OverloadedError (every pooled connection busy).
        """
        name = self.spec.name
        started = False
        try:
            async with self._client().stream("POST", "chat/completions", json=body) as r:
                started = True
                if not 200 <= r.status_code < 300:
                    data = await _read_some(r, MAX_ERROR_BODY)
                    log.warning("upstream %s answered HTTP %d: %s", name, r.status_code,
                                wire.scrub(data.decode("utf-8", "replace"), self._key)[:300])
                    raise wire.error_for(r.status_code, data, name, self._key, r.headers.get("retry-after"))
                if not r.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(f"The upstream for model '{name}' did not answer with an event stream",
                                        model=name, code="upstream_bad_response")
                events = _sse_data(r.aiter_bytes(), min(max_event, MAX_EVENT))
                async for data in events:
                    if data == "[DONE]":
                        await _drain(events)
                        yield DONE
                        return
                    try:
                        event = json.loads(data)
                    except (ValueError, RecursionError):
                        event = None
                    if not isinstance(event, dict):
                        log.warning("upstream %s sent an event that is not a JSON object", name)
                        raise UpstreamError(f"The upstream for model '{name}' sent a malformed event", model=name,
                                            code="upstream_bad_response")
                    yield event, len(data)
        except httpx.PoolTimeout:
            raise OverloadedError(f"Every connection to the upstream for model '{name}' is busy", model=name)
        except httpx.TimeoutException as e:
            log.warning("upstream %s timed out (%s)", name, type(e).__name__)
            raise UpstreamTimeout(f"The upstream for model '{name}' did not answer within {self.spec.timeout:g} s",
                                  model=name) from None
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as e:
            log.warning("upstream %s is unreachable: %s", name, wire.scrub(str(e), self._key))
            raise UpstreamUnavailable(f"The upstream for model '{name}' is unavailable", model=name) from None
        except httpx.TransportError as e:
            log.warning("upstream %s: %s: %s", name, type(e).__name__, wire.scrub(str(e), self._key))
            if not started:  # the connection broke before any answer: as good as unreachable
                raise UpstreamUnavailable(f"The upstream for model '{name}' is unavailable", model=name) from None
            raise UpstreamError(f"The upstream's answer for model '{name}' was cut off", model=name,
                                code="upstream_cut") from None
        except httpx.HTTPError as e:
            log.warning("upstream %s: %s: %s", name, type(e).__name__, wire.scrub(str(e), self._key))
            raise UpstreamError(f"The upstream for model '{name}' sent a malformed answer", model=name,
                                code="upstream_bad_response") from None

    def close(self) -> None:
        """Close the pool's connections. Safe from any thread; a no-op when the loop is already gone."""
        http, loop = self._http, self._loop
        self._http = None
        if http is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(http.aclose())
        elif loop.is_running():  # called from another thread (the lifespan closes the service in one)
            try:
                asyncio.run_coroutine_threadsafe(http.aclose(), loop).result(timeout=5)
            except Exception as e:  # noqa: BLE001 - closing must not fail a shutdown
                log.debug("closing upstream %s: %s", self.spec.name, e)


async def _drain(events: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]`` (normally just the end of the body), so the connection can go back to the
    pool; an upstream that keeps the response open past that gets its connection closed instead."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in events:
                pass
    except (TimeoutError, UpstreamError, httpx.HTTPError):
        pass


async def _read_some(r: httpx.Response, limit: int) -> bytes:
    data = b""
    async for part in r.aiter_bytes():
        data += part
        if len(data) >= limit:
            break
    return data[:limit]


async def _sse_data(parts: AsyncIterator[bytes], limit: int = MAX_EVENT) -> AsyncIterator[str]:
    """The ``data`` of each Server-Sent Event (multi-line data joined with newlines); comments and other fields
    are skipped. Raises UpstreamError for an event over ``limit`` bytes or that is not UTF-8."""
    buf = b""
    data: list[bytes] = []
    size = 0
    async for part in parts:
        buf += part
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line, buf = buf[:i].rstrip(b"\r"), buf[i + 1:]
            if not line:
                if data:
                    yield _text(data)
                    data, size = [], 0
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                data.append(value[1:] if value.startswith(b" ") else value)
                size += len(value)
            if size > limit:
                break
        if size > limit or len(buf) > limit:
            raise UpstreamError("The upstream sent an event larger than reverb accepts", code="upstream_bad_response")
    if data:
        yield _text(data)


def _text(data: list[bytes]) -> str:
    try:
        return b"\n".join(data).decode("utf-8")
    except UnicodeDecodeError:
        raise UpstreamError("The upstream sent an event that is not UTF-8", code="upstream_bad_response") from None
