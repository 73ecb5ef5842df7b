"""The pipeline's closing stage: what the run changed, measured on the base and the final model alike.

Both models answer the same harmful prompts (refusals should rise) and safe prompts (they should not: that
is over-refusal), by default the held-out ``eval`` splits of the shipped sets, which no stage trains on,
greedy and seeded, checked by ``cai.evaluation.refusals``; optionally every harmful request is
also sent in each jailbreak template (``cai.evaluation.redteam``). The files are the ones ``cai refusals`` and
``cai redteam`` write, so ``cai report`` (run by the pipeline after this stage) reads them the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EvaluateOptions(BaseModel):
    """The evaluate stage: held-out prompt sets and how replies are generated."""

    model_config = ConfigDict(extra="forbid")
    harmful: str = Field("redteam:eval", description="harmful prompts: a shipped set's split or a prompt file")
    safe: str = Field("helpful:eval", description="safe prompts: a shipped set's split or a prompt file")
    limit: int | None = Field(None, ge=1, description="prompts of each set (None: all)")
    max_new_tokens: int = Field(64, ge=1, description="token budget of each reply")
    train_limit: int = Field(0, ge=0, description=(
        "also measure this many prompts of each shipped set's train split (harmful-train, safe-train), to "
        "compare held-out prompts with trained ones (0: none)"))
    redteam: bool = Field(False, description="also jailbreak success rates (7 templates a request: slower)")
    seed: int = Field(0, description="seed of sampling")


def eval_sets(options: EvaluateOptions) -> tuple[dict[str, list], dict[str, list[str]]]:
    """(the harmful and safe prompt rows, every set's prompt texts by name): the held-out sets, and with
    ``train_limit`` the shipped sets' training splits (harmful-train, safe-train)."""
    from cai.prompts import load_prompts, log_bad_rows

    rows = {}
    for name, source in (("harmful", options.harmful), ("safe", options.safe)):
        rows[name], bad = load_prompts(source, split="eval", limit=options.limit)
        log_bad_rows(bad)
    sets = {name: [r.prompt for r in rs] for name, rs in rows.items()}
    for name, source in (("harmful", options.harmful), ("safe", options.safe)):
        if options.train_limit and source.endswith(":eval"):  # a shipped set: its training split too
            trained, _ = load_prompts(source.removesuffix(":eval") + ":train", limit=options.train_limit)
            sets[f"{name}-train"] = [r.prompt for r in trained]
    return rows, sets


def evaluate(models: Sequence[str], out_dir: Path, options: EvaluateOptions, load: Callable[[str], Any],
             stages: dict[str, str] | None = None) -> dict[str, Any]:
    """Refusal rates (and jailbreak rates) of each model spec into ``out_dir``; ``load`` gives a backend.
    ``stages``: the stage that trained each model (its entry in refusals.json then carries ``stage`` and
    ``round`` 1; the base model, stage ``base`` and round 0)."""
    from cai.backends.base import SamplingParams
    from cai.evaluation.redteam import TEMPLATES, attack_models, attacks
    from cai.evaluation.refusals import refusal_comparison
    from cai.jsonl import write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, sets = eval_sets(options)
    reports = refusal_comparison(((spec, load(spec)) for spec in models), sets,
                                 max_new_tokens=options.max_new_tokens, seed=options.seed)
    if stages is not None:
        for r in reports:
            stage = stages.get(r["model_spec"], "base")
            r.update({"stage": stage, "round": 0 if stage == "base" else 1})
    write_atomic(out_dir / "refusals.json", json.dumps({"harmful": options.harmful, "safe": options.safe,
                                                        "models": reports}, indent=2) + "\n")
    summary = {r["model_spec"]: {"harmful_refusal": r["sets"]["harmful"]["refusal_rate"],
                                 "safe_refusal": r["sets"]["safe"]["refusal_rate"]} for r in reports}
    if options.redteam:
        params = SamplingParams(max_new_tokens=options.max_new_tokens, temperature=0.0, do_sample=False,
                                seed=options.seed)
        attacked = attack_models(models, attacks(rows["harmful"], TEMPLATES), out_dir / "redteam", params,
                                 templates=TEMPLATES, prompts=options.harmful, load=load)
        for spec, figures in attacked["models"].items():
            summary[spec]["attack_success"] = figures["overall"]["asr"]
    return summary


# ---- rounds and seeds -------------------------------------------------------------------------------


def evaluate_rounds(base: str, models: Sequence[dict], out_dir: Path, options: EvaluateOptions,
                    load: Callable[[str], Any]) -> dict[str, Any]:
    """Refusal rates of the base and of every model a multi-round run trained (``cai.rounds``), into
    ``out_dir``/refusals.json: ``models`` in order (base, then each round's SFT and RL models, the final
    last), each trained one with its ``stage``, ``round``, its ``seeds`` (each seed's figures) and their mean
    and spread in ``sets``; ``differences``: each round's RL model over its SFT model, per seed and as a mean
    over seeds, with paired bootstrap intervals (the same prompts, both models). Each model's replies are
    kept in ``out_dir``/models/ as soon as it is measured, so a resumed stage measures only the rest."""
    from cai.evaluation.refusals import refusal_report
    from cai.jsonl import write_atomic

    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    _, sets = eval_sets(options)
    key = {"sets": sets, "max_new_tokens": options.max_new_tokens, "seed": options.seed}
    reports = {}
    for spec in dict.fromkeys([base, *(m["model"] for m in models)]):
        path = out_dir / "models" / f"{_digest(spec)}.json"
        kept = json.loads(path.read_text()) if path.exists() else None
        if kept is None or kept.get("key") != key:
            kept = {"key": key, "report": {**refusal_report(load(spec), sets, max_new_tokens=options.max_new_tokens,
                                                            seed=options.seed), "model_spec": spec}}
            write_atomic(path, json.dumps(kept) + "\n")
        reports[spec] = kept["report"]
    entries = [{**reports[base], "stage": "base", "round": 0}]
    for group in _groups(models):
        entries.append(seed_entry(group, reports))
    differences = rl_over_sft(entries, options.seed)
    write_atomic(out_dir / "refusals.json", json.dumps({"harmful": options.harmful, "safe": options.safe,
                                                        "models": entries, "differences": differences},
                                                       indent=2) + "\n")
    return {f"round {e['round']} {e['stage']}" if e["round"] else "base": {
        "harmful_refusal": e["sets"]["harmful"]["refusal_rate"], "safe_refusal": e["sets"]["safe"]["refusal_rate"],
        **({"seeds": len(e["seeds"])} if "seeds" in e else {})} for e in entries}


def _digest(spec: str) -> str:
    import hashlib

    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _groups(models: Sequence[dict]) -> list[list[dict]]:
    """The trained models grouped by (round, stage), in the order they were trained."""
    groups: dict = {}
    for m in models:
        groups.setdefault((m["round"], m["stage"]), []).append(m)
    return list(groups.values())


def seed_entry(group: Sequence[dict], reports: dict[str, dict]) -> dict[str, Any]:
    """One trained model's entry: a shared model (seed None) as a plain report; seeded ones with ``seeds``
    (each seed's report) and ``sets`` holding the mean refusal rate over seeds, its spread and range."""
    import statistics

    first = group[0]
    if len(group) == 1 and first["seed"] is None:
        return {**reports[first["model"]], "stage": first["stage"], "round": first["round"]}
    seeds = [{"seed": m["seed"], "model_spec": m["model"], "sets": reports[m["model"]]["sets"]} for m in group]
    sets = {}
    for name in seeds[0]["sets"]:
        rates = [s["sets"][name]["refusal_rate"] for s in seeds]
        sets[name] = {"n": seeds[0]["sets"][name]["n"], "refusal_rate": statistics.fmean(rates),
                      "std": statistics.stdev(rates) if len(rates) > 1 else 0.0, "min": min(rates),
                      "max": max(rates), "seeds": len(rates)}
    return {"model_spec": first["model"], "stage": first["stage"], "round": first["round"], "seeds": seeds,
            "sets": sets}


def rl_over_sft(entries: Sequence[dict], seed: int = 0, samples: int = 2000) -> list[dict[str, Any]]:
    """Per round and prompt set: the RL model's refusal rate minus its SFT model's, per seed (against that
    seed's SFT model, or the shared one) and as the mean over seeds, each with a paired bootstrap 95% interval."""
    out = []
    for rl in entries:
        if rl["stage"] in ("base", "sft"):
            continue
        sft = [e for e in entries if e["round"] == rl["round"] and e["stage"] == "sft"]
        if not sft:
            continue
        sft = sft[-1]
        for name in rl["sets"]:
            per_seed = []
            for s in rl.get("seeds") or [{"seed": None, "sets": rl["sets"]}]:
                before = next((x for x in sft.get("seeds") or [] if x["seed"] == s["seed"]), sft)
                a = [r["refused"] for r in s["sets"][name]["rows"]]
                b = [r["refused"] for r in before["sets"][name]["rows"]]
                per_seed.append((s["seed"], [float(x) - float(y) for x, y in zip(a, b, strict=True)]))
            mean, lo, hi = paired_bootstrap([d for _, d in per_seed], samples=samples, seed=seed)
            out.append({"round": rl["round"], "stage": rl["stage"], "set": name, "mean": mean, "ci95": [lo, hi],
                        "per_seed": [_one(s, d, samples, seed) for s, d in per_seed]})
    return out


def _one(seed_of_run, diffs: list[float], samples: int, seed: int) -> dict[str, Any]:
    mean, lo, hi = paired_bootstrap([diffs], samples=samples, seed=seed)
    return {"seed": seed_of_run, "difference": mean, "ci95": [lo, hi]}


def paired_bootstrap(diffs: Sequence[Sequence[float]], samples: int = 2000, seed: int = 0
                     ) -> tuple[float, float, float]:
    """(mean, 2.5th and 97.5th percentiles) of the mean over seeds of each seed's mean per-prompt difference,
    resampling the prompts (the same draw for every seed: the prompts are shared). ``diffs``: one list per
    seed of per-prompt differences, all the same length."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)  # (seeds, prompts)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.shape[1], size=(samples, d.shape[1]))
    means = d[:, idx].mean(axis=2).mean(axis=0)  # (samples,)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
