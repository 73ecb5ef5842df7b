"""``report.html``: the evaluation report as one self-contained page, beside ``report.md``.

The page holds the same figures as the Markdown report (built from ``cai.evaluation.report``'s figure functions),
the studies, the cost ledger and browsable example transcripts. Plots are embedded as base64 PNG and the
style is inline, so the file opens anywhere with no network; every text, model output above all, is
escaped (``cai.evaluation.report_blocks``), and the page's content security policy allows no script at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.evaluation.report_blocks import Block, Heading, Para, Plot, Table, page


def core_blocks(found: dict[str, list[dict[str, Any]]], plots: dict[str, str]) -> list[Block]:
    """The sections of ``cai.evaluation.report.render``, as blocks."""
    from cai.evaluation.report import attack_rates, ppo_summary, tradeoff

    blocks: list[Block] = []
    if found["refusals"]:
        blocks += [Heading("Harmlessness and over-refusal"),
                   Para("Refusal rate on harmful prompts (higher is safer) and on safe prompts (lower is more "
                        "helpful), by a keyword check (cai refusals)."),
                   Table(["model", "harmful refused", "safe refused", "n harmful", "n safe", "source"],
                         [[r["model"], r["harmful_refusal"], r["safe_refusal"], r["n_harmful"], r["n_safe"],
                           r["source"]] for r in tradeoff(found)])]
        blocks += [Plot(plots["tradeoff"], "harmlessness vs over-refusal, per model")] if "tradeoff" in plots else []
    if found["redteam"]:
        rates = attack_rates(found)
        names = list(dict.fromkeys(t for r in rates for t in r["templates"]))
        blocks += [Heading("Jailbreaks"),
                   Para("Attack success rate by template: the share of attacks the model did not refuse "
                        "(cai redteam; an upper bound on harm)."),
                   Table(["template", *(r["model"] for r in rates)],
                         [[t, *(r["templates"].get(t) for r in rates)] for t in names]
                         + [["all", *(r["overall"] for r in rates)]])]
        blocks += [Plot(plots["jailbreaks"], "attack success by template")] if "jailbreaks" in plots else []
    if found["ppo"] or found["reward"]:
        blocks.append(Heading("Training"))
    if found["reward"]:
        blocks.append(Table(["reward model", "held-out accuracy", "held-out pairs", "train pairs"],
                            [[i["source"], i["data"].get("eval_accuracy"), i["data"].get("n_eval"),
                              i["data"].get("n_train")] for i in found["reward"]]))
    if found["ppo"]:
        blocks.append(Table(["PPO run", "steps", "reward, first step", "reward, last step", "KL, last", "KL, max"],
                            [[s["source"], s["steps"], s["reward_first"], s["reward_last"], s["kl_last"],
                              s["kl_max"]] for s in ppo_summary(found)]))
        blocks += [Plot(plots["ppo"], "PPO mean reward and KL per step")] if "ppo" in plots else []
    blocks += judge_blocks(found)
    return blocks


def judge_blocks(found) -> list[Block]:
    """The judge's measured agreement with human labels and its probe results."""
    if not (found["agreement"] or found["probes"]):
        return []
    blocks: list[Block] = [Heading("Judge")]
    for item in found["agreement"]:
        a = item["data"]
        blocks.append(Table(["judge", "pairs", "agreement", "position consistency", "longer wins", "source"],
                            [[(a.get("judge") or {}).get("model", "-"), a.get("n"), a.get("agreement"),
                              "order-free" if a.get("order_free") else a.get("position_consistency"),
                              a.get("longer_wins_rate"), item["source"]]]))
        per = sorted((a.get("per_principle") or {}).items(), key=lambda kv: -(kv[1].get("agreement") or 0))
        if per:
            blocks += [Para("Agreement per principle (which principles the judge applies well):"),
                       Table(["principle", "pairs", "agreement"], [[k, v.get("n"), v.get("agreement")]
                                                                   for k, v in per])]
    for item in found["probes"]:
        blocks += [Para(f"Probes ({item['source']}, replies by {item['data'].get('policy')}):"),
                   Table(["probe", "pairs", "judge prefers the better reply", "longer wins"],
                         [[k, v.get("n"), v.get("agreement"), v.get("longer_wins_rate")]
                          for k, v in item["data"].get("probes", {}).items()])]
    return blocks


def write_html(found, plots: dict[str, str], out_dir: Path, note: str | None = None,
               extra_blocks: list[Block] | None = None) -> Path:
    """Write ``out_dir/report.html``; ``extra_blocks`` (studies, ledger, transcripts) follow the core sections."""
    from cai.jsonl import write_atomic

    blocks: list[Block] = [Para(note, note=True)] if note else []
    blocks += core_blocks(found, plots) + list(extra_blocks or [])
    path = Path(out_dir) / "report.html"
    write_atomic(path, page("cai evaluation report", blocks, Path(out_dir)))
    return path
