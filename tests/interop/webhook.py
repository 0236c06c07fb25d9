"""A loopback HTTP server that records the JSON bodies POSTed to it: the dead-letter webhook sink.

It responds to every POST with ``status`` (200 unless a test sets another) and records the
request whatever the status, so a test can count deliveries and retries alike. It runs in a background
thread and binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class WebhookPost:
    """One POST the receiver got: its path, headers, parsed JSON body and the status it returned."""

    at: float
    path: str
    headers: dict[str, str]
    body: Any
    status: int


class WebhookReceiver:
    """Records POSTs on ``url``. Use ``start()``/``stop()`` or the context manager."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self._posts: list[WebhookPost] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the webhook receiver is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    @property
    def posts(self) -> list[WebhookPost]:
        with self._lock:
            return list(self._posts)

    def bodies_for(self, job_id: str) -> list[Any]:
        """Return the bodies of the POSTs whose ``job_id`` field is job_id."""
        return [p.body for p in self.posts if isinstance(p.body, dict) and p.body.get("job_id") == job_id]

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                status = receiver.status
                receiver._record(
                    WebhookPost(time.time(), self.path, dict(self.headers.items()), body, status)
                )
                payload = b'{"ok": true}' if 200 <= status < 300 else b'{"ok": false}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output free of access log lines

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, post: WebhookPost) -> None:
        with self._lock:
            self._posts.append(post)
