"""CAI against RLHF: the same RL recipe from the same SFT model, once on human labels and once on AI labels.

The RLHF arm trains on human harmlessness preferences (Anthropic HH-RLHF ``harmless-base``: JSONL rows with
``chosen`` / ``rejected`` transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..."; ``Anthropic/hh-rlhf`` by Hub id, or a
local file); the CAI arm on cai's AI-labelled pairs (``cai label``'s ``pairs.jsonl``). Both take the same number
of pairs, the same DPO options and steps, from the same SFT model, once per seed; then every model (the SFT model
and each trained one) answers the same held-out harmful and safe prompts, read by one grader. The study shows
both arms side by side per seed, their mean and spread, and what each label source cost: human labels at the
price per label the user sets, AI labels at theirs (a local judge's labels cost compute, not money).

Two RL recipes, the same for both arms:

* DPO (TRL's ``DPOTrainer`` through ``cai.train.dpo``) on the arm's pairs;
* reward model + PPO, the paper's RL step (``PPORecipe``): a reward model trained on the arm's pairs from the SFT
  model (``cai.train.reward``, its held-out accuracy reported), then PPO from the SFT model against it with the KL
  penalty to the SFT model (``cai.train.ppo``), on the same rollout prompts for both arms: the conversations of
  both sources' pairs, interleaved, so the arms differ only in their labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import ConfigError
from cai.report.blocks import Block, Heading, Para, Table

log = logging.getLogger(__name__)

HH_HUB_ID = "Anthropic/hh-rlhf"
HH_HARMLESS = "harmless-base"
ARMS = ("rlhf", "cai")


@dataclass
class PPORecipe:
    """Reward model + PPO for each arm. ``train_reward`` / ``train_ppo`` default to cai's own
    (``cai.train.reward.train_reward``, ``cai.train.ppo.train_ppo``); tests pass fakes in the same shapes."""

    reward: Any  # cai.train.reward.RewardOptions
    ppo: Any  # cai.train.ppo.PPOOptions
    train_reward: Callable[..., Any] | None = None
    train_ppo: Callable[..., Any] | None = None


def human_rows(source: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` usable human pairs of ``source`` (a local HH-RLHF-format file, or ``Anthropic/hh-rlhf``,
    harmless-base train split) as DPO rows: the conversation before the responses, chosen and rejected."""
    from cai.feedback.agreement import read_human_pairs

    path = Path(source)
    if not path.exists():
        if source != HH_HUB_ID:
            raise ConfigError("human preference file not found", where=source,
                              fix=f"give an HH-RLHF-format JSONL file, or {HH_HUB_ID} to load it from the Hub")
        path = _hh_from_hub(n)
    pairs, bad = read_human_pairs(path, limit=n)
    if bad:
        log.warning("%d human pair(s) skipped as unusable (first: line %d: %s)", len(bad), bad[0].row, bad[0].reason)
    return [{"id": f"human-{p.id}", "prompt": p.conversation, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "p_chosen": 1.0, "judge": "human"}
            for p in pairs]


def _hh_from_hub(n: int) -> Path:
    """The first rows of HH-RLHF harmless-base (train) from the Hub, in a temporary JSONL file."""
    import tempfile

    try:
        from datasets import load_dataset

        data = load_dataset(HH_HUB_ID, data_dir=HH_HARMLESS, split=f"train[:{2 * n}]")
    except Exception as e:  # offline, no datasets, renamed: the same advice
        raise ConfigError(f"cannot load {HH_HUB_ID} ({type(e).__name__}: {e})",
                          fix="give a local HH-RLHF-format JSONL file with --human") from None
    out = Path(tempfile.mkdtemp(prefix="cai-hh-")) / "harmless-base-train.jsonl"
    out.write_text("".join(json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) + "\n" for r in data))
    return out


