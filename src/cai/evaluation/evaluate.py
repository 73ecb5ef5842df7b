"""The pipeline's closing stage: what the run changed, measured on the base and the final model alike.

Both models answer the same harmful prompts (refusals should rise) and safe prompts (they should not: that
is over-refusal), by default the held-out ``eval`` splits of the shipped sets, which no stage trains on,
greedy and seeded, checked by ``cai.evaluation.refusals``; optionally every harmful request is
also sent in each jailbreak template (``cai.evaluation.redteam``), and named benchmarks run
(``cai.evaluation.benchmarks``, the ``benchmarks`` key). A grader other than the keyword check (``grader``)
reads the replies, its agreement with the labelled replies saved beside the figures. The files are the ones
``cai refusals``, ``cai redteam`` and ``cai eval`` write, so ``cai report`` (run by the pipeline after this
stage) reads them the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.evaluation.benchmarks import BENCHMARKS as BENCHMARK_NAMES
from cai.evaluation.benchmarks import BenchmarkName
from cai.evaluation.graders import GraderName


class BenchmarkRun(BaseModel):
    """A named benchmark the evaluate stage runs (``cai.evaluation.benchmarks``)."""

    model_config = ConfigDict(extra="forbid")
    name: BenchmarkName
    data: str | None = Field(None, description="a local file in the benchmark's format (None: its Hub id / URL)")
    limit: int | None = Field(None, ge=1, description="prompts of each set (None: the stage's limit)")



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
    grader: GraderName = Field("keyword", description="what reads the replies (cai.evaluation.graders): keyword, "
                        "llama-guard, qwen3guard, shieldgemma, strongreject, harmbench or xstest")
    grader_model: str | None = Field(None, description="the grader's model spec (default: the guard's Hub id, "
                                     "or the embedded model for a rubric judge)")
    benchmarks: list[BenchmarkRun] = Field(default_factory=list, description=(
        "named benchmarks to run on each model too, e.g. [{name: xstest, data: xstest_prompts.csv}]; "
        "results in <run>/eval/benchmarks/<name>/eval.json"))
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
    from cai.evaluation.graders import agreement, make_grader
    from cai.evaluation.redteam import TEMPLATES, attack_models, attacks
    from cai.evaluation.refusal_rates import refusal_comparison
    from cai.jsonl import write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, sets = eval_sets(options)
    grader = make_grader(options.grader, options.grader_model, load=load)
    measured = agreement(grader)
    reports = refusal_comparison(((spec, load(spec)) for spec in models), sets,
                                 max_new_tokens=options.max_new_tokens, seed=options.seed, grader=grader)
    if stages is not None:
        for r in reports:
            stage = stages.get(r["model_spec"], "base")
            r.update({"stage": stage, "round": 0 if stage == "base" else 1})
    write_atomic(out_dir / "refusals.json", json.dumps({"harmful": options.harmful, "safe": options.safe,
                                                        "grader": measured, "models": reports}, indent=2) + "\n")
    summary = {r["model_spec"]: {"harmful_refusal": r["sets"]["harmful"]["refusal_rate"],
                                 "safe_refusal": r["sets"]["safe"]["refusal_rate"],
                                 **({"harmful_rate": r["sets"]["harmful"]["harmful_rate"]}
                                    if options.grader != "keyword" else {})} for r in reports}
    if options.redteam:
        params = SamplingParams(max_new_tokens=options.max_new_tokens, temperature=0.0, do_sample=False,
                                seed=options.seed)
        attacked = attack_models(models, attacks(rows["harmful"], TEMPLATES), out_dir / "redteam", params,
                                 templates=TEMPLATES, prompts=options.harmful, load=load,
                                 grader=None if options.grader == "keyword" else grader, grader_agreement=measured)
        for spec, figures in attacked["models"].items():
            summary[spec]["attack_success"] = figures["overall"]["asr"]
    for bench in options.benchmarks:
        from cai.evaluation.benchmarks import run_benchmark

        result = run_benchmark(bench.name, models, out_dir / "benchmarks" / bench.name, load=load, grader=grader,
                               grader_agreement=measured, data=bench.data, limit=bench.limit or options.limit,
                               max_new_tokens=options.max_new_tokens, seed=options.seed)
        for m in result["models"]:
            summary[m["spec"]].update({f"{bench.name}_{k}": f["value"] for k, f in m["figures"].items()})
    return summary


def summary_line(spec: str, figures: dict[str, Any]) -> str:
    """One model's evaluate figures as a sentence; a figure the grader does not give is left out."""
    said = [f"{label} {figures[key]:.3f}" for key, label in (
        ("harmful_refusal", "refuses harmful prompts"), ("safe_refusal", "refuses safe prompts"),
        ("harmful_rate", "harmful replies to harmful prompts"), ("attack_success", "jailbreak success"))
        if figures.get(key) is not None]
    said += [f"{key} {value:.3f}" for key, value in figures.items() if "_" in key and key.split("_")[0] in
             BENCHMARK_NAMES and value is not None]
    return f"{spec}: " + (", ".join(said) or "no figure")


