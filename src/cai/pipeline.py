"""The whole pipeline, stage by stage, into one run directory (``cai run``).

    critique (SL-CAI) -> sft -> label (RLAIF) -> reward -> ppo | dpo

Each stage reads the files the previous stages wrote and writes its own sub-directory; ``manifest.json``
records what ran, how long it took, and what it produced. Re-running the same recipe into the same
directory skips finished stages and resumes the stage that was interrupted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cai.config import RunConfig, dump_config

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the stages hand on to each other."""

    config: RunConfig
    out: Path
    policy: str  # the model later stages start from: the base, then the SFT model, then the PPO policy
    _backends: dict = field(default_factory=dict)
    meter: object = None  # the current stage's cai.ledger.Meter: the tokens each model generates

    def counted(self, backend, spec: str):
        from cai.ledger import CountingBackend

        return CountingBackend(backend, self.meter, spec) if self.meter is not None else backend

    def backend(self, spec: str):
        """A generation backend per model spec, loaded once."""
        from cai.backends import load_backend

        if spec not in self._backends:
            self._backends.clear()  # keep at most one model in memory
            self._backends[spec] = load_backend(spec, dtype=self.config.dtype)
        return self.counted(self._backends[spec], spec)

    def constitution(self):
        from cai.constitution import load_constitution

        return load_constitution(self.config.constitution)

    def prompts(self, which: str):
        from cai.errors import ConfigError
        from cai.prompts import load_prompts, log_bad_rows, write_bad_rows

        ps = getattr(self.config, which)
        rows, bad = load_prompts(ps.source, column=ps.column, split=ps.split, limit=ps.limit)
        write_bad_rows(self.out / f"{which}.bad_rows.jsonl", bad)
        log_bad_rows(bad, log)
        if not rows:
            raise ConfigError(f"no usable prompts in {ps.source}", where=f"recipe field {which}",
                              fix="check source, column and limit")
        return rows


def stage_critique(ctx: Context) -> dict:
    from cai.critique import run_critique

    rows = ctx.prompts("critique_prompts")
    summary = run_critique([(r.id, r.prompt) for r in rows], ctx.out / "critique", backend=ctx.backend(ctx.policy),
                           constitution=ctx.constitution(), options=ctx.config.critique)
    return {**summary, "sft_data": str(ctx.out / "critique" / "sft.jsonl")}


def stage_sft(ctx: Context) -> dict:
    from cai.train.sft import train_sft

    path = train_sft(ctx.out / "critique" / "sft.jsonl", ctx.out / "sft", model=ctx.policy, options=ctx.config.sft)
    ctx.policy = str(path)
    return {"model": str(path)}


def stage_label(ctx: Context) -> dict:
    from cai.preferences import label_prompts

    judge_spec = ctx.config.judge_model or ctx.config.model
    policy = ctx.backend(ctx.policy)
    judge = policy if judge_spec == ctx.policy else None
    if judge is None:
        from cai.backends import load_backend

        judge = ctx.counted(load_backend(judge_spec, dtype=ctx.config.dtype), judge_spec)
    summary = label_prompts(ctx.prompts("rl_prompts"), policy=policy, judge_backend=judge,
                            constitution=ctx.constitution(), out_dir=ctx.out / "preferences", config=ctx.config.label)
    return {**summary.as_dict(), "pairs_file": str(ctx.out / "preferences" / "pairs.jsonl")}


def stage_reward(ctx: Context) -> dict:
    from cai.train.reward import train_reward

    report = train_reward(ctx.out / "preferences" / "pairs.jsonl", ctx.out / "reward", model=ctx.config.model,
                          options=ctx.config.reward)
    return {"model": str(ctx.out / "reward"), **report.model_dump(mode="json")}


def stage_ppo(ctx: Context) -> dict:
    from cai.train.ppo import train_ppo

    ctx._backends.clear()
    prompts = [[{"role": "user", "content": r.prompt}] for r in ctx.prompts("rl_prompts")]
    sl = ctx.out / "critique" / "sft.jsonl" if ctx.config.ppo.sl_coef > 0 and "critique" in ctx.config.stages else None
    path = train_ppo(prompts, ctx.out / "reward", ctx.out / "ppo", policy=ctx.policy, options=ctx.config.ppo,
                     sl_data=sl)
    ctx.policy = str(path)
    return {"model": str(path), "metrics": str(ctx.out / "ppo" / "metrics.jsonl")}


