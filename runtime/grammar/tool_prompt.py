"""Tools for chat templates that cannot render them: plain-text system prompt and message rewriting.

The fallback uses the same Hermes/Qwen2.5 wire format as native templates (see tools.py), so one
grammar and one parser serve both; the instructions follow Qwen2.5's own tool prompt, which small
instruct models have often seen.
"""
import json
import re

from ..types import Message, Tools
from .tools import CLOSE, OPEN

_TOOLS_VAR = re.compile(r"\btools\b")
_TOOL_CALLS_VAR = re.compile(r"\btool_calls\b")


def template_supports_tools(template_source: str | None) -> bool:
    """True if the Jinja chat template renders both the tool list and assistant tool calls itself."""
    src = template_source or ""
    return bool(_TOOLS_VAR.search(src) and _TOOL_CALLS_VAR.search(src))


def use_native_tools(template_source: str | None) -> bool:
    """Whether to let the template render tools: it must support them and speak our wire format (Hermes
    <tool_call>, e.g. Qwen2.5). Templates with another tool syntax (Llama 3.1, Mistral) get the fallback,
    so the prompt and the grammar agree."""
    return template_supports_tools(template_source) and OPEN in (template_source or "")


def tools_system_text(plan: Tools) -> str:
    """System-prompt text describing the tools and the <tool_call> format ('' when tool_choice is none)."""
    if plan.choice == "none" or not plan.tools:
        return ""
    lines = []
    for t in plan.tools:
        fn = {"name": t.name, "description": t.description,
              "parameters": t.parameters if t.parameters is not None else {"type": "object", "properties": {}}}
        lines.append(json.dumps({"type": "function", "function": fn}, ensure_ascii=False))
    rules = {("auto", None): "Call a function only when it helps answer; otherwise reply normally.",
             ("required", None): "You must call at least one function."}
    rule = rules.get((plan.choice, plan.forced)) or f"You must call the function {plan.forced!r}."
    if not plan.parallel:
        rule += " Call at most one function per reply."
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            + "\n".join(lines) + "\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            f"{OPEN}{CLOSE} XML tags:\n{OPEN}\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n'
            f"{CLOSE}\n\n{rule}")


def render_tool_call(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments)
    except (ValueError, RecursionError):
        args = arguments  # keep what the client sent; the model sees it verbatim
    return f"{OPEN}\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + f"\n{CLOSE}"


def fallback_messages(messages: list[Message], plan: Tools | None) -> list[Message]:
    """Rewrite messages for a template without tool support: tools text goes into the (first) system
    message; assistant tool_calls become <tool_call> blocks in its content; consecutive role 'tool'
    messages become one user message of <tool_response> blocks, in call order (as Qwen2.5 renders them)."""
    out: list[Message] = []
    results = False  # whether the last message in ``out`` is a user message made of tool results
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            parts = [m.content] if m.content else []
            parts += [render_tool_call(c.name, c.arguments) for c in m.tool_calls]
            out.append(Message("assistant", "\n".join(parts), reasoning=m.reasoning))
            results = False
        elif m.role == "tool":
            block = f"<tool_response>\n{m.content}\n</tool_response>"
            if results:
                out[-1] = Message("user", out[-1].content + "\n" + block)
            else:
                out.append(Message("user", block))
            results = True
        else:
            out.append(Message(m.role, m.content, name=m.name, reasoning=m.reasoning))
            results = False
    text = tools_system_text(plan) if plan is not None else ""
    if text:
        if out and out[0].role == "system":
            out[0] = Message("system", (out[0].content + "\n\n" + text).strip(), name=out[0].name)
        else:
            out.insert(0, Message("system", text))
    return out