# ---- rounds and seeds -------------------------------------------------------------------------------


def evaluate_rounds(base: str, models: Sequence[dict], out_dir: Path, options: EvaluateOptions,
                    load: Callable[[str], Any]) -> dict[str, Any]:
    """Refusal rates of the base and of every model a multi-round run trained (``cai.rounds``), into
    ``out_dir``/refusals.json: ``models`` in order (base, then each round's SFT and RL models, the final
    last), each trained one with its ``stage``, ``round``, its ``seeds`` (each seed's figures) and their mean
    and spread in ``sets``; ``differences``: each round's RL model over its SFT model, per seed and as a mean
    over seeds, with paired bootstrap intervals (the same prompts, both models). Each model's replies are
    kept in ``out_dir``/models/ as soon as it is measured, so a resumed stage measures only the rest."""
    from cai.evaluation.graders import agreement, make_grader
    from cai.evaluation.refusal_rates import refusal_report
    from cai.jsonl import write_atomic

    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    _, sets = eval_sets(options)
    grader = make_grader(options.grader, options.grader_model, load=load)
    key = {"sets": sets, "max_new_tokens": options.max_new_tokens, "seed": options.seed, "grader": options.grader,
           "grader_model": options.grader_model}
    reports = {}
    for spec in dict.fromkeys([base, *(m["model"] for m in models)]):
        path = out_dir / "models" / f"{_digest(spec)}.json"
        kept = json.loads(path.read_text()) if path.exists() else None
        if kept is None or kept.get("key") != key:
            kept = {"key": key, "report": {**refusal_report(load(spec), sets, max_new_tokens=options.max_new_tokens,
                                                            seed=options.seed, grader=grader), "model_spec": spec}}
            write_atomic(path, json.dumps(kept) + "\n")
        reports[spec] = kept["report"]
    entries = [{**reports[base], "stage": "base", "round": 0}]
    for group in _groups(models):
        entries.append(seed_entry(group, reports))
    differences = rl_over_sft(entries, options.seed)
    write_atomic(out_dir / "refusals.json", json.dumps({"harmful": options.harmful, "safe": options.safe,
                                                        "grader": agreement(grader), "models": entries,
                                                        "differences": differences},
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
                per_seed.append((s["seed"], [_difference(x, y) for x, y in zip(a, b, strict=True)]))
            mean, lo, hi = paired_bootstrap([d for _, d in per_seed], samples=samples, seed=seed)
            out.append({"round": rl["round"], "stage": rl["stage"], "set": name, "mean": mean, "ci95": [lo, hi],
                        "per_seed": [_one(s, d, samples, seed) for s, d in per_seed]})
    return out


def _difference(after, before) -> float:
    """1, 0 or -1 for one prompt; NaN where the grader could not read either reply."""
    return float("nan") if after is None or before is None else float(after) - float(before)


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
    means = np.nanmean(d[:, idx], axis=2).mean(axis=0)  # (samples,); NaN: a reply the grader could not read
    return float(np.nanmean(d, axis=1).mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
