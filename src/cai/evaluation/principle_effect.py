"""Per-principle effect: what each principle of a constitution does when the critique loop draws it.

From critique records (any run: ``cai run``, ``cai critique``, ``cai study rounds``, ``cai compare``), for
each round the principle drawn is credited with what that round did to the text it revised:

* ``drawn``: rounds it was drawn for;
* ``changed``: rounds whose revision is materially different (``cai.evaluation.round_quality.changed``);
* ``refusal_on``: rounds that turned an answer into a refusal; ``refusal_off``: the reverse;
* ``score_move``: mean change of the refusal check (0/1) on the text, or of a reward model's score when
  one is given.

A principle drawn at least ``min_drawn`` times that never changes the response is *dead*: it costs two
generations per draw and does nothing. One that changes text but never moves a refusal or the score by
more than ``eps`` is listed as *inert*.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.report.blocks import Block, Heading, Para, Table


def effects(records: Sequence[dict[str, Any]], principle_ids: Sequence[str] = (),
            scores: dict[str, list[float]] | None = None) -> dict[str, dict[str, Any]]:
    """Per principle id: drawn, changed, refusal_on, refusal_off, score_move (mean), rates. ``principle_ids``
    lists the constitution's principles, so never-drawn ones show with ``drawn`` 0."""
    from cai.evaluation.refusals import is_refusal
    from cai.evaluation.round_quality import changed

    acc: dict[str, dict[str, Any]] = {p: {"drawn": 0, "changed": 0, "refusal_on": 0, "refusal_off": 0, "moves": []}
                                      for p in principle_ids}
    for rec in records:
        before = rec["initial"]
        for k, rd in enumerate(rec.get("rounds", []), 1):
            a = acc.setdefault(rd["principle_id"], {"drawn": 0, "changed": 0, "refusal_on": 0, "refusal_off": 0,
                                                    "moves": []})
            after = rd["revision"]
            was, now = is_refusal(before), is_refusal(after)
            a["drawn"] += 1
            a["changed"] += changed(before, after)
            a["refusal_on"] += (not was) and now
            a["refusal_off"] += was and not now
            own = scores.get(rec["id"]) if scores else None
            a["moves"].append(own[k] - own[k - 1] if own else float(now) - float(was))
            before = after
    out = {}
    for pid, a in acc.items():
        n = a.pop("drawn")
        moves = a.pop("moves")
        out[pid] = {"drawn": n, **a, "changed_rate": a["changed"] / n if n else None,
                    "refusal_on_rate": a["refusal_on"] / n if n else None,
                    "score_move": sum(moves) / n if n else None}
    return out


def dead_principles(table: dict[str, dict[str, Any]], min_drawn: int = 1) -> list[str]:
    """Principles drawn at least ``min_drawn`` times whose revisions never changed the response."""
    return sorted(p for p, f in table.items() if f["drawn"] >= min_drawn and f["changed"] == 0)


def inert_principles(table: dict[str, dict[str, Any]], min_drawn: int = 1, eps: float = 1e-9) -> list[str]:
    """Principles that change text but never move a refusal or the score."""
    return sorted(p for p, f in table.items() if f["drawn"] >= min_drawn and f["changed"] > 0
                  and f["refusal_on"] == 0 and f["refusal_off"] == 0 and abs(f["score_move"] or 0.0) <= eps)


def study(record_sets: dict[str, Sequence[dict[str, Any]]], constitution, *, min_drawn: int = 1,
          scores: dict[str, list[float]] | None = None, sources: Sequence[str] = ()) -> dict[str, Any]:
    """The ``principles.json`` content: per set and over all sets."""
    ids = [p.id for p in constitution.principles]
    everything = [r for recs in record_sets.values() for r in recs]
    table = effects(everything, ids, scores)
    return {"study": "principles", "constitution": constitution.ref().model_dump(), "sources": list(sources),
            "score": "reward model" if scores else "refusal check", "min_drawn": min_drawn,
            "records": len(everything), "all": table,
            "sets": {name: effects(recs, ids, scores) for name, recs in record_sets.items()},
            "dead": dead_principles(table, min_drawn), "inert": inert_principles(table, min_drawn)}


def report_blocks(data: dict[str, Any], source: str, out_dir: Path) -> list[Block]:
    rows = sorted(data["all"].items(), key=lambda kv: -(kv[1]["drawn"]))
    blocks: list[Block] = [
        Heading(f"Per-principle effect: {data['constitution']['name']}"),
        Para(f"Constitution {data['constitution']['name']}, {data['records']} critique records ({source}). Per "
             f"principle: rounds drawn, share that changed the response, share that turned it into a refusal, "
             f"and the mean move of the score ({data['score']})."),
        Table(["principle", "drawn", "changed", "refusal on", "refusal off", "score move"],
              [[p, f["drawn"], f["changed_rate"], f["refusal_on_rate"], f["refusal_off"], f["score_move"]]
               for p, f in rows])]
    never = [p for p, f in rows if f["drawn"] == 0]
    blocks.append(Para("Dead principles (drawn, never changed the response): " + (", ".join(data["dead"]) or "none")
                       + ". Inert (changed text, never moved a refusal or the score): "
                       + (", ".join(data["inert"]) or "none") + "."
                       + (f" Never drawn: {', '.join(never)}." if never else "")))
    return blocks
