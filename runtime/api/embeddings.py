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

from ..errors import InvalidRequest
from ..request import Ask
from ..service import Service
from . import params as P
from . import surface
from .body import read_json
from .stream import cancel_on_disconnect, keep_body

def parse(body: dict, settings) -> tuple[Ask, str]:
    """Wire JSON -> (Ask, encoding_format). Raises InvalidRequest naming ``param``."""
    surface.refuse(body, surface.EMBEDDINGS_REFUSED)
    surface.accepted(body)
    model = P.model(body)
    value = body.get("input")
    items = [value] if isinstance(value, str) else value
    most = settings.max_embedding_inputs
    if not isinstance(items, list) or not items or len(items) > most:
        raise InvalidRequest(f"'input' must be a string or an array of 1 to {most} strings", param="input")
    for i, text in enumerate(items):
        where = "input" if isinstance(value, str) else f"input[{i}]"
        if not isinstance(text, str) or not text:
            raise InvalidRequest(f"'{where}' must be a non-empty string (token arrays are not supported)",
                                 param=where)
        if len(text) > settings.max_message_chars:
            raise InvalidRequest(f"'{where}' must be valid text of at most {settings.max_message_chars} characters",
                                 param=where)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    return Ask(model=model, messages=(), prompt=tuple(items), keep_alive=P.keep_alive(body)), fmt


def _encode(vector: list[float], fmt: str):
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


async def embeddings(request: Request) -> JSONResponse:
    service: Service = request.state.service
    body = await read_json(request, service.settings)
    ask, fmt = parse(body, service.settings)
    ctx = keep_body(request, body)
    job = await service.start_embedding(ctx, ask)
    request.state.generation = job  # from here on the request owns its ledger row
    async with cancel_on_disconnect(request.receive, job):   # a client that leaves stops it within one chunk
        vectors, usage, price = await job.run()
    return JSONResponse({
        "object": "list", "model": job.model,
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
    }, headers={"x-request-id": ctx.request_id, "x-reverb-price": str(price)})
