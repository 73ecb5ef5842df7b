"""The evaluation report: what a run changed, from the files its commands wrote, as Markdown with plots.

``collect`` finds the result files under the given run directories (or takes files directly):

* ``refusals.json`` (``cai refusals``): refusal rate on harmful prompts against the over-refusal rate on
  safe ones, per model: the harmlessness / helpfulness trade-off (a scatter plot).
* ``redteam.json`` (``cai redteam``): attack success rate per jailbreak template and model (bars).
* ``metrics.jsonl`` of ``cai ppo`` (rows with ``step``, ``reward`` and ``kl``): reward and KL per step
  (curves); ``metrics.json`` of ``cai reward``: the reward model's held-out accuracy.
* ``pairs.jsonl`` of ``cai label`` (AI-labelled pairs): how many, mean p_chosen, position consistency;
  ``cai_model.json`` of a ``cai dpo`` model: its training figures.
* ``agreement.json``, ``probes.json``, ``sweep.json`` (``cai label --agreement/--probe/--sweep``): the
  judge's agreement, position consistency and per-principle agreement (which principles the judge
  applies well), probe results and the configuration sweep.

``build_report`` writes ``report.md``, ``report.html``, ``report.json`` (every figure shown) and one PNG per plot.
Both reports render one list of blocks (``cai.evaluation.report_sections`` for these files, then the studies,
the cost ledger and example transcripts of ``cai.evaluation.report_extras``), so they show the same rows.
``report.html`` is one self-contained page: plots embedded as base64 PNG, inline style, every text escaped
(model output above all) and a content security policy that allows no script. Plots need matplotlib (the
``report`` extra); without it the report has the tables only and says so.
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
TITLE = "cai evaluation report"


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
            rows.append({"model": m.get("model_spec") or m.get("model"), "source": item["source"],
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


# ---- plots ---------------------------------------------------------------------------------------------


def draw(found, out_dir: Path) -> dict[str, str]:
    """The plots as PNG files in ``out_dir``; {name: file name}. Empty without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return {}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}
    if found["refusals"]:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        # one marker per distinct point, named in the legend (labels written beside the points overlapped
        # where points coincide); models that several runs share are named with their run
        for (x, y), names in _points(tradeoff(found)).items():
            ax.scatter(x, y, s=40, alpha=0.8, label="; ".join(names))
        ax.set(xlabel="refusal rate on safe prompts (over-refusal)", ylabel="refusal rate on harmful prompts",
               xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), title="harmlessness vs helpfulness")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
        made["tradeoff"] = _save(fig, out_dir / "tradeoff.png")
    if found["redteam"]:
        rates = attack_rates(found)
        names = list(dict.fromkeys(t for r in rates for t in r["templates"]))
        fig, ax = plt.subplots(figsize=(max(5, len(names) * 0.9), 4))
        width = 0.8 / len(rates)
        for k, r in enumerate(rates):
            ax.bar([i + k * width for i in range(len(names))], [r["templates"].get(t) or 0 for t in names],
                   width, label=_short(r["model"], 30))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right")
        ax.set(ylabel="attack success rate", ylim=(0, 1.05), title="jailbreak templates")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
        made["jailbreaks"] = _save(fig, out_dir / "jailbreaks.png")
    if found["ppo"]:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
        for s in ppo_summary(found):
            top.plot(s["step"], s["reward"], label=_short(s["source"]))
            bottom.plot(s["step"], s["kl"])
        top.set(ylabel="mean reward", title="PPO")
        top.legend(fontsize=7)
        bottom.set(xlabel="step", ylabel="KL to the reference")
        from matplotlib.ticker import MaxNLocator

        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        made["ppo"] = _save(fig, out_dir / "ppo.png")
    return made


def _points(rows: list[dict[str, Any]]) -> dict[tuple[float, float], list[str]]:
    """Trade-off rows grouped by their (safe, harmful) point: {point: [labels]}. A model measured in
    several runs is labelled with its run (the result file's directory) too."""
    def base(r):
        return Path(str(r["model"])).name or str(r["model"])

    def run(r):
        return "/".join(Path(r["source"]).parent.parts[-2:])

    seen: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        seen.setdefault(base(r), set()).add((str(r["model"]), run(r)))
    points: dict[tuple[float, float], list[str]] = {}
    for r in rows:
        if r["safe_refusal"] is None or r["harmful_refusal"] is None:
            continue
        name = _short(base(r), 30) + (f" ({_short(run(r), 30)})" if len(seen[base(r)]) > 1 else "")
        points.setdefault((r["safe_refusal"], r["harmful_refusal"]), []).append(name)
    return points


def _check_accuracy() -> dict[str, Any]:
    from cai.evaluation.refusals import check_accuracy

    return check_accuracy()


def _short(text, n: int = 40) -> str:
    """A plot label: the end of ``text``, marked when cut (matplotlib hides labels that start with _)."""
    text = str(text)
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def build_report(paths: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Collect, draw and write ``report.md``, ``report.html``, ``report.json`` and the PNGs into ``out_dir``."""
    from cai.evaluation.benchmark_report import benchmark_blocks
    from cai.evaluation.report_blocks import page, to_markdown
    from cai.evaluation.report_extras import collect_extras, ledger_blocks, study_blocks, transcript_blocks
    from cai.evaluation.report_sections import core_blocks
    from cai.jsonl import write_atomic

    extras = collect_extras(paths)  # studies, cost ledger, transcripts
    benchmarks = benchmark_blocks(paths)  # eval.json of cai eval
    found = collect(paths, required=not extras.any() and not benchmarks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = draw(found, out_dir)
    note = None if plots or not any(found[k] for k in ("refusals", "redteam", "ppo")) else \
        "matplotlib is not installed, so this report has no plots: pip install 'cai[report]'"
    blocks = core_blocks(found, plots, note) + benchmarks + study_blocks(extras, out_dir) + ledger_blocks(extras) \
        + transcript_blocks(extras)
    write_atomic(out_dir / "report.md", f"# {TITLE}\n\n" + to_markdown(blocks).rstrip() + "\n")
    write_atomic(out_dir / "report.html", page(TITLE, blocks, out_dir))
    figures = {"sources": {k: [i["source"] for i in v] for k, v in found.items() if v},
               "tradeoff": tradeoff(found), "attack_rates": attack_rates(found),
               "ppo": [{k: v for k, v in s.items() if k not in ("step", "reward", "kl")} for s in ppo_summary(found)],
               "reward": [{"source": i["source"], **i["data"]} for i in found["reward"]],
               "labels": [{"source": i["source"], **i["data"]} for i in found["labels"]],
               "dpo": [{"source": i["source"], **i["data"].get("metrics", {})} for i in found["dpo"]],
               "trained_on": trained_on(found),
               "label_source": [{"source": i["source"], **i["data"]} for i in found["label_source"]],
               "refusal_check": {k: v for k, v in _check_accuracy().items() if k != "wrong"},
               "agreement": [{"source": i["source"], **{k: i["data"].get(k) for k in (
                   "n", "agreement", "position_consistency", "longer_wins_rate", "per_principle")}}
                   for i in found["agreement"]],
               "plots": plots}
    write_atomic(out_dir / "report.json", json.dumps(figures, indent=2) + "\n")
    return figures
