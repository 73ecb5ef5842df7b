"""RLAIF preference data: sample response pairs from the policy and label them with the AI judge.

The stage, as in the CAI paper (sec. 4): for each prompt, sample K >= 2 responses from the policy;
drop empty and duplicate ones; form *all* pairs of what is left (K=2: one pair; K=3: three), since
generation is the expensive part and every extra comparison is cheap; judge every pair in both
orders under a principle from the constitution (``cai.feedback.judge``); write each pair, chosen side first,
as a TRL conversational preference row (``cai.records.PreferencePair``) with its soft label and
provenance.

Sample k of every prompt uses its own seed (derived from the run seed and k), so with a backend that
seeds each row from its prompt (the transformers backend does) a response depends only on the run
seed, k and the prompt: a resumed run reproduces what an uninterrupted one would have written.

Output in the run directory::

    pairs.jsonl     one PreferencePair per line, appended as prompts finish (resumable)
    responses.jsonl the sampled responses, appended before they are judged (a failed judge does not cost them)
    skipped.jsonl   prompts that gave fewer than two usable responses, with the reason

A re-run skips prompts already present in either file; a row torn by ``kill -9`` is dropped first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.feedback.contrastive import ContrastOptions
from cai.feedback.judge import Comparison, JudgeConfig, Judgement, choose_principles, judge, stable_seed
from cai.jsonl import append_records, read_records, repair
from cai.records import PreferencePair, Provenance

log = logging.getLogger(__name__)


class LabelConfig(BaseModel):
    """Sampling and judging settings of the label stage, and where its labels come from."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["judge", "constructed", "contrastive", "auto"] = Field("auto", description=(
        "judge: the AI judge labels sampled pairs; constructed: pairs by construction from the critique "
        "stage (cai.feedback.constructed); contrastive: the policy answers each RL prompt steered towards and "
        "against a principle (cai.feedback.contrastive); auto: the judge only if it passes label-free probes "
        "(cai.feedback.probes), else `fallback`"))
    fallback: Literal["constructed", "contrastive"] = Field("constructed", description=(
        "auto: the label source used when the judge fails the probes"))
    contrast: ContrastOptions = Field(default_factory=ContrastOptions, description="source contrastive: "
                                      "its prompts and which pairs it keeps")
    probe_prompts: int = Field(12, ge=1, description="auto: harmful and safe prompts each to probe the judge on")
    probe_threshold: float = Field(0.6, ge=0.5, le=1, description="auto: probe agreement the judge needs")
    p_constructed: float = Field(0.9, ge=0.5, le=1, description="p_chosen of constructed pairs")
    samples: int = Field(2, ge=2, description="responses sampled per prompt (K)")
    max_new_tokens: int = Field(256, ge=1, description="token budget of each sampled response")
    temperature: float = Field(0.7, gt=0.0, description="sampling temperature of the responses")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling threshold")
    seed: int = Field(0, description="seed of sampling and principle draws")
    chunk_size: int = Field(32, ge=1, description="prompts generated and judged per step (and per append)")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="how the judge asks and reads")


@dataclass
class LabelSummary:
    prompts: int = 0  # asked for, this run
    resumed: int = 0  # already done in an earlier run
    pairs: int = 0  # written this run
    without_pair: int = 0  # fewer than two usable responses
    dropped_responses: int = 0  # empty or duplicate
    p_chosen_sum: float = 0.0
    consistent: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("p_chosen_sum", "consistent")}
        out["mean_p_chosen"] = self.p_chosen_sum / self.pairs if self.pairs else None
        out["position_consistency"] = self.consistent / self.pairs if self.pairs else None
        return out


# ---- pairs -----------------------------------------------------------------------------------------


def usable_responses(texts: Sequence[str]) -> tuple[list[int], int]:
    """Indices of the responses to keep (non-empty, first of each duplicate) and how many were dropped.

    Duplicates are compared after collapsing whitespace.
    """
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(texts):
        key = " ".join(text.split())
        if key and key not in seen:
            seen.add(key)
            keep.append(i)
    return keep, len(texts) - len(keep)


def all_pairs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Every unordered pair (i, j), i before j: K responses give K*(K-1)/2 pairs."""
    return [(i, j) for n, i in enumerate(indices) for j in indices[n + 1:]]


@dataclass(frozen=True)
class _Owner:
    """Where a comparison came from: its prompt, which two samples, all of that prompt's samples."""

    prompt_id: str
    pair: tuple[int, int]
    conversation: list[dict[str, str]]
    responses: list[str]

    @property
    def id(self) -> str:
        return f"{self.prompt_id}/{self.pair[0]}-{self.pair[1]}"


