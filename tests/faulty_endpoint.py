"""A loopback OpenAI-compatible chat endpoint that fails on purpose (the judge's fault catalogue).

``FaultyEndpoint(mode)`` serves ``POST /v1/chat/completions`` on 127.0.0.1 at an ephemeral port,
in a thread, and records every request (path, Authorization header). Modes:

    good            200, a reply "10"
    unparsable      200, a reply no protocol reads a score from
    first-good      the first request "10", every later one HTTP 500
    500, 429, 401, 404   that status, forever
    close           the connection closed without a response
    bad-json        200 with a body that is not JSON
    no-choices      200 with JSON lacking "choices"
    slow            a good reply after ``delay`` seconds (set judge.timeout below it)
    redirect        307 to ``redirect_to`` (another server: it must receive nothing)
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("good", "unparsable", "first-good", "500", "429", "401", "404", "close", "bad-json", "no-choices",
         "slow", "redirect")


def chat_reply(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class FaultyEndpoint:
    def __init__(self, mode: str = "good", *, delay: float = 2.0, redirect_to: str = ""):
        assert mode in MODES, mode
        self.mode, self.delay, self.redirect_to = mode, delay, redirect_to
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                n = endpoint._record(self.path, self.headers.get("Authorization"))
                endpoint._respond(self, n)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads, self.server.block_on_close = True, False  # a slow reply never holds shutdown
        # a client that gave up (timeout) makes the late write fail: not the test's concern, and its
        # traceback must not reach the stderr the catalogue inspects
        self.server.handle_error = lambda request, client_address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, path: str, auth: str | None) -> int:
        with self._lock:
            self.requests.append({"path": path, "auth": auth})
            return len(self.requests)

    def _respond(self, handler: BaseHTTPRequestHandler, n: int) -> None:
        mode = self.mode
        if mode == "close":
            return  # HTTP/1.0 handler: returning without a response closes the connection
        if mode == "slow":
            time.sleep(self.delay)
        status, body, headers = 200, chat_reply("10"), {}
        if mode == "unparsable":
            body = chat_reply("I cannot tell without seeing the image.")
        elif mode in ("500", "429", "401", "404") or (mode == "first-good" and n > 1):
            status, body = (500 if mode == "first-good" else int(mode)), b'{"error": "no"}'
        elif mode == "bad-json":
            body = b"<html>gateway error</html>"
        elif mode == "no-choices":
            body = b'{"id": "x", "object": "chat.completion"}'
        elif mode == "redirect":
            status, body, headers = 307, b"", {"Location": self.redirect_to}
        handler.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
