"""The constitution as a verl reward: ``custom_reward_function.path`` points at this file.

verl loads this file by path and calls, per rollout (its ``naive`` reward manager and the reward loop)::

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)

or, with ``reward_model.reward_manager=batch``, once per batch::

    compute_score_batch(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=..., **reward_kwargs)

``solution_str`` is the decoded response only: the prompt it answers must come in ``extra_info`` (key
``prompt``, a string or a chat message list; ``prompt_key`` in ``reward_kwargs`` names another key), put
there by the data preparation. ``ground_truth`` and ``data_source`` are accepted and unused (the constitution
needs no reference answer).

Where the score comes from, set by ``custom_reward_function.reward_kwargs`` (or the environment):

* ``url`` (``$CAI_REWARD_URL``): a running ``cai serve reward|judge``; the GPU workers load nothing. Its API key
  is read from ``$CAI_SERVE_API_KEY``, never from the config;
* ``model`` (``$CAI_REWARD_MODEL``): a reward model directory from ``cai reward``, or a chat model judging by
  ``constitution`` (default ``general``), loaded once per process on first use.

Other keyword arguments verl adds (e.g. the reward loop's ``reward_router_address``) are ignored. Absolute
imports only: verl executes this file as a module of its own.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

URL_ENV, MODEL_ENV = "CAI_REWARD_URL", "CAI_REWARD_MODEL"


def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                  extra_info: dict | None = None, **reward_kwargs: Any) -> float:
    """verl's per-rollout reward: the cai score of ``solution_str`` as the answer to ``extra_info``'s prompt."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **reward_kwargs)[0]


def compute_score_batch(data_sources: Sequence = (), solution_strs: Sequence[str] = (), ground_truths: Sequence = (),
                        extra_infos: Sequence[dict | None] | None = None, **reward_kwargs: Any) -> list[float]:
    """verl's batch reward manager's call: one score per solution, in order (the batch scored together)."""
    from cai.feedback.rewards import as_conversation

    solutions = [str(s) for s in solution_strs]
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solutions)
    if len(infos) != len(solutions):
        raise ValueError(f"{len(solutions)} solution_strs but {len(infos)} extra_infos")
    prompt_key = reward_kwargs.get("prompt_key", "prompt")
    conversations = [as_conversation(_prompt(info, prompt_key, i)) for i, info in enumerate(infos)]
    scorer = _scorer(reward_kwargs.get("url") or os.environ.get(URL_ENV),
                     reward_kwargs.get("model") or os.environ.get(MODEL_ENV),
                     reward_kwargs.get("constitution", "general"))
    return [float(x) for x in scorer.score(conversations, solutions)]


def _prompt(extra_info, key: str, i: int):
    value = extra_info.get(key) if isinstance(extra_info, dict) else None
    if value is None or len(value) == 0:  # a chat prompt read from parquet is a numpy array: no truth value
        raise ValueError(f"rollout {i}: extra_info has no {key!r} (got {extra_info!r}); the constitution scores an "
                         "answer to a prompt: put the prompt (text or chat messages) in each row's "
                         f"extra_info[{key!r}] when preparing the data, or name the key that holds it with "
                         "reward_kwargs.prompt_key")
    return value if isinstance(value, str) else list(value)


@functools.lru_cache(maxsize=4)
def _scorer(url: str | None, model: str | None, constitution: str):
    """One scorer per configuration and process (a model loads once, on the first batch)."""
    if bool(url) == bool(model):
        raise ValueError(f"set exactly one of url (a running `cai serve`, or ${URL_ENV}) and model (a reward model "
                         f"directory or judge model, or ${MODEL_ENV}) in custom_reward_function.reward_kwargs; got "
                         f"url={url!r}, model={model!r}")
    if url:
        from cai.feedback.remote import RemoteScorer

        return RemoteScorer(url)
    from cai.feedback.rewards import load_scorer

    return load_scorer(model, constitution=constitution)
