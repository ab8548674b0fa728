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

from ..errors import LedgerError
from ..money import credits
from ..types import Chunk
from . import wire
from .choices import chat_logprobs, per_choice
from .handler import Answer, Dialect, Renderers
from .stream import StreamAborted


def _whole(a: Answer, chunks: list[Chunk], final: Chunk, price: int) -> dict:
    choice = per_choice(chunks, 1)[0]
    result: dict = {"response": choice.text}
    if choice.calls:
        result["tool_calls"] = choice.calls
    if a.ask.sampling.logprobs:
        result["logprobs"] = chat_logprobs(choice.logprobs)["content"]
    if a.render.stats:
        result.update(tokens_input=final.usage.prompt_tokens, tokens_output=final.usage.completion_tokens,
                      price=credits(price))
    # Only what was validated goes back out: the raw body may hold anything a client chose to send.
    result.update(model=a.gen.model, request=[{"role": m.role, "content": m.content} for m in a.ask.messages])
    return {"status": 1, "result": result}


async def _text(a: Answer, first: Chunk):
    gen, current = a.gen, first
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


GATEWAY = Dialect(wire.GATEWAY, "", Renderers("text/plain; charset=utf-8", _text, _whole))
