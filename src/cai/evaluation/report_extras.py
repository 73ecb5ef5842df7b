"""What the report shows beyond the result files of ``cai.evaluation.report.collect``: the cost ledger of each run
(``manifest.json``), example SL-CAI transcripts (``critique/records.jsonl``) and the studies (JSON files
with a ``"study"`` key, written by ``cai compare`` and ``cai study ...``).

Each study module has ``report_blocks(data, source, out_dir) -> list[Block]`` (it may draw its plots into
``out_dir``); ``STUDIES`` maps a study's name to its module, imported only when such a file is found.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.evaluation.report_blocks import Block, Heading, Para, Table, Transcript

log = logging.getLogger(__name__)

STUDIES = {"compare": "cai.evaluation.compare", "rounds": "cai.evaluation.round_quality",
           "principles": "cai.evaluation.principle_effect", "cai_vs_sft": "cai.evaluation.cai_vs_sft",
           "jailbreaks": "cai.evaluation.jailbreak_study", "helpfulness": "cai.evaluation.helpfulness"}
TRANSCRIPTS_SHOWN = 12  # per critique run


@dataclass
class Extras:
    manifests: list[dict[str, Any]] = field(default_factory=list)  # {"source", "data"}
    transcripts: list[dict[str, Any]] = field(default_factory=list)  # {"source", "records"}
    studies: list[dict[str, Any]] = field(default_factory=list)  # {"source", "data"}

    def any(self) -> bool:
        return bool(self.manifests or self.transcripts or self.studies)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _critique_records(path: Path, limit: int) -> list[dict[str, Any]]:
    from cai.jsonl import iter_jsonl

    records = []
    for _, rec in iter_jsonl(path, strict=False):
        if isinstance(rec, dict) and "rounds" in rec and "initial" in rec:
            records.append(rec)
            if len(records) >= limit:
                break
    return records


def collect_extras(paths: Sequence[str | Path]) -> Extras:
    """Manifests, critique records and study files under ``paths`` (missing paths are left to ``collect``)."""
    extras = Extras()
    for given in map(Path, paths):
        files = [given] if given.is_file() else sorted(p for p in given.rglob("*") if p.is_file()) \
            if given.is_dir() else []
        for path in files:
            if path.name == "manifest.json":
                data = _json(path)
                if isinstance(data, dict) and "stages" in data:
                    extras.manifests.append({"source": str(path), "data": data})
            elif path.name == "records.jsonl" and path.parent.name == "critique":
                records = _critique_records(path, TRANSCRIPTS_SHOWN)
                if records:
                    extras.transcripts.append({"source": str(path), "records": records})
            elif path.suffix == ".json":
                data = _json(path) if path.stat().st_size < 50_000_000 else None
                if isinstance(data, dict) and data.get("study") in STUDIES:
                    extras.studies.append({"source": str(path), "data": data})
    return extras


def ledger_blocks(extras: Extras) -> list[Block]:
    from cai.ledger import LEDGER_HEADER, ledger_rows, ledger_table

    blocks: list[Block] = []
    for item in extras.manifests:
        rows = ledger_rows(item["data"])
        if not rows:
            continue
        if not blocks:
            blocks += [Heading("Cost ledger"), Para(
                "Per stage and model: prompt and generated tokens of every generate call, wall time and the "
                "stage's peak resident memory (money where the recipe prices the model, per million tokens).")]
        blocks += [Para(f"Run {item['data'].get('name', '-')} ({item['source']}):"),
                   Table(LEDGER_HEADER, ledger_table(rows))]
    return blocks


def transcript_blocks(extras: Extras) -> list[Block]:
    blocks: list[Block] = []
    for item in extras.transcripts:
        if not blocks:
            blocks += [Heading("Example transcripts"),
                       Para("The first prompts of each critique run: the model's answer, then each round's "
                            "critique (under the principle drawn) and revision, as generated.")]
        blocks.append(Para(f"From {item['source']}:"))
        for rec in item["records"]:
            prov = rec.get("provenance") or {}
            const = prov.get("constitution") or {}
            meta = (f"model {prov.get('model', '-')}, constitution {const.get('name', '-')} "
                    f"v{const.get('version', '-')} ({str(const.get('hash', '-'))[:12]}), seed {prov.get('seed', '-')}")
            rounds = tuple((r.get("principle_id", "-"), r.get("critique", ""), r.get("revision", ""))
                           for r in rec.get("rounds", []))
            blocks.append(Transcript(title=f"{rec.get('id', '-')}: {str(rec.get('prompt', ''))[:100]}",
                                     prompt=str(rec.get("prompt", "")), initial=str(rec.get("initial", "")),
                                     rounds=rounds, meta=meta))
    return blocks


def study_blocks(extras: Extras, out_dir: Path) -> list[Block]:
    import importlib

    blocks: list[Block] = []
    for item in extras.studies:
        module = importlib.import_module(STUDIES[item["data"]["study"]])
        blocks += module.report_blocks(item["data"], item["source"], out_dir)
    return blocks
