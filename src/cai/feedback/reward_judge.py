"""A trained reward model as the judge: pointwise, order-free, one forward pass per response.

``cai label --judge DIR`` accepts a reward model saved by ``cai reward`` (a sequence-classification
head with one output). It scores each response with the conversation before it; for a pair (a, b) the
Bradley-Terry log-odds that a is better is ``reward(a) - reward(b)``. This is how "models the pipeline
trains from it" judge: e.g. a reward model trained on preferences by construction (revisions over the
answers they revised, ``cai.feedback.constructed``) labels new pairs without asking the chat model anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def is_reward_model_dir(spec: str | Path) -> bool:
    """True when ``spec`` is a saved model directory whose architecture is a sequence classifier."""
    config = Path(str(spec)).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        kinds = json.loads(config.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError):
        return False
    return any(str(k).endswith("ForSequenceClassification") for k in kinds)


class RewardJudge:
    """Scores (conversation, response) with a reward model; see the module docstring."""

    is_reward_model = True

    def __init__(self, model, tokenizer, model_id: str, *, batch_size: int = 16, max_length: int = 1024):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.batch_size, self.max_length = batch_size, max_length

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> RewardJudge:
        from cai.train.reward import load_reward_model

        model, tokenizer = load_reward_model(path, dtype="auto")  # bf16 where the CPU has it: scoring only
        return cls(model, tokenizer, str(path), **kwargs)

    def score(self, conversations: Sequence[list[dict[str, str]]], responses: Sequence[str]) -> list[float]:
        """Reward of ``responses[i]`` after ``conversations[i]``; batches grouped by length (less padding)."""
        from cai.train.reward import reward_input_ids, score_responses

        sizes = [len(reward_input_ids(self.tokenizer, list(c), r, self.max_length))
                 for c, r in zip(conversations, responses, strict=True)]
        order = sorted(range(len(responses)), key=lambda i: -sizes[i])
        scores = score_responses(self.model, self.tokenizer, [list(conversations[i]) for i in order],
                                 [responses[i] for i in order], batch_size=self.batch_size,
                                 max_length=self.max_length).tolist()
        out = [0.0] * len(responses)
        for i, s in zip(order, scores, strict=True):
            out[i] = float(s)
        return out
