"""A scorer (reward model or judge) behind HTTP, speaking OpenRLHF's remote reward protocol.

    POST /get_reward  {"query": [prompt + response texts], "prompts": [...], "labels": [...]}
                   -> {"rewards": [floats], "scores": [floats], "extra_logs": {}}
    GET  /health   -> {"status": "ok", "model": ..., "kind": "reward_model" | "judge"}

``prompts`` and ``labels`` (sent by newer OpenRLHF versions) are optional; ``prompts`` helps split a
query whose template is not recognised (``cai.feedback.queries``); ``labels`` (reference answers for rule-based
rewards) and other extra keys are accepted and unused. ``scores`` repeats ``rewards`` (OpenRLHF reads it
for dynamic filtering). A malformed request gets 400 (or 422 for a query that cannot be split into
prompt and response) with ``{"error": "..."}`` saying which field or query is wrong.

Requests that arrive together are scored together: a single worker thread owns the model and drains
the queue of waiting requests into batches of up to ``batch_size`` texts (OpenRLHF sends one request
per micro-batch, often several at once). Served with the standard library's threading HTTP server:
the protocol is two routes, not worth a web framework in the default install.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024


class RequestError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP status to reply with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RewardRequest:
    queries: list[str]
    prompts: list[str] | None


def parse_reward_request(payload) -> RewardRequest:
    """Check a decoded /get_reward body; raises ``RequestError(400, ...)`` naming the bad field."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object with a `query` list, got {type(payload).__name__}")
    if "query" not in payload:
        raise RequestError(400, f"missing field `query` (a list of prompt + response texts); got fields "
                                f"{sorted(payload)}")
    queries = payload["query"]
    if isinstance(queries, str):
        queries = [queries]
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise RequestError(400, "`query` must be a list of strings (prompt + response texts)")
    prompts = payload.get("prompts")
    if prompts is not None:
        if not isinstance(prompts, list) or len(prompts) != len(queries):
            raise RequestError(400, f"`prompts` must be a list as long as `query` ({len(queries)})")
        prompts = [p if isinstance(p, str) else None for p in prompts]
    return RewardRequest(queries, prompts)


class RewardService:
    """Splits queries into (conversation, response) and scores them in batches on one worker thread."""

    def __init__(self, scorer, *, batch_size: int = 16, kind: str = "reward_model"):
        self.scorer, self.batch_size, self.kind = scorer, batch_size, kind
        tokenizer = getattr(scorer, "tokenizer", None)
        self.edge_tokens = tuple(t for t in (getattr(tokenizer, "pad_token", None),
                                             getattr(tokenizer, "eos_token", None)) if isinstance(t, str))
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="cai-scorer", daemon=True)
        self._worker.start()
        self.served = 0

    def health(self) -> dict:
        return {"status": "ok", "model": self.scorer.model_id, "kind": self.kind}

    def rewards(self, request: RewardRequest) -> dict:
        from cai.feedback.queries import split_query

        items = []
        for i, text in enumerate(request.queries):
            prompt = request.prompts[i] if request.prompts else None
            split = split_query(text, prompt, extra_edge_tokens=self.edge_tokens)
            if split is None:
                raise RequestError(422, f"query {i} cannot be split into prompt and response: it is not a ChatML, "
                                        "Llama 3, Gemma or 'Human: ... Assistant: ...' transcript ending with the "
                                        "assistant's turn, and no `prompts` entry it starts with was sent "
                                        f"(starts: {text[:80]!r})")
            items.append(split)
        if not items:
            return {"rewards": [], "scores": [], "extra_logs": {}}
        done: Future = Future()
        self._queue.put((items, done))
        rewards = done.result()
        self.served += len(rewards)
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

    def _work(self) -> None:
        """Score waiting requests together, up to ``batch_size`` texts per call (always whole requests)."""
        while True:
            batch = [self._queue.get()]
            size = len(batch[0][0])
            while size < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(nxt)
                size += len(nxt[0])
            items = [item for request, _ in batch for item in request]
            try:
                scores = self.scorer.score([c for c, _ in items], [r for _, r in items])
            except Exception as e:  # every waiting request learns of it; the server keeps running
                log.exception("scoring failed")
                for _, done in batch:
                    done.set_exception(e)
                continue
            start = 0
            for request, done in batch:
                done.set_result([float(s) for s in scores[start:start + len(request)]])
                start += len(request)


class _Handler(BaseHTTPRequestHandler):
    """The two routes; the service is the server's ``service`` attribute."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # into the log, not onto stderr line by line
        log.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            self._reply(HTTPStatus.OK, self.server.service.health())
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}; try GET /health"})

    def do_POST(self):
        if self.path.rstrip("/") != "/get_reward":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}; try POST /get_reward"})
            return
        try:
            payload = self._json_body()
            self._reply(HTTPStatus.OK, self.server.service.rewards(parse_reward_request(payload)))
        except RequestError as e:
            self._reply(e.status, {"error": str(e)})
        except Exception as e:
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"scoring failed: {e}"})

    def _json_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            raise RequestError(400, "empty body: send JSON {\"query\": [...]} with a Content-Length")
        if length > MAX_BODY_BYTES:
            raise RequestError(413, f"body of {length} bytes is over the {MAX_BODY_BYTES} byte limit")
        try:
            return json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not valid JSON: {e}") from None

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        if status >= 400:
            self.close_connection = True  # an unread or bad body must not leak into the next request
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(service: RewardService, host: str = "127.0.0.1", port: int = 5000) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) answering the protocol above for ``service`` (port 0: any free one)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.service = service
    return server
