"""The whole pipeline, stage by stage, into one run directory (``cai run``).

    critique (SL-CAI) -> sft -> label (RLAIF) -> reward -> ppo | grpo | dpo

Each stage reads the files the previous stages wrote and writes its own sub-directory; ``manifest.json``
records what ran, how long it took, and what it produced. Re-running the same recipe into the same
directory skips finished stages and resumes the stage that was interrupted. ``--stages`` adds stages to a run
and ``--redo STAGE`` runs a finished one again (see ``run_pipeline``).
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
    _backends: dict = field(default_factory=dict)  # the models this context owns: released when a stage ends
    dtypes: dict = field(default_factory=dict)  # {stage: "model: dtype, ..."} of the models each stage generated with
    meter: object = None  # the current stage's cai.ledger.Meter: the tokens each model generates
    stage: str | None = None  # the stage running now

    def counted(self, backend, spec: str):
        from cai.ledger import CountingBackend

        return CountingBackend(backend, self.meter, spec) if self.meter is not None else backend

    def trained_policy(self, stage: str, model) -> str:
        """Record that ``stage`` trained ``model``: later stages start from it and evaluate measures it."""
        self.policy = self.trained[stage] = str(model)
        return self.policy

    def backend(self, spec: str, *, alongside: bool = False):
        """A generation backend per model spec, loaded once and owned by the context until ``release``.
        Loading another model drops the ones held (at most one in memory), unless ``alongside`` keeps them
        (a judge next to the policy)."""
        from cai.backends import load_backend

        if spec not in self._backends:
            if not alongside:
                self.release()
            self._backends[spec] = load_backend(spec, dtype=self.config.dtype)
            if self.stage is not None:  # inside a stage: name the dtype it generated in (the manifest keeps it)
                named = f"{self._backends[spec].model_id}: {_dtype_of(self._backends[spec])}"
                self.dtypes[self.stage] = ", ".join(filter(None, [self.dtypes.get(self.stage), named]))
        return self.counted(self._backends[spec], spec)

    def release(self) -> None:
        """Drop every model the context holds and give the memory back (``cai.memory.release``)."""
        from cai.memory import release

        self._backends.clear()
        release()

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


def _dtype_of(backend) -> str:
    """The dtype a backend generates in: its lean engine's or its model's; "served" for a server."""
    engine = getattr(backend, "engine", None)
    model = getattr(backend, "_model", None)
    dtype = getattr(engine, "dtype", None) or getattr(model, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "served"


def stage_precision(config: RunConfig, stage: str) -> str | None:
    """How a training stage computes: fp32, bf16 weights, or fp32 weights with bf16 autocast."""
    if stage not in TRAINING_STAGES:
        return None
    from cai.train.options import TrainOptions, uses_bf16_autocast

    options = getattr(config, stage)
    if options.dtype == "bf16":
        return "bf16"
    if isinstance(options, TrainOptions):
        return "fp32 weights, bf16 autocast" if uses_bf16_autocast(options) else "fp32"
    return "fp32" if options.dtype == "fp32" else "auto"


def stage_critique(ctx: Context) -> dict:
    from cai.critique import run_critique, run_helpful
    from cai.prompts import id_text

    rows = ctx.prompts("critique_prompts")
    if ctx.config.helpful_prompts is not None:  # plain answers to mix into the SFT data
        run_helpful(id_text(ctx.prompts("helpful_prompts")), ctx.out / "critique",
                    backend=ctx.backend(ctx.policy), constitution=ctx.constitution(), options=ctx.config.critique)
    summary = run_critique(id_text(rows), ctx.out / "critique", backend=ctx.backend(ctx.policy),
                           constitution=ctx.constitution(), options=ctx.config.critique)
    return {**summary, "sft_data": str(ctx.out / "critique" / "sft.jsonl")}


def stage_sft(ctx: Context) -> dict:
    from cai.train.sft import train_sft

    path = train_sft(ctx.out / "critique" / "sft.jsonl", ctx.out / "sft", model=ctx.policy, options=ctx.config.sft)
    return {"model": ctx.trained_policy("sft", path)}


def stage_label(ctx: Context) -> dict:
    """Preference pairs from the source the recipe names, or, with ``auto``, from the judge only if it passes
    the label-free probes (``cai.feedback.probes``) on a sample of training prompts; else by construction. The choice
    and its reasons are logged and written to preferences/label_source.json (the report shows them)."""
    from cai.feedback.preferences import label_prompts
    from cai.jsonl import write_atomic

    config = ctx.config.label
    source, why, probed, judge = config.source, "named in the recipe", None, None
    if source == "contrastive":
        policy = ctx.backend(ctx.policy)
    elif source != "constructed":
        judge_spec = ctx.config.judge_model or ctx.config.model
        policy = ctx.backend(ctx.policy)
        judge = policy if judge_spec == ctx.policy else None
        if judge is None:
            judge = ctx.backend(judge_spec, alongside=True)
    if source == "auto":
        source, why, probed = _probe_judge(ctx, policy, judge)
        if source == "constructed":
            source = config.fallback
    log.info("label source: %s (%s)", source, why)
    info = {"label_source": source, "label_source_why": why, "probes": probed,
            "judge": judge.model_id if judge is not None else None}
    (ctx.out / "preferences").mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.out / "preferences" / "label_source.json", json.dumps(info, indent=2) + "\n")
    pairs_file = str(ctx.out / "preferences" / "pairs.jsonl")
    if source == "constructed":
        from cai.errors import ConfigError
        from cai.feedback.constructed import write_constructed

        if not (ctx.out / "critique" / "records.jsonl").exists():
            raise ConfigError("constructed labels need the critique stage's records", where="recipe label.source",
                              fix="add the critique stage before label, or use source: judge")
        return {**write_constructed(ctx.out / "critique", ctx.out / "preferences", config.p_constructed), **info,
                "pairs_file": pairs_file}
    if source == "contrastive":
        from cai.feedback.contrastive import load_contrast_prompts, write_contrastive

        summary = write_contrastive(load_contrast_prompts(config.contrast), policy, ctx.constitution(),
                                    ctx.out / "preferences", config.contrast, max_new_tokens=config.max_new_tokens,
                                    temperature=config.temperature, top_p=config.top_p, seed=config.seed,
                                    chunk_size=config.chunk_size)
        return {**summary.as_dict(), **info, "pairs_file": pairs_file}
    summary = label_prompts(ctx.prompts("rl_prompts"), policy=policy, judge_backend=judge,
                            constitution=ctx.constitution(), out_dir=ctx.out / "preferences", config=config)
    return {**summary.as_dict(), **info, "pairs_file": pairs_file}


def _probe_judge(ctx: Context, policy, judge) -> tuple[str, str, dict]:
    """(source, why, per-probe figures): the judge measured on probe pairs built from the policy's replies
    to the first training prompts of the shipped sets."""
    from cai.feedback.probes import build_probes, choose_label_source, judge_on_probes
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

    prompts = [[{"role": "user", "content": r.prompt}] for r in ctx.prompts("rl_prompts")]
    sl = ctx.out / "critique" / "sft.jsonl" if ctx.config.ppo.sl_coef > 0 and "critique" in ctx.config.stages else None
    path = train_ppo(prompts, ctx.out / "reward", ctx.out / "ppo", policy=ctx.policy, options=ctx.config.ppo,
                     sl_data=sl)
    return {"model": ctx.trained_policy("ppo", path), "metrics": str(ctx.out / "ppo" / "metrics.jsonl")}


def stage_grpo(ctx: Context) -> dict:
    """TRL's GRPO/RLOO (``cai.train.grpo``), scored by the run's reward model or by the judge."""
    from cai.train.grpo import train_online

    options = ctx.config.grpo
    reward = ctx.out / "reward" if options.reward == "reward_model" else (ctx.config.judge_model or ctx.config.model)
    prompts = [[{"role": "user", "content": r.prompt}] for r in ctx.prompts("rl_prompts")]
    path = train_online(prompts, ctx.out / "grpo", reward, policy=ctx.policy, options=options,
                        constitution=ctx.config.constitution)
    return {"model": ctx.trained_policy("grpo", path), "metrics": str(ctx.out / "grpo" / "metrics.jsonl")}


def stage_dpo(ctx: Context) -> dict:
    from cai.train.dpo import train_dpo

    path = train_dpo(ctx.out / "preferences" / "pairs.jsonl", ctx.out / "dpo", model=ctx.policy,
                     options=ctx.config.dpo)
    return {"model": ctx.trained_policy("dpo", path)}


def stage_evaluate(ctx: Context) -> dict:
    """Refusal rates of the base and of every model the run trained, in order (SFT, then PPO or DPO; the
    last is the final model), on held-out prompts (``cai.evaluation.evaluate``), then the report of the whole run."""
    from cai.evaluation.evaluate import evaluate, summary_line
    from cai.models import is_served_spec, resolve
    from cai.report import build_report

    base = ctx.config.model if is_served_spec(ctx.config.model) else str(resolve(ctx.config.model).spec)
    models = list(dict.fromkeys([base, *ctx.trained.values(), ctx.policy]))
    stages = {model: stage for stage, model in ctx.trained.items()}
    summary = evaluate(models, ctx.out / "evaluate", ctx.config.evaluate, ctx.backend, stages=stages)
    ctx.release()
    build_report([ctx.out], ctx.out / "report")
    for spec, figures in summary.items():
        log.info("%s", summary_line(spec, figures))
    return {"refusals": summary, "report": str(ctx.out / "report" / "report.md")}


def stage_studies(ctx: Context) -> dict:
    """The studies the recipe's ``studies`` key asks for (``cai.evaluation.study_stage``)."""
    from cai.evaluation.study_stage import run_studies

    return {"studies": run_studies(ctx)}


