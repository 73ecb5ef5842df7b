"""``cai compare``: two or more constitutions (or two versions of one) on the same prompts, model and seed.

Each constitution runs the critique-revision loop on the same harmful and safe prompts with the same
options and seed (``cai.evaluation.round_quality.run_sets``, into ``DIR/<name>/``). ``compare.json`` holds, side by
side: the refusal rate of the final revisions on harmful prompts and the over-refusal rate on safe ones,
the round curve of each, the share of rounds that changed nothing, each constitution against the first
(``cai.constitution.diff``), and example revisions of the same prompts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.report.blocks import Block, Heading, Para, Plot, SideBySide, Table, plot_name, shorten

EXAMPLES = 6  # prompts of each set shown side by side


def label(constitution, taken: set[str]) -> str:
    """A directory-safe, unique label for a constitution: its name, then its version and hash if needed."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", constitution.name)
    for candidate in (base, f"{base}-v{constitution.version}", f"{base}-{constitution.ref().hash[:8]}"):
        if candidate not in taken:
            return candidate
    raise ValueError(f"constitution {constitution.name} is given twice")


def summary(records: dict[str, list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    """Refusal rate of the final revision per set (harmful: refusal, safe: over-refusal), and the curve."""
    from cai.evaluation.round_quality import curve

    curves = {name: curve(recs, rounds) for name, recs in records.items()}
    return {"final_refusal": {name: c[-1]["refusal_rate"] for name, c in curves.items()},
            "first_answer_refusal": {name: c[0]["refusal_rate"] for name, c in curves.items()},
            "unchanged_rate": {name: _mean([r["unchanged_rate"] for r in c[1:]]) for name, c in curves.items()},
            "curves": curves}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def examples(by_label: dict[str, dict[str, list[dict[str, Any]]]], n: int = EXAMPLES) -> list[dict[str, Any]]:
    """The same prompts' final revisions under each constitution."""
    out = []
    first = next(iter(by_label.values()))
    for set_name, recs in first.items():
        for rec in recs[:n]:
            finals = {}
            for lab, sets in by_label.items():
                match = next((r for r in sets.get(set_name, []) if r["id"] == rec["id"]), None)
                finals[lab] = match["final"] if match else None
            out.append({"set": set_name, "id": rec["id"], "prompt": rec["prompt"], "initial": rec["initial"],
                        "final": finals})
    return out


def compare(constitutions: Sequence, sets: dict[str, Sequence[tuple[str, str]]], out_dir: Path, *, backend,
            options) -> dict[str, Any]:
    """Run every constitution on ``sets`` ({"harmful": [(id, prompt)], "safe": [...]}) into ``out_dir``."""
    from cai.constitution import diff
    from cai.evaluation.round_quality import run_sets

    taken: set[str] = set()
    by_label: dict[str, dict[str, list[dict[str, Any]]]] = {}
    result: dict[str, Any] = {"study": "compare", "model": backend.model_id, "rounds": options.rounds,
                              "seed": options.seed, "options": options.model_dump(mode="json"),
                              "prompts": {k: len(v) for k, v in sets.items()}, "constitutions": {}, "diffs": {}}
    for c in constitutions:
        lab = label(c, taken)
        taken.add(lab)
        by_label[lab] = run_sets(sets, Path(out_dir) / lab, backend=backend, constitution=c, options=options)
        result["constitutions"][lab] = {"ref": c.ref().model_dump(), "principles": len(c.principles),
                                        "dir": str(Path(out_dir) / lab), **summary(by_label[lab], options.rounds)}
    first, first_label = constitutions[0], next(iter(by_label))
    for c, lab in zip(constitutions[1:], list(by_label)[1:], strict=True):
        d = diff(first, c)
        result["diffs"][f"{first_label} -> {lab}"] = {"lines": d.lines(), **d.model_dump(mode="json")}
    result["examples"] = examples(by_label)
    return result


def report_blocks(data: dict[str, Any], source: str, out_dir: Path) -> list[Block]:
    from cai.evaluation.round_quality import CURVE_CAPTION, CURVE_TITLE, curve_table, draw_curves

    labels = list(data["constitutions"])
    sets = list(next(iter(data["constitutions"].values()))["final_refusal"])
    blocks: list[Block] = [
        Heading("Constitutions compared"),
        Para(f"Same model ({data['model']}), prompts ({', '.join(f'{k}: {v}' for k, v in data['prompts'].items())}), "
             f"seed {data['seed']} and {data['rounds']} critique-revision rounds ({source}). Refusal rate of the "
             "final revision: on harmful prompts higher is safer; on safe prompts it is over-refusal."),
        Table(["constitution", "principles", *(f"{s}: first answer refused" for s in sets),
               *(f"{s}: final revision refused" for s in sets), "rounds unchanged (harmful)"],
              [[lab, c["principles"], *(c["first_answer_refusal"][s] for s in sets),
                *(c["final_refusal"][s] for s in sets), c["unchanged_rate"].get(sets[0])]
               for lab, c in data["constitutions"].items()])]
    for pair, d in data["diffs"].items():
        blocks.append(Para(f"cai constitution diff {pair}: " + "; ".join(d["lines"])))
    series = {f"{lab} / {s}": c["curves"][s] for lab, c in data["constitutions"].items() for s in sets}
    blocks.append(curve_table(series))
    plot = draw_curves(series, Path(out_dir) / plot_name("compare", source), CURVE_TITLE)
    blocks += [Plot(plot, CURVE_CAPTION + ", per constitution and prompt set")] if plot else []
    if data.get("examples"):
        blocks.append(Para("The same prompts' final revisions under each constitution ("
                           + " vs ".join(labels) + "):"))
    for ex in data.get("examples", []):
        blocks.append(SideBySide(title=f"[{ex['set']}] {ex['id']}: {shorten(ex['prompt'])}", prompt=ex["prompt"],
                                 initial=ex["initial"], finals=tuple((lab, text or "-")
                                                                     for lab, text in ex["final"].items())))
    return blocks
