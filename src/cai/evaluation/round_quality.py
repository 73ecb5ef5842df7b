"""Quality per critique-revision round: the curve the CAI paper draws (Bai et al. 2022, Fig. 5), measured.

The critique stage runs on harmful prompts and on safe ones alike; then every round's revision (round 0 is
the first answer) is scored the same way:

* the refusal check (``cai.evaluation.refusals.is_refusal``): on harmful prompts a rising rate is the point, on safe
  prompts it is over-refusal;
* a reward model's score, when one is given (``cai.train.reward.score_responses``);
* an AI judge, when one is given: the probability that round k's revision is better than the first answer,
  read in both orders (position-debiased), with the judge's measured figures quoted beside it;

and how often a round changes nothing (the revision is, word for word, at least ``SAME`` similar to the
text it revises). ``rounds.json`` holds the curve; the critique records stay in ``DIR/critique``.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cai.report.blocks import Block, Heading, Para, Plot, Table, plot_name

log = logging.getLogger(__name__)
SAME = 0.9  # word-level similarity at or above which a revision "changes nothing"
CURVE_TITLE = "refusals and unchanged revisions per round"
CURVE_CAPTION = "refusal rate (solid) and share of unchanged revisions (dashed) per critique-revision round"


def texts_by_round(record: dict[str, Any], rounds: int) -> list[str]:
    """[first answer, revision 1, ..., revision ``rounds``]; a record that stopped early keeps its last text."""
    texts = [record["initial"]] + [r["revision"] for r in record.get("rounds", [])]
    return (texts + [texts[-1]] * rounds)[: rounds + 1]


def changed(before: str, after: str, same: float = SAME) -> bool:
    """True when ``after`` is materially different from ``before`` (word-level similarity below ``same``)."""
    return difflib.SequenceMatcher(None, before.split(), after.split(), autojunk=False).ratio() < same


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def curve(records: Sequence[dict[str, Any]], rounds: int,
          scores: dict[str, list[float]] | None = None,
          judged: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """Per round k = 0..rounds: refusal rate, share of revisions that changed nothing (k >= 1), and the mean
    reward-model score and judge preference over the first answer where given (keyed by record id)."""
    from cai.evaluation.refusals import is_refusal

    texts = [texts_by_round(r, rounds) for r in records]
    out = []
    for k in range(rounds + 1):
        row: dict[str, Any] = {"round": k, "n": len(records),
                               "refusal_rate": _mean([float(is_refusal(t[k])) for t in texts]),
                               "unchanged_rate": None if k == 0 else _mean(
                                   [float(not changed(t[k - 1], t[k])) for t in texts])}
        if scores:
            row["reward_mean"] = _mean([scores[r["id"]][k] for r in records if r["id"] in scores])
        if judged and k > 0:
            row["judge_p_better"] = _mean([judged[r["id"]][k - 1] for r in records if r["id"] in judged])
        out.append(row)
    return out


def reward_scores(reward_model: str | Path, records: Sequence[dict[str, Any]], rounds: int) -> dict[str, list[float]]:
    """A reward model's score of every round's text, per record id."""
    from cai.train.reward import load_reward_model, score_responses

    model, tokenizer = load_reward_model(reward_model)
    prompts, responses, owners = [], [], []
    for r in records:
        for t in texts_by_round(r, rounds):
            prompts.append([{"role": "user", "content": r["prompt"]}])
            responses.append(t)
            owners.append(r["id"])
    values = score_responses(model, tokenizer, prompts, responses)
    out: dict[str, list[float]] = {}
    for owner, v in zip(owners, values, strict=True):
        out.setdefault(owner, []).append(float(v))
    return out


def judge_scores(judge_backend, constitution, records: Sequence[dict[str, Any]], rounds: int,
                 config=None) -> dict[str, list[float]]:
    """The judge's probability that round k's revision beats the first answer (k = 1..rounds), averaged over
    both presentation orders, per record id. Judged under the constitution's first principle with a
    preference statement."""
    from cai.feedback.judge import Comparison, JudgeConfig, judge, judging_principles

    config = config or JudgeConfig(mode="pairwise", length_control=False)
    principle = judging_principles(constitution)[0]
    pr = ((principle.id, principle.preference),)
    comparisons, owners = [], []
    for r in records:
        texts = texts_by_round(r, rounds)
        for k in range(1, rounds + 1):
            comparisons.append(Comparison([{"role": "user", "content": r["prompt"]}], texts[k], texts[0], pr))
            owners.append(r["id"])
    out: dict[str, list[float]] = {}
    for owner, j in zip(owners, judge(judge_backend, comparisons, config), strict=True):
        out.setdefault(owner, []).append(j.p_a)
    return out


def run_sets(sets: dict[str, Sequence[tuple[str, str]]], out_dir: Path, *, backend, constitution, options
             ) -> dict[str, list[dict[str, Any]]]:
    """Run (or resume) the critique stage on every prompt set at once into ``out_dir/critique`` (one batch per
    step for all sets; record ids are ``<set>/<prompt id>``); the records per set."""
    from cai.critique import run_critique
    from cai.jsonl import read_records

    d = Path(out_dir) / "critique"
    run_critique([(f"{name}/{pid}", p) for name, prompts in sets.items() for pid, p in prompts], d, backend=backend,
                 constitution=constitution, options=options)
    done = {r["id"]: r for r in read_records(d / "records.jsonl")}
    return {name: [done[f"{name}/{pid}"] for pid, _ in prompts] for name, prompts in sets.items()}


def rounds_study(records: dict[str, list[dict[str, Any]]], rounds: int, *, constitution,
                 reward_model: str | None = None, judge_backend=None, judge_evidence: dict | None = None
                 ) -> dict[str, Any]:
    """The ``rounds.json`` content for records per prompt set."""
    out: dict[str, Any] = {"study": "rounds", "rounds": rounds, "constitution": constitution.ref().model_dump(),
                           "reward_model": reward_model, "judge": getattr(judge_backend, "model_id", None),
                           "judge_evidence": judge_evidence, "sets": {}}
    for name, recs in records.items():
        scores = reward_scores(reward_model, recs, rounds) if reward_model else None
        judged = judge_scores(judge_backend, constitution, recs, rounds) if judge_backend is not None else None
        out["sets"][name] = curve(recs, rounds, scores, judged)
    return out


def write_json(path: Path, data: dict[str, Any]) -> Path:
    from cai.jsonl import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2) + "\n")
    return path


# ---- report ---------------------------------------------------------------------------------------------


def draw_curves(series: dict[str, list[dict[str, Any]]], path: Path, title: str) -> str | None:
    """Refusal rate (solid) and share of unchanged revisions (dashed) per round, per label, saved to ``path``;
    None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = curve_figure(series, title)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight" keeps the legend beside the axes in the file
    plt.close(fig)
    return path.name


