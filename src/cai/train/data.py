"""Read and validate the training inputs: SFT conversations and preference pairs.

Both readers turn every row into TRL's conversational format (lists of ``{"role", "content"}`` dicts),
fail on the first bad row with a ``ConfigError`` naming the file, line and field, and record what the
model card needs: the file's sha256, the row count and the constitution the data was made under.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import ConfigError

ROLES = ("system", "user", "assistant")


@dataclass
class TrainingData:
    """Rows ready for a TRL trainer, plus where they came from."""

    path: Path
    sha256: str
    rows: list[dict[str, Any]]
    constitution: dict[str, Any] | None = None
    kinds: list[str | None] | None = None  # SFT rows: ``kind`` ("helpful": plain answers); pairs: ``judge``


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sft_data(path: str | Path, *, include_unusable: bool = False) -> TrainingData:
    """SFT rows as ``{"prompt": [messages], "completion": [one assistant message]}``.

    Rows that ``cai critique`` marked ``"usable": false`` (no revision passed its quality filter) are
    skipped unless ``include_unusable``.

    Accepts ``{"messages": [...]}`` rows (the prompt is every message before the last assistant turn, the
    completion is that turn) and ``{"prompt", "completion"}`` rows (message lists, or plain strings for a
    single user turn and its answer).
    """
    path = _existing(path, "SFT data", "`cai critique` writes sft.jsonl")
    rows, refs, kinds, skipped = [], [], [], 0
    for line, obj in _json_lines(path):
        where = f"{path}:{line}"
        if obj.get("usable") is False and not include_unusable:
            skipped += 1
            continue
        if "messages" in obj:
            prompt, completion = _split_last_assistant(_messages(obj["messages"], where, "messages"), where)
        elif "prompt" in obj and "completion" in obj:
            prompt = _messages(obj["prompt"], where, "prompt", default_role="user")
            completion = _messages(obj["completion"], where, "completion", default_role="assistant")
            if [m["role"] for m in completion] != ["assistant"]:
                raise ConfigError("`completion` must be exactly one assistant message", where=where,
                                  fix='write "completion": [{"role": "assistant", "content": "..."}]')
        else:
            raise ConfigError("row has neither `messages` nor `prompt` + `completion`", where=where,
                              fix='write {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
        if not prompt:
            raise ConfigError("no message before the assistant turn", where=where,
                              fix="add the user's prompt")
        rows.append({"prompt": prompt, "completion": completion})
        refs.append(_constitution_of(obj))
        kinds.append(obj.get("kind"))
    if not rows and skipped:
        raise ConfigError(f"all {skipped} rows are marked unusable by the critique stage's quality filter",
                          where=str(path), fix="run more prompts or rounds, or pass --include-unusable")
    if not rows:
        records = path.parent / "records.jsonl"
        raise ConfigError("no rows" + (f" (`cai critique` writes only usable revisions here; see {records} for "
                                       "all of them)" if records.is_file() else ""), where=str(path),
                          fix="check that `cai critique` finished; run more prompts or rounds if no revision "
                              "passed its quality filter")
    if skipped:
        import logging

        logging.getLogger(__name__).info("skipped %d rows marked unusable in %s", skipped, path)
    return TrainingData(path, file_sha256(path), rows, _common_constitution(refs), kinds)


def read_preference_pairs(path: str | Path) -> TrainingData:
    """Preference rows as ``{"prompt": [messages], "chosen": [msg], "rejected": [msg], "p_chosen": p}``.

    ``prompt`` is a message list or a string (one user turn); ``chosen``/``rejected`` are a list with one
    assistant message or a string. ``p_chosen`` (P(chosen is better), in [0, 1]) defaults to 1: a hard label.
    """
    path = _existing(path, "preference pairs", "`cai label` writes pairs.jsonl")
    rows, refs, kinds = [], [], []
    for line, obj in _json_lines(path):
        where = f"{path}:{line}"
        for key in ("prompt", "chosen", "rejected"):
            if key not in obj:
                raise ConfigError(f"row has no `{key}`", where=where,
                                  fix="each row needs prompt, chosen and rejected (see PreferencePair)")
        prompt = _messages(obj["prompt"], where, "prompt", default_role="user")
        if not prompt:
            raise ConfigError("`prompt` is empty", where=where, fix="give the prompt the pair answers")
        row = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            answer = _messages(obj[key], where, key, default_role="assistant")
            if [m["role"] for m in answer] != ["assistant"]:
                raise ConfigError(f"`{key}` must be one assistant message", where=where,
                                  fix=f'write "{key}": [{{"role": "assistant", "content": "..."}}]')
            row[key] = answer
        p = obj.get("p_chosen")
        row["p_chosen"] = 1.0 if p is None else _probability(p, where)
        rows.append(row)
        refs.append(_constitution_of(obj))
        kinds.append(obj.get("judge"))
    if not rows:
        raise ConfigError("no preference pairs", where=str(path), fix="check that `cai label` finished")
    return TrainingData(path, file_sha256(path), rows, _common_constitution(refs), kinds)


def _existing(path: str | Path, what: str, hint: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist", fix=f"check the path ({hint})")
    return path


def _json_lines(path: Path):
    from cai.jsonl import iter_jsonl

    for line, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise ConfigError("row is not a JSON object", where=f"{path}:{line}",
                              fix="write one JSON object per line")
        yield line, obj


def _messages(value: Any, where: str, key: str, *, default_role: str | None = None) -> list[dict[str, str]]:
    """Validate a message list (a plain string becomes one message with ``default_role``)."""
    if isinstance(value, str) and default_role:
        value = [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        raise ConfigError(f"`{key}` must be a list of messages", where=where,
                          fix=f'write "{key}": [{{"role": "...", "content": "..."}}]')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(f"`{key}[{i}]` is not a message", where=where,
                              fix=f'each message is {{"role": one of {"/".join(ROLES)}, "content": "text"}}')
        if not m["content"].strip():
            raise ConfigError(f"`{key}[{i}].content` is empty", where=where,
                              fix="drop the row or fill in the text")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _split_last_assistant(msgs: list[dict[str, str]], where: str) -> tuple[list[dict], list[dict]]:
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ConfigError("`messages` has no assistant turn to train on", where=where,
                          fix="end each conversation with the assistant's (revised) answer")
    return msgs[:last], [msgs[last]]


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"`p_chosen` is {value!r}, not a probability in [0, 1]", where=where,
                          fix="write P(chosen is better) as a number between 0 and 1, or leave it out (= 1)")
    return float(value)


def _constitution_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    ref = obj.get("constitution") or (obj.get("provenance") or {}).get("constitution")
    return ref if isinstance(ref, dict) else None


def _common_constitution(refs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The constitution every row was made under; ``{"mixed": [...]}`` when rows disagree."""
    distinct = []
    for ref in refs:
        if ref is not None and ref not in distinct:
            distinct.append(ref)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else {"mixed": distinct}
