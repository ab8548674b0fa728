"""The Responses API: POST /v1/responses (also /api/v1/...), GET and DELETE /v1/responses/{id} (docs/responses.md).

The body is checked by wire.py's RESPONSES rows (``input`` into the same messages chat makes, flat tools into the
same Tools); ``view`` then adds what the table cannot: ``instructions`` and a stored ``previous_response_id``'s
conversation before the input, and for a model behind an upstream the chat-completions body it is sent (built
from the Ask: chatbody.py). The request then runs through handler.handle like chat, so it is priced, held, settled
and logged the same way. The renderers write a ``response`` object, or its event stream: ``response.created``,
``response.in_progress``, each item's events (outputs.py), ``response.completed`` (or ``response.failed`` with the
error's code). As in chat, whatever a client may act on (a function call's ``done``, the completion) is sent only
once the ledger row is written; a stored response is written before its answer too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequest, LedgerError, NotFound, quote
from ..ledger import responses as stored
from ..types import Chunk, FinishReason, Message, ToolCall
from . import wire
from .errors import openai_body
from .handler import Answer, Dialect, Renderers
from .items import omitted_tools
from .outputs import Output, usage_json
from .sse import SSE
from .sse import event as sse_event
from .stream import stream_failure
from . import chatbody

MAX_ID = 64


@dataclass(frozen=True)
class State:
    """What the renderers need beyond the Ask: the fields echoed in the response, and how to store it."""
    service: Any
    owner: str
    store: bool
    prior: tuple[Message, ...]       # the stored conversation before this input
    input: tuple[Message, ...]       # this request's input (instructions not included)
    omitted: tuple[str, ...]         # hosted tool types not offered to the model
    echo: dict                       # request fields the response object repeats


def _echo(body: dict, values: dict) -> dict:
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    return {
        "instructions": values.get("instructions"), "max_output_tokens": values.get("max_tokens"),
        "metadata": values.get("metadata") or {}, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": values.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "temperature": values.get("temperature", 1.0) if values.get("temperature") is not None else 1.0,
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [t for t in tools if isinstance(t, dict) and t.get("type") == "function"],
        "top_p": values.get("top_p") if values.get("top_p") is not None else 1.0,
        "truncation": "disabled", "user": values.get("user"),
    }


def _messages(raw: list) -> tuple[Message, ...]:
    return tuple(Message(m["role"], m["content"], tuple(ToolCall(*c) for c in m.get("calls", ())),
                         m.get("call_id")) for m in raw)


def _json_messages(messages) -> list[dict]:
    out = []
    for m in messages:
        d: dict = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["calls"] = [[c.id, c.name, c.arguments] for c in m.tool_calls]
        if m.tool_call_id:
            d["call_id"] = m.tool_call_id
        out.append(d)
    return out


async def view(request: Request, reading: wire.Reading, relayed: bool):
    """The Ask as every row says, with instructions and the previous response's conversation before the input;
    for an upstream model, the chat-completions body built from it."""
    ask, render = reading.for_local()
    values, service = reading.values, request.state.service
    owner = stored.owner_of(request.state.ctx.account)
    prior: tuple[Message, ...] = ()
    previous = values.get("previous_response_id")
    if previous is not None:
        row = await service.db(stored.load, service.ledger, previous, owner)
        if row is None:
            raise NotFound(f"Previous response with id '{quote(previous)}' not found.",
                           param="previous_response_id")
        prior = _messages(json.loads(row[0]))
    instructions = values.get("instructions")
    head = (Message("system", instructions),) if instructions else ()
    ask = replace(ask, messages=head + prior + ask.messages)
    if relayed:
        ask = replace(ask, extra=MappingProxyType(chatbody.request(ask)), local=True)
    omitted = omitted_tools(reading.body.get("tools"))
    keep = values.get("store") is not False and service.settings.responses_ttl > 0
    state = State(service, owner, keep, prior, ask.messages[len(head) + len(prior):], omitted,
                  _echo(reading.body, values))
    headers = (("x-reverb-omitted-tools", ",".join(omitted)),) if omitted else ()
    return ask, replace(render, state=state, headers=headers)


def response_json(a: Answer, status: str, output: list[dict], usage=None, error: dict | None = None) -> dict:
    state: State = a.render.state
    out = {"id": a.id, "object": "response", "created_at": a.created, "status": status, "background": False,
           "error": error, "incomplete_details": None, "model": a.gen.model, "output": output,
           **state.echo, "store": state.store,
           "usage": usage_json(usage, a.ask.prediction is not None) if usage is not None else None,
           "reverb_omitted_tools": list(state.omitted)}
    if status == "incomplete":
        out["incomplete_details"] = {"reason": "max_output_tokens"}
    return out


def _finished(a: Answer, output: Output, final: Chunk) -> dict:
    status = "incomplete" if final.finish_reason is FinishReason.LENGTH else "completed"
    return response_json(a, status, output.items, final.usage)


async def _keep(a: Answer, response: dict, output: Output) -> dict:
    """Store the finished response when asked (store true): within the size cap, else answered unstored and
    saying why (``store`` false, ``reverb_not_stored``)."""
    state: State = a.render.state
    if not state.store:
        return response
    settings = state.service.settings
    conversation = json.dumps(_json_messages(state.prior + state.input + output.messages()), ensure_ascii=False)
    document = json.dumps(response, ensure_ascii=False)
    why = None
    if len(conversation.encode()) + len(document.encode()) > settings.responses_max_bytes:
        why = f"larger than the {settings.responses_max_bytes} bytes a stored response may take"
    else:
        try:
            await state.service.db(stored.store, state.service.ledger, a.id, state.owner, a.gen.model, conversation,
                                   document, settings.responses_ttl)
        except LedgerError:
            why = "the ledger could not store it"
    if why is not None:
        response.update(store=False, reverb_not_stored=why)
    return response


async def _whole(a: Answer, chunks: list[Chunk], final: Chunk, price: int) -> dict:
    output = Output(a.id.removeprefix("resp_"))
    for chunk in chunks:
        output.add(chunk)
    output.close()
    return await _keep(a, _finished(a, output, final), output)


def _frame(kind: str, payload: dict, seq: int) -> bytes:
    return sse_event({"type": kind, "sequence_number": seq, **payload}, kind)


async def _stream(a: Answer, first: Chunk):
    """The event stream. A function call's ``done``, and everything after it, waits with the completion for the
    ledger row and the stored response; an error then ends it as ``response.failed`` with the error's code."""
    gen, seq = a.gen, 0
    output = Output(a.id.removeprefix("resp_"))
    held: list[dict] = []

    def frames(events):
        nonlocal seq
        for e in events:
            kind = e.pop("type")
            seq += 1
            yield _frame(kind, e, seq - 1)

    opening = response_json(a, "in_progress", [])
    for data in frames([{"type": "response.created", "response": opening},
                        {"type": "response.in_progress", "response": opening}]):
        yield data
    ends: dict[int, Chunk] = {}
    current = first
    while True:
        events = output.add(current)
        if held or output.closed_call:
            held += events
        else:
            for data in frames(events):
                yield data
        if current.finish_reason is not None:
            ends[current.index] = current
        if gen.final is not None and len(ends) == gen.streams:
            break
        current = await anext(gen)
    failure = await stream_failure(gen, gen.final.error)
    if failure is not None:
        error = openai_body(failure)[1]["error"]
        failed = response_json(a, "failed", output.items, gen.final.usage,
                               {"code": error["code"], "message": error["message"]})
        for data in frames([{"type": "response.failed", "response": failed}]):
            yield data
        return
    closing = held + output.close()       # every item done, then stored, then sent
    response = await _keep(a, _finished(a, output, gen.final), output)
    for data in frames(closing + [{"type": "response.incomplete" if response["status"] == "incomplete"
                                   else "response.completed", "response": response}]):
        yield data


