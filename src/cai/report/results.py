"""What the result files of a run hold: ``collect`` finds them under the given run directories (or takes
files directly), and the figure functions turn them into the rows the report shows.

* ``refusals.json`` (``cai refusals``): refusal rate on harmful prompts against the over-refusal rate on
  safe ones, per model: the harmlessness / helpfulness trade-off.
* ``redteam.json`` (``cai redteam``): attack success rate per jailbreak template and model.
* ``metrics.jsonl`` of ``cai ppo`` (rows with ``step``, ``reward`` and ``kl``): reward and KL per step;
  ``metrics.json`` of ``cai reward``: the reward model's held-out accuracy.
* ``pairs.jsonl`` of ``cai label`` (AI-labelled pairs): how many, mean p_chosen, position consistency;
  ``cai_model.json`` of a ``cai dpo`` model: its training figures.
* ``agreement.json``, ``probes.json``, ``sweep.json`` (``cai label --agreement/--probe/--sweep``): the
  judge's agreement, position consistency and per-principle agreement, probe results and the sweep.
* ``label_source.json`` and ``config.resolved.yaml``: where a run's labels came from and what it trained on.
"""


from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.errors import ConfigError

log = logging.getLogger(__name__)
KINDS = ("refusals", "redteam", "ppo", "reward", "labels", "dpo", "agreement", "probes", "sweep", "label_source", "run")
CONSTRUCTED = "construction:"  # how cai.feedback.constructed names the source of the pairs it builds
SMALL_EVAL = 30  # held-out pairs below which a reward model's accuracy gets a caveat


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read this result file ({e})", where=str(path),
                          fix="re-run the command that writes it, or leave the file out") from None


