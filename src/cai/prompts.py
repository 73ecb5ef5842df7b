"""Prompt sources: the shipped sets, local files (JSONL, CSV, TXT) and Hugging Face datasets.

Every source becomes a list of ``PromptRow`` plus a list of ``BadRow``. A bad row (invalid JSON, a
missing, empty or non-string prompt, a duplicate id or prompt) is reported with its 1-based row number
and skipped; it never stops a run. A missing file, an unknown format, or a column that no row has is a
``ConfigError``, because no amount of skipping would make that input right.

The shipped sets have fixed, disjoint ``train``, ``eval`` and ``rl`` splits (``all`` is the three):
within each category, in file order, every third prompt (the 2nd, 5th, 8th, ...) is held out for
evaluation and the others are for training. The training stages read ``train`` and the evaluations
``eval``, so a model is measured on prompts it never trained on. The ``rl`` split holds prompts kept
for the RL stage (e.g. ``cai ppo mixed:rl ...``): SFT's critique runs, which read ``train``, never
see them and neither does evaluation. New prompts are appended to a file, which leaves every earlier
prompt's split as it was; a row may name its own split (``"split": "train"``, ``"eval"`` or ``"rl"``),
as the training-only helpful prompts and the appended eval and rl prompts of both files do, and then it
is left out of the every-third count.

Ids come from the ``id`` column when a row has one, else from the prompt text itself (``prompt_id``),
so a re-run or a resume sees the same ids for the same prompts.

Accepted ``source`` values::

    redteam | helpful | mixed          the shipped sets (mixed interleaves the two, red-team first),
    redteam:eval, helpful:rl, ...      one split of a shipped set: train, eval, rl or all (a bare name
                                       takes the ``split`` argument: train by default)
    prompts.jsonl                      objects with "prompt" (or your column), or {"messages": [...]}, or
                                       MT-Bench questions {"question_id", "turns": [...]} (the first turn;
                                       meta keeps all the turns)
    prompts.csv                        a header row, then one prompt per row
    prompts.txt                        one prompt per non-empty line; lines starting with # are skipped
    hf:owner/name  or  owner/name      a dataset loaded with datasets.load_dataset(name, split=split)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.errors import ConfigError
from cai.jsonl import write_jsonl_atomic

log = logging.getLogger(__name__)

SHIPPED_SETS = ("redteam", "helpful", "mixed")
ROW_SPLITS = ("train", "eval", "rl")  # the splits a shipped row may name in its "split" field
SHIPPED_SPLITS = (*ROW_SPLITS, "all")
EVAL_EVERY = 3  # every third prompt of a category is held out
FILE_FORMATS = (".jsonl", ".csv", ".txt")
HF_PREFIX = "hf:"
# A parse failure, in place of a row's object: the reason it could not be read.
_Item = tuple[int, "dict[str, Any] | str"]


class PromptRow(BaseModel):
    """One prompt to answer. ``meta`` holds the row's other fields, unchanged."""

    model_config = ConfigDict(extra="forbid")
    id: str
    prompt: str
    category: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class BadRow(BaseModel):
    """A skipped input row and why; ``row`` is 1-based (a line, a CSV row, or a dataset index + 1)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    row: int
    reason: str


class _RowProblem(Exception):
    """Internal: this row cannot be used; the message is the reason."""


def prompt_id(text: str) -> str:
    """The stable id of a prompt without one: the first 12 hex digits of the sha1 of its text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def shipped_path(name: str) -> Path:
    """Path of a shipped prompt file (``redteam`` or ``helpful``) inside the installed package."""
    if name not in ("redteam", "helpful"):
        raise ConfigError(f"unknown shipped prompt set {name!r}", where="prompts",
                          fix="use one of: redteam, helpful (or mixed, which interleaves them)")
    return Path(str(resources.files("cai") / "data" / "prompts" / f"{name}.jsonl"))


