"""The evaluation report: what a run changed, from the files its commands wrote, as Markdown and HTML with plots.

The package is split by what each part renders, and imports flow one way (``results`` <- ``plots``,
``sections``; ``blocks`` <- everything that renders; this module gathers them):

* ``results``: finds the result files under run directories and computes the figures they hold.
* ``plots``: the PNG plots (matplotlib, the ``report`` extra).
* ``sections``: the sections over those result files (runs, refusals, jailbreaks, labels, training, judge).
* ``extras``: the cost ledger (``manifest.json``), example transcripts and the studies.
* ``blocks``: the pieces every section is made of, rendered to Markdown and to self-contained HTML.

``build_report`` writes ``report.md``, ``report.html``, ``report.json`` (every figure shown) and one PNG per plot.
Both reports render one list of blocks, so they show the same rows. ``report.html`` is one self-contained page:
plots embedded as base64 PNG, inline style, every text escaped (model output above all) and a content security
policy that allows no script. Without matplotlib the report has the tables only and says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.report.blocks import page, to_markdown
from cai.report.extras import collect_extras, ledger_blocks, study_blocks, transcript_blocks
from cai.report.plots import draw
from cai.report.results import attack_rates, collect, ppo_summary, tradeoff, trained_on
from cai.report.rounds import differences, round_rows
from cai.report.sections import core_blocks

TITLE = "cai evaluation report"
__all__ = ["build_report", "collect"]


def build_report(paths: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Collect, draw and write ``report.md``, ``report.html``, ``report.json`` and the PNGs into ``out_dir``.

    Args:
        paths: run directories (searched recursively) or result files.
        out_dir: where the report goes; created when missing.

    Returns:
        Every figure the report shows, as written to ``report.json``.

    Raises:
        ConfigError: a path does not exist, or nothing under ``paths`` is a result file the report reads.
    """
    from cai.evaluation.refusals import check_accuracy
    from cai.jsonl import write_atomic
    from cai.report.benchmarks import benchmark_blocks

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
               "tradeoff": tradeoff(found), "rounds": round_rows(found), "differences": differences(found),
               "attack_rates": attack_rates(found),
               "ppo": [{k: v for k, v in s.items() if k not in ("step", "reward", "kl")} for s in ppo_summary(found)],
               "reward": [{"source": i["source"], **i["data"]} for i in found["reward"]],
               "labels": [{"source": i["source"], **i["data"]} for i in found["labels"]],
               "dpo": [{"source": i["source"], **i["data"].get("metrics", {})} for i in found["dpo"]],
               "trained_on": trained_on(found),
               "label_source": [{"source": i["source"], **i["data"]} for i in found["label_source"]],
               "refusal_check": {k: v for k, v in check_accuracy().items() if k != "wrong"},
               "agreement": [{"source": i["source"], **{k: i["data"].get(k) for k in (
                   "n", "agreement", "position_consistency", "longer_wins_rate", "per_principle")}}
                   for i in found["agreement"]],
               "plots": plots}
    write_atomic(out_dir / "report.json", json.dumps(figures, indent=2) + "\n")
    return figures
