"""A scorer (reward model or judge) behind HTTP, speaking OpenRLHF's remote reward protocol.

    POST /get_reward  {"query": [prompt + response texts], "prompts": [...], "labels": [...]}
                   -> {"rewards": [floats], "scores": [floats], "extra_logs": {}}
    GET  /health   -> {"status": "ok", "model": ..., "kind": "reward_model" | "judge"}
    GET  /metrics  -> Prometheus text format (``prometheus_client``)

``prompts`` and ``labels`` (sent by OpenRLHF's ``remote_rm_fn``) are optional; ``prompts`` helps split a
query whose template is not recognised (``cai.feedback.queries``); ``labels`` (reference answers for rule-based
rewards) and other extra keys are accepted and unused. ``scores`` repeats ``rewards`` (OpenRLHF reads it
for dynamic filtering).

Requests that arrive together are scored together: a single worker thread owns the model and drains
the queue of waiting requests into batches of up to ``batch_size`` texts (OpenRLHF sends one request
per micro-batch, often several at once). Under load the server holds rather than grows:

* the texts the server holds (waiting in its queue, or in the batch being scored) are bounded
  (``Limits.max_queue``): a request that would overflow it gets 503 with ``Retry-After`` (the seconds until
  enough batches should have ended to make room for it, at the last batch's pace), and nothing is kept of it.
  Counting the batch being scored bounds each answered request's wait: at most ``max_queue`` texts are ahead of
  it or beside it, so its latency is at most ``max_queue / throughput`` plus what one batch varies;
* a request with more than ``Limits.max_texts`` texts gets 413 naming the limit;
* a request not scored within ``Limits.timeout`` seconds gets 504 (and is dropped from the queue if it is still
  waiting); a client that sends its body slower than that is disconnected;
* a scoring error fails only the batch it happened in (500 to those requests); a malformed request gets 400
  (422 for a query that cannot be split into prompt and response) with ``{"error": "..."}`` naming the field;
  a client that disconnects is forgotten. None of these stops the worker.

With an API key every route but ``/health`` requires ``Authorization: Bearer KEY`` (401 otherwise); the key is
compared in constant time and never logged. Served with the standard library's threading HTTP server: the
protocol is three routes, not worth a web framework in the default install.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import math
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
# socket errors of a client that went away: its answer is dropped, the server carries on
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class RequestError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP status to reply with, ``headers`` extra ones."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass(frozen=True)
class Limits:
    """How much the server takes on: texts waiting in its queue, texts per request, seconds per request."""

    max_queue: int = 1024
    max_texts: int = 256
    timeout: float = 300.0

    def __post_init__(self):
        if self.max_texts < 1 or self.max_queue < self.max_texts:
            raise ValueError(f"the queue ({self.max_queue} texts) must hold at least one request of the largest "
                             f"size allowed ({self.max_texts} texts), and that size must be at least 1")
        if not self.timeout > 0:
            raise ValueError(f"the request timeout must be positive seconds, got {self.timeout}")


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


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several services can live in one process)."""

    def __init__(self, queue_depth):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("cai_serve_requests", "HTTP requests answered, by route and status (errors are the "
                                "statuses >= 400)", ["route", "status"], registry=self.registry)
        self.texts = Counter("cai_serve_texts_scored", "texts scored (answered or not)", registry=self.registry)
        self.batches = Histogram("cai_serve_batch_texts", "texts per scoring call", registry=self.registry,
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.latency = Histogram("cai_serve_request_seconds", "POST /get_reward, from the body read to the answer",
                                 registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.queue = Gauge("cai_serve_queue_texts", "texts waiting to be scored (not counting the batch being "
                           "scored)", registry=self.registry)
        self.queue.set_function(queue_depth)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Pending:
    """One admitted request: its (conversation, response) items and the future its handler waits on."""

    __slots__ = ("items", "done")

    def __init__(self, items):
        self.items, self.done = items, Future()


class RewardService:
    """Splits queries into (conversation, response) and scores them in batches on one worker thread."""

    def __init__(self, scorer, *, batch_size: int = 16, kind: str = "reward_model", limits: Limits | None = None):
        self.scorer, self.batch_size, self.kind = scorer, batch_size, kind
        self.limits = limits or Limits()
        tokenizer = getattr(scorer, "tokenizer", None)
        self.edge_tokens = tuple(t for t in (getattr(tokenizer, "pad_token", None),
                                             getattr(tokenizer, "eos_token", None)) if isinstance(t, str))
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._waiting_texts = 0
        self._scoring_texts = 0  # in the batch being scored: still held, counted against max_queue
        self._cond = threading.Condition()
        self._batch_seconds = 0.0  # how long the last batch took: the pace at which the queue makes room
        self.metrics = Metrics(lambda: self._waiting_texts)
        self._worker = threading.Thread(target=self._work, name="cai-scorer", daemon=True)
        self._worker.start()

    def health(self) -> dict:
        return {"status": "ok", "model": self.scorer.model_id, "kind": self.kind}

    def rewards(self, request: RewardRequest) -> dict:
        """Score one request (blocking until its batch is done); raises ``RequestError`` for what it refuses."""
        n = len(request.queries)
        if n > self.limits.max_texts:
            raise RequestError(413, f"{n} texts in one request; this server takes at most {self.limits.max_texts} "
                                    "per request (--max-texts): split the request")
        self._check_room(n)  # refuse a full server's request before the work of splitting it
        items = self._split(request)
        if not items:
            return {"rewards": [], "scores": [], "extra_logs": {}}
        pending = _Pending(items)
        self._admit(pending)
        try:
            rewards = pending.done.result(timeout=self.limits.timeout)
        except FutureTimeout:
            pending.done.cancel()  # still waiting: the worker skips it; already scoring: the answer is dropped
            raise RequestError(504, f"not scored within the server's {self.limits.timeout:g} s timeout "
                                    "(--timeout); the server is overloaded: retry later or send fewer texts") from None
        except CancelledError:
            raise RequestError(504, "the request was cancelled before it was scored") from None
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

    def _split(self, request: RewardRequest) -> list:
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
        return items

    def _check_room(self, n: int) -> None:
        """Raise 503 (with ``Retry-After``) when ``n`` more texts would overflow what the server holds; call
        with ``self._cond`` held to make the answer final."""
        held = self._waiting_texts + self._scoring_texts
        overflow = held + n - self.limits.max_queue
        if overflow > 0:
            # room comes a batch at a time, as each batch ends: retry once enough batches have ended
            retry = max(1, math.ceil(math.ceil(overflow / self.batch_size) * self._batch_seconds))
            raise RequestError(503, f"the queue is full ({self._waiting_texts} texts waiting, "
                                    f"{self._scoring_texts} being scored, at most {self.limits.max_queue} "
                                    f"held): retry in {retry} s", headers={"Retry-After": str(retry)})

    def _admit(self, pending: _Pending) -> None:
        """Queue ``pending``, or refuse it with 503 when its texts would overflow what the server holds."""
        n = len(pending.items)
        with self._cond:
            self._check_room(n)
            self._waiting.append(pending)
            self._waiting_texts += n
            self._cond.notify()

    def _next_batch(self) -> list[_Pending]:
        """Whole waiting requests, up to ``batch_size`` texts (at least one request); skips cancelled ones."""
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            batch, size = [], 0
            while self._waiting and (not batch or size + len(self._waiting[0].items) <= self.batch_size):
                pending = self._waiting.popleft()
                self._waiting_texts -= len(pending.items)
                if pending.done.set_running_or_notify_cancel():  # False: timed out while waiting
                    batch.append(pending)
                    size += len(pending.items)
            self._scoring_texts = size
            return batch

    def _work(self) -> None:
        """The worker loop: score each batch; a failure fails that batch's requests only."""
        while True:
            batch = self._next_batch()
            if batch:
                self._score(batch)

    def _release(self) -> None:
        """The batch being scored is done: its texts no longer count against ``max_queue``."""
        with self._cond:
            self._scoring_texts = 0

    def _score(self, batch: list[_Pending]) -> None:
        items = [item for pending in batch for item in pending.items]
        started = time.perf_counter()
        try:
            scores = self.scorer.score([c for c, _ in items], [r for _, r in items])
            if len(scores) != len(items):
                raise RuntimeError(f"the scorer returned {len(scores)} scores for {len(items)} texts")
        except Exception as e:  # every request of this batch learns of it; the worker keeps running
            log.exception("scoring a batch of %d texts failed", len(items))
            self._release()
            for pending in batch:
                pending.done.set_exception(e)
            return
        self._batch_seconds = time.perf_counter() - started
        self.metrics.batches.observe(len(items))
        self.metrics.texts.inc(len(items))
        self._release()  # before the answers: a client answered may send its next request at once
        start = 0
        for pending in batch:
            pending.done.set_result([float(s) for s in scores[start:start + len(pending.items)]])
            start += len(pending.items)


class _Handler(BaseHTTPRequestHandler):
    """The three routes; the service is the server's ``service`` attribute, the key its ``api_key``."""

    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.service.limits.timeout  # a client slower than this to send is dropped
        super().setup()

    def log_message(self, fmt, *args):  # into the log, not onto stderr line by line (request lines only)
        log.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self):
        route = self.path.rstrip("/")
        if route == "/health":
            self._reply(HTTPStatus.OK, self.server.service.health(), route=route)
        elif route == "/metrics":
            if self._authorized(route):
                body, content_type = self.server.service.metrics.render()
                self._send(HTTPStatus.OK, body, content_type, route=route)
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}; try GET /health or GET /metrics"},
                        route="other")

    def do_POST(self):
        route = self.path.rstrip("/")
        if route != "/get_reward":
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}; try POST /get_reward"},
                        route="other")
            return
        if not self._authorized(route):
            return
        service = self.server.service
        try:
            payload = self._json_body()
            started = time.perf_counter()
            body = service.rewards(parse_reward_request(payload))
            service.metrics.latency.observe(time.perf_counter() - started)
            self._reply(HTTPStatus.OK, body, route=route)
        except RequestError as e:
            self._reply(e.status, {"error": str(e)}, route=route, headers=e.headers)
        except CLIENT_GONE:
            self.close_connection = True
            service.metrics.requests.labels(route, "client_gone").inc()
        except Exception as e:
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"scoring failed: {e}"}, route=route)

    def _authorized(self, route: str) -> bool:
        """True when no key is set or the request carries it; otherwise answers 401 itself."""
        key = self.server.api_key
        if key is None:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
            return True
        self._reply(HTTPStatus.UNAUTHORIZED, {"error": "this server requires an API key: send the header "
                                                       "`Authorization: Bearer <key>`"},
                    route=route, headers={"WWW-Authenticate": 'Bearer realm="cai"'})
        return False

    def _json_body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError(400, "the Content-Length header is not a number") from None
        if length <= 0:
            raise RequestError(400, "empty body: send JSON {\"query\": [...]} with a Content-Length")
        if length > MAX_BODY_BYTES:
            raise RequestError(413, f"body of {length} bytes is over the {MAX_BODY_BYTES} byte limit")
        data = self.rfile.read(length)
        if len(data) < length:  # the client went away (or stalled past the timeout) mid-body
            raise ConnectionAbortedError(f"body ended after {len(data)} of {length} bytes")
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not valid JSON: {e}") from None

    def _reply(self, status: int, body: dict, *, route: str, headers: dict[str, str] | None = None) -> None:
        if status >= 400:
            self.close_connection = True  # an unread or bad body must not leak into the next request
        self._send(status, json.dumps(body).encode(), "application/json", route=route, headers=headers)

    def _send(self, status: int, data: bytes, content_type: str, *, route: str,
              headers: dict[str, str] | None = None) -> None:
        self.server.service.metrics.requests.labels(route, str(int(status))).inc()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except CLIENT_GONE:  # the client disconnected before its answer: nothing to tell it
            self.close_connection = True
            log.debug("client %s left before its %d answer", self.address_string(), status)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: a burst of rollout workers connecting at once (default 5)


def make_server(service: RewardService, host: str = "127.0.0.1", port: int = 5000, *,
                api_key: str | None = None) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) answering the protocol above for ``service`` (port 0: any free one);
    with ``api_key``, requests must carry ``Authorization: Bearer <api_key>``."""
    server = _Server((host, port), _Handler)
    server.service, server.api_key = service, api_key or None
    return server
