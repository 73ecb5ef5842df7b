"""The report's view of a multi-round run over seeds (``cai.rounds``): harmful and safe refusal per round
and stage with their spread over seeds, and each round's RL-over-SFT difference with its paired bootstrap
interval, read from the refusals.json files that carry ``round`` and ``seeds``."""

from __future__ import annotations

from typing import Any

from cai.report.blocks import Block, Heading, Para, Plot, Table


def round_rows(found) -> list[dict[str, Any]]:
    """One row per model of every refusals.json with rounds: stage, round, seeds, and per set the mean
    refusal rate, its standard deviation and range over seeds (a shared model has no spread)."""
    rows = []
    for item in found["refusals"]:
        models = item["data"].get("models", [])
        if not any("round" in m for m in models):
            continue
        for m in models:
            row = {"source": item["source"], "stage": m.get("stage"), "round": m.get("round"),
                   "seeds": len(m.get("seeds") or []) or None}
            for name in ("harmful", "safe"):
                s = m.get("sets", {}).get(name, {})
                row[name] = s.get("refusal_rate")
                row[f"{name}_std"] = s.get("std")
                row[f"{name}_range"] = (s["min"], s["max"]) if "min" in s else None
            rows.append(row)
    return rows


def differences(found) -> list[dict[str, Any]]:
    """Every RL-over-SFT difference the refusals.json files hold, with the file they came from."""
    return [{"source": item["source"], **d} for item in found["refusals"] for d in item["data"].get("differences", [])]


def rounds_blocks(found, plots: dict[str, str]) -> list[Block]:
    """The section: a table per round and stage, the RL-over-SFT differences, and the plot."""
    rows = round_rows(found)
    if not rows:
        return []
    blocks: list[Block] = [
        Heading("Rounds and seeds"),
        Para("Refusal rates on the held-out sets after each round's SFT and RL stages: the mean over seeds, its "
             "standard deviation and range (min-max); a model the seeds share (round 1's SFT) has one figure."),
        Table(["round", "stage", "seeds", "harmful refused", "sd", "range", "safe refused", "sd", "range"],
              [[r["round"], r["stage"], r["seeds"] or "shared", r["harmful"], r["harmful_std"],
                _range(r["harmful_range"]), r["safe"], r["safe_std"], _range(r["safe_range"])] for r in rows])]
    diffs = differences(found)
    if diffs:
        blocks += [Para("RL over its own SFT model (the same prompts, both models): the difference in refusal rate "
                        "per seed and the mean over seeds, each with a paired bootstrap 95% interval."),
                   Table(["round", "stage", "set", "mean difference", "95% interval", "per seed"],
                         [[d["round"], d["stage"], d["set"], d["mean"], _range(d["ci95"]),
                           ", ".join(f"{p['seed']}: {p['difference']:+.3f}" for p in d["per_seed"])] for d in diffs])]
    if "rounds" in plots:
        blocks.append(Plot(plots["rounds"], "refusal rate per round and stage (mean over seeds, bars: range)"))
    return blocks


def draw_rounds(found, plt):
    """The per-round figure (harmful and safe refusal, mean with the range over seeds), or None."""
    rows = [r for r in round_rows(found) if r["harmful"] is not None]
    if not rows:
        return None
    labels = [f"r{r['round']} {r['stage']}" if r["round"] else "base" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, len(rows) * 0.9), 4))
    for name, marker in (("harmful", "o"), ("safe", "s")):
        means = [r[name] for r in rows]
        low = [m - (r[f"{name}_range"] or (m, m))[0] for m, r in zip(means, rows, strict=True)]
        high = [(r[f"{name}_range"] or (m, m))[1] - m for m, r in zip(means, rows, strict=True)]
        ax.errorbar(range(len(rows)), means, yerr=[low, high], marker=marker, capsize=4,
                    label=f"{name} prompts refused")
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    ax.set(ylabel="refusal rate", ylim=(-0.05, 1.05), title="rounds: held-out refusal rates")
    ax.legend(fontsize=8)
    return fig


def _range(pair) -> str | None:
    return None if not pair else f"{pair[0]:.3f}-{pair[1]:.3f}"
