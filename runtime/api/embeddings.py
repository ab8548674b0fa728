"""The Embeddings dialect: POST /v1/embeddings.

``input`` is a string or a list of strings; each becomes one unit-length vector (the model's own pooling, or the
mean of its last hidden states; see Engine.embed). ``encoding_format`` is ``float`` or ``base64`` (little-endian
float32, what OpenAI's SDK asks for by default). Billed as prompt tokens, held and logged like a chat request;
bounded in inputs, tokens and queued requests (docs/limits.md).
"""

from __future__ import annotations

import base64
import struct

from starlette.requests import Request
from starlette.responses import JSONResponse

from . import wire
from .handler import begin
from .stream import cancel_on_disconnect


def _encode(vector: list[float], fmt: str):
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


async def embeddings(request: Request) -> JSONResponse:
    service, ctx, ask, render, _ = await begin(request, wire.EMBEDDINGS)
    fmt = render.encoding_format
    job = await service.start_embedding(ctx, ask)
    request.state.generation = job  # from here on the request owns its ledger row
    async with cancel_on_disconnect(request.receive, job):   # a client that leaves stops it within one chunk
        vectors, usage, price = await job.run()
    return JSONResponse({
        "object": "list", "model": job.model,
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
    }, headers={"x-request-id": ctx.request_id, "x-reverb-price": str(price)})
