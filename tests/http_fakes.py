"""Local HTTP stand-ins for the served backend's tests: a fake OpenAI-compatible server and a proxy that
injects faults. Both are real HTTP on 127.0.0.1, each request answered on its own thread."""

from __future__ import annotations

import json
import random
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


class LocalHTTP:
    """POSTs answered by ``self.answer(path, data, headers) -> (status, bytes)``, or by no answer at all (the
    connection closed) when it returns None."""

    def __init__(self):
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server name)
                data = self.rfile.read(int(self.headers["Content-Length"]))
                answer = me.answer(self.path, data, dict(self.headers))
                if answer is None:
                    self.close_connection = True  # the client sees the connection closed
                    return
                status, body = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, data: bytes, headers: dict) -> tuple[int, bytes] | None:
        raise NotImplementedError

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeServer(LocalHTTP):
    """/v1/chat/completions and /v1/completions answered by ``respond(body) -> (status, reply)``; the
    requests kept in order (``bodies``, ``headers``, ``paths``)."""

    def __init__(self, respond):
        self.respond = respond
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.paths: list[str] = []
        super().__init__()

    def answer(self, path, data, headers):
        body = json.loads(data)
        self.bodies.append(body)
        self.headers.append(headers)
        self.paths.append(path)
        status, reply = self.respond(body) if path in ENDPOINTS else (404, {"error": "?"})
        return status, json.dumps(reply).encode()


class FaultyProxy(LocalHTTP):
    """Forwards POSTs to ``upstream``; request k fails (seeded) with 429 (15%), 500 (15%) or a dropped
    connection (10%). Counts what it did."""

    def __init__(self, upstream: str, seed: int = 0):
        self.upstream = upstream
        self.seed = seed
        self.counts = {"requests": 0, "429": 0, "500": 0, "dropped": 0, "forwarded": 0}
        self.lock = threading.Lock()
        super().__init__()

    def answer(self, path, data, headers):
        with self.lock:
            self.counts["requests"] += 1
            draw = random.Random(self.seed * 1_000_003 + self.counts["requests"]).random()
            fault = "429" if draw < 0.15 else "500" if draw < 0.30 else "dropped" if draw < 0.40 else None
            self.counts[fault or "forwarded"] += 1
        if fault == "dropped":
            return None
        if fault:
            return int(fault), json.dumps({"error": "injected"}).encode()
        req = urllib.request.Request(self.upstream + path[len("/v1"):], data=data,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read()
