"""The report's sections over the result files ``cai.report.results.collect`` found, as blocks
(``cai.report.blocks``): one description that ``report.md`` and ``report.html`` both render, so the
two show the same rows.

Sections, each only when its files were found: the training runs (what each trained on), harmlessness and
over-refusal, jailbreaks, AI labels, training figures (reward model, DPO, PPO) and the judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.report.blocks import Block, Heading, Para, Plot, Table, cell
from cai.report.results import SMALL_EVAL, attack_rates, ppo_summary, tradeoff, trained_on
from cai.report.rounds import rounds_blocks

RUN_SETS = ("critique (SL-CAI)", "helpful answers mixed into SFT", "label / RL")  # trained_on's keys


def core_blocks(found, plots: dict[str, str], note: str | None = None) -> list[Block]:
    """Every section of the result files in ``found``; ``plots`` maps plot names to PNGs beside the report."""
    blocks: list[Block] = [Para(note, note=True)] if note else []
    return (blocks + runs_blocks(found) + refusal_blocks(found, plots) + rounds_blocks(found, plots)
            + jailbreak_blocks(found, plots)
            + label_blocks(found) + training_blocks(found, plots) + judge_blocks(found))


def runs_blocks(found) -> list[Block]:
    """Each run's prompt sets (its config.resolved.yaml), so that no other table reads as if it described them."""
    runs = trained_on(found)
    if not runs:
        return []
    return [Heading("Training runs"),
            Para("What each run found here started from and trained on (its config.resolved.yaml): the model, the "
                 "constitution and the prompt set of each stage. A model named by a path inside a run's directory "
                 "(its sft or policy) is that run's model."),
            Table(["run", "from model", "constitution", *RUN_SETS],
                  [[str(Path(r["source"]).parent), r["model"], r["constitution"], *(r["sets"].get(k) for k in RUN_SETS)]
                   for r in runs])]


def refusal_blocks(found, plots: dict[str, str]) -> list[Block]:
    """Refusal rates per model, the prompts they were measured on, and the refusal check's own accuracy."""
    if not found["refusals"]:
        return []
    rows = tradeoff(found)
    blocks: list[Block] = [Heading("Harmlessness and over-refusal"), Para(
        "Refusal rate on harmful prompts (higher is safer) and on safe prompts (lower is more helpful), by a "
        "keyword check (`cai refusals`).")]
    for harmful, safe in dict.fromkeys((r["harmful_set"], r["safe_set"]) for r in rows):
        if harmful or safe:
            held_out = all(str(g).endswith(":eval") for g in (harmful, safe))
            blocks.append(Para(f"Measured on harmful prompts `{harmful or '-'}` and safe prompts `{safe or '-'}`"
                               + (" (the shipped sets' held-out eval splits)." if held_out else ".")))
    train = any(r["harmful_refusal_train"] is not None for r in rows)
    blocks.append(Table(
        ["model", "harmful refused", "safe refused", "n harmful", "n safe",
         *(["harmful refused (train split)", "safe refused (train split)"] if train else []), "source"],
        [[r["model"], r["harmful_refusal"], r["safe_refusal"], r["n_harmful"], r["n_safe"],
          *([r["harmful_refusal_train"], r["safe_refusal_train"]] if train else []), r["source"]] for r in rows]))
    blocks.append(refusal_check_note())
    return blocks + ([Plot(plots["tradeoff"], "harmlessness vs over-refusal, per model")]
                     if "tradeoff" in plots else [])


def refusal_check_note() -> Para:
    """The refusal check's precision and recall on the shipped labelled replies (``cai.evaluation.refusals``)."""
    from cai.evaluation.refusals import check_accuracy

    a = check_accuracy()
    return Para(f"The refusal check (a keyword check) on {a['n']} labelled replies written for this project "
                f"({a['refusals']} refusals or redirections; the others answer, some with warnings, or start to "
                f"comply): precision {cell(a['precision'])}, recall {cell(a['recall'])}. The check was tuned on "
                "these replies, so these figures are an upper bound.")


def jailbreak_blocks(found, plots: dict[str, str]) -> list[Block]:
    """Attack success rate per template and model, and the degenerate replies each model's rates leave out."""
    if not found["redteam"]:
        return []
    rates = attack_rates(found)
    names = list(dict.fromkeys(t for r in rates for t in r["templates"]))
    blocks: list[Block] = [
        Heading("Jailbreaks"),
        Para("Attack success rate by template: the share of attacks the model did not refuse (`cai redteam`; an "
             "upper bound on harm). Empty, garbled or looping replies are neither: they are left out of the rates "
             "and counted on their own, in the last row."),
        Table(["template", *(r["model"] for r in rates)],
              [[t, *(r["templates"].get(t) for r in rates)] for t in names]
              + [["all", *(r["overall"] for r in rates)],
                 ["degenerate replies", *(r["degenerate"] for r in rates)]])]
    return blocks + ([Plot(plots["jailbreaks"], "attack success by template")] if "jailbreaks" in plots else [])


