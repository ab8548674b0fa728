"""A loopback HTTP server that records each POST body it gets (one JSON file per request) and answers
``/responses`` with the smallest Responses stream a client accepts: used to record what Codex CLI really sends
(tests/data/codex_request.json). Run: ``python -m tests.capture_server DIR READY_FILE``."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _events(model: str) -> bytes:
    response = {"id": "resp_capture", "object": "response", "created_at": 0, "status": "completed", "model": model,
                "output": [{"id": "msg_capture", "type": "message", "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
                "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
    item = response["output"][0]
    events = [("response.created", {"response": {**response, "status": "in_progress", "output": []}}),
              ("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
              ("response.output_text.delta", {"output_index": 0, "item_id": "msg_capture", "content_index": 0,
                                              "delta": "ok"}),
              ("response.output_item.done", {"output_index": 0, "item": item}),
              ("response.completed", {"response": response})]
    return b"".join(f"event: {k}\ndata: {json.dumps({'type': k, 'sequence_number': i, **v})}\n\n".encode()
                    for i, (k, v) in enumerate(events))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [], "models": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        out: Path = self.server.out  # type: ignore[attr-defined]
        n = len(list(out.glob("*.json")))
        (out / f"{n:03d}.json").write_text(json.dumps({"path": self.path, "body": json.loads(raw or b"{}")},
                                                      indent=1))
        data = _events(json.loads(raw or b"{}").get("model", ""))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    out, ready = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.out = out  # type: ignore[attr-defined]
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(f"http://127.0.0.1:{server.server_address[1]}")
    tmp.rename(ready)
    server.serve_forever()


if __name__ == "__main__":
    main()
