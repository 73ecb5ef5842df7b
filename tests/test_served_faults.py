"""The served backend through a fault-injecting proxy (real HTTP on localhost): 429s, 500s and dropped
connections for a share of requests; the critique stage, resumed whenever retries run out, writes every
record exactly once."""

from __future__ import annotations

import json
import random
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import cai.backends.served as served
from cai.errors import ModelError
from test_served import FakeServer, _chat


class FaultyProxy:
    """Forwards POSTs to ``upstream``; request k fails (seeded) with 429 (15%), 500 (15%) or a dropped
    connection (10%). Counts what it did."""

    def __init__(self, upstream: str, seed: int = 0):
        self.counts = {"requests": 0, "429": 0, "500": 0, "dropped": 0, "forwarded": 0}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server name)
                data = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.counts["requests"] += 1
                    draw = random.Random(seed * 1_000_003 + proxy.counts["requests"]).random()
                fault = "429" if draw < 0.15 else "500" if draw < 0.30 else "dropped" if draw < 0.40 else None
                with proxy.lock:
                    proxy.counts[fault or "forwarded"] += 1
                if fault == "dropped":
                    self.close_connection = True  # no answer at all: the client sees the connection closed
                    return
                if fault:
                    status, body = int(fault), json.dumps({"error": "injected"}).encode()
                else:
                    req = urllib.request.Request(upstream + self.path[len("/v1"):], data=data,
                                                 headers={"Content-Type": "application/json"}, method="POST")
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, body = r.status, r.read()
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

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_every_record_arrives_exactly_once_through_a_faulty_proxy(tmp_path, monkeypatch):
    from cai.backends import load_backend
    from cai.constitution import load_constitution
    from cai.critique import CritiqueOptions, run_critique

    monkeypatch.setattr(served.time, "sleep", lambda s: None)
    upstream = FakeServer(lambda body: _chat(f"reply {len(body['messages'])} to {body['messages'][0]['content'][:20]}"))
    proxy = FaultyProxy(upstream.url)
    prompts = [(f"p{i}", f"Question number {i}?") for i in range(24)]
    try:
        backend = load_backend(f"openai:m@{proxy.url}")
        restarts = 0
        while True:
            try:
                run_critique(prompts, tmp_path / "c", backend=backend, constitution=load_constitution("seed"),
                             options=CritiqueOptions(rounds=1, max_new_tokens=8, chunk_size=4))
                break
            except ModelError:  # retries ran out on some request: the stage resumes where it stopped
                restarts += 1
                assert restarts < 20
    finally:
        proxy.close()
        upstream.close()
    ids = [json.loads(line)["id"] for line in (tmp_path / "c" / "records.jsonl").read_text().splitlines()]
    failed = proxy.counts["429"] + proxy.counts["500"] + proxy.counts["dropped"]
    print(f"faulty proxy: {proxy.counts}, failed {failed}, stage restarts {restarts}, records {len(ids)}, "
          f"duplicates {len(ids) - len(set(ids))}")
    assert sorted(ids) == sorted(pid for pid, _ in prompts)  # every record, exactly once
    assert proxy.counts["429"] and proxy.counts["500"] and proxy.counts["dropped"]
    assert proxy.counts["forwarded"] == len(upstream.bodies)


@pytest.mark.parametrize("status", [429, 500])
def test_a_failed_request_is_retried_then_reported(status, monkeypatch):
    monkeypatch.setattr(served.time, "sleep", lambda s: None)
    calls = []

    def always(body):
        calls.append(1)
        return status, {"error": "injected"}

    s = FakeServer(always)
    try:
        with pytest.raises(ModelError, match=f"HTTP {status}"):
            served.ServedBackend.from_spec(f"openai:m@{s.url}")._post({"model": "m"})
    finally:
        s.close()
    assert len(calls) == served.RETRIES + 1

