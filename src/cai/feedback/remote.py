"""A running ``cai serve`` as a scorer: the same ``score(conversations, responses)`` as a local one, over HTTP.

RL workers (verl's reward function, TRL's ``reward_funcs``) then need not load the model: each call posts the
conversations, rendered as ChatML transcripts (which the server splits back, ``cai.feedback.queries``), to
``POST /get_reward``. A 503 (the server's queue is full) is retried after its ``Retry-After``, a bounded number
of times; any other error is raised with the server's message. Standard library only (``urllib``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from cai.feedback.rewards import Conversation

API_KEY_ENV = "CAI_SERVE_API_KEY"


def chatml(conversation: Conversation, response: str) -> str:
    """``conversation`` then ``response`` as the assistant's turn, in ChatML (one text for /get_reward)."""
    turns = [*conversation, {"role": "assistant", "content": response}]
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)


class RemoteScorer:
    """Scores through ``cai serve`` at ``url`` (``http://host:port``, with or without ``/get_reward``).

    ``api_key``: sent as ``Authorization: Bearer``; ``None`` reads ``$CAI_SERVE_API_KEY`` (unset: no header).
    ``max_texts``: texts per request (keep it at or under the server's ``--max-texts``).
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 600.0, retries: int = 30,
                 max_texts: int = 256):
        url = url.rstrip("/")
        self.url = url if url.endswith("/get_reward") else url + "/get_reward"
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.timeout, self.retries, self.max_texts = timeout, retries, max_texts
        self.model_id = f"remote:{self.url}"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        queries = [chatml(list(c), r) for c, r in zip(conversations, responses, strict=True)]
        out: list[float] = []
        for start in range(0, len(queries), self.max_texts):
            out += self._post(queries[start:start + self.max_texts])
        return out

    def _post(self, queries: list[str]) -> list[float]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps({"query": queries}).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    rewards = json.loads(r.read())["rewards"]
                break
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code != 503 or attempt == self.retries:
                    raise RuntimeError(f"{self.url} answered {e.code}: {message}") from None
                time.sleep(float(e.headers.get("Retry-After") or 1))
        if len(rewards) != len(queries):
            raise RuntimeError(f"{self.url} returned {len(rewards)} rewards for {len(queries)} texts")
        return [float(x) for x in rewards]


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read()).get("error", "")
    except (json.JSONDecodeError, AttributeError, OSError):
        return error.reason
