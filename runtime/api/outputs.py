"""A generation's chunks as Responses output items, and the stream events that build them (api/responses.py writes
them out). One ``Output`` serves both renderers: the whole answer feeds it every chunk and keeps its ``items``;
the stream sends the events each chunk makes.

Items follow one another as the model writes: a ``reasoning`` item (``Chunk.reasoning``), a ``message`` with one
``output_text`` part, then one ``function_call`` per call. A local model's calls arrive as ``Chunk.tool_calls``;
an upstream's as its chat event's ``tool_calls`` deltas (``Chunk.passthrough``), read here into the same shape.
"""

from __future__ import annotations

from typing import Any

from ..types import Chunk, Message, ToolCall, ToolCallDelta

MAX_UPSTREAM_CALLS = 128


def calls_of(chunk: Chunk) -> tuple[ToolCallDelta, ...]:
    """The tool-call pieces a chunk carries: the local parser's, or an upstream's chat deltas (choice 0)."""
    if chunk.passthrough is None:
        return chunk.tool_calls
    choices = chunk.passthrough.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    out = []
    for raw in delta.get("tool_calls") or ():
        if not isinstance(raw, dict):
            continue
        fn = raw.get("function") if isinstance(raw.get("function"), dict) else {}
        index = raw.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_UPSTREAM_CALLS:
            continue
        args = fn.get("arguments")
        out.append(ToolCallDelta(index, raw.get("id") if isinstance(raw.get("id"), str) else None,
                                 fn.get("name") if isinstance(fn.get("name"), str) else None,
                                 args if isinstance(args, str) else ""))
    return tuple(out)


def reasoning_of(chunk: Chunk) -> str:
    """A chunk's thinking text: the local split (``Chunk.reasoning``), or an upstream's ``reasoning_content``."""
    if chunk.reasoning or chunk.passthrough is None:
        return chunk.reasoning
    choices = chunk.passthrough.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    text = delta.get("reasoning_content")
    return text if isinstance(text, str) else ""


class Output:
    """Output items as chunks arrive; ``add`` and ``close`` return the events (without ``sequence_number``)."""

    def __init__(self, suffix: str):
        self.suffix = suffix
        self.items: list[dict] = []
        self.kind: str | None = None          # the open item: "reasoning", "message", "call" or None
        self.calls: dict[int, int] = {}       # a call's index -> its item's output index
        self.closed_call = False              # a function call's item is done: a client may act on it now

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{self.suffix}{len(self.items)}"

    def _open(self, kind: str, item: dict) -> list[dict]:
        events = self._close()
        self.kind = kind
        self.items.append(item)
        events.append({"type": "response.output_item.added", "output_index": len(self.items) - 1,
                       "item": _copy(item)})
        if kind == "message":
            events.append({"type": "response.content_part.added", "item_id": item["id"],
                           "output_index": len(self.items) - 1, "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
        return events

    def _close(self) -> list[dict]:
        if self.kind is None:
            return []
        kind, self.kind = self.kind, None
        index = len(self.items) - 1
        item = self.items[index]
        item["status"] = "completed"
        events: list[dict] = []
        if kind == "message":
            part = item["content"][0]
            events += [{"type": "response.output_text.done", "item_id": item["id"], "output_index": index,
                        "content_index": 0, "text": part["text"], "logprobs": []},
                       {"type": "response.content_part.done", "item_id": item["id"], "output_index": index,
                        "content_index": 0, "part": _copy(part)}]
        elif kind == "reasoning":
            events.append({"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": index,
                           "content_index": 0, "text": item["content"][0]["text"]})
        else:
            events.append({"type": "response.function_call_arguments.done", "item_id": item["id"],
                           "output_index": index, "name": item["name"], "arguments": item["arguments"]})
            self.closed_call = True
        events.append({"type": "response.output_item.done", "output_index": index, "item": _copy(item)})
        return events

    def add(self, chunk: Chunk) -> list[dict]:
        events: list[dict] = []
        thinking = reasoning_of(chunk)
        if thinking:
            if self.kind != "reasoning":
                events += self._open("reasoning", {"id": self._id("rs"), "type": "reasoning", "summary": [],
                                                   "content": [{"type": "reasoning_text", "text": ""}],
                                                   "status": "in_progress"})
            item = self.items[-1]
            item["content"][0]["text"] += thinking
            events.append({"type": "response.reasoning_text.delta", "item_id": item["id"],
                           "output_index": len(self.items) - 1, "content_index": 0, "delta": thinking})
        if chunk.text:
            if self.kind != "message":
                events += self._open("message", {"id": self._id("msg"), "type": "message", "status": "in_progress",
                                                 "role": "assistant", "content": []})
                self.items[-1]["content"].append({"type": "output_text", "text": "", "annotations": [],
                                                  "logprobs": []})
            item = self.items[-1]
            item["content"][0]["text"] += chunk.text
            events.append({"type": "response.output_text.delta", "item_id": item["id"],
                           "output_index": len(self.items) - 1, "content_index": 0, "delta": chunk.text,
                           "logprobs": []})
        for d in calls_of(chunk):
            if d.index not in self.calls:
                call_id = d.id or f"call_{self.suffix}{len(self.items)}"
                events += self._open("call", {"id": self._id("fc"), "type": "function_call", "status": "in_progress",
                                              "call_id": call_id, "name": d.name or "", "arguments": ""})
                self.calls[d.index] = len(self.items) - 1
            at = self.calls[d.index]
            item = self.items[at]
            if d.arguments:
                item["arguments"] += d.arguments
                if at == len(self.items) - 1 and self.kind == "call":
                    events.append({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                                   "output_index": at, "delta": d.arguments})
        return events

    def close(self) -> list[dict]:
        """The open item's done events."""
        return self._close()

    def messages(self) -> tuple[Message, ...]:
        """The output as the conversation continues it: one assistant message (its text and calls)."""
        text = "".join(i["content"][0]["text"] for i in self.items if i["type"] == "message")
        calls = tuple(ToolCall(i["call_id"], i["name"], i["arguments"] or "{}") for i in self.items
                      if i["type"] == "function_call")
        return (Message("assistant", text, calls),) if text or calls else ()


def usage_json(usage, prediction: bool = False) -> dict[str, Any]:
    """The Responses API's usage object; with a prediction, its accepted and rejected tokens as chat reports them
    (rejected ones are in output_tokens too: they are billed)."""
    p, c = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
    details: dict[str, Any] = {"reasoning_tokens": 0}
    if prediction:
        details |= {"accepted_prediction_tokens": usage.accepted_prediction_tokens if usage is not None else 0,
                    "rejected_prediction_tokens": usage.rejected_prediction_tokens if usage is not None else 0}
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": c,
            "output_tokens_details": details, "total_tokens": p + c}


def _copy(item: dict) -> dict:
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(part) for part in out["content"]]
    return out