_RENDERERS = Renderers(SSE, _stream, _whole)
RESPONSES = Dialect(wire.RESPONSES, "resp_", _RENDERERS, relay=_RENDERERS, view=view)


def _id(request: Request) -> str:
    response_id = request.path_params["response_id"]
    if len(response_id) > MAX_ID:
        raise NotFound("No response with that id", param="response_id")
    return response_id


async def get_response(request: Request) -> JSONResponse:
    """A stored response of the calling key; 404 for any other id (another key's included). It is returned whole:
    ``?stream=true`` (replaying a background response's events) is refused."""
    service = request.state.service
    response_id = _id(request)
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        raise InvalidRequest("'stream': a stored response is returned whole, never replayed as events",
                             param="stream")
    row = await service.db(stored.load, service.ledger, response_id, stored.owner_of(request.state.ctx.account))
    if row is None:
        raise NotFound(f"No response with id '{quote(response_id)}' found.", param="response_id")
    return JSONResponse(json.loads(row[1]))


async def delete_response(request: Request) -> JSONResponse:
    service = request.state.service
    response_id = _id(request)
    if not await service.db(stored.delete, service.ledger, response_id, stored.owner_of(request.state.ctx.account)):
        raise NotFound(f"No response with id '{quote(response_id)}' found.", param="response_id")
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def stored_response(request: Request) -> JSONResponse:
    """GET or DELETE /v1/responses/{response_id}."""
    return await (delete_response if request.method == "DELETE" else get_response)(request)