def _ppo_rows(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a PPO metrics file, or None when ``path`` is some other metrics.jsonl."""
    from cai.jsonl import read_records

    rows = read_records(path)
    return rows if rows and all(k in rows[0] for k in ("step", "reward", "kl")) else None


def _kind(path: Path) -> tuple[str, Any] | None:
    """(kind, content) for a result file ``collect`` understands, else None."""
    name = path.name
    if name == "label_source.json":
        return "label_source", _load_json(path)
    if name == "config.resolved.yaml":
        import yaml

        return "run", yaml.safe_load(path.read_text(encoding="utf-8"))
    if name in ("refusals.json", "redteam.json", "agreement.json", "probes.json", "sweep.json"):
        return name.removesuffix(".json"), _load_json(path)
    if name == "metrics.jsonl":
        rows = _ppo_rows(path)
        return ("ppo", rows) if rows is not None else None
    if name == "metrics.json":
        data = _load_json(path)
        return ("reward", data) if isinstance(data, dict) and "eval_accuracy" in data else None
    if name == "pairs.jsonl":
        summary = label_summary(path)
        return ("labels", summary) if summary else None
    if name == "cai_model.json":
        data = _load_json(path)
        return ("dpo", data) if isinstance(data, dict) and data.get("stage") == "dpo" else None
    return None


def label_summary(path: Path) -> dict[str, Any] | None:
    """Figures of an AI-labelled ``pairs.jsonl`` (``cai label``), or None for other pair files."""
    from cai.jsonl import read_records

    rows = [r for r in read_records(path) if "p_chosen" in r and "position_consistent" in r]
    if not rows:
        return None
    judged = [r for r in rows if not str(r.get("judge")).startswith(CONSTRUCTED)]  # built pairs have no order
    return {"pairs": len(rows), "prompts": len({r.get("prompt_id") for r in rows}),
            "mean_p_chosen": sum(r["p_chosen"] for r in rows) / len(rows),
            "position_consistency": sum(bool(r["position_consistent"]) for r in judged) / len(judged)
            if judged else None,
            "judge": "; ".join(dict.fromkeys(str(r.get("judge")) for r in rows)),
            "policy": (rows[0].get("provenance") or {}).get("model")}


def collect(paths: Sequence[str | Path], required: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Every result file under ``paths``: {kind: [{"source": path, "data": content}, ...]}. With ``required``,
    finding none is an error."""
    found: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for given in map(Path, paths):
        if not given.exists():
            raise ConfigError("no such file or directory", where=str(given), fix="check the path")
        files = [given] if given.is_file() else sorted(p for p in given.rglob("*") if p.is_file())
        for path in files:
            kind = _kind(path)
            if kind is not None:
                found[kind[0]].append({"source": str(path), "data": kind[1]})
    if required and not any(v for k, v in found.items() if k != "run"):
        raise ConfigError("found no result file to report on", where=", ".join(map(str, paths)),
                          fix="give run directories holding refusals.json, redteam.json, metrics.jsonl (PPO), "
                              "metrics.json (reward), pairs.jsonl (labels), a DPO model, agreement.json, "
                              "probes.json or sweep.json")
    return found


# ---- figures ------------------------------------------------------------------------------------------


def tradeoff(found) -> list[dict[str, Any]]:
    """Per model and refusal file: harmful-prompt refusal rate and safe-prompt (over-)refusal rate."""
    rows = []
    for item in found["refusals"]:
        for m in item["data"].get("models", []):
            sets = m.get("sets", {})
            model = m.get("model_spec") or m.get("model")
            if m.get("seeds"):
                model = f"round {m.get('round')} {m.get('stage')}: mean of {len(m['seeds'])} seeds"
            rows.append({"model": model, "source": item["source"],
                         "harmful_refusal": sets.get("harmful", {}).get("refusal_rate"),
                         "safe_refusal": sets.get("safe", {}).get("refusal_rate"),
                         "n_harmful": sets.get("harmful", {}).get("n"), "n_safe": sets.get("safe", {}).get("n"),
                         "harmful_refusal_train": sets.get("harmful-train", {}).get("refusal_rate"),
                         "safe_refusal_train": sets.get("safe-train", {}).get("refusal_rate"),
                         "harmful_set": item["data"].get("harmful"), "safe_set": item["data"].get("safe")})
    return rows


def _set_name(spec: dict[str, Any]) -> str:
    name = spec["source"] + ("" if ":" in spec["source"] else ":" + spec.get("split", "train"))
    return name + (f" (first {spec['limit']})" if spec.get("limit") else "")


def trained_on(found) -> list[dict[str, Any]]:
    """Per run (its config.resolved.yaml): its model, constitution and the prompt sets each training stage read.
    Where the run's label stage built constructed pairs (its preferences/label_source.json says so), the pairs
    come from the critique and helpful records, not from the recipe's ``rl_prompts``, and the entry says that."""
    constructed = {str(Path(i["source"]).parent.parent) for i in found["label_source"]
                   if (i["data"] or {}).get("label_source") == "constructed"}
    out = []
    for item in found["run"]:
        cfg = item["data"] or {}
        stages = cfg.get("stages") or []
        weight = (cfg.get("sft") or {}).get("helpful_weight", 1)
        sets = {"critique (SL-CAI)": cfg.get("critique_prompts") if "critique" in stages else None,
                "helpful answers mixed into SFT": cfg.get("helpful_prompts") if "critique" in stages else None,
                "label / RL": cfg.get("rl_prompts") if set(stages) & {"label", "ppo", "dpo"} else None}
        names = {k: _set_name(v) for k, v in sets.items() if v}
        if "helpful answers mixed into SFT" in names and weight != 1:
            names["helpful answers mixed into SFT"] += f", weighted {weight:g}"
        if "label / RL" in names and str(Path(item["source"]).parent) in constructed:
            names["label / RL"] = "constructed pairs from the critique and helpful sets (no judge)"
        out.append({"source": item["source"], "model": cfg.get("model"), "constitution": cfg.get("constitution"),
                    "sets": names})
    return out


def attack_rates(found) -> list[dict[str, Any]]:
    """Per model and red-team file: attack success rate per template and overall."""
    rows = []
    for item in found["redteam"]:
        for spec, m in item["data"].get("models", {}).items():
            rows.append({"model": spec, "source": item["source"], "overall": m["overall"]["asr"],
                         "degenerate": m["overall"].get("degenerate", 0),
                         "templates": {t: f["asr"] for t, f in m.get("templates", {}).items()}})
    return rows


def ppo_summary(found) -> list[dict[str, Any]]:
    """Per PPO run: steps, reward and KL at the first and last step, and the series for the curves."""
    out = []
    for item in found["ppo"]:
        rows = item["data"]
        out.append({"source": item["source"], "steps": len(rows),
                    "reward_first": rows[0]["reward"], "reward_last": rows[-1]["reward"],
                    "kl_last": rows[-1]["kl"], "kl_max": max(r["kl"] for r in rows),
                    "step": [r["step"] for r in rows], "reward": [r["reward"] for r in rows],
                    "kl": [r["kl"] for r in rows]})
    return out