def ai_rows(path: str | Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` AI-labelled pairs of a ``cai label`` pairs file, as written (checked by the DPO reader)."""
    from cai.jsonl import read_records
    from cai.train.data import read_preference_pairs

    read_preference_pairs(path)  # the same checks DPO makes, before any training
    return read_records(Path(path))[:n]


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, min, max and sample standard deviation of the seeds' figures (None ones left out)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "min": None, "max": None, "sd": None, "n": 0}
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else None
    return {"mean": mean, "min": min(xs), "max": max(xs), "sd": sd, "n": len(xs)}


def label_cost(pairs: int, price: float | None) -> dict[str, Any]:
    return {"pairs": pairs, "price_per_label": price, "total": None if price is None else pairs * price}


def rollout_prompts(data: dict[str, list[dict[str, Any]]], n: int) -> list[list[dict[str, str]]]:
    """PPO's rollout prompts, the same for both arms: the conversations of the first ``n`` pairs of each source,
    interleaved (human, AI, human, ...), each once."""
    seen, out = set(), []
    for pair in zip(*(rows[:n] for rows in data.values()), strict=False):
        for row in pair:
            key = json.dumps(row["prompt"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(row["prompt"])
    return out


def _train_dpo(train, options, pairs_path: Path, target: Path, sft: str, seed: int) -> tuple[str, dict]:
    if not (target / "config.json").exists():
        train(pairs_path, target, model=sft, options=options.model_copy(update={"seed": seed}))
    return str(target), {}


def _train_ppo(recipe: PPORecipe, prompts, pairs_path: Path, target: Path, sft: str, seed: int
               ) -> tuple[str, dict]:
    """The arm's reward model (``target/reward``), then PPO against it (``target/policy``); resumes either."""
    train_reward = recipe.train_reward
    train_ppo = recipe.train_ppo
    if train_reward is None:
        from cai.train.reward import train_reward
    if train_ppo is None:
        from cai.train.ppo import train_ppo
    rm_dir, policy = target / "reward", target / "policy"
    if not (rm_dir / "metrics.json").exists():
        train_reward(pairs_path, rm_dir, model=sft, options=recipe.reward.model_copy(update={"seed": seed}))
    metrics = json.loads((rm_dir / "metrics.json").read_text())
    if not (policy / "config.json").exists():
        policy = Path(train_ppo(prompts, rm_dir, target, policy=sft,
                                options=recipe.ppo.model_copy(update={"seed": seed})))
    return str(policy), {"reward_model": str(rm_dir), "reward_accuracy": metrics.get("eval_accuracy"),
                         "reward_eval_pairs": metrics.get("n_eval")}


def run(sft: str, human: str, ai: str | Path, out_dir: Path, *, pairs: int, dpo_options=None, seeds: Sequence[int],
        eval_sets: dict[str, list[str]], load: Callable[[str], Any], max_new_tokens: int = 48,
        human_price: float | None = None, ai_price: float | None = None, grader=None,
        grader_agreement: dict[str, Any] | None = None,
        train: Callable[..., Any] | None = None, ppo: PPORecipe | None = None) -> dict[str, Any]:
    """Train both arms for each seed (a model already trained in ``out_dir`` is reused) and evaluate them all
    alike; returns the study's JSON. The recipe is DPO with ``dpo_options`` (``train(pairs_path, out_dir, model=,
    options=)`` defaults to ``cai.train.dpo.train_dpo``), or reward model + PPO with ``ppo``."""
    from cai.evaluation.refusal_rates import refusal_comparison
    from cai.jsonl import write_atomic, write_jsonl_atomic

    if (ppo is None) == (dpo_options is None):
        raise ValueError("give the DPO options or the PPO recipe, one of them")
    if ppo is None and train is None:
        from cai.train.dpo import train_dpo as train
    data = {"rlhf": human_rows(human, pairs), "cai": ai_rows(ai, pairs)}
    n = min(len(rows) for rows in data.values())
    if n < pairs:
        log.warning("only %d pairs in the smaller source; both arms take %d", n, n)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for arm, rows in data.items():
        files[arm] = out_dir / f"{arm}_pairs.jsonl"
        write_jsonl_atomic(files[arm], rows[:n])
    prompts = rollout_prompts(data, n) if ppo is not None else None
    models: dict[str, str] = {}
    trained: dict[str, dict] = {}
    for seed in seeds:
        for arm in ARMS:
            name, target = f"{arm}-seed{seed}", out_dir / f"{arm}-seed{seed}"
            if ppo is None:
                models[name], trained[name] = _train_dpo(train, dpo_options, files[arm], target, sft, seed)
            else:
                models[name], trained[name] = _train_ppo(ppo, prompts, files[arm], target, sft, seed)
    specs = {"sft": sft, **models}
    reports = refusal_comparison(((spec, load(spec)) for spec in specs.values()), eval_sets,
                                 max_new_tokens=max_new_tokens, grader=grader)
    graded = {"grader": grader_agreement} if grader_agreement else {}
    write_atomic(out_dir / "refusals.json", json.dumps({**graded, "models": reports}, indent=2) + "\n")
    per_model = {name: {s: r["sets"][s]["refusal_rate"] for s in eval_sets}
                 for name, r in zip(specs, reports, strict=True)}
    arms = {arm: {s: spread([per_model[f"{arm}-seed{seed}"][s] for seed in seeds]) for s in eval_sets}
            for arm in ARMS}
    recipe = ({"method": "dpo", "dpo": dpo_options.model_dump(mode="json")} if ppo is None else
              {"method": "ppo", "reward": ppo.reward.model_dump(mode="json"), "ppo": ppo.ppo.model_dump(mode="json"),
               "rollout_prompts": len(prompts)})
    if ppo is not None:
        for arm in ARMS:
            arms[arm]["reward_accuracy"] = spread([trained[f"{arm}-seed{seed}"]["reward_accuracy"] for seed in seeds])
    return {"study": "cai_vs_rlhf", "sft": sft, "pairs": n, "seeds": list(seeds), "human": human, "ai": str(ai),
            "ai_judges": sorted({str(r.get("judge")) for r in data["cai"][:n]}), **recipe,
            "eval": {k: len(v) for k, v in eval_sets.items()}, **graded,
            "models": {name: {"spec": specs[name], **figures, **trained.get(name, {})}
                       for name, figures in per_model.items()},
            "arms": arms, "cost": {"rlhf": label_cost(n, human_price), "cai": label_cost(n, ai_price)}}


def report_blocks(data: dict[str, Any], source: str, out_dir: Path) -> list[Block]:
    """The two arms side by side: mean [min, max] over seeds per prompt set, then each model, then the cost."""
    sets = list(data["eval"])

    def shown(s: dict[str, Any]) -> str:
        return "-" if s["mean"] is None else f"{s['mean']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

    def price(c: dict[str, Any]) -> str:
        return "not priced" if c["total"] is None else f"{c['total']:.2f} ({c['pairs']} x {c['price_per_label']})"

    ppo = data.get("method") == "ppo"
    recipe = (f"A reward model on {data['pairs']} pairs each, then PPO on the same {data.get('rollout_prompts')} "
              "rollout prompts for both arms," if ppo else f"DPO on {data['pairs']} pairs each,")
    blocks: list[Block] = [
        Heading("CAI against RLHF"),
        Para(f"{recipe} from the same SFT model ({data['sft']}), same options, seeds "
             f"{', '.join(map(str, data['seeds']))}: human harmlessness labels ({data['human']}) against AI labels "
             f"({', '.join(data['ai_judges'])}); refusal rates on held-out prompts "
             f"({', '.join(f'{k}: {v}' for k, v in data['eval'].items())}), mean [min, max] over seeds ({source})."),
        Table(["arm", *(f"{s} refused" for s in sets), "label cost"],
              [[arm, *(shown(data["arms"][arm][s]) for s in sets), price(data["cost"][arm])] for arm in ARMS]
              + [["sft (start)", *(data["models"]["sft"][s] for s in sets), "-"]]),
        Table(["model", *(f"{s} refused" for s in sets), *(["reward model held-out accuracy"] if ppo else []),
               "path"],
              [[name, *(m[s] for s in sets), *([_acc(m)] if ppo else []), m["spec"]]
               for name, m in data["models"].items()]),
    ]
    if data.get("grader"):
        from cai.report.benchmarks import grader_note

        blocks.append(Para(grader_note(data["grader"]), note=True))
    return blocks


def _acc(model: dict[str, Any]) -> str:
    acc = model.get("reward_accuracy")
    return "-" if acc is None else f"{acc:.2f} ({model.get('reward_eval_pairs')} pairs)"
