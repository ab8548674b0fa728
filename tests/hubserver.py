"""A loopback server that speaks the Hugging Face hub's file endpoints, for real huggingface_hub code to talk to.

GET /api/models/{owner}/{repo}/tree/{revision} lists a repository's files (``list_repo_tree``, one page).

HEAD/GET /{owner}/{repo}/resolve/{revision}/{path} with the headers huggingface_hub reads (X-Repo-Commit,
X-Linked-Etag = the sha256, X-Linked-Size, Content-Length), Range requests (206), and 404s with X-Error-Code.
``cut_next`` makes the next GET stop halfway, like a dropped connection; ``fail_after_cut`` also makes the
requests after it fail (the client then gives up).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PATH_RE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
TREE_RE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/?]+)")


class Hub:
    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_next = False
        self.fail_after_cut = False
        self.failing = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, path: str, data: bytes) -> str:
        self.files[(repo, path)] = data
        return hashlib.sha256(data).hexdigest()

    def close(self):
        self.server.shutdown()

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        rng = h.headers.get("Range")
        self.requests.append((h.command, h.path, rng))
        tree = TREE_RE.match(h.path)
        if tree:
            return self._tree(h, *tree.groups())
        m = PATH_RE.match(h.path.split("?")[0])
        repo, rev, path = m.groups() if m else (None, None, None)
        if self.failing and body:
            return self._error(h, 500, None)
        if not m or not any(r == repo for r, _ in self.files):
            return self._error(h, 404, "RepoNotFound")
        if rev not in ("main", COMMIT):
            return self._error(h, 404, "RevisionNotFound")
        data = self.files.get((repo, path))
        if data is None:
            return self._error(h, 404, "EntryNotFound")
        start = 0
        if rng and body:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        if self.cut_next:
            self.cut_next = False
            self.failing = self.fail_after_cut
            h.wfile.write(data[start:start + (len(data) - start) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data[start:])

    def _tree(self, h: BaseHTTPRequestHandler, repo: str, rev: str) -> None:
        if not any(r == repo for r, _ in self.files):
            return self._error(h, 404, "RepoNotFound")
        if rev not in ("main", COMMIT):
            return self._error(h, 404, "RevisionNotFound")
        listing = [{"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                   for (r, path), data in sorted(self.files.items()) if r == repo]
        raw = json.dumps(listing).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def _error(self, h, status: int, code: str | None) -> None:
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("Content-Length", "0")
        h.end_headers()
