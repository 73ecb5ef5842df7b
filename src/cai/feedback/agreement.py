"""How often the AI judge agrees with human preference labels (e.g. HH-RLHF harmlessness pairs).

Human pairs arrive as JSONL (optionally gzipped) or CSV rows with ``chosen`` and ``rejected`` as

(a) HH-RLHF transcripts, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``: both share the history and differ
    in the last assistant turn, which is the response;
(b) plain response strings, with the conversation in a ``prompt`` column (a string or messages);
(c) message lists: with a ``prompt`` column (TRL's explicit-prompt form, ``chosen`` = [assistant
    message]), or without one (whole conversations sharing all but their last, assistant, message).

Unusable rows are reported with their line number and skipped; a file with no usable row is an error.
Each pair is judged in both orders, with the human-chosen response as ``a``; the figures are:

* ``agreement``: share of pairs whose soft label on the human-chosen response is above 0.5;
* ``position_consistency``: share of pairs where both orders prefer the same response;
* ``first_slot_win_rate``: share of the 2n single readings won by whatever sat in slot (A);
* ``longer_wins_rate``: share of pairs (lengths differing) where the longer response is preferred;
* ``length_matched_agreement``: agreement over pairs whose lengths differ by at most 25%;
* ``per_principle``: agreement and count per judging principle (ensembles count for each member).

``run_sweep`` measures every judge configuration ``cai`` offers on the same pairs, side by side, with
two no-model baselines (the shorter / the longer answer wins).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import ConfigError
from cai.feedback.judge import Comparison, JudgeConfig, Judgement, choose_principles, first_slot_wins, judge, order_free
from cai.prompts import BadRow

log = logging.getLogger(__name__)

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class HumanPair:
    """A human-labelled pair: the conversation before the responses, and the two responses."""

    id: str
    line: int
    conversation: list[dict[str, str]]
    chosen: str
    rejected: str


class _Unusable(Exception):
    """Internal: this row cannot be used; the message is the reason."""


# ---- parsing ------------------------------------------------------------------------------------------


def parse_hh_transcript(text: str) -> list[dict[str, str]] | None:
    """An HH-RLHF transcript as chat messages, or None if it is not one.

    >>> parse_hh_transcript("\\n\\nHuman: hi\\n\\nAssistant: hello")
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]
    """
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip()
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        return None
    turns = zip(parts[1::2], parts[2::2], strict=True)
    return [{"role": _ROLES[name], "content": content.strip()} for name, content in turns]


def split_shared_history(chosen: list[dict[str, str]], rejected: list[dict[str, str]], what: str
                         ) -> tuple[list[dict[str, str]], str, str]:
    """(shared history, chosen's last assistant turn, rejected's last assistant turn) of two conversations."""
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv or conv[-1]["role"] != "assistant":
            raise _Unusable(f"`{name}` {what} does not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise _Unusable(f"`chosen` and `rejected` {what}s differ before their last assistant turn")
    if not chosen[:-1]:
        raise _Unusable(f"`chosen` {what} has no turns before the response")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """A list of {role, content} messages, checked."""
    if not isinstance(value, list) or not value:
        raise _Unusable(f"`{field}` must be a non-empty list of messages")
    out = []
    for k, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)):
            raise _Unusable(f"`{field}[{k}]` is not a message with a role (system/user/assistant) "
                            "and text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt_messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise _Unusable("`prompt` is empty")
        return [{"role": "user", "content": value}]
    return _messages(value, "prompt")


def _only_response(conv: list[dict[str, str]], field: str) -> str:
    if conv[-1]["role"] != "assistant":
        raise _Unusable(f"`{field}` must end with an assistant message")
    return conv[-1]["content"]


def to_human_pair(obj: Any, line: int) -> HumanPair:
    """One row (a mapping with ``chosen``, ``rejected`` and maybe ``prompt``/``id``) as a HumanPair."""
    if not isinstance(obj, dict):
        raise _Unusable(f"expected an object with `chosen` and `rejected`, got {type(obj).__name__}")
    for field in ("chosen", "rejected"):
        value = obj.get(field)
        if value is None:
            raise _Unusable(f"`{field}` is missing")
        if isinstance(value, str) and not value.strip() or isinstance(value, list) and not value:
            raise _Unusable(f"`{field}` is empty")
        if not isinstance(value, (str, list)):
            raise _Unusable(f"`{field}` must be text or a list of messages, got {type(value).__name__}")
    chosen, rejected, prompt = obj["chosen"], obj["rejected"], obj.get("prompt")
    has_prompt = prompt is not None and prompt != ""
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise _Unusable("`chosen` and `rejected` must both be text or both be message lists")
    if isinstance(chosen, str) and has_prompt:
        history, a, b = _prompt_messages(prompt), chosen, rejected
    elif isinstance(chosen, str):
        hh_a, hh_b = parse_hh_transcript(chosen), parse_hh_transcript(rejected)
        if hh_a is None or hh_b is None:
            raise _Unusable("`chosen`/`rejected` are plain text but there is no `prompt` column, and they "
                            "are not HH-RLHF transcripts (\\n\\nHuman: ... \\n\\nAssistant: ...)")
        history, a, b = split_shared_history(hh_a, hh_b, "transcript")
    elif has_prompt:
        history = _prompt_messages(prompt)
        a = _only_response(_messages(chosen, "chosen"), "chosen")
        b = _only_response(_messages(rejected, "rejected"), "rejected")
    else:
        history, a, b = split_shared_history(_messages(chosen, "chosen"), _messages(rejected, "rejected"),
                                             "conversation")
    if a.strip() == b.strip():
        raise _Unusable("`chosen` and `rejected` are the same response")
    return HumanPair(str(obj.get("id") or f"line-{line}"), line, history, a, b)


# ---- reading files ----------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                yield n, _Unusable(f"not valid JSON ({e.msg})")


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = {"chosen", "rejected"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"the CSV header lacks {', '.join(sorted(missing))}", where=str(path),
                              fix="name the columns chosen and rejected (and prompt, for plain responses)")
        for row in reader:
            yield reader.line_num, dict(row)


def read_human_pairs(path: str | Path, limit: int | None = None) -> tuple[list[HumanPair], list[BadRow]]:
    """Usable pairs and skipped rows of a JSONL(.gz) or CSV file; ``limit`` counts usable pairs.

    Raises ConfigError for a missing file, an unknown format, or a file without one usable pair.
    """
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise ConfigError("preference file not found", where=label, fix="check the path")
    kind = path.name.lower().removesuffix(".gz").rsplit(".", 1)[-1]
    if kind not in ("jsonl", "json", "csv"):
        raise ConfigError(f"unknown preference file type `.{kind}`", where=label,
                          fix="use a .jsonl or .csv file")
    rows = _csv_rows(path) if kind == "csv" else _jsonl_rows(path)
    pairs: list[HumanPair] = []
    bad: list[BadRow] = []
    for line, obj in rows:
        if limit is not None and len(pairs) >= limit:
            break
        try:
            if isinstance(obj, _Unusable):
                raise obj
            pairs.append(to_human_pair(obj, line))
        except _Unusable as e:
            bad.append(BadRow(source=label, row=line, reason=str(e)))
    if not pairs:
        first = "; ".join(f"line {b.row}: {b.reason}" for b in bad[:3]) or "the file has no rows"
        raise ConfigError(f"no usable preference pair ({first})", where=label,
                          fix="give each row non-empty `chosen` and `rejected` (HH-RLHF transcripts, or "
                              "responses with a `prompt` column, or message lists)")
    return pairs, bad


# ---- measuring ------------------------------------------------------------------------------------------


LENGTH_MATCHED = 1.25  # "length-matched": the longer response is at most this many times the shorter


def agreement_metrics(judgements: Sequence[Judgement], chosen_longer: Sequence[bool | None],
                      length_ratios: Sequence[float] | None = None) -> dict[str, Any]:
    """The agreement figures for judgements whose response ``a`` is the human-chosen one.

    chosen_longer[i]: whether the human-chosen response of pair i is the longer one (None: equal length);
    length_ratios[i]: longer / shorter length of pair i (for the length-matched figure).
    """
    n = len(judgements)
    if n == 0:
        return {"n": 0}
    matched = [j for j, r in zip(judgements, length_ratios or [], strict=False) if r <= LENGTH_MATCHED]
    per_principle: dict[str, list[int]] = {}
    for j in judgements:
        for pid in j.principle_ids:
            per_principle.setdefault(pid, [0, 0])
            per_principle[pid][0] += j.p_a > 0.5
            per_principle[pid][1] += 1
    agree = sum(j.p_a > 0.5 for j in judgements)
    ties = sum(j.p_a == 0.5 for j in judgements)
    slot_wins = sum(sum(first_slot_wins(j.p_a_first, j.p_a_second)) for j in judgements)
    unequal = [(j, longer) for j, longer in zip(judgements, chosen_longer, strict=True) if longer is not None]
    longer_wins = sum((j.p_a > 0.5) == longer for j, longer in unequal)
    return {
        "n": n,
        "agreement": agree / n,
        "ties": ties,
        "position_consistency": sum(j.consistent for j in judgements) / n,
        "first_slot_win_rate": slot_wins / (2 * n),
        "longer_wins_rate": longer_wins / len(unequal) if unequal else None,
        "human_chose_longer_rate": sum(longer for _, longer in unequal) / len(unequal) if unequal else None,
        "mean_p_human_chosen": sum(j.p_a for j in judgements) / n,
        "mean_p_a_first": sum(j.p_a_first for j in judgements) / n,
        "mean_p_a_second": sum(j.p_a_second for j in judgements) / n,
        "mean_confidence": sum(max(j.p_a, 1 - j.p_a) for j in judgements) / n,
        "length_matched_n": len(matched),
        "length_matched_agreement": sum(j.p_a > 0.5 for j in matched) / len(matched) if matched else None,
        "per_principle": {pid: {"n": total, "agreement": agree / total}
                          for pid, (agree, total) in sorted(per_principle.items())},
    }


def judge_human_pairs(pairs: Sequence[HumanPair], backend, constitution, config: JudgeConfig, *,
                      seed: int = 0, chunk_size: int = 64) -> list[Judgement]:
    """Judge each pair in both orders, the human-chosen response as ``a``; a progress bar per chunk."""
    from cai.logs import progress

    out: list[Judgement] = []
    with progress(len(pairs), "judging human pairs") as advance:
        for start in range(0, len(pairs), chunk_size):
            chunk = pairs[start:start + chunk_size]
            comparisons = [Comparison(p.conversation, p.chosen, p.rejected,
                                      choose_principles(constitution, p.id, config, seed=seed))
                           for p in chunk]
            out.extend(judge(backend, comparisons, config))
            advance(len(chunk))
    return out


def chosen_longer(pair: HumanPair) -> bool | None:
    if len(pair.chosen) == len(pair.rejected):
        return None
    return len(pair.chosen) > len(pair.rejected)


def length_ratio(pair: HumanPair) -> float:
    """Longer over shorter response length, in characters (1.0: equal)."""
    a, b = len(pair.chosen) + 1, len(pair.rejected) + 1
    return max(a, b) / min(a, b)


def measure(pairs: Sequence[HumanPair], judgements: Sequence[Judgement]) -> dict[str, Any]:
    """``agreement_metrics`` for judgements of ``pairs`` (human-chosen response as ``a``)."""
    return agreement_metrics(judgements, [chosen_longer(p) for p in pairs], [length_ratio(p) for p in pairs])


def length_baseline(pairs: Sequence[HumanPair], shorter: bool) -> dict[str, Any]:
    """No model: the shorter (or longer) response wins; equal lengths are a tie (p = 0.5)."""
    judgements = []
    for p in pairs:
        longer = chosen_longer(p)
        p_a = 0.5 if longer is None else float(longer != shorter)
        judgements.append(Judgement(p_a_first=p_a, p_a_second=p_a, principle_ids=()))
    return measure(pairs, judgements)


# Judge configurations measured side by side by ``run_sweep`` (overrides of the default JudgeConfig).
_PAIRWISE = {"mode": "pairwise", "calibrate": "none", "length_control": False}
_POINTWISE = {"mode": "pointwise", "calibrate": "none", "few_shot": False, "cot": False, "length_control": False}
SWEEP: dict[str, dict[str, Any]] = {
    "pairwise (plain)": _PAIRWISE,
    "pairwise + content-free calibration": {**_PAIRWISE, "calibrate": "content-free"},
    "pairwise + swap calibration": {**_PAIRWISE, "calibrate": "swap"},
    "pairwise + length control": {**_PAIRWISE, "length_control": True},
    "pairwise + swap calibration + length control": {**_PAIRWISE, "calibrate": "swap", "length_control": True},
    "pairwise + few-shot": {**_PAIRWISE, "few_shot": True},
    "pairwise + ensemble of 4 principles": {**_PAIRWISE, "principles": "ensemble", "ensemble_size": 4},
    "pointwise": _POINTWISE,
    "pointwise + length control": {**_POINTWISE, "length_control": True},
    "pairwise + chain of thought (clamped)": {**_PAIRWISE, "cot": True},
}


def run_sweep(pairs: Sequence[HumanPair], judges: Sequence[tuple[str, Any]], constitution, base: JudgeConfig, *,
              seed: int = 0, names: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every configuration of ``SWEEP`` (or those ``names``) for the first judge, the base configuration
    for each further judge (a reward model, the SL-CAI model, ...), and the length baselines.

    judges: (label, backend) pairs; the first is the main judge. Yields one row per configuration with
    its figures and seconds, as each finishes (the slow chain-of-thought configuration comes last).
    """
    import time

    for name, shorter in (("baseline: shorter answer wins", True), ("baseline: longer answer wins", False)):
        yield {"name": name, "judge": None, "order_free": True, **length_baseline(pairs, shorter)}
    (main_label, main), others = judges[0], judges[1:]
    plan = [(name, main_label, main, base.model_copy(update=SWEEP[name])) for name in (names or SWEEP)]
    plan += [(f"{label} as judge", label, backend, base) for label, backend in others]
    for name, label, backend, config in plan:
        config = JudgeConfig.model_validate(config.model_dump())  # re-check the combination
        log.info("sweep: %s", name)
        start = time.perf_counter()
        judgements = judge_human_pairs(pairs, backend, constitution, config, seed=seed)
        yield {"name": name, "judge": label, "order_free": order_free(backend, config), "config": config.model_dump(
            mode="json", exclude={"system", "template", "answer_prefix", "pointwise_template"}),
            **measure(pairs, judgements), "seconds": round(time.perf_counter() - start, 1)}


