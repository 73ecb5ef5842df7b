"""Alternating SL-CAI and RL-CAI rounds, over seeds (``rounds``, ``seeds`` and ``rl_iterations`` in a recipe).

A round is the recipe's SL stages (critique and revision by the current policy, then SFT on the revisions)
followed by its RL stages (fresh pairs from the new SFT policy, then DPO, or a reward model and PPO); the next
round starts from the policy the last one ended with. ``rl_iterations: N`` repeats the RL stages N times in a
round, each time with fresh pairs from the policy the last iteration trained (iterative DPO).

Seeds are independent replicas of the RL half: with ``seeds: [0, 1, 2]`` each round's RL stages run once per
seed (the seed sets the pairs' sampling and the trainer's), starting from that seed's SFT model. Round 1's
SL stages run once, from the base model, and their SFT model is shared by every seed (so the seeds see the
same SFT data) unless ``seed_sft`` asks for one per seed; from round 2 on each seed is its own chain (its SL
stages start from its own RL policy).

Every unit of work is an ordinary run directory, resumed stage by stage as ``cai run`` resumes one::

    OUT/round1/sl/             critique, sft           (shared by the seeds in round 1)
    OUT/round1/seed0/rl/       label, dpo              (rl1, rl2, ... with rl_iterations > 1)
    OUT/round2/seed0/sl/       critique, sft           (from round 1's seed-0 RL policy)
    OUT/round2/seed0/rl/       label, dpo
    OUT/evaluate/              every round's SFT and RL models, per seed (cai.evaluation.evaluate)
    OUT/manifest.json          the units, their models, and the evaluate stage
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cai.config import RunConfig

log = logging.getLogger(__name__)

SL_STAGES = ("critique", "sft")
RL_STAGES = ("label", "reward", "ppo", "grpo", "dpo")


@dataclass(frozen=True)
class Unit:
    """One piece of a multi-round run: a sub-run of some of the recipe's stages from a starting policy."""

    round: int
    seed: int | None  # None: shared by every seed
    part: str  # "sl", "rl", "rl2", ...
    stages: tuple[str, ...]

    @property
    def iteration(self) -> int:
        """Which RL iteration of its round the unit is (1 for an SL unit)."""
        return int(self.part[2:] or 1) if self.part.startswith("rl") else 1

    @property
    def key(self) -> str:
        return "/".join(x for x in (f"round{self.round}", None if self.seed is None else f"seed{self.seed}",
                                     self.part) if x)


def plan_units(config: RunConfig) -> list[Unit]:
    """Every unit in the order it runs: per round, its SL unit(s), then each seed's RL unit(s)."""
    sl = tuple(s for s in config.stages if s in SL_STAGES)
    rl = tuple(s for s in config.stages if s in RL_STAGES)
    seeds = list(config.seeds or [None])
    parts = ["rl"] if config.rl_iterations == 1 else [f"rl{i}" for i in range(1, config.rl_iterations + 1)]
    units = []
    for r in range(1, config.rounds + 1):
        shared_sl = r == 1 and not config.seed_sft
        if sl and shared_sl:
            units.append(Unit(r, None, "sl", sl))
        for seed in seeds:
            if sl and not shared_sl:
                units.append(Unit(r, seed, "sl", sl))
            units += [Unit(r, seed, part, rl) for part in parts if rl]
    return units


def unit_config(config: RunConfig, unit: Unit) -> RunConfig:
    """The recipe of one unit: its stages, and its seed in every stage that samples or trains. The pairs'
    sampling seed also moves with the round and the RL iteration, so each draws fresh pairs."""
    from cai.feedback.judge import stable_seed

    update: dict = {"stages": list(unit.stages), "rounds": 1, "seeds": None, "rl_iterations": 1, "seed_sft": False,
                    "name": f"{config.name}/{unit.key}"}
    seed = unit.seed
    if seed is not None:
        label_seed = stable_seed(seed, f"round{unit.round}/{unit.part}")
        update.update({
            "label": config.label.model_copy(update={"seed": label_seed}),
            "dpo": config.dpo.model_copy(update={"seed": seed}),
            "reward": config.reward.model_copy(update={"seed": seed}),
            "ppo": config.ppo.model_copy(update={"seed": seed}),
            "grpo": config.grpo.model_copy(update={"seed": seed}),
            "sft": config.sft.model_copy(update={"seed": seed}),
        })
    elif unit.round > 1 or unit.iteration > 1:
        update["label"] = config.label.model_copy(update={"seed": stable_seed(config.label.seed, unit.key)})
    return config.model_copy(update=update)