def stage_dpo(ctx: Context) -> dict:
    from cai.train.dpo import train_dpo

    ctx._backends.clear()
    path = train_dpo(ctx.out / "preferences" / "pairs.jsonl", ctx.out / "dpo", model=ctx.policy,
                     options=ctx.config.dpo)
    return {"model": str(path)}


def stage_evaluate(ctx: Context) -> dict:
    """Refusal rates of the base, the SFT (when trained) and the final model (``cai.evaluate``), then the
    report of the whole run."""
    from cai.evaluate import evaluate
    from cai.models import resolve
    from cai.report import build_report

    sft = [str(ctx.out / "sft")] if "sft" in ctx.config.stages and (ctx.out / "sft" / "config.json").exists() else []
    models = list(dict.fromkeys([str(resolve(ctx.config.model).spec), *sft, ctx.policy]))
    summary = evaluate(models, ctx.out / "evaluate", ctx.config.evaluate, ctx.backend)
    ctx._backends.clear()
    build_report([ctx.out], ctx.out / "report")
    for spec, figures in summary.items():
        log.info("%s: refuses %.3f of harmful prompts, %.3f of safe prompts", spec, figures["harmful_refusal"],
                 figures["safe_refusal"])
    return {"refusals": summary, "report": str(ctx.out / "report" / "report.md")}


def stage_studies(ctx: Context) -> dict:
    """The studies the recipe's ``studies`` key asks for (``cai.study_stage``)."""
    from cai.study_stage import run_studies

    return {"studies": run_studies(ctx)}


STAGE_FUNCTIONS = {"critique": stage_critique, "sft": stage_sft, "label": stage_label, "reward": stage_reward,
                   "ppo": stage_ppo, "dpo": stage_dpo, "studies": stage_studies, "evaluate": stage_evaluate}


def run_pipeline(config: RunConfig, out: Path) -> dict:
    """Run (or resume) every stage of ``config.stages`` in order into ``out``; returns the manifest."""
    from cai import __version__
    from cai.jsonl import write_atomic
    from cai.ledger import measure
    from cai.logs import log_to_run_dir
    from cai.models import resolve
    from cai.runs import check_or_record

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    check_or_record(out, "pipeline", config.model_dump(mode="json"))
    write_atomic(out / "config.resolved.yaml", dump_config(config))
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
        "name": config.name, "cai_version": __version__, "versions": _versions(), "stages": {}}
    manifest["constitution"] = _constitution_ref(config)
    manifest["prices"] = config.prices
    ctx = Context(config, out, policy=str(resolve(config.model).spec))
    for stage in config.stages:
        done = manifest["stages"].get(stage, {})
        if done.get("done"):
            log.info("stage %s: already done, skipping", stage)
            if stage in ("sft", "ppo"):
                ctx.policy = done["model"]
            continue
        log.info("stage %s: starting", stage)
        t0 = time.time()
        with measure() as cost:
            ctx.meter = cost.meter
            result = STAGE_FUNCTIONS[stage](ctx)
        manifest["stages"][stage] = {"done": True, "seconds": round(time.time() - t0, 1), **result,
                                     "cost": cost.entry}
        write_atomic(manifest_path, json.dumps(manifest, indent=2, default=str))
        log.info("stage %s: done in %.0fs", stage, time.time() - t0)
    manifest["final_model"] = ctx.policy
    write_atomic(manifest_path, json.dumps(manifest, indent=2, default=str))
    if "evaluate" in config.stages:  # again, so that the report's cost ledger holds the evaluate stage too
        from cai.report import build_report

        build_report([out], out / "report")
    return manifest


def _constitution_ref(config: RunConfig) -> dict:
    from cai.constitution import load_constitution

    return load_constitution(config.constitution).ref().model_dump()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
