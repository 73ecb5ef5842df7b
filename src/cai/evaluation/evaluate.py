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
    model_config = ConfigDict(extra="forbid")
    harmful: str = Field("redteam:eval", description="harmful prompts: a shipped set's split or a prompt file")
    safe: str = Field("helpful:eval", description="safe prompts: a shipped set's split or a prompt file")
    limit: int | None = Field(None, ge=1, description="prompts of each set (None: all)")
    max_new_tokens: int = Field(64, ge=1)
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
    seed: int = 0


def evaluate(models: Sequence[str], out_dir: Path, options: EvaluateOptions, load: Callable[[str], Any]
             ) -> dict[str, Any]:
    """Refusal rates (and jailbreak rates) of each model spec into ``out_dir``; ``load`` gives a backend."""
    from cai.backends.base import SamplingParams
    from cai.evaluation.graders import agreement, make_grader
    from cai.evaluation.redteam import TEMPLATES, attack_models, attacks
    from cai.evaluation.refusals import refusal_comparison
    from cai.jsonl import write_atomic
    from cai.prompts import load_prompts, log_bad_rows

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, source in (("harmful", options.harmful), ("safe", options.safe)):
        rows[name], bad = load_prompts(source, split="eval", limit=options.limit)
        log_bad_rows(bad)
    sets = {name: [r.prompt for r in rs] for name, rs in rows.items()}
    for name, source in (("harmful", options.harmful), ("safe", options.safe)):
        if options.train_limit and source.endswith(":eval"):  # a shipped set: its training split too
            trained, _ = load_prompts(source.removesuffix(":eval") + ":train", limit=options.train_limit)
            sets[f"{name}-train"] = [r.prompt for r in trained]
    grader = make_grader(options.grader, options.grader_model, load=load)
    measured = agreement(grader)
    reports = refusal_comparison(((spec, load(spec)) for spec in models), sets,
                                 max_new_tokens=options.max_new_tokens, seed=options.seed, grader=grader)
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
