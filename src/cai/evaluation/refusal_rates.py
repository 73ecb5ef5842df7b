"""Refusal and harm rates of models on prompt sets: each model replies to every prompt (greedy, seeded, so two
models are compared on the same draws) and a grader (``cai.evaluation.graders``; default the keyword check of
``cai.evaluation.refusals``) reads each reply."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def refusal_report(backend, sets: dict[str, Sequence[str]], *, max_new_tokens: int = 96, seed: int = 0,
                   temperature: float = 0.0, grader=None) -> dict[str, Any]:
    """Per prompt set: n, refusal rate and every (prompt, reply, refused) row. Greedy by default. ``backend``
    may be ``cai.fanout.Workers``: the prompts are then split over Ray workers. ``grader``
    (``cai.evaluation.graders``; default the keyword check) reads each reply: the rates are over the replies it
    could read, ``harmful_rate`` where it judges harm, and its unparseable outputs are counted."""
    from cai.backends.base import SamplingParams
    from cai.evaluation.graders import KeywordGrader, check_parsed, rate
    from cai.fanout import gather

    grader = grader or KeywordGrader()
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, do_sample=temperature > 0,
                            seed=seed)
    out: dict[str, Any] = {"model": backend.model_id, "sampling": params.to_dict(), "grader": grader.name,
                           "sets": {}}
    for name, prompts in sets.items():
        def replies_to(b, chunk, name=name):
            return [c.text for c in b.generate([[{"role": "user", "content": p}] for p in chunk], params,
                                               desc=f"replies ({name})")]

        replies = gather(backend, replies_to, list(prompts), max(1, len(prompts)))
        grades = grader.grade(list(zip(prompts, replies, strict=True)))
        out["sets"][name] = {
            "n": len(prompts), "refusal_rate": rate(grades, "refused"), "harmful_rate": rate(grades, "harmful"),
            "unparseable": check_parsed(grades, grader.name),
            "rows": [{"prompt": p, "reply": r, "refused": g.refused, "harmful": g.harmful, "verdict": g.verdict,
                      "score": g.score, "reason": g.reason}
                     for p, r, g in zip(prompts, replies, grades, strict=True)],
        }
    return out


def refusal_comparison(models: Iterable[tuple[str, Any]], sets: dict[str, Sequence[str]], *, max_new_tokens: int = 96,
                       seed: int = 0, grader=None) -> list[dict[str, Any]]:
    """``refusal_report`` for each (spec, backend) of ``models``, in order, each tagged with its spec. Give a
    generator to hold one model in memory at a time."""
    reports = []
    for spec, backend in models:
        reports.append({**refusal_report(backend, sets, max_new_tokens=max_new_tokens, seed=seed, grader=grader),
                        "model_spec": spec})
        del backend  # before the generator loads the next model: two models never share the memory
    return reports
