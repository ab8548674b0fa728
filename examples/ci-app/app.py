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


# -- the app's resilience: a retrying client and its own streaming parser ------------------------------------------

def resilient_client(base_url: str, api_key: str):
    """The client the app uses in production: the official SDK's retries (3, exponential backoff with jitter,
    honouring Retry-After and x-should-retry)."""
    import openai
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=3, timeout=600)


def retry_at_once(call, attempts: int = 4):
    """How not to retry: again at once on any error. The fault tests show what the verdicts say about it."""
    import openai
    for attempt in range(attempts):
        try:
            return call()
        except openai.APIError:
            if attempt == attempts - 1:
                raise


class StreamBroken(Exception):
    """The stream ended before its `data: [DONE]`, or carried an event that is not JSON."""


def stream_text(base_url: str, api_key: str, model: str, text: str, max_tokens: int = 40,
                strict: bool = True) -> str:
    """The app's own SSE parser over httpx (as apps that do not use the SDK have): joins the content deltas.
    ``strict``: a stream that ends without `data: [DONE]` or has an event that is not JSON raises StreamBroken;
    not strict is the common bug: whatever arrived is returned as if it were the whole answer."""
    import json

    import httpx
    body = {"model": model, "messages": build_messages(text), "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    parts, done = [], False
    try:
        with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=600,
                          headers={"Authorization": f"Bearer {api_key}"}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                try:
                    event = json.loads(line[6:])
                except ValueError:
                    if strict:
                        raise StreamBroken(f"an event is not JSON: {line[:40]!r}") from None
                    continue
                if event.get("choices"):
                    parts.append(event["choices"][0]["delta"].get("content") or "")
    except httpx.TransportError as e:
        if strict:
            raise StreamBroken(f"the connection broke: {e}") from None
    if strict and not done:
        raise StreamBroken("the stream ended without data: [DONE]")
    return "".join(parts).strip()
