"""HTTP load for the benchmark: concurrent OpenAI-style SSE streams, timed on the client side."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx


@dataclass
class StreamResult:
    tokens: int          # content events (or usage.completion_tokens when the server reports it)
    ttft: float          # seconds from send to the first content event
    decode_tps: float    # tokens after the first / time after the first
    elapsed: float
    error: str | None = None
    first_at: float = 0.0    # absolute perf_counter times of the first and last content event
    last_at: float = 0.0
    events: int = 0
    text: str = ""
    times: list[float] | None = None   # perf_counter time of each content event

    @property
    def itl_p50(self) -> float:
        t = self.times or []
        return p50([b - a for a, b in zip(t, t[1:], strict=False)])


async def one_stream(client: httpx.AsyncClient, body: dict) -> StreamResult:
    t0 = time.perf_counter()
    first = last = None
    events = 0
    usage = None
    text: list[str] = []
    times: list[float] = []
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return StreamResult(0, 0, 0, time.perf_counter() - t0, f"HTTP {r.status_code}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                ev = json.loads(line[6:])
                if ev.get("usage"):
                    usage = ev["usage"]
                ch = ev.get("choices") or []
                if ch and (ch[0].get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    times.append(now)
                    first = first or now
                    last = now
                    events += 1
                    text.append(ch[0]["delta"]["content"])
    except httpx.HTTPError as e:
        return StreamResult(events, 0, 0, time.perf_counter() - t0, type(e).__name__)
    n = usage["completion_tokens"] if usage else events
    span = (last - first) if first and last and last > first else 0
    return StreamResult(n, (first - t0) if first else 0, (n - 1) / span if span else 0,
                        time.perf_counter() - t0, None, first or 0.0, last or 0.0, events, "".join(text), times)


async def run_load(base_url: str, key: str, bodies: list[dict]) -> tuple[float, list[StreamResult]]:
    """Run all bodies at once; returns (aggregate completion tokens/s over the wall time, results)."""
    limits = httpx.Limits(max_connections=len(bodies) + 2)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, b) for b in bodies))
        wall = time.perf_counter() - t0
    return sum(r.tokens for r in results) / wall, list(results)


def steady_tps(results: list[StreamResult]) -> float:
    """Aggregate decode rate while every stream is generating: content events from the last stream's first token to
    the first stream's last token, over that window. The HTTP counterpart of raw batched decode (no prefill in it)."""
    ok = [r for r in results if r.first_at and r.last_at]
    if not ok:
        return 0.0
    start, end = max(r.first_at for r in ok), min(r.last_at for r in ok)
    if end <= start:
        return 0.0
    inside = sum(1 for r in ok for t in (r.times or []) if start < t <= end)
    return inside / (end - start)


def p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0