def run_rounds(config: RunConfig, out: Path, *, redo: tuple[str, ...] = ()) -> dict:
    """Run (or resume) every unit of a multi-round recipe into ``out``, then its evaluate stage; returns the
    top-level manifest (``manifest["models"]``: every trained model with its stage, round and seed)."""
    from cai import __version__
    from cai.jsonl import write_atomic
    from cai.logs import log_to_run_dir
    from cai.pipeline import _check_models, run_pipeline
    from cai.train.artifacts import library_versions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    _check_multi(config)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {
        "name": config.name, "cai_version": __version__, "versions": library_versions(), "units": {}, "stages": {}}
    manifest.update({"rounds": config.rounds, "seeds": config.seeds, "rl_iterations": config.rl_iterations})
    manifest.pop("failed", None)

    def save() -> None:
        write_atomic(path, json.dumps(manifest, indent=2, default=str))

    base = _check_models(config)
    chains: dict = {seed: base for seed in (config.seeds or [None])}
    models: list[dict] = []
    unit = None
    try:
        for unit in plan_units(config):
            start = chains.get(unit.seed, base)  # a unit the seeds share runs in round 1, from the base
            log.info("%s: stages %s from %s", unit.key, ",".join(unit.stages), start)
            t0 = time.time()
            sub = _run_unit(run_pipeline, unit_config(config, unit), out / unit.key, start, redo)
            trained = sub["final_model"]
            for seed in chains if unit.seed is None else [unit.seed]:
                chains[seed] = trained
            last = [s for s in sub["stages"] if s in ("sft", "ppo", "grpo", "dpo")]
            if last and (unit.part == "sl" or unit.iteration == config.rl_iterations):
                models.append({"stage": last[-1], "round": unit.round, "seed": unit.seed, "model": trained,
                               "unit": unit.key})
            manifest["units"][unit.key] = {"stages": list(unit.stages), "start": start, "model": trained,
                                           "seconds": round(time.time() - t0, 1)}
            save()
        unit = None
        manifest["models"] = models
        manifest["final_models"] = {str(s): m for s, m in chains.items()}
        if "evaluate" in config.stages:
            _evaluate(config, out, base, models, manifest, save)
    except BaseException as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        manifest["failed"] = {"unit": unit.key if unit else "evaluate", "error": what,
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        save()
        raise
    manifest["final_model"] = chains[(config.seeds or [None])[0]]
    save()
    return manifest


def _run_unit(run_pipeline, config: RunConfig, out: Path, start: str, redo: tuple[str, ...]) -> dict:
    """One unit as an ordinary run from ``start``; its log lines go to its own cai.log only while it runs."""
    root = logging.getLogger()
    before = set(root.handlers)
    try:
        return run_pipeline(config, out, redo=tuple(s for s in redo if s in config.stages), start=start)
    finally:
        for handler in set(root.handlers) - before:
            root.removeHandler(handler)
            handler.close()


def _check_multi(config: RunConfig) -> None:
    from cai.errors import ConfigError

    if "studies" in config.stages:
        raise ConfigError("the studies stage does not run with rounds, seeds or rl_iterations",
                          where="recipe field stages", fix="run the studies in a recipe of their own")
    if not any(s in RL_STAGES for s in config.stages) and (config.seeds or config.rl_iterations > 1):
        raise ConfigError("seeds and rl_iterations repeat the RL stages, and the recipe has none",
                          where="recipe field stages", fix="add label and dpo (or reward and ppo)")


def _evaluate(config: RunConfig, out: Path, base: str, models: list[dict], manifest: dict, save) -> None:
    """The evaluate stage of a multi-round run: the base and every round's models, per seed, then the report."""
    from cai.evaluation.evaluate import evaluate_rounds
    from cai.ledger import measure
    from cai.pipeline import Context, stage_settings

    settings = stage_settings(config, "evaluate")
    done = manifest["stages"].get("evaluate", {})
    if done.get("done") and done.get("settings") == settings and done.get("models") == models:
        log.info("stage evaluate: already done, skipping")
        return
    log.info("stage evaluate: starting")
    t0 = time.time()
    manifest["stages"]["evaluate"] = {"done": False, "settings": settings, "models": models}
    save()
    ctx = Context(config, out, policy=base)
    try:
        with measure() as cost:
            ctx.meter = cost.meter
            summary = evaluate_rounds(base, models, out / "evaluate", config.evaluate, ctx.backend)
    finally:
        ctx.meter = None
        ctx.release()
    manifest["stages"]["evaluate"] = {"done": True, "seconds": round(time.time() - t0, 1), "settings": settings,
                                      "models": models, "summary": summary, "cost": cost.entry}
    save()
    _report(out)


def _report(out: Path) -> None:
    from cai.report import build_report

    build_report([out], out / "report")