def preference_row(owner: _Owner, j: Judgement, provenance: Provenance, judge_id: str) -> PreferencePair:
    """A judged pair as a TRL preference row, the side with p >= 0.5 as ``chosen``."""
    (ia, ib), responses = owner.pair, owner.responses
    a_is_chosen = j.p_a >= 0.5
    chosen, rejected = (responses[ia], responses[ib]) if a_is_chosen else (responses[ib], responses[ia])
    return PreferencePair(
        id=owner.id,
        prompt=owner.conversation,
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        p_chosen=j.p_a if a_is_chosen else 1.0 - j.p_a,
        p_a_first=j.p_a_first,
        p_a_second=j.p_a_second,
        position_consistent=j.consistent,
        principle_id="+".join(j.principle_ids),
        judge=judge_id,
        provenance=provenance.model_copy(update={"principle_ids": list(j.principle_ids)}),
        prompt_id=owner.prompt_id,
        a_is_chosen=a_is_chosen,  # response a = the one shown first in order 1 (p_a_* are about it)
        **({"judge_reasoning": list(j.reasoning)} if j.reasoning else {}),
    )


def plan_comparisons(rows: Sequence[Any], responses: Sequence[list[str]], constitution, config: LabelConfig
                     ) -> tuple[list[Comparison], list[_Owner], list[dict[str, str]], int]:
    """For each prompt's responses: (comparisons, their owners, prompts without a pair, responses dropped)."""
    comparisons, owners, skipped, dropped = [], [], [], 0
    for row, texts in zip(rows, responses, strict=True):
        keep, n_dropped = usable_responses(texts)
        dropped += n_dropped
        if len(keep) < 2:
            skipped.append({"prompt_id": row.id, "reason": f"{len(keep)} usable response(s) of {len(texts)}"})
            continue
        conversation = [{"role": "user", "content": row.prompt}]
        for ia, ib in all_pairs(keep):
            owner = _Owner(row.id, (ia, ib), conversation, list(texts))
            principles = choose_principles(constitution, owner.id, config.judge, seed=config.seed)
            comparisons.append(Comparison(conversation, texts[ia], texts[ib], principles))
            owners.append(owner)
    return comparisons, owners, skipped, dropped


def sample_responses(policy, prompts: Sequence[str], sampling, k: int) -> list[list[str]]:
    """``k`` responses per prompt: one batched ``generate`` call per sample index, each with its own seed
    (a backend that seeds rows from their prompt would give ``k`` copies from a single call)."""
    from dataclasses import replace

    conversations = [[{"role": "user", "content": p}] for p in prompts]
    by_sample = []
    for s in range(k):
        params = replace(sampling, seed=stable_seed(sampling.seed, f"sample-{s}"))
        completions = policy.generate(conversations, params, desc=f"sampling {s + 1}/{k}")
        by_sample.append([c.text for c in completions])
    return [[by_sample[s][n] for s in range(k)] for n in range(len(prompts))]


def kept_or_sampled(rows: Sequence[Any], policy, sampling, k: int, path: Path, sample=None) -> list[list[str]]:
    """``sample_responses`` for the rows whose responses ``path`` does not hold yet (same policy, sampling
    and k), appended there at once: a run that fails while judging does not sample them again. ``sample``:
    how to sample a list of rows (default: ``sample_responses`` with ``policy``)."""
    import json

    key = json.loads(json.dumps({"model": policy.model_id, "sampling": sampling.to_dict(), "samples": k}))
    repair(path)
    kept = {r["prompt_id"]: r["responses"] for r in read_records(path) if r.get("key") == key}
    todo = [r for r in rows if r.id not in kept]
    if todo:
        fresh = (sample or (lambda rows: sample_responses(policy, [r.prompt for r in rows], sampling, k)))(todo)
        append_records(path, [{"prompt_id": r.id, "key": key, "responses": texts}
                              for r, texts in zip(todo, fresh, strict=True)])
        kept.update({r.id: texts for r, texts in zip(todo, fresh, strict=True)})
    if len(todo) < len(rows):
        log.info("reusing the sampled responses of %d prompts from %s", len(rows) - len(todo), path)
    return [kept[r.id] for r in rows]


# ---- the stage ----------------------------------------------------------------------------------------


def finished_prompt_ids(out_dir: Path) -> set[str]:
    """Prompt ids with rows in pairs.jsonl or skipped.jsonl (torn last lines repaired first)."""
    done: set[str] = set()
    for name in ("pairs.jsonl", "skipped.jsonl"):
        path = out_dir / name
        repair(path)
        done.update(r["prompt_id"] for r in read_records(path) if "prompt_id" in r)
    return done


