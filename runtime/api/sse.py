"""Server-Sent Events framing for the OpenAI dialect.

Every event is exactly one line ``data: <json>`` and a blank line: JSON never holds a raw newline (json.dumps
escapes them), and no comment or keep-alive lines are sent, so line-based readers that ``JSON.parse`` whatever
follows ``data: `` always work. The stream ends with ``data: [DONE]``; an error after the first byte is one
``data: {"error": ...}`` event.
"""

from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"