def load_prompts(
    source: str | Path,
    *,
    column: str | None = None,
    id_column: str = "id",
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[PromptRow], list[BadRow]]:
    """Read prompts from ``source`` (see the module docstring); returns (good rows, skipped rows).

    ``column`` names the prompt field (default: ``prompt``, else a ``messages`` list whose first user
    turn is taken). ``limit`` counts good rows only; reading stops once it is reached, so bad rows past
    that point are not reported.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}", where="prompts", fix="pass a positive --limit")
    if isinstance(source, str) and source.split(":", 1)[0] in SHIPPED_SETS:
        name, _, named_split = source.partition(":")
        return _load_shipped(name, _shipped_split(source, named_split or split), limit)
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        return _load_hf(source[len(HF_PREFIX):], column=column, id_column=id_column, split=split, limit=limit)
    path = Path(source)
    if isinstance(source, str) and _looks_like_hub_name(source) and not path.exists():
        return _load_hf(source, column=column, id_column=id_column, split=split, limit=limit)
    label = str(path)
    if not path.exists():
        raise ConfigError("prompt file not found", where=label,
                          fix=f"check the path; shipped sets are {', '.join(SHIPPED_SETS)}; "
                              "a Hugging Face dataset is written hf:owner/name")
    if path.is_dir():
        raise ConfigError("is a directory, not a prompt file", where=label,
                          fix=f"name a {'/'.join(FILE_FORMATS)} file, or hf:{label} for a dataset directory")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        items, columns = _jsonl_items(path), None
    elif suffix == ".csv":
        items, columns = _csv_items(path)
    elif suffix == ".txt":
        items, columns = _txt_items(path), {"prompt"}
    else:
        raise ConfigError(f"unknown prompt file type {suffix or '(no extension)'!r}", where=label,
                          fix=f"use one of {', '.join(FILE_FORMATS)}, or hf:<name> for a dataset")
    return collect_prompts(label, items, column=column, id_column=id_column, limit=limit, columns=columns)


def collect_prompts(
    label: str,
    items: Iterable[_Item],
    *,
    column: str | None = None,
    id_column: str = "id",
    limit: int | None = None,
    columns: set[str] | None = None,
) -> tuple[list[PromptRow], list[BadRow]]:
    """Turn (row number, object or parse-failure reason) items into prompt rows and bad rows.

    ``columns`` is the set of fields the source has (a CSV header, a dataset's columns); when not
    given it is the union of the objects' keys. A named ``column`` or non-default ``id_column`` that
    no row has is a ConfigError.
    """
    if columns is None:  # read everything first, to know every row's keys
        items = list(items)
        columns = {key for _, obj in items if isinstance(obj, dict) for key in obj}
        if any(isinstance(obj, dict) for _, obj in items):
            _check_columns(label, columns, column, id_column)
    else:
        _check_columns(label, columns, column, id_column)
    rows: list[PromptRow] = []
    bad: list[BadRow] = []
    first_row_of_id: dict[str, int] = {}
    first_row_of_prompt: dict[str, int] = {}
    for n, obj in items:
        if limit is not None and len(rows) >= limit:
            break
        try:
            if isinstance(obj, str):
                raise _RowProblem(obj)
            row = _to_prompt_row(obj, column, id_column)
            if row.prompt in first_row_of_prompt:
                raise _RowProblem(f"duplicate prompt (same as row {first_row_of_prompt[row.prompt]})")
            if row.id in first_row_of_id:
                raise _RowProblem(f"duplicate id {row.id!r} (first on row {first_row_of_id[row.id]})")
        except _RowProblem as e:
            bad.append(BadRow(source=label, row=n, reason=str(e)))
            continue
        first_row_of_id[row.id] = n
        first_row_of_prompt[row.prompt] = n
        rows.append(row)
    return rows, bad


def log_bad_rows(bad: list[BadRow], logger: logging.Logger | None = None, *, show: int = 10) -> None:
    """Warn about skipped rows: how many and where, then the first ``show`` of them, one per line."""
    logger = logger or log
    if not bad:
        return
    sources = sorted({b.source for b in bad})
    logger.warning("skipped %d bad prompt row(s) in %s", len(bad), ", ".join(sources))
    for b in bad[:show]:
        logger.warning("  %s row %d: %s", b.source, b.row, b.reason)
    if len(bad) > show:
        logger.warning("  ... and %d more (see bad_rows.jsonl)", len(bad) - show)


def prompts_for_run(source: str, out: Path, *, column: str | None = None, split: str = "train",
                    limit: int | None = None, logger: logging.Logger | None = None) -> list[PromptRow]:
    """A command's prompts: the good rows of ``source`` (none is an error); the run directory ``out`` is made,
    logs to ``out/cai.log`` from here on and gets the skipped rows in ``bad_rows.jsonl``."""
    from cai.errors import ConfigError
    from cai.logs import log_to_run_dir

    rows, bad = load_prompts(source, column=column, split=split, limit=limit)
    if not rows:
        raise ConfigError("no usable prompts", where=source, fix="check the file, --column and --limit")
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    write_bad_rows(out / "bad_rows.jsonl", bad)
    log_bad_rows(bad, logger)
    return rows


def write_bad_rows(path: Path, bad: list[BadRow]) -> int:
    """Write the skipped rows as JSON lines (the file is written even when empty); returns how many."""
    return write_jsonl_atomic(Path(path), bad)


# ---- sources -----------------------------------------------------------------------------------------


def _shipped_split(source: str, split: str) -> str:
    if split not in SHIPPED_SPLITS:
        raise ConfigError(f"the shipped prompt sets have no split {split!r}", where=f"prompts {source}",
                          fix=f"use one of: {', '.join(SHIPPED_SPLITS)} (e.g. redteam:eval)")
    return split


def split_of(rows: Sequence[PromptRow]) -> list[str]:
    """``train``, ``eval`` or ``rl`` for each row of a whole shipped file, in file order (see the module
    docstring). A row with its own ``split`` field keeps it and is not counted in its category's
    every-third rule; a row without one is ``train`` or ``eval``."""
    seen: dict[str | None, int] = {}
    out = []
    for row in rows:
        if row.meta.get("split") in ROW_SPLITS:
            out.append(row.meta["split"])
            continue
        k = seen[row.category] = seen.get(row.category, -1) + 1
        out.append("eval" if k % EVAL_EVERY == 1 else "train")
    return out


def _load_shipped(name: str, split: str, limit: int | None) -> tuple[list[PromptRow], list[BadRow]]:
    if name != "mixed":
        path = shipped_path(name)
        rows, bad = collect_prompts(f"shipped:{name}", _jsonl_items(path))
        if split != "all":
            rows = [r for r, s in zip(rows, split_of(rows), strict=True) if s == split]
        return (rows if limit is None else rows[:limit]), bad
    red, red_bad = _load_shipped("redteam", split, None)
    helpful, helpful_bad = _load_shipped("helpful", split, None)
    mixed = interleave(red, helpful)
    return (mixed if limit is None else mixed[:limit]), red_bad + helpful_bad


def id_text(rows: Sequence[PromptRow]) -> list[tuple[str, str]]:
    """``(id, prompt)`` for each row, the form the generation stages take."""
    return [(r.id, r.prompt) for r in rows]


def interleave(first: Sequence, second: Sequence) -> list:
    """One item of each in turn, ``first`` leading; the longer list's surplus comes last."""
    mixed = [item for pair in zip(first, second, strict=False) for item in pair]
    shorter = min(len(first), len(second))
    return mixed + list(first[shorter:]) + list(second[shorter:])


def _looks_like_hub_name(source: str) -> bool:
    """``owner/name``: exactly one slash, no file extension we read, not an absolute or ./ path."""
    return (source.count("/") == 1 and not source.startswith((".", "/", "~"))
            and Path(source).suffix.lower() not in FILE_FORMATS and all(source.split("/")))


def _load_hf(name: str, *, column: str | None, id_column: str, split: str,
             limit: int | None) -> tuple[list[PromptRow], list[BadRow]]:
    """A dataset by Hub name, local data directory, or ``save_to_disk`` directory, one split of it."""
    label = f"{HF_PREFIX}{name}"
    dataset = _open_dataset(name, split, label)
    items = ((i, dict(obj)) for i, obj in enumerate(dataset, 1))
    return collect_prompts(label, items, column=column, id_column=id_column, limit=limit,
                           columns=set(dataset.column_names))


def _open_dataset(name: str, split: str, label: str):
    import datasets

    local = Path(name).expanduser()
    saved = local.is_dir() and any((local / f).exists() for f in ("dataset_info.json", "dataset_dict.json"))
    try:
        if not saved:
            return datasets.load_dataset(str(local) if local.exists() else name, split=split)
        dataset = datasets.load_from_disk(str(local))
    except (datasets.exceptions.DatasetsError, ConnectionError, ValueError, OSError) as e:
        raise ConfigError(f"could not load dataset ({type(e).__name__}: {e})", where=label,
                          fix="check the dataset name and split (--split); loading from the Hub needs "
                              "network access, or a local copy (datasets save_to_disk) passed as hf:<dir>"
                          ) from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ConfigError(f"no split {split!r} (has: {', '.join(dataset)})", where=label,
                              fix="pass one of those as --split")
        dataset = dataset[split]
    return dataset


def _jsonl_items(path: Path) -> Iterator[_Item]:
    """(line number, object) per non-empty line; a line that is not a JSON object gives its reason."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                yield n, "not valid UTF-8"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, f"invalid JSON ({e.msg} at column {e.colno})"
                continue
            yield n, obj if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, expected an object"


def _csv_items(path: Path) -> tuple[list[_Item], set[str]]:
    """(line number where the record starts, fields) per data row; the header is line 1."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not valid UTF-8 (byte {e.start})", where=str(path),
                          fix="save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise ConfigError("empty CSV file: no header row", where=str(path),
                          fix="put the column names (e.g. prompt) on the first line")
    items: list[_Item] = []
    start = reader.line_num + 1
    for cells in reader:
        n, start = start, reader.line_num + 1
        if len(cells) > len(header):
            items.append((n, f"{len(cells) - len(header)} more cell(s) than the header has"))
        elif any(cell.strip() for cell in cells):  # else a blank line
            items.append((n, dict(zip(header, cells, strict=False))))
    return items, set(header)