STAGE_FUNCTIONS = {"critique": stage_critique, "sft": stage_sft, "label": stage_label, "reward": stage_reward,
                   "ppo": stage_ppo, "grpo": stage_grpo, "dpo": stage_dpo, "studies": stage_studies,
                   "evaluate": stage_evaluate}


# The recipe fields each stage reads. A finished stage is locked only by these (a setting that only a later
# stage reads does not lock it); stages also read what the stages before them wrote, so when a stage runs
# again, every finished stage after it runs again too.
STAGE_SETTINGS = {
    "critique": ("model", "dtype", "constitution", "critique_prompts", "helpful_prompts", "critique"),
    "sft": ("model", "sft"),
    "label": ("model", "judge_model", "dtype", "constitution", "rl_prompts", "label"),
    "reward": ("model", "reward"),
    "ppo": ("model", "rl_prompts", "ppo"),
    "grpo": ("model", "judge_model", "constitution", "rl_prompts", "grpo"),
    "dpo": ("model", "dpo"),
    "studies": ("model", "judge_model", "dtype", "constitution", "studies"),
    "evaluate": ("model", "dtype", "evaluate"),
}
STAGE_DIRS = {"critique": ("critique",), "sft": ("sft",), "label": ("preferences",), "reward": ("reward",),
              "ppo": ("ppo",), "grpo": ("grpo",), "dpo": ("dpo",), "studies": ("studies",),
              "evaluate": ("evaluate", "report")}


