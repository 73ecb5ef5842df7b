"""A model behind an OpenAI-compatible server as a backend: vLLM, SGLang, llama.cpp's server, TGI, ...

Spec: ``openai:MODEL@BASE_URL``, e.g. ``openai:Qwen/Qwen2.5-7B-Instruct@http://gpu-box:8000/v1``; without
``@BASE_URL`` the URL comes from ``$OPENAI_BASE_URL``, else ``http://localhost:8000/v1``. ``$OPENAI_API_KEY``
is sent as a bearer token when set. Any command that takes ``--judge`` or ``--policy`` for generation
accepts it (training needs local weights).

* ``generate``: one ``/chat/completions`` request per conversation, up to ``concurrency`` in flight (the
  server batches them). Each request is seeded from the run seed and its conversation, as the local backend
  seeds each row from its prompt, so the same prompt and seed give the same draw whatever else is batched.
* ``option_logprobs``: the judge's reading, one request per conversation with ``max_tokens=1`` and the
  ``top_logprobs`` of that token. The answer prefix must be *continued*, not closed as a finished turn.
  When MODEL names a model on this machine (the embedded name, a model directory, a ``.gguf`` file), cai
  renders the chat template and the prefix itself, as the local backend does, and sends that text to
  ``/completions``, which every OpenAI-compatible server has; the judge also counts tokens with that
  tokenizer (truncation, length control), so its readings are the local backend's on the same model.
  Otherwise the prefix goes as the start of the assistant's turn to ``/chat/completions`` with
  ``continue_final_message`` (a vLLM extension). llama-cpp-python's server ignores it: it closes the
  prefix as a finished turn and opens a new one, so the "answer" read is the first token of a fresh reply
  (the embedded judge then chose slot A on every pair). Name a local model there (llama.cpp serves one
  model whatever name is asked for; it must be the one named). An option's probability is the sum over
  the returned tokens that spell it (``A``, `` A``, ``(A``), renormalised over the options. An option
  outside the top entries gets the smallest returned probability, an upper bound; when no option is among
  them the reading fails with a clear error.

Plain HTTP with the standard library: no client package needed. Failed requests (connection errors,
429 and 5xx) are retried with backoff; other errors stop with the server's message. Why not the ``openai``
client: it would do the job (its retries cover the same cases, it sends ``logprobs`` to ``/completions``
and ``continue_final_message`` in ``extra_body``), but it is an optional extra whose import
(httpx, anyio, the whole API's types) slows the start of every command that names a server, against one
function of ``urllib`` whose backoff the tests can skip. ``tests/test_served_faults.py`` and
``tests/test_llama_server.py`` put this backend behind a proxy that injects 429s, 500s and dropped
connections.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from cai.backends.base import Completion, Conversation, SamplingParams
from cai.errors import ModelError

PREFIX = "openai:"
DEFAULT_URL = "http://localhost:8000/v1"
TOP_LOGPROBS = 20
RETRIES = 3


def is_served(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, str]:
    """(model, base URL) of ``openai:MODEL[@BASE_URL]``."""
    body = spec[len(PREFIX):]
    at = body.find("@http")
    model, url = (body[:at], body[at + 1:]) if at >= 0 else (body, "")
    url = url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL
    if not model:
        raise ModelError(f"no model name in {spec!r}", fix="write openai:MODEL@http://host:port/v1")
    if not url.startswith(("http://", "https://")):
        raise ModelError(f"the server URL {url!r} is not http(s)", fix="write openai:MODEL@http://host:port/v1")
    return model, url.rstrip("/")


def request_seed(seed: int, conversation: Conversation) -> int:
    """A per-request seed: the run seed mixed with a hash of the conversation (31 bits: servers differ)."""
    h = hashlib.sha256(f"{seed}:{json.dumps(conversation, sort_keys=True)}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFF_FFFF


def spells(token: str, option: str) -> bool:
    """Whether a returned token spells ``option`` (leading spaces and an opening parenthesis allowed)."""
    return token.strip().lstrip("(").strip() == option


def local_tokenizer(model: str):
    """The tokenizer of ``model`` when it names a model on this machine (the embedded name, a model directory,
    a ``.gguf`` file), else None. Hub ids are not looked up: a served model is often not on this machine."""
    from pathlib import Path

    from cai import models

    if model.lower() not in models.EMBEDDED_ALIASES and not Path(model).exists():
        return None
    from cai.backends.light_tokenizer import LightTokenizer

    source = models.resolve(model)
    return LightTokenizer.load(source.path) or models.load_tokenizer(source)


def option_reading(top: Sequence[dict], options: Sequence[str]) -> list[float]:
    """Log-probs over ``options`` (renormalised) from one position's ``top_logprobs`` entries."""
    if not top:
        raise ModelError("the server returned no top_logprobs", fix="use a server that supports logprobs")
    floor = min(math.exp(t["logprob"]) for t in top)
    mass = [sum(math.exp(t["logprob"]) for t in top if spells(t["token"], o)) for o in options]
    if not any(mass):
        raise ModelError(f"none of the options {list(options)} is among the judge's top {len(top)} next tokens",
                         fix="check that the judge follows the answer format, or use a local judge")
    mass = [m or floor for m in mass]
    total = sum(mass)
    return [math.log(m / total) for m in mass]