def label_prompts(rows: Sequence[Any], *, policy, judge_backend, constitution, out_dir: Path,
                  config: LabelConfig | None = None) -> LabelSummary:
    """Sample, pair, judge and append preference rows for ``rows`` (objects with ``.id``, ``.prompt``).

    ``policy`` and ``judge_backend`` are Backends (the same object when one model does both), or both the
    same ``cai.fanout.Workers`` holding (policy, judge) pairs: the chunks then run on Ray workers.
    """
    from cai.backends.base import SamplingParams
    from cai.fanout import Workers
    from cai.logs import progress

    config = config or LabelConfig()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = finished_prompt_ids(out_dir)
    todo = [r for r in rows if r.id not in done]
    summary = LabelSummary(prompts=len(rows), resumed=len(rows) - len(todo))
    if summary.resumed:
        log.info("resuming: %d of %d prompts already labelled in %s", summary.resumed, len(rows), out_dir)
    sampling = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, do_sample=True, seed=config.seed)
    on_workers = isinstance(policy, Workers)
    policy_id, judge_id = (policy.ask(lambda b: (b[0].model_id, b[1].model_id)) if on_workers
                           else (policy.model_id, judge_backend.model_id))
    provenance = Provenance(
        stage="label", constitution=constitution.ref(), model=policy_id,
        templates=config.judge.templates(), sampling=sampling.to_dict(), seed=config.seed,
        judge_model=judge_id,
        judge_config=config.judge.model_dump(mode="json", exclude={"system", "template", "answer_prefix"}),
        samples=config.samples,
    )
    if on_workers:
        _label_on_workers(todo, policy, constitution, out_dir, config, sampling, provenance, summary)
        return summary
    with progress(len(todo), "labelling prompts") as advance:
        for start in range(0, len(todo), config.chunk_size):
            chunk = todo[start:start + config.chunk_size]
            _label_chunk(chunk, policy, judge_backend, constitution, out_dir, config, sampling, provenance,
                         summary)
            advance(len(chunk))
    return summary


def _label_on_workers(todo, workers, constitution, out_dir: Path, config: LabelConfig, sampling,
                      provenance: Provenance, summary: LabelSummary) -> None:
    """The stage on Ray workers, each holding (policy, judge): first the responses of every prompt that has
    none kept (appended as chunks finish), then the pairs, judged chunk by chunk."""
    from cai.fanout import gather, map_chunks

    path = out_dir / "responses.jsonl"
    kept = kept_or_sampled(todo, workers, sampling, config.samples, path, sample=lambda rows: gather(
        workers, lambda b, c: sample_responses(b[0], [r.prompt for r in c], sampling, config.samples), rows,
        config.chunk_size)) if todo else []
    by_id = {r.id: texts for r, texts in zip(todo, kept, strict=True)}

    def judged(backends, chunk):
        comparisons, owners, skipped, dropped = plan_comparisons(chunk, [by_id[r.id] for r in chunk],
                                                                 constitution, config)
        judgements = judge(backends[1], comparisons, config.judge)
        return [preference_row(o, j, provenance, backends[1].model_id)
                for o, j in zip(owners, judgements, strict=True)], skipped, dropped

    for _, (records, skipped, dropped) in map_chunks(workers, judged, todo, config.chunk_size):
        _write_chunk(out_dir, records, skipped, dropped, summary)


def _label_chunk(chunk, policy, judge_backend, constitution, out_dir: Path, config: LabelConfig,
                 sampling, provenance: Provenance, summary: LabelSummary) -> None:
    """One step of the stage: K samples per prompt, pairs, both-order labels, one append."""
    # 1. sample K responses per prompt from the policy (kept in responses.jsonl as soon as they are made)
    responses = kept_or_sampled(chunk, policy, sampling, config.samples, out_dir / "responses.jsonl")
    # 2. keep non-empty, distinct responses; pair them all; a principle (or several) per pair
    comparisons, owners, skipped, dropped = plan_comparisons(chunk, responses, constitution, config)
    # 3. the AI label: each pair in both orders, one forward pass per order
    judgements = judge(judge_backend, comparisons, config.judge)
    records = [preference_row(o, j, provenance, judge_backend.model_id)
               for o, j in zip(owners, judgements, strict=True)]
    _write_chunk(out_dir, records, skipped, dropped, summary)


def _write_chunk(out_dir: Path, records: list[PreferencePair], skipped: list[dict[str, str]], dropped: int,
                 summary: LabelSummary) -> None:
    """Append a chunk's finished rows (whole lines, fsynced: a resume skips these prompts) and count them."""
    append_records(out_dir / "pairs.jsonl", records)
    append_records(out_dir / "skipped.jsonl", skipped)
    for s in skipped:
        log.warning("prompt %s: no pair (%s)", s["prompt_id"], s["reason"])
    summary.pairs += len(records)
    summary.without_pair += len(skipped)
    summary.dropped_responses += dropped
    summary.p_chosen_sum += sum(r.p_chosen for r in records)
    summary.consistent += sum(r.position_consistent for r in records)