HUMAN_LABELS = "human-labelled pairs (agreement: the human-chosen response wins)"


SWEEP_HEADER = ("configuration", "judge", "agreement", "position consistency", "slot A wins", "longer wins",
                "length-matched agreement (n)", "s")


def sweep_cells(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The sweep's rows as table cells under ``SWEEP_HEADER``."""
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    return [[r["name"], r["judge"] or "-", f(r.get("agreement")),
             "n/a (order-free)" if r.get("order_free") else f(r.get("position_consistency")),
             "-" if r.get("order_free") else f(r.get("first_slot_win_rate")), f(r.get("longer_wins_rate")),
             f"{f(r.get('length_matched_agreement'))} ({r.get('length_matched_n')})", str(r.get("seconds", "-"))]
            for r in rows]


def sweep_table(rows: Sequence[dict[str, Any]], n: int, what: str = HUMAN_LABELS) -> str:
    """The sweep as a Markdown table; ``what`` says what the pairs are and which response counts as right."""
    lines = [f"Judge configurations on {n} {what}", "", "| " + " | ".join(SWEEP_HEADER) + " |",
             "|" + "---|" * len(SWEEP_HEADER), *("| " + " | ".join(c) + " |" for c in sweep_cells(rows))]
    return "\n".join(lines) + "\n"


def judgement_rows(pairs: Sequence[HumanPair], judgements: Sequence[Judgement]) -> list[dict[str, Any]]:
    """One JSON row per judged pair, for looking at where the judge and the humans part."""
    return [{"id": p.id, "line": p.line, "p_human_chosen": j.p_a, "p_a_first": j.p_a_first,
             "p_a_second": j.p_a_second, "position_consistent": j.consistent, "agrees": j.p_a > 0.5,
             "principle_ids": list(j.principle_ids), "reasoning": list(j.reasoning)}
            for p, j in zip(pairs, judgements, strict=True)]
