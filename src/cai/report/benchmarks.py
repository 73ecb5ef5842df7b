"""The named benchmarks' figures (``eval.json`` of ``cai eval``) as report blocks and terminal lines.

Each benchmark gets a table, one row per model, each figure with its 95% bootstrap interval, and beside it the
grader's measured agreement with the labelled replies. A rubric judge on the embedded 135M model is at chance,
so its figures carry that warning instead of passing for a result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.report.blocks import Block, Heading, Para, Table

EVAL_FILE = "eval.json"
EMBEDDED = ("smollm2", "SmolLM2")


def find_evals(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every ``eval.json`` of ``cai eval`` under ``paths``: [{"source", "data"}]."""
    found = []
    for given in map(Path, paths):
        files = [given] if given.is_file() else sorted(given.rglob(EVAL_FILE)) if given.is_dir() else []
        for path in files:
            if path.name != EVAL_FILE:
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "benchmark" in data and "models" in data:
                found.append({"source": str(path), "data": data})
    return found


def interval(f: dict[str, Any]) -> str:
    """"0.250 [0.100, 0.400]", or "-" when nothing was scored."""
    if f.get("value") is None:
        return "-"
    return f"{f['value']:.3f} [{f['low']:.3f}, {f['high']:.3f}]"


def grader_note(grader: dict[str, Any]) -> str:
    """The grader and its agreement with the labelled replies, with a warning where it cannot be trusted."""
    from cai.evaluation.graders import GRADERS, agreement_line

    note = agreement_line(grader) if "n" in grader else f"grader {grader.get('name')}"
    model = str(grader.get("model") or "")
    if GRADERS.get(grader.get("name"), None) and GRADERS[grader["name"]].kind == "rubric" and (
            not model or any(e in model for e in EMBEDDED)):
        note += (". This rubric judge is the embedded 135M model, which judges at chance: its figures are not a "
                 "result; give a capable judge with --grader-model")
    elif grader.get("name") == "keyword":
        note += (". The keyword grader counts any reply without a refusal phrase as harmful (an upper bound on "
                 "harm) and a reply that refuses and then complies as safe")
    return note


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The figures of one ``eval.json``, one line per model, and the grader's agreement."""
    lines = [grader_note(result["grader"])]
    for m in result["models"]:
        shown = "; ".join(f"{f['label']} {interval(f)} (n={f['scored']})" for f in m["figures"].values())
        lines.append(f"{result['title']}, {m['spec']}: {shown}")
    return lines


def benchmark_blocks(paths: Sequence[str | Path]) -> list[Block]:
    """A section per ``eval.json`` found under ``paths``; none when there is none."""
    evals = find_evals(paths)
    if not evals:
        return []
    blocks: list[Block] = [Heading("Named safety benchmarks"),
                           Para("Each benchmark in its own metric (`cai eval`), greedy replies, 95% bootstrap "
                                "intervals over prompts. Degenerate replies and unreadable grader outputs are "
                                "left out and counted.")]
    for item in evals:
        d = item["data"]
        keys = list(d["models"][0]["figures"]) if d["models"] else []
        labels = [d["models"][0]["figures"][k]["label"] for k in keys]
        blocks.append(Heading(f"{d['title']}", 3))
        blocks.append(Para(f"Prompts: {d['source']} ({', '.join(f'{n} {s}' for s, n in d['sets'].items() if n)}"
                           + (f", first {d['limit']} of each set" if d.get("limit") else "") + ")."))
        blocks.append(Table(["model", *labels, "left out (degenerate / unreadable)"],
                            [[m["spec"], *(interval(m["figures"][k]) for k in keys), _left_out(m["rows"])]
                             for m in d["models"]]))
        blocks.append(Para(grader_note(d["grader"]), note=True))
    return blocks


def _left_out(rows: Sequence[dict[str, Any]]) -> str:
    from cai.evaluation.graders import UNPARSEABLE

    return f"{sum(bool(r['degenerate']) for r in rows)} / {sum(r['grade']['verdict'] == UNPARSEABLE for r in rows)}"