def stage_settings(config: RunConfig, stage: str) -> dict:
    """The part of the recipe that ``stage`` reads, as plain JSON values."""
    data = config.model_dump(mode="json")
    return {k: data[k] for k in STAGE_SETTINGS[stage]}


def run_pipeline(config: RunConfig, out: Path, *, redo: tuple[str, ...] = (), start: str | None = None) -> dict:
    """Run (or resume) every stage of ``config.stages`` in order into ``out``; returns the manifest.

    A finished stage is skipped, unless it is in ``redo`` or a stage before it ran in this call; a finished
    stage whose settings changed is refused (redo it or choose a new directory). A failure or Ctrl-C is
    written to ``cai.log`` and ``manifest.json`` with the stage it happened in. ``start``: the policy the
    first stage starts from (default: the recipe's model). A recipe with rounds, seeds or RL iterations runs
    through ``cai.rounds.run_rounds`` (``cai run`` chooses), which calls this once per unit."""
    from cai import __version__
    from cai.jsonl import write_atomic
    from cai.logs import log_to_run_dir
    from cai.train.artifacts import library_versions

    _check_single_pass(config)
    main = _check_processes(config)
    out = Path(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        log_to_run_dir(out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
        "name": config.name, "cai_version": __version__, "versions": library_versions(), "stages": {}}
    manifest.pop("failed", None)

    def save() -> None:
        if main:  # under a launcher only the main process writes the run's files
            write_atomic(manifest_path, json.dumps(manifest, indent=2, default=str))

    stage = "setup"
    t0 = time.time()
    try:
        check_wiring(config, out)
        base = _check_models(config)
        ctx = Context(config, out, policy=start or base)
        manifest["constitution"] = _constitution_ref(config)
        manifest["prices"] = config.prices
        plan, clear = _plan(config, out, manifest["stages"], redo)
        if main:
            write_atomic(out / "config.resolved.yaml", dump_config(config))
        _policy_before(ctx, manifest["stages"], config.stages)
        for stage in config.stages:
            done = manifest["stages"].get(stage, {})
            if stage not in plan:
                log.info("stage %s: already done, skipping", stage)
                if stage in POLICY_STAGES:
                    ctx.trained_policy(stage, done["model"])
                continue
            if stage in clear and main:
                _clear_stage(out, stage)
            t0 = time.time()
            _run_stage(ctx, stage, manifest, save)
    except BaseException as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        manifest["failed"] = {"stage": stage, "error": what, "seconds": round(time.time() - t0, 1),
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        save()
        log.error("stage %s %s", stage, "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {what}")
        raise
    manifest["final_model"] = ctx.policy
    save()
    if "evaluate" in config.stages and "evaluate" in plan and main:  # the report's cost ledger holds evaluate too
        from cai.report import build_report

        build_report([out], out / "report")
    return manifest


def _check_single_pass(config: RunConfig) -> None:
    from cai.errors import ConfigError

    if config.in_rounds:
        raise ConfigError("a recipe with rounds, seeds or rl_iterations runs unit by unit",
                          fix="call cai.rounds.run_rounds (cai run does)")


def _policy_before(ctx: Context, stages: dict, wanted: list[str]) -> None:
    """A ``--stages`` subset starts from the models its finished policy stages outside it trained."""
    for stage, done in stages.items():
        if done.get("done") and stage in POLICY_STAGES and stage not in wanted:
            ctx.trained_policy(stage, done["model"])


def _run_stage(ctx: Context, stage: str, manifest: dict, save) -> None:
    """Run one stage, recording it in ``manifest`` as started, then as done with its result and cost ledger."""
    from cai.ledger import measure

    log.info("stage %s: starting", stage)
    t0 = time.time()
    manifest["stages"][stage] = {"done": False, "settings": stage_settings(ctx.config, stage)}
    save()
    ctx.release()  # whatever an earlier stage left (a resumed run, a failed stage) goes before this one loads
    try:
        with measure() as cost:
            ctx.meter, ctx.stage = cost.meter, stage
            _guard_generation(ctx, stage)  # training stages check inside (they know their batch and lengths)
            result = STAGE_FUNCTIONS[stage](ctx)
    finally:
        ctx.meter = ctx.stage = None
        ctx.release()
    manifest["stages"][stage] = {"done": True, "seconds": round(time.time() - t0, 1),
                                 "settings": stage_settings(ctx.config, stage), **result, "cost": cost.entry,
                                 "dtype": ctx.dtypes.pop(stage, None) or stage_precision(ctx.config, stage)}
    save()
    log.info("stage %s: done in %.0fs", stage, time.time() - t0)


GENERATING_STAGES = ("critique", "label", "studies", "evaluate")


def _guard_generation(ctx: Context, stage: str) -> None:
    """The memory guard for a stage that generates with local models (``cai.guard``): stop before loading
    anything when the policy's backend (and a separate judge's) would not fit."""
    from cai import guard
    from cai.models import is_served_spec, resolve

    if stage not in GENERATING_STAGES:
        return
    specs = {ctx.policy}
    if stage == "label" and ctx.config.label.source not in ("constructed", "contrastive"):
        specs.add(ctx.config.judge_model or ctx.config.model)
    local = [s for s in specs if not is_served_spec(s)]
    if not local:
        return
    shape = guard.shape_of(resolve(local[0]))
    bytes_per = 2 if ctx.config.dtype in ("bf16", "bfloat16") else 4  # auto may pick fp32 where bf16 is slow
    guard.check(guard.generation_estimate(stage, shape, weight_bytes=bytes_per, models=len(local)),
                fix="generate on a server instead (`model: openai:MODEL@URL` serves critique, label and "
                    "evaluate)")


def _check_models(config: RunConfig) -> str:
    """Check every model the recipe names before anything runs; returns the starting policy's spec."""
    from cai.backends import model_identity
    from cai.errors import ConfigError
    from cai.models import is_served_spec, resolve

    if is_served_spec(config.model):
        training = [s for s in config.stages if s in TRAINING_STAGES]
        if training:
            raise ConfigError(f"model {config.model} is served, and stages {training} train its weights",
                              where="recipe field model",
                              fix="use local weights (the embedded name, a directory, a .gguf or a Hub id) for "
                                  "training; a served model works for critique, label (also as judge_model) "
                                  "and evaluate")
    if config.judge_model:
        model_identity(config.judge_model)
    model_identity(config.model)
    return config.model if is_served_spec(config.model) else str(resolve(config.model).spec)


def _plan(config: RunConfig, out: Path, stages: dict, redo: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(the stages of ``config.stages`` to run now, those of them to start over): those not done, those in
    ``redo`` and every finished stage after one that runs; a finished stage, a redone one and one started
    with other settings start over. Refuses a finished (or started) stage whose settings changed, unless
    redone."""
    from cai.errors import ConfigError

    plan: set[str] = set()
    clear: set[str] = set()
    for stage in config.stages:
        record = stages.get(stage, {})
        settings = stage_settings(config, stage)
        old = record.get("settings")
        changed = sorted(k for k in settings if old is not None and old.get(k) != settings[k])
        started = record.get("done") or any((out / d).exists() and any((out / d).iterdir())
                                            for d in STAGE_DIRS[stage])
        if stage in redo or plan:
            plan.add(stage)
            if record.get("done") or (started and (changed or stage in redo)):
                clear.add(stage)
        elif not record.get("done"):
            if changed and started:
                raise ConfigError(
                    f"stage {stage} was started with other settings ({_changes(old, settings, changed)})",
                    where=str(out / "manifest.json"),
                    fix=f"re-run with the same settings to resume it, add --redo {stage} to start it over with "
                        "the new ones, or choose a new --out directory")
            plan.add(stage)
        elif changed:
            raise ConfigError(
                f"stage {stage} is done with other settings ({_changes(old, settings, changed)})",
                where=str(out / "manifest.json"),
                fix=f"add --redo {stage} to redo it with the new settings (the stages after it follow), or "
                    "choose a new --out directory")
    return plan, clear


def _changes(old: dict, new: dict, keys: list[str]) -> str:
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3])[:400]


def _clear_stage(out: Path, stage: str) -> None:
    """Remove a finished stage's outputs before it runs again (its records would otherwise be resumed)."""
    import shutil

    for d in STAGE_DIRS[stage]:
        if (out / d).exists():
            log.info("stage %s: removing its earlier output %s to redo it", stage, out / d)
            shutil.rmtree(out / d)


def stage_inputs(config: RunConfig) -> dict[str, list[str]]:
    """The files (relative to the run directory) each of the recipe's stages reads, and so needs made first."""
    needs = {"sft": ["critique/sft.jsonl"], "reward": ["preferences/pairs.jsonl"], "dpo": ["preferences/pairs.jsonl"],
             "ppo": ["reward/config.json"],
             "grpo": ["reward/config.json"] if config.grpo.reward == "reward_model" else []}
    return {stage: needs.get(stage, []) for stage in config.stages}


PRODUCERS = {"critique/sft.jsonl": "critique", "preferences/pairs.jsonl": "label", "reward/config.json": "reward"}


def check_wiring(config: RunConfig, out: Path) -> None:
    """Fail before anything runs when a stage reads a file that no earlier stage makes and ``out`` lacks."""
    from cai.errors import ConfigError

    for k, (stage, files) in enumerate(stage_inputs(config).items()):
        for name in files:
            if PRODUCERS[name] not in config.stages[:k] and not (Path(out) / name).exists():
                raise ConfigError(f"stage {stage} reads {name}, which stage {PRODUCERS[name]} makes, but that stage "
                                  f"does not run before it and {out} has no such file", where="recipe field stages",
                                  fix=f"add {PRODUCERS[name]} before {stage}, or run it first into the same --out")


POLICY_STAGES = ("sft", "ppo", "grpo", "dpo")  # stages whose model later stages start from (evaluate measures it)
TRAINING_STAGES = ("sft", "reward", "ppo", "grpo", "dpo")  # stages that train in every process of a launcher


def _check_processes(config: RunConfig) -> bool:
    """Under a multi-process launcher (``accelerate launch``) only training stages may run: each process
    trains, the main one writes. Returns whether this process writes the run's files."""
    from cai.distributed import is_main, world_size
    from cai.errors import ConfigError

    others = [s for s in config.stages if s not in TRAINING_STAGES]
    if world_size() > 1 and others:
        raise ConfigError(f"cai run started as one of {world_size()} processes, but stages {others} generate or "
                          "evaluate and would run in each", where="--stages",
                          fix=f"run those in one process (`cai run RECIPE --stages {','.join(others)}`), and only "
                              f"{', '.join(TRAINING_STAGES)} under accelerate launch (see docs/guides/gpu-7b.md)")
    return is_main()


def _constitution_ref(config: RunConfig) -> dict:
    from cai.constitution import load_constitution

    return load_constitution(config.constitution).ref().model_dump()
