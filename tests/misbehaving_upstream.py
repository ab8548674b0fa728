"""A small OpenAI-compatible upstream on loopback that misbehaves on request, for the upstream backend's tests.

``POST /v1/chat/completions``; the requested ``model`` picks the behaviour:

- ``echo``: streams the last message's words back, one event each (``max_tokens`` words at most, then
  finish_reason "length"), with ``usage`` when ``stream_options.include_usage`` asks (prompt = words in all
  messages + 7, completion = words sent); ``no-usage``: the same without usage;
- ``tools``: a tool call split over three deltas, finish_reason "tool_calls", usage;
- ``status-NNN``: answers HTTP NNN with an OpenAI error body whose message repeats the caller's Authorization
  header (a careless upstream: reverb must scrub its own key from what it passes on); 429 adds Retry-After: 7;
- ``slow``: sends nothing until ``release`` is set; ``slow-mid``: two events, then waits for ``release``;
- ``cut``: two events, then drops the connection mid-stream; ``garbage``: a first event that is not JSON;
  ``garbage-mid``: two events, then one that is not JSON; ``error-event``: one event, then an error event;
  ``not-sse``: 200 with an HTML page;
- ``hang``: one event, then waits until the client closes the connection, and records it in ``disconnected``;
- ``leaky``: an echo whose events repeat the caller's key (taken from its Authorization header) in every field:
  ids, model, fingerprint, content, a tool call's name and arguments, logprobs, unknown fields, object keys;
  ``leaky-code-NNN``: HTTP NNN whose error has the key as its ``code``, ``type`` and ``param``; ``leaky-error``:
  one event, then an error event made of the key; ``leaky-header``: a response whose malformed header line holds
  the key (HTTP libraries quote such a line in their error);
- ``flood``: ignores max_tokens and streams words until the client closes the connection (at most FLOOD events);
  ``flood-big``: the same, 64 KiB of text per event;
- ``usage-zero`` / ``usage-huge``: an echo that reports usage 0 + 0 / 10^9 + 10^9;
- ``keepalive``: one event, then an SSE comment every KEEPALIVE seconds, never finishing, until the client
  closes (recorded in ``disconnected``); ``keepalive-first``: the comments before any event;
- ``status-429-long`` / ``status-429-date``: 429 with ``Retry-After: 99999`` / an HTTP date in 2100.

Every request is recorded (path, headers, JSON body, the client's port) in ``requests``. Nothing here sleeps:
the slow behaviours wait on events the test sets (``close`` sets them all).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WAIT = 300  # seconds a slow behaviour waits for `release` at most, so a forgotten test cannot hang forever
FLOOD = 200_000     # events a flood sends at most
KEEPALIVE = 0.05    # seconds between keep-alive comments (the upstream's pace, not a test's ordering)


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that went away mid-answer is what several behaviours are for


class Upstream:
    def __init__(self):
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.disconnected = threading.Event()
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *args):
                pass

            def do_POST(self):
                up._handle(self)

        self.server = _Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def last(self) -> dict:
        return self.requests[-1]

    # -- one request ----------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", 0))))
        self.requests.append({"path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()}, "body": body,
                              "port": h.client_address[1]})
        model = str(body.get("model"))
        key = h.headers.get("authorization", "").removeprefix("Bearer ")
        if model.startswith("status-"):
            return self._error(h, int(model[7:10]), model[10:])
        if model == "leaky-header":
            h.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Echo {key}\r\n\r\n".encode())
            h.close_connection = True
            return
        if model.startswith("leaky-code-"):
            return self._error(h, int(model[11:]), leak=key)
        if model in ("flood", "flood-big", "keepalive", "keepalive-first"):
            return self._endless(h, model)
        if model == "not-sse":
            return self._plain(h, 200, "text/html", b"<html>a proxy's login page</html>")
        if model == "slow":
            self.release.wait(WAIT)
        self._start_stream(h)
        events = self._events(model, body)
        if model == "leaky":
            events = [self._leak(ev, key) for ev in events]
        keep = {"garbage": 0, "error-event": 1, "hang": 1, "cut": 2, "garbage-mid": 2, "slow-mid": 2,
                "leaky-error": 1}
        events = events[:keep.get(model, len(events))]
        for ev in events:
            self._send(h, "data: " + json.dumps(ev) + "\n\n")
        if model == "cut":
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)  # no final chunk: a broken chunked stream
            h.close_connection = True
            return
        if model == "slow-mid":
            self.release.wait(WAIT)
        if model == "hang":
            h.connection.settimeout(WAIT)
            try:
                while h.connection.recv(1024):  # the client sends nothing more; b"" means it closed
                    pass
            except OSError:
                pass
            self.disconnected.set()
            h.close_connection = True
            return
        if model in ("garbage", "garbage-mid"):
            self._send(h, "data: {not json\n\n")
        elif model == "error-event":
            self._send(h, 'data: {"error": {"message": "the engine fell over", "type": "server_error"}}\n\n')
        elif model == "leaky-error":
            self._send(h, "data: " + json.dumps({"error": {"message": key, "type": key, "code": key, "param": key,
                                                           key: key}}) + "\n\n")
        else:
            self._send(h, "data: [DONE]\n\n")
        self._send(h, "")

    def _events(self, model: str, body: dict) -> list[dict]:
        def ev(delta: dict, finish=None, **extra) -> dict:
            return {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "system_fingerprint": "fp_up", "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                 "finish_reason": finish}], **extra}

        messages = body.get("messages") or [{}]
        prompt = sum(len(str(m.get("content") or "").split()) for m in messages) + 7
        usage_wanted = (body.get("stream_options") or {}).get("include_usage") and model != "no-usage"
        reported = {"usage-zero": (0, 0), "usage-huge": (10 ** 9, 10 ** 9)}
        if model == "tools":
            call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                               "arguments": ""}}
            out = [ev({"role": "assistant", "content": None, "tool_calls": [call]}),
                   ev({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
                   ev({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
                   ev({}, "tool_calls")]
            sent = 9
        else:
            words = str(messages[-1].get("content") or "").split() or ["empty"]
            limit = body.get("max_completion_tokens") or body.get("max_tokens") or len(words)
            sent = min(len(words), limit)
            out = [ev({"role": "assistant", "content": ""})]
            out += [ev({"content": (" " if i else "") + w}) for i, w in enumerate(words[:sent])]
            out.append(ev({}, "length" if sent < len(words) else "stop"))
        if usage_wanted:
            prompt, sent = reported.get(model, (prompt, sent))
            out.append({**ev({}), "choices": [],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": sent, "total_tokens": prompt + sent}})
        return out

    @staticmethod
    def _leak(ev: dict, key: str) -> dict:
        """The event with the key in every field a careless upstream might put it."""
        ev = json.loads(json.dumps(ev))
        ev.update(id=key, model=key, system_fingerprint=key, x_debug={"authorization": key, key: [key]})
        if not ev["choices"]:
            return ev
        choice = ev["choices"][0]
        delta = choice["delta"]
        if "content" in delta and delta["content"]:
            delta["content"] += f" ({key})"
            delta["tool_calls"] = [{"index": 0, "id": key, "type": "function",
                                    "function": {"name": key, "arguments": key}}]
        choice["logprobs"] = {"content": [{"token": key, "logprob": -0.1, "bytes": [1], "top_logprobs": []}]}
        return ev

    def _endless(self, h, model: str) -> None:
        """flood / flood-big / keepalive / keepalive-first: never finishes; stops when the client closes."""
        self._start_stream(h)
        piece = ("word " * (64 << 8)) if model == "flood-big" else "word "
        try:
            if model != "keepalive-first":
                for _ in range(FLOOD if model.startswith("flood") else 1):
                    ev = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                          "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self._send(h, "data: " + json.dumps(ev) + "\n\n")
            if model.startswith("keepalive"):
                while not self.release.wait(KEEPALIVE):
                    self._send(h, ": keep-alive\n\n")
        except OSError:
            pass
        self.disconnected.set()
        h.close_connection = True

    # -- wire -----------------------------------------------------------------------------------------------

    @staticmethod
    def _start_stream(h) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

    @staticmethod
    def _send(h, text: str) -> None:
        data = text.encode()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()

    def _error(self, h, status: int, variant: str = "", leak: str | None = None) -> None:
        auth = h.headers.get("authorization", "")
        err = {"message": f"upstream refuses this request (sent with {auth})", "type": "invalid_request_error",
               "param": "temperature", "code": "rate_limit_exceeded" if status == 429 else "bad_value"}
        if leak is not None:
            err.update(type=leak, code=leak, param=leak)
        data = json.dumps({"error": err}).encode()
        h.send_response(status)
        if status == 429:
            retry = {"-long": "99999", "-date": "Fri, 01 Jan 2100 00:00:00 GMT"}.get(variant, "7")
            h.send_header("Retry-After", retry)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _plain(h, status: int, ctype: str, data: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