def curve_figure(series: dict[str, list[dict[str, Any]]], title: str):
    """The round curves as a matplotlib figure, the legend to the right of the axes, where it hides no point."""
    import matplotlib.pyplot as plt

    longest = max((len(f"{label}: unchanged") for label in series), default=0)
    fig, ax = plt.subplots(figsize=(5.5 + 0.06 * longest, 3.6))  # room for the legend, about 0.06 in a letter
    for label, rows in series.items():
        line, = ax.plot([r["round"] for r in rows], [r["refusal_rate"] for r in rows], marker="o",
                        label=f"{label}: refused")
        later = [r for r in rows if r["unchanged_rate"] is not None]
        ax.plot([r["round"] for r in later], [r["unchanged_rate"] for r in later], ls="--", marker="x",
                color=line.get_color(), label=f"{label}: unchanged")
    ax.set(xlabel="critique-revision round (0: first answer)", ylabel="share of prompts", ylim=(-0.05, 1.05),
           title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    return fig


def judge_note(evidence: dict | None, judge: str | None) -> Para | None:
    """The judge's measured agreement and probe results, to print beside its figures."""
    if not judge:
        return None
    if not evidence:
        return Para(f"Judge {judge}: no measured agreement or probe result was given (--judge-evidence), so its "
                    "figures cannot be trusted; measure it with cai label --agreement / --probe.", note=True)
    parts = [f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in evidence.items()]
    return Para(f"Judge {judge}, as measured: " + "; ".join(parts) + ". Near 0.5 the judge is at chance.",
                note=True)


def curve_table(rows_by_label: dict[str, list[dict[str, Any]]]) -> Table:
    extra = [k for k in ("reward_mean", "judge_p_better") if any(k in r for rows in rows_by_label.values()
                                                                  for r in rows)]
    return Table(["set", "round", "n", "refusal rate", "unchanged", *extra],
                 [[label, r["round"], r["n"], r["refusal_rate"], r["unchanged_rate"], *(r.get(k) for k in extra)]
                  for label, rows in rows_by_label.items() for r in rows])


def report_blocks(data: dict[str, Any], source: str, out_dir: Path) -> list[Block]:
    plot = draw_curves(data["sets"], Path(out_dir) / plot_name("rounds", source), CURVE_TITLE)
    blocks: list[Block] = [
        Heading("Quality per critique-revision round"),
        Para(f"Constitution {data['constitution']['name']}, {data['rounds']} rounds ({source}). Round 0 is the "
             "first answer; 'unchanged' is the share of revisions at least 90% the same words as the text they "
             "revise. On harmful prompts refusals should rise; on safe prompts a rise is over-refusal."),
        curve_table(data["sets"])]
    note = judge_note(data.get("judge_evidence"), data.get("judge"))
    blocks += [note] if note else []
    blocks += [Plot(plot, CURVE_CAPTION)] if plot else []
    return blocks


def evidence_from(paths: Sequence[str | Path]) -> dict[str, Any] | None:
    """Key figures of a judge's agreement.json / probes.json files, for printing beside its figures."""
    out: dict[str, Any] = {}
    for p in map(Path, paths):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            from cai.errors import ConfigError

            raise ConfigError(f"cannot read the judge evidence ({e})", where=str(p),
                              fix="give the agreement.json or probes.json that cai label wrote") from None
        if "agreement" in data:
            out["agreement with human labels"] = data["agreement"]
            out["agreement pairs"] = data.get("n")
            if data.get("position_consistency") is not None:
                out["position consistency"] = data["position_consistency"]
        for probe, figures in (data.get("probes") or {}).items():
            out[f"probe {probe}"] = figures.get("agreement")
    return out or None


Scorer = Callable[[Sequence[dict[str, Any]], int], dict[str, list[float]]]
