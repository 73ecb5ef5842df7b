"""JSON-lines files that survive ``kill -9``: whole-line appends, torn tails repaired on resume.

A stage appends each finished record as one line and flushes + fsyncs it, so after a crash the file
holds every finished record exactly once plus, at worst, one partial last line. ``read_records``
drops (and ``repair`` truncates) that partial line; a re-run then skips the ids already present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cai.errors import ConfigError


def repair(path: Path) -> int:
    """Truncate a torn (unterminated) last line left by a killed writer; returns bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


def iter_jsonl(path: Path, *, strict: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; bad JSON raises a ConfigError naming the line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if not line.endswith("\n"):  # a torn last line from a killed writer
                    return
                if strict:
                    raise ConfigError(f"line {n} is not valid JSON ({e.msg})", where=str(path),
                                      fix="fix or delete that line") from None
                continue
            yield n, obj


def read_records(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    return [obj for _, obj in iter_jsonl(path)] if path.exists() else []


def append_records(path: Path, records: Iterable[dict[str, Any] | Any]) -> int:
    """Append records (dicts or pydantic models) as whole lines, durably. Returns how many."""
    lines = []
    for r in records:
        obj = r.model_dump(mode="json") if hasattr(r, "model_dump") else r
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    if not lines:
        return 0
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    return len(lines)


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file via a temporary name and rename, so readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any] | Any]) -> int:
    rows = [r.model_dump(mode="json") if hasattr(r, "model_dump") else r for r in records]
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)