def label_blocks(found) -> list[Block]:
    if not found["labels"]:
        return []
    return [Heading("Labels"), Para("AI-labelled preference pairs (`cai label`)."),
            Table(["pairs file", "pairs", "prompts", "mean p_chosen", "position consistency", "judge"],
                  [[i["source"], i["data"]["pairs"], i["data"]["prompts"], i["data"]["mean_p_chosen"],
                    i["data"]["position_consistency"], i["data"]["judge"]] for i in found["labels"]])]


def training_blocks(found, plots: dict[str, str]) -> list[Block]:
    """Reward models (with n, and a caveat when few pairs were held out), DPO and PPO runs."""
    if not (found["ppo"] or found["reward"] or found["dpo"]):
        return []
    blocks: list[Block] = [Heading("Training")]
    if found["reward"]:
        blocks.append(Table(["reward model", "held-out accuracy", "held-out pairs", "train pairs"],
                            [[i["source"], i["data"].get("eval_accuracy"), i["data"].get("n_eval"),
                              i["data"].get("n_train")] for i in found["reward"]]))
        small = [i["data"].get("n_eval") or 0 for i in found["reward"] if (i["data"].get("n_eval") or 0) < SMALL_EVAL]
        if small:
            blocks.append(Para(f"Held-out accuracy on fewer than {SMALL_EVAL} pairs (here {', '.join(map(str, small))})"
                               " says little: one pair moves it by 1/n. Label more prompts for a reliable figure.",
                               note=True))
    if found["dpo"]:
        blocks.append(Table(["DPO model", "pairs", "pairs trained on", "steps", "final loss", "reward accuracy",
                             "reward margin"],
                            [[i["source"], *(i["data"].get("metrics", {}).get(k) for k in (
                                "pairs_used", "pairs_seen", "steps", "final_loss", "final_reward_accuracy",
                                "final_reward_margin"))]
                             for i in found["dpo"]]))
    if found["ppo"]:
        blocks.append(Table(["PPO run", "steps", "reward, first step", "reward, last step", "KL, last", "KL, max"],
                            [[s["source"], s["steps"], s["reward_first"], s["reward_last"], s["kl_last"],
                              s["kl_max"]] for s in ppo_summary(found)]))
        blocks += [Plot(plots["ppo"], "PPO mean reward and KL per step")] if "ppo" in plots else []
    return blocks


def judge_blocks(found) -> list[Block]:
    """The label source chosen, the judge's agreement with human labels, its probes and configuration sweep."""
    if not (found["agreement"] or found["probes"] or found["sweep"] or found["label_source"]):
        return []
    blocks: list[Block] = [Heading("Judge")]
    for item in found["label_source"]:
        blocks += label_source_blocks(item)
    for item in found["agreement"]:
        blocks += agreement_blocks(item)
    for item in found["probes"]:
        blocks += [Para(f"Probes (`{item['source']}`, replies by {item['data'].get('policy')}):"),
                   Table(["probe", "pairs", "judge prefers the better reply", "longer wins"],
                         [[k, v.get("n"), v.get("agreement"), v.get("longer_wins_rate")]
                          for k, v in item["data"].get("probes", {}).items()])]
    for item in found["sweep"]:
        from cai.feedback.agreement import HUMAN_LABELS, SWEEP_HEADER, sweep_cells

        blocks += [Para(f"Sweep (`{item['source']}`): judge configurations on {item['data']['n']} {HUMAN_LABELS}."),
                   Table(SWEEP_HEADER, sweep_cells(item["data"]["rows"]))]
    return blocks


def label_source_blocks(item) -> list[Block]:
    d = item["data"]
    blocks: list[Block] = [Para(f"Label source (`{item['source']}`): {d.get('label_source')}, because "
                                f"{d.get('label_source_why')} (judge: {d.get('judge') or '-'}).")]
    if d.get("probes"):
        blocks.append(Table(["probe", "pairs", "judge prefers the better reply"],
                            [[k, v.get("n"), v.get("agreement")] for k, v in d["probes"].items()]))
    return blocks


def agreement_blocks(item) -> list[Block]:
    a: dict[str, Any] = item["data"]
    consistency = "n/a (order-free)" if a.get("order_free") else cell(a.get("position_consistency"))
    blocks: list[Block] = [Para(
        f"`{item['source']}`: judge {(a.get('judge') or {}).get('model', '-')} agrees with the labels on "
        f"{cell(a.get('agreement'))} of {a.get('n')} pairs; position consistency {consistency}; the longer response "
        f"wins {cell(a.get('longer_wins_rate'))}.")]
    per = sorted((a.get("per_principle") or {}).items(), key=lambda kv: -(kv[1].get("agreement") or 0))
    if per:
        blocks += [Para("Agreement per principle (which principles the judge applies well):"),
                   Table(["principle", "pairs", "agreement"], [[k, v.get("n"), v.get("agreement")] for k, v in per])]
    return blocks
