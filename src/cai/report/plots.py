"""The report's plots, drawn with matplotlib (the ``report`` extra) into PNG files beside the report: the
harmlessness / over-refusal trade-off per model, attack success per jailbreak template, PPO's reward and KL
per step. Without matplotlib ``draw`` returns no plots and the report shows its tables only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.report.results import attack_rates, ppo_summary, tradeoff
from cai.report.rounds import draw_rounds


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
        rounds = draw_rounds(found, plt)
        if rounds is not None:
            made["rounds"] = _save(rounds, out_dir / "rounds.png")
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
