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
    policy: str  # the model later stages start from: the base, then the SFT model, then the PPO/DPO policy
    trained: dict = field(default_factory=dict)  # {stage: model} of the stages that trained a policy, in order
    _backends: dict = field(default_factory=dict)

    def trained_policy(self, stage: str, model) -> str:
        """Record that ``stage`` trained ``model``: later stages start from it and evaluate measures it."""
        self.policy = self.trained[stage] = str(model)
        return self.policy

    def backend(self, spec: str):
        """A generation backend per model spec, loaded once."""
        from cai.backends import load_backend

        if spec not in self._backends:
            self._backends.clear()  # keep at most one model in memory
            self._backends[spec] = load_backend(spec, dtype=self.config.dtype)
        return self._backends[spec]

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
    from cai.critique import run_critique, run_helpful

    rows = ctx.prompts("critique_prompts")
    if ctx.config.helpful_prompts is not None:  # plain answers to mix into the SFT data
        run_helpful([(r.id, r.prompt) for r in ctx.prompts("helpful_prompts")], ctx.out / "critique",
                    backend=ctx.backend(ctx.policy), constitution=ctx.constitution(), options=ctx.config.critique)
    summary = run_critique([(r.id, r.prompt) for r in rows], ctx.out / "critique", backend=ctx.backend(ctx.policy),
                           constitution=ctx.constitution(), options=ctx.config.critique)
    return {**summary, "sft_data": str(ctx.out / "critique" / "sft.jsonl")}


def stage_sft(ctx: Context) -> dict:
    from cai.train.sft import train_sft

    path = train_sft(ctx.out / "critique" / "sft.jsonl", ctx.out / "sft", model=ctx.policy, options=ctx.config.sft)
    return {"model": ctx.trained_policy("sft", path)}


def stage_label(ctx: Context) -> dict:
    """Preference pairs from the source the recipe names, or, with ``auto``, from the judge only if it passes
    the label-free probes (``cai.probes``) on a sample of training prompts; else by construction. The choice
    and its reasons are logged and written to preferences/label_source.json (the report shows them)."""
    from cai.jsonl import write_atomic
    from cai.preferences import label_prompts

    config = ctx.config.label
    source, why, probed, judge = config.source, "named in the recipe", None, None
    if source != "constructed":
        judge_spec = ctx.config.judge_model or ctx.config.model
        policy = ctx.backend(ctx.policy)
        judge = policy if judge_spec == ctx.policy else None
        if judge is None:
            from cai.backends import load_backend

            judge = load_backend(judge_spec, dtype=ctx.config.dtype)
    if source == "auto":
        source, why, probed = _probe_judge(ctx, policy, judge)
    log.info("label source: %s (%s)", source, why)
    info = {"label_source": source, "label_source_why": why, "probes": probed,
            "judge": judge.model_id if judge is not None else None}
    (ctx.out / "preferences").mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.out / "preferences" / "label_source.json", json.dumps(info, indent=2) + "\n")
    pairs_file = str(ctx.out / "preferences" / "pairs.jsonl")
    if source == "constructed":
        from cai.constructed import write_constructed
        from cai.errors import ConfigError

        if not (ctx.out / "critique" / "records.jsonl").exists():
            raise ConfigError("constructed labels need the critique stage's records", where="recipe label.source",
                              fix="add the critique stage before label, or use source: judge")
        return {**write_constructed(ctx.out / "critique", ctx.out / "preferences", config.p_constructed), **info,
                "pairs_file": pairs_file}
    summary = label_prompts(ctx.prompts("rl_prompts"), policy=policy, judge_backend=judge,
                            constitution=ctx.constitution(), out_dir=ctx.out / "preferences", config=config)
    return {**summary.as_dict(), **info, "pairs_file": pairs_file}


def _probe_judge(ctx: Context, policy, judge) -> tuple[str, str, dict]:
    """(source, why, per-probe figures): the judge measured on probe pairs built from the policy's replies
    to the first training prompts of the shipped sets."""
    from cai.probes import build_probes, choose_label_source, judge_on_probes
    from cai.prompts import load_prompts

    config = ctx.config.label
    harmful, _ = load_prompts("redteam", split="train", limit=config.probe_prompts)
    safe, _ = load_prompts("helpful", split="train", limit=config.probe_prompts)
    probes = build_probes(policy, harmful, safe, max_new_tokens=config.max_new_tokens, seed=config.seed)
    probed = judge_on_probes(judge, probes, ctx.constitution(), config.judge, seed=config.seed)
    source, why = choose_label_source(probed, config.probe_threshold)
    return source, why, probed


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
    return {"model": ctx.trained_policy("ppo", path), "metrics": str(ctx.out / "ppo" / "metrics.jsonl")}


def stage_dpo(ctx: Context) -> dict:
    from cai.train.dpo import train_dpo

    ctx._backends.clear()
    path = train_dpo(ctx.out / "preferences" / "pairs.jsonl", ctx.out / "dpo", model=ctx.policy,
                     options=ctx.config.dpo)
    return {"model": ctx.trained_policy("dpo", path)}


def stage_evaluate(ctx: Context) -> dict:
    """Refusal rates of the base and of every model the run trained, in order (SFT, then PPO or DPO; the
    last is the final model), on held-out prompts (``cai.evaluate``), then the report of the whole run."""
    from cai.evaluate import evaluate
    from cai.models import resolve
    from cai.report import build_report

    models = list(dict.fromkeys([str(resolve(ctx.config.model).spec), *ctx.trained.values(), ctx.policy]))
    summary = evaluate(models, ctx.out / "evaluate", ctx.config.evaluate, ctx.backend)
    ctx._backends.clear()
    build_report([ctx.out], ctx.out / "report")
    for spec, figures in summary.items():
        log.info("%s: refuses %.3f of harmful prompts, %.3f of safe prompts", spec, figures["harmful_refusal"],
                 figures["safe_refusal"])
    return {"refusals": summary, "report": str(ctx.out / "report" / "report.md")}


POLICY_STAGES = ("sft", "ppo", "dpo")  # stages whose model later stages start from (and evaluate measures)
STAGE_FUNCTIONS = {"critique": stage_critique, "sft": stage_sft, "label": stage_label, "reward": stage_reward,
                   "ppo": stage_ppo, "dpo": stage_dpo, "evaluate": stage_evaluate}


def run_pipeline(config: RunConfig, out: Path) -> dict:
    """Run (or resume) every stage of ``config.stages`` in order into ``out``; returns the manifest."""
    from cai import __version__
    from cai.jsonl import write_atomic
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
    ctx = Context(config, out, policy=str(resolve(config.model).spec))
    for stage, done in manifest["stages"].items():  # a resumed run starts from what finished stages trained
        if done.get("done") and stage in POLICY_STAGES:
            ctx.trained_policy(stage, done["model"])
    for stage in config.stages:
        done = manifest["stages"].get(stage, {})
        if done.get("done"):
            log.info("stage %s: already done, skipping", stage)
            continue
        log.info("stage %s: starting", stage)
        t0 = time.time()
        result = STAGE_FUNCTIONS[stage](ctx)
        manifest["stages"][stage] = {"done": True, "seconds": round(time.time() - t0, 1), **result}
        write_atomic(manifest_path, json.dumps(manifest, indent=2, default=str))
        log.info("stage %s: done in %.0fs", stage, time.time() - t0)
    manifest["final_model"] = ctx.policy
    write_atomic(manifest_path, json.dumps(manifest, indent=2, default=str))
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