class ServedBackend:
    """Generation and judge readings from an OpenAI-compatible server (see the module docstring)."""

    def __init__(self, model: str, base_url: str, *, api_key: str | None = None, timeout: float = 120.0,
                 concurrency: int = 16, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer  # the model's, when known here: the judge's prompts are then rendered here
        self.base_url = base_url
        self.model_id = f"{PREFIX}{model}@{base_url}"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.concurrency = concurrency

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> ServedBackend:
        model, url = parse_spec(spec)
        kwargs.setdefault("tokenizer", local_tokenizer(model))
        return cls(model, url, **kwargs)

    # ---- HTTP ----------------------------------------------------------------------------------------

    def _post(self, body: dict, endpoint: str = "chat/completions") -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/{endpoint}"
        for attempt in range(RETRIES + 1):
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                if e.code != 429 and e.code < 500 or attempt == RETRIES:
                    raise ModelError(f"{url} answered HTTP {e.code}: {detail}",
                                     fix="check the model name, the request options and the server's log") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == RETRIES:
                    raise ModelError(f"cannot reach {url} ({getattr(e, 'reason', e)})",
                                     fix="start the server, or give its URL: openai:MODEL@http://host:port/v1"
                                     ) from None
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _map(self, fn, items: Sequence, desc: str) -> list:
        from cai.logs import progress

        out = [None] * len(items)
        with progress(len(items), desc) as advance, ThreadPoolExecutor(self.concurrency) as pool:
            futures = [(k, pool.submit(fn, item)) for k, item in enumerate(items)]
            for k, f in futures:
                out[k] = f.result()
                advance(1)
        return out

    # ---- the backend contract ------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams, *,
                 desc: str = "generating") -> list[Completion]:
        def one(conv: Conversation) -> Completion:
            body = {"model": self.model, "messages": list(conv), "max_tokens": params.max_new_tokens,
                    "temperature": params.temperature if params.do_sample else 0.0, "top_p": params.top_p,
                    "seed": request_seed(params.seed, conv)}
            if params.stop:
                body["stop"] = list(params.stop)
            reply = self._post(body)
            choice, usage = reply["choices"][0], reply.get("usage") or {}
            return Completion(text=(choice["message"].get("content") or "").strip(),
                              prompt_tokens=usage.get("prompt_tokens", 0),
                              completion_tokens=usage.get("completion_tokens", 0),
                              finish_reason="length" if choice.get("finish_reason") == "length" else "stop")

        return self._map(one, list(conversations), desc)

    def option_logprobs(self, conversations: Sequence[Conversation], prefix: str, options: Sequence[str]
                        ) -> list[list[float]]:
        if self.tokenizer is not None:
            return self._completion_logprobs(conversations, prefix, options)

        def one(conv: Conversation) -> list[float]:
            body = {"model": self.model, "messages": [*conv, {"role": "assistant", "content": prefix}],
                    "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS,
                    "continue_final_message": True, "add_generation_prompt": False}
            content = (self._post(body)["choices"][0].get("logprobs") or {}).get("content") or []
            return option_reading(content[0].get("top_logprobs", []) if content else [], options)

        return self._map(one, list(conversations), "scoring")

    def _completion_logprobs(self, conversations: Sequence[Conversation], prefix: str, options: Sequence[str]
                             ) -> list[list[float]]:
        """``option_logprobs`` from ``/completions``: the prompt rendered here as the local backend renders it
        (chat template, assistant turn opened, prefix), so no server template is involved. It goes as text:
        llama-cpp-python's server takes no token ids there, and tokenizes special tokens in text."""

        def one(conv: Conversation) -> list[float]:
            text = self.tokenizer.apply_chat_template(list(conv), add_generation_prompt=True, tokenize=False)
            body = {"model": self.model, "prompt": text + prefix, "max_tokens": 1, "temperature": 0.0,
                    "logprobs": TOP_LOGPROBS}
            top = ((self._post(body, "completions")["choices"][0].get("logprobs") or {}).get("top_logprobs")
                   or [None])[0] or {}
            return option_reading([{"token": t, "logprob": lp} for t, lp in top.items()], options)

        return self._map(one, list(conversations), "scoring")
