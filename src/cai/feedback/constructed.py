"""Preferences by construction: a revision is preferred over the answer it revised, and an answer to a
harmless request over a refusal of it. No judge needed.

The public Hugging Face CAI recipe builds its preference data this way: after SL-CAI's critique and
revision, the final revision is the ``chosen`` response and the initial answer the ``rejected`` one.
Here the revision used is the one ``cai sft`` would train on (the last usable revision, see
``cai.critique.sft_rows``); records whose revisions are all unusable, or whose revision repeats the
answer, give no pair. ``p_chosen`` is a fixed confidence (default 0.9 rather than 1: small models'
revisions are not always better), so the soft-label reward model does not over-trust them.

For harmless prompts (the plain answers ``cai.critique.run_helpful`` wrote, the ones fit for SFT), the
answer is preferred over a refusal: without these a reward model learns that refusing always wins. The
refusal is one of the run's own revisions that refuse (the words SFT taught the policy), so the same text
is ``chosen`` after a harmful request and ``rejected`` after a harmless one and DPO can only lower its loss
by telling the two apart. With canned refusals (``cai.feedback.probes.REFUSALS``, used only when the run has no
refusing revision) DPO pushed the policy's own refusal wording up everywhere: held-out harmless prompts
refused 0.211 -> 0.281 after 10 steps, against 0.211 -> 0.158 with the run's refusals (same SFT model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cai.records import PreferencePair, Provenance

SOURCE = "construction: revision over initial answer"
HELPFUL_SOURCE = "construction: answer to a harmless request over a refusal"


def constructed_pair(record: dict[str, Any], p_chosen: float = 0.9) -> PreferencePair | None:
    """The (revision, initial) preference of one critique record, or None when it has no usable one."""
    from cai.critique import sft_rows

    messages, _ = sft_rows(record)
    if not messages["usable"]:
        return None
    revision = messages["messages"][-1]["content"]
    initial = record["initial"]
    if " ".join(revision.split()) == " ".join(initial.split()) or not initial.strip():
        return None
    source = record["provenance"]
    provenance = Provenance(**{**source, "stage": "label", "label_source": SOURCE, "critique_record": record["id"]})
    return PreferencePair(
        id=f"{record['id']}/revision-over-initial", prompt=[{"role": "user", "content": record["prompt"]}],
        chosen=[{"role": "assistant", "content": revision}], rejected=[{"role": "assistant", "content": initial}],
        p_chosen=p_chosen, p_a_first=p_chosen, p_a_second=p_chosen, position_consistent=True,
        principle_id="+".join(r["principle_id"] for r in record["rounds"]), judge=SOURCE,
        provenance=provenance, prompt_id=record["id"], a_is_chosen=True,
    )


def helpful_pair(record: dict[str, Any], k: int, p_chosen: float = 0.9, refusals: Sequence[str] = ()
                 ) -> PreferencePair | None:
    """(answer, refusal) for a helpful record whose answer is fit for SFT, else None; ``k`` picks the refusal
    from ``refusals`` (the project's templates when empty). The answer is the one SFT trains on: cut off by its
    token budget, it ends at its last complete sentence (``cai.critique.complete_part``)."""
    from cai.critique import answer_problem, complete_part
    from cai.feedback.probes import REFUSALS

    refusals = tuple(refusals) or REFUSALS
    if answer_problem(record["answer"]) is not None:
        return None
    provenance = Provenance(**{**record["provenance"], "stage": "label", "label_source": HELPFUL_SOURCE,
                               "critique_record": record["id"]})
    return PreferencePair(
        id=f"{record['id']}/answer-over-refusal", prompt=[{"role": "user", "content": record["prompt"]}],
        chosen=[{"role": "assistant", "content": complete_part(record["answer"])}],
        rejected=[{"role": "assistant", "content": refusals[k % len(refusals)]}],
        p_chosen=p_chosen, p_a_first=p_chosen, p_a_second=p_chosen, position_consistent=True,
        principle_id="no-needless-refusal", judge=HELPFUL_SOURCE, provenance=provenance,
        prompt_id=record["id"], a_is_chosen=True,
    )


def constructed_pairs(records: Iterable[dict[str, Any]], p_chosen: float = 0.9) -> tuple[list[PreferencePair], int]:
    """(pairs, records without a usable pair) for critique records."""
    pairs, without = [], 0
    for record in records:
        pair = constructed_pair(record, p_chosen)
        if pair is None:
            without += 1
        else:
            pairs.append(pair)
    return pairs, without


def refusing_revisions(pairs: Iterable[PreferencePair]) -> list[str]:
    """The chosen replies of revision pairs that refuse (``cai.evaluation.refusals``), each wording once, in order."""
    from cai.evaluation.refusals import is_refusal

    texts = (p.chosen[-1]["content"] for p in pairs)
    return list(dict.fromkeys(t for t in texts if is_refusal(t)))


def write_constructed(critique_dir: str | Path, out_dir: str | Path, p_chosen: float = 0.9) -> dict[str, Any]:
    """pairs.jsonl in ``out_dir`` from ``critique_dir``/records.jsonl, and from its helpful.jsonl when there
    is one (rewritten whole: it is cheap)."""
    from cai.errors import ConfigError
    from cai.jsonl import read_records, write_jsonl_atomic

    source = Path(critique_dir) / "records.jsonl"
    if not source.is_file():
        raise ConfigError("no critique records here", where=str(source),
                          fix="run `cai critique PROMPTS --out DIR` first and pass that DIR")
    pairs, without = constructed_pairs(read_records(source), p_chosen)
    helpful_file = Path(critique_dir) / "helpful.jsonl"
    helpful = read_records(helpful_file) if helpful_file.is_file() else []
    refusals = refusing_revisions(pairs)
    answered = [p for k, r in enumerate(helpful) if (p := helpful_pair(r, k, p_chosen, refusals)) is not None]
    pairs += answered
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "pairs.jsonl", [p.model_dump(mode="json") for p in pairs])
    return {"pairs": len(pairs), "records_without_pair": without, "helpful_pairs": len(answered),
            "helpful_without_pair": len(helpful) - len(answered), "run_refusals": len(refusals),
            "source": str(source)}
