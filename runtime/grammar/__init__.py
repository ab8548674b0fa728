"""OpenAI structured output and tool calls as llama.cpp grammars: pure Python, no llama_cpp import.

``response_format_grammar(rf)`` / ``tool_grammar(tools, rf)`` -> GrammarSpec | None (GBNF text for the engine's
grammar sampler); ``parse_tools`` checks the wire fields into ``types.Tools``; ``ToolCallParser`` turns generated
text into OpenAI tool_calls, incrementally for streaming; ``tool_prompt`` renders tools as plain text for chat
templates without tool support. Every schema keyword is either enforced exactly or refused: request errors raise
``InvalidRequest`` naming the offending field (e.g. ``response_format.json_schema.schema.properties.age.multipleOf``).
Imports only ``errors`` and ``types``.
"""

from .response_format import GrammarSpec, response_format_grammar
from .schema_check import check_schema
from .tool_parser import ToolCallParser
from .tool_prompt import fallback_messages, template_supports_tools, use_native_tools
from .tools import TRIGGER_PATTERN, parse_tools, tool_grammar

__all__ = ["GrammarSpec", "response_format_grammar", "check_schema", "parse_tools", "tool_grammar",
           "TRIGGER_PATTERN", "ToolCallParser", "fallback_messages", "template_supports_tools", "use_native_tools"]