def _txt_items(path: Path) -> Iterator[_Item]:
    """(line number, {"prompt": line}) per non-empty line that does not start with ``#``."""
    for n, obj in _decoded_lines(path):
        if isinstance(obj, str):
            yield n, obj
        elif obj["prompt"].strip() and not obj["prompt"].lstrip().startswith("#"):
            yield n, obj


def _decoded_lines(path: Path) -> Iterator[_Item]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, {"prompt": raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")}
            except UnicodeDecodeError:
                yield n, "not valid UTF-8"


# ---- one row -----------------------------------------------------------------------------------------


def _check_columns(label: str, columns: set[str], column: str | None, id_column: str) -> None:
    have = ", ".join(sorted(columns)) or "(none)"
    if column is not None and column not in columns:
        raise ConfigError(f"no row has the column {column!r} (columns: {have})", where=label,
                          fix="pass one of those as --column")
    if column is None and not columns & {"prompt", "messages", "turns"}:
        raise ConfigError(f"no row has a 'prompt', 'messages' or 'turns' field (columns: {have})", where=label,
                          fix="name the prompt column with --column")
    if id_column != "id" and id_column not in columns:
        raise ConfigError(f"no row has the id column {id_column!r} (columns: {have})", where=label,
                          fix="pass one of those as --id-column, or leave it out to derive ids from the text")


def _to_prompt_row(obj: dict[str, Any], column: str | None, id_column: str) -> PromptRow:
    field = column or ("prompt" if "prompt" in obj or not obj.keys() & {"messages", "turns"} else
                       "messages" if "messages" in obj else "turns")
    if field not in obj:
        raise _RowProblem(f"no {field!r} field")
    if field == "turns" and id_column == "id" and "id" not in obj:  # MT-Bench: {"question_id", "turns": [...]}
        id_column = "question_id"
    text = _prompt_text(obj[field], field)
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        raise _RowProblem(f"'category' is {_kind(category)}, expected a string")
    # MT-Bench's ``turns`` stay in meta whole: the later turns are the follow-up questions (cai study helpfulness)
    meta = {k: v for k, v in obj.items() if k not in (field, id_column, "category") or k == "turns"}
    return PromptRow(id=_row_id(obj.get(id_column), id_column, text), prompt=text,
                     category=(category or "").strip() or None, meta=meta)


def _prompt_text(value: Any, field: str) -> str:
    """The prompt in a field: a string, the first user turn of a message list, or of an HH transcript."""
    if isinstance(value, list):
        value = _first_user_turn(value, field)
    elif isinstance(value, str) and value.lstrip().startswith("Human:") and "\n\nAssistant:" in value:
        value = value.lstrip()[len("Human:"):].split("\n\nAssistant:", 1)[0]  # Anthropic HH transcripts
    if value is None:
        raise _RowProblem(f"{field!r} is null")
    if not isinstance(value, str):
        raise _RowProblem(f"{field!r} is {_kind(value)}, expected a string or a list of chat messages")
    if not value.strip():
        raise _RowProblem(f"empty {field!r}")
    return value.strip()


def _first_user_turn(messages: list[Any], field: str) -> Any:
    """The first user turn of a chat message list; the first of a list of user turns (MT-Bench's ``turns``)."""
    if messages and all(isinstance(m, str) for m in messages):
        return messages[0]
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return message.get("content")
    raise _RowProblem(f"{field!r} has no user turn")


def _row_id(value: Any, id_column: str, text: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return prompt_id(text)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _RowProblem(f"{id_column!r} is {_kind(value)}, expected a string or an integer")
    return str(value).strip()


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", float: "a number",
            int: "an integer", str: "a string"}.get(type(value), type(value).__name__)
