"""The gateway dialect: POST /api/endpoint.

Request ``{model, messages, options: {max_tokens, stream, stats, ...sampling, response_format, tools, tool_choice,
parallel_tool_calls, logprobs, top_logprobs}}``; success ``{status: 1, result: {response, tokens_input,
tokens_output, price, model, request}}`` plus ``tool_calls`` when the answer called functions and ``logprobs`` when
asked. ``options.stats`` defaults to true; when false the token counts and price are left out.
``options.stream: true`` sends the text as plain chunks as it is generated and then ends, with no final JSON (so it
cannot carry tool calls or logprobs: those combinations are refused). An option we do not know is refused, naming
it: a mistyped option must not be silently ignored.
"""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest, LedgerError, quote
from ..generation import Generation
from ..models.registry import MICRO
from ..request import Ask
from ..service import Service
from ..types import Chunk
from . import params as P
from . import surface
from .body import read_json
from .choices import chat_logprobs, fold
from .stream import StreamAborted, keep_body, stream_response
from .stream import fold as run_to_end

# The options the gateway honours: generation, sampling and answer constraints (the same values as OpenAI's).
OPTIONS = frozenset({"max_tokens", "max_completion_tokens", "stream", "stats", "stop", "logit_bias", "response_format",
                     "tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "n",
                     *(name for name, *_ in P.SAMPLING_FIELDS)})
# Fields of the request the backend may name in a refusal (it knows them by their OpenAI names).
_BACKEND_PARAMS = ("response_format", "tools", "tool_choice", "logit_bias", "n", "max_tokens", "logprobs")


def parse(body: dict, settings) -> tuple[Ask, bool]:
    """Wire JSON -> (Ask, stats). Raises InvalidRequest naming ``param``."""
    model = P.model(body)
    messages = P.messages(body.get("messages"), settings)
    options = body.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object", param="options")
    unknown = sorted(k for k in options if k not in OPTIONS)
    if unknown:
        raise InvalidRequest(f"unknown option 'options.{quote(unknown[0])}'", param=f"options.{unknown[0]}")
    if P.integer(options, "n", 1, 1, 1, param="options.n") != 1:  # one response per result
        raise InvalidRequest("'options.n' must be 1", param="options.n")
    logprobs, top = surface.chat_logprobs(options, prefix="options.")
    sampling = replace(P.sampling(options, settings, prefix="options."), logprobs=logprobs, top_logprobs=top)
    stream = P.boolean(options, "stream", False, param="options.stream")
    stats = P.boolean(options, "stats", True, param="options.stats")
    tools = surface.tools(options, prefix="options.")
    if stream and (logprobs or (tools is not None and tools.choice != "none")):
        raise InvalidRequest("a plain-text stream cannot carry tool calls or logprobs", param="options.stream")
    return Ask(model=model, messages=tuple(messages), sampling=sampling, stream=stream, tools=tools,
               response_format=surface.response_format(options, prefix="options.")), stats


async def endpoint(request: Request) -> object:
    service: Service = request.state.service
    body = await read_json(request, service.settings)
    ask, stats = parse(body, service.settings)
    ctx = keep_body(request, body)
    try:
        gen = await service.start(ctx, ask)
    except InvalidRequest as e:  # the backend names OpenAI's fields; here they live under options
        if e.param and e.param.split(".")[0].split("[")[0] in _BACKEND_PARAMS:
            e.param = "options." + e.param
        raise
    request.state.generation = gen
    if ask.stream:
        return stream_response(request, gen, "text/plain; charset=utf-8", lambda first: _text(gen, first))
    chunks, final, price = await run_to_end(request, gen)
    choice = fold(chunks, 1)[0]
    result: dict = {"response": choice.text}
    if choice.calls:
        result["tool_calls"] = choice.calls
    if ask.sampling.logprobs:
        result["logprobs"] = chat_logprobs(choice.logprobs)["content"]
    if stats:
        result.update(tokens_input=final.usage.prompt_tokens, tokens_output=final.usage.completion_tokens,
                      price=price / MICRO)
    # Only what was validated goes back out: the raw body may hold anything a client chose to send.
    result.update(model=gen.model, request=[{"role": m.role, "content": m.content} for m in ask.messages])
    return JSONResponse({"status": 1, "result": result}, headers={"x-reverb-price": str(price)})


async def _text(gen: Generation, first: Chunk):
    current = first
    while True:
        if current.text:
            yield current.text.encode("utf-8")
        if current.finish_reason is not None:
            break
        current = await anext(gen)
    if current.error is not None:
        raise StreamAborted  # plain text has no error frame: a broken stream is the honest signal
    try:
        await gen.settled
    except LedgerError:
        raise StreamAborted from None
