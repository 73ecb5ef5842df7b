"""What the report shows beyond the result files of ``cai.report.results.collect``: the cost ledger of each run
(``manifest.json``), example SL-CAI transcripts from every prompt set (``critique/records.jsonl``, and the plain
answers to helpful prompts in ``critique/helpful.jsonl``) and the studies (JSON files with a ``"study"`` key,
written by ``cai compare`` and ``cai study ...``).

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

from cai.report.blocks import Block, Heading, Para, Table, Transcript, shorten

log = logging.getLogger(__name__)

STUDIES = {"compare": "cai.evaluation.compare", "rounds": "cai.evaluation.round_quality",
           "principles": "cai.evaluation.principle_effect", "cai_vs_sft": "cai.evaluation.cai_vs_sft",
           "jailbreaks": "cai.evaluation.jailbreak_study", "helpfulness": "cai.evaluation.helpfulness",
           "cai_vs_rlhf": "cai.evaluation.cai_vs_rlhf"}
TRANSCRIPTS_SHOWN = 12  # per critique run, shared among its prompt sets
STUDY_SETS = ("harmful", "safe")  # the prompt sets of the studies' critique runs
CRITIQUE_SET = "critique prompts"  # a training run's critique records
HELPFUL_SET = "helpful prompts"  # a training run's plain answers (helpful.jsonl)


@dataclass
class Extras:
    manifests: list[dict[str, Any]] = field(default_factory=list)  # {"source", "data"}
    transcripts: list[dict[str, Any]] = field(default_factory=list)  # {"source", "examples": [(set, record)]}
    studies: list[dict[str, Any]] = field(default_factory=list)  # {"source", "data"}

    def any(self) -> bool:
        return bool(self.manifests or self.transcripts or self.studies)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def prompt_set(record: dict[str, Any]) -> str:
    """The prompt set a critique record answers: a study's harmful or safe prompts (its id's prefix,
    ``cai.evaluation.round_quality.run_sets``), else the run's critique prompts."""
    head = str(record.get("id", "")).split("/", 1)[0]
    return head if head in STUDY_SETS else CRITIQUE_SET


def first_per_set(path: Path, limit: int, set_of) -> dict[str, list[dict[str, Any]]]:
    """The first ``limit`` records of each prompt set in ``path`` (``set_of(record)`` names it), in file order."""
    from cai.jsonl import iter_jsonl

    groups: dict[str, list[dict[str, Any]]] = {}
    for _, rec in iter_jsonl(path, strict=False):
        if isinstance(rec, dict) and "prompt" in rec and ("initial" in rec or "answer" in rec):
            mine = groups.setdefault(set_of(rec), [])
            if len(mine) < limit:
                mine.append(rec)
    return groups


def balanced(groups: dict[str, list[dict[str, Any]]], total: int) -> list[tuple[str, dict[str, Any]]]:
    """Up to ``total`` (set, record) pairs taken from each set in turn, so that every set is shown; grouped
    by set, each in its own order."""
    turns = sorted((i, n, k) for n, (k, v) in enumerate(groups.items()) for i in range(len(v)))[:total]
    picked = {(k, i) for i, _, k in turns}
    return [(k, rec) for k, v in groups.items() for i, rec in enumerate(v) if (k, i) in picked]


def _examples(critique_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Example records of a critique directory: its revisions (records.jsonl, per prompt set) and its plain
    answers to helpful prompts (helpful.jsonl, mixed into SFT), shared out evenly."""
    groups = first_per_set(critique_dir / "records.jsonl", TRANSCRIPTS_SHOWN, prompt_set)
    helpful = critique_dir / "helpful.jsonl"
    if helpful.is_file():
        groups.update(first_per_set(helpful, TRANSCRIPTS_SHOWN, lambda rec: HELPFUL_SET))
    return balanced(groups, TRANSCRIPTS_SHOWN)


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
                examples = _examples(path.parent)
                if examples:
                    extras.transcripts.append({"source": str(path.parent), "examples": examples})
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
                   Table(LEDGER_HEADER, ledger_table(rows)), Para(run_environment(item["data"]))]
    return blocks


def run_environment(manifest: dict) -> str:
    """The library versions a run used and the dtype each stage ran in (its manifest.json)."""
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items() if v)
    dtypes = "; ".join(f"{stage}: {info['dtype']}" for stage, info in manifest.get("stages", {}).items()
                       if info.get("dtype"))
    return f"Versions: {versions or 'not recorded'}. Precision per stage: {dtypes or 'not recorded'}."


def transcript_blocks(extras: Extras) -> list[Block]:
    blocks: list[Block] = []
    for item in extras.transcripts:
        if not blocks:
            blocks += [Heading("Example transcripts"), Para(
                "The first prompts of each prompt set of each critique run: the model's answer, then each round's "
                "critique (under the principle drawn) and revision, as generated. Each title names its set: a "
                f"study's harmful or safe prompts, a run's {CRITIQUE_SET} or its {HELPFUL_SET} (answered once, "
                "with no critique, and mixed into the SFT data).")]
        blocks.append(Para(f"From {item['source']}:"))
        blocks += [transcript(name, rec) for name, rec in item["examples"]]
    return blocks


def transcript(set_name: str, rec: dict[str, Any]) -> Transcript:
    """One record of the prompt set ``set_name`` as a transcript: a critique record, or a plain answer."""
    prov = rec.get("provenance") or {}
    const = prov.get("constitution") or {}
    meta = (f"{set_name}; model {prov.get('model', '-')}, constitution {const.get('name', '-')} "
            f"v{const.get('version', '-')} ({str(const.get('hash', '-'))[:12]}), seed {prov.get('seed', '-')}")
    rounds = tuple((r.get("principle_id", "-"), r.get("critique", ""), r.get("revision", ""))
                   for r in rec.get("rounds", []))
    return Transcript(title=f"[{set_name}] {rec.get('id', '-')}: {shorten(rec.get('prompt', ''))}",
                      prompt=str(rec.get("prompt", "")), initial=str(rec.get("initial", rec.get("answer", ""))),
                      rounds=rounds, meta=meta)


def study_blocks(extras: Extras, out_dir: Path) -> list[Block]:
    import importlib

    blocks: list[Block] = []
    for item in extras.studies:
        module = importlib.import_module(STUDIES[item["data"]["study"]])
        blocks += module.report_blocks(item["data"], item["source"], out_dir)
    return blocks
