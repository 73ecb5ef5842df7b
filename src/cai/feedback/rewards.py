"""The constitution as a reward for other RL engines: one score per (conversation, response).

Two scorers, one method (``score(conversations, responses) -> list[float]``):

* a reward model saved by ``cai reward`` (``cai.feedback.reward_judge.RewardJudge``): its scalar output;
* the judge (``JudgeScorer``): the pointwise judge's log-odds that the response is good by the
  constitution's preference principles, averaged over the principles that judge it. Every response to
  one conversation is judged under the same principles (drawn from the conversation's text and the seed),
  so the completions of a GRPO/RLOO group are compared on one footing. The judge's length control is a
  per-batch regression over pairs and does not apply to single responses.

``trl_reward_function(scorer)`` wraps either in the signature of TRL's online trainers
(``reward_funcs``: ``f(prompts, completions, **kwargs) -> list[float]``), for prompts and completions in
TRL's conversational form (message lists) or standard form (strings).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

Conversation = list[dict[str, str]]


class Scorer(Protocol):
    model_id: str

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]: ...


class JudgeScorer:
    """The pointwise judge of ``cai.feedback.judge`` as a reward (see the module docstring)."""

    def __init__(self, backend, constitution, config=None, *, seed: int = 0):
        from cai.feedback.judge import JudgeConfig, judging_principles

        self.backend, self.constitution, self.seed = backend, constitution, seed
        self.config = (config or JudgeConfig()).model_copy(update={"mode": "pointwise"})
        judging_principles(constitution)  # fails now, not at the first request, if none can judge
        self.model_id = f"judge:{backend.model_id}"
        self.tokenizer = getattr(backend, "tokenizer", None)

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        from cai.feedback.judge import choose_principles, pointwise_scores

        items = [(list(c), r, choose_principles(self.constitution, json.dumps(c), self.config, seed=self.seed))
                 for c, r in zip(conversations, responses, strict=True)]
        return pointwise_scores(self.backend, items, self.config)


def load_scorer(spec: str | Path, *, kind: str = "auto", constitution: str = "general", principles: str = "ensemble",
                dtype: str = "auto", seed: int = 0, batch_size: int = 16) -> Scorer:
    """Load what scores responses: a reward model, or the constitution's pointwise judge.

    Args:
        spec: a reward model directory (``cai reward``), or any model spec for the judge.
        kind: ``reward_model`` or ``judge`` to insist on one (a missing reward model is then reported as
            such), ``auto`` to tell by the directory.
        constitution: the judge's constitution (file or shipped name).
        principles: the judge's principles per response, ``single`` or ``ensemble`` (see ``cai.feedback.judge``).
        dtype: the model's precision.
        seed: the seed of principle draws.
        batch_size: responses scored together.

    Returns:
        A ``Scorer``: ``score(conversations, responses) -> list[float]``.
    """
    from cai.feedback.reward_judge import RewardJudge, is_reward_model_dir

    if kind == "reward_model" or (kind == "auto" and is_reward_model_dir(spec)):
        return RewardJudge.load(spec, batch_size=batch_size)
    from cai.backends import load_backend
    from cai.constitution import load_constitution
    from cai.feedback.judge import JudgeConfig

    backend = load_backend(str(spec), dtype=dtype)
    return JudgeScorer(backend, load_constitution(constitution), JudgeConfig(principles=principles), seed=seed)


def trl_reward_function(scorer: Scorer, name: str | None = None) -> Callable[..., list[float]]:
    """A reward function with TRL's ``reward_funcs`` signature, backed by ``scorer``.

    Args:
        scorer: from ``load_scorer``.
        name: the name TRL logs the reward under (default: the scorer's).

    Returns:
        ``f(prompts, completions, **kwargs) -> list[float]``, for plain-text or conversational data.
    """

    def reward(prompts: list, completions: list, **_: Any) -> list[float]:
        conversations = [as_conversation(p) for p in prompts]
        responses = [completion_text(c) for c in completions]
        return [float(x) for x in scorer.score(conversations, responses)]

    reward.__name__ = name or "cai_" + ("reward_model" if getattr(scorer, "is_reward_model", False) else "judge")
    return reward


def as_conversation(prompt: str | Conversation) -> Conversation:
    """A TRL prompt (a message list, or a plain string: one user turn) as chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def completion_text(completion: str | Conversation) -> str:
    """A TRL completion (a string, or a message list whose last turn is the assistant's) as text."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""
