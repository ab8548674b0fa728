"""A tiny app that calls an LLM: the kind of code a team wants to test against a real model in CI."""

from __future__ import annotations


def build_messages(text: str, style: str = "one sentence") -> list[dict]:
    return [{"role": "system", "content": f"Summarize the user's text in {style}."},
            {"role": "user", "content": text}]


def summarize(client, model: str, text: str, max_tokens: int = 40) -> str:
    r = client.chat.completions.create(model=model, messages=build_messages(text), max_tokens=max_tokens,
                                       temperature=0)
    return r.choices[0].message.content.strip()


def summarize_streaming(client, model: str, text: str, max_tokens: int = 40) -> str:
    parts = []
    for chunk in client.chat.completions.create(model=model, messages=build_messages(text), max_tokens=max_tokens,
                                                temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts).strip()
