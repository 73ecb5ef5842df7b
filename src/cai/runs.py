"""Run directories: the resolved settings of a stage, checked again when a stage resumes.

A stage writes ``run.json`` (what must stay the same for a resume to be valid: model, constitution hash,
options) the first time it runs in a directory. A re-run with different settings in the same directory
would mix records made two ways, so it is refused with a message saying what differs, unless the earlier
start finished nothing (a failed start with a mistyped option locks nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai.errors import ConfigError


def check_or_record(out_dir: Path, stage: str, settings: dict[str, Any], *, ignore: tuple[str, ...] = (),
                    started: bool = True) -> None:
    """Write ``out_dir/run.json`` for a new run, or verify a resumed run uses the same settings.

    ``started``: whether the directory holds any finished work; when it does not, the settings are simply
    recorded anew."""
    from cai import __version__
    from cai.jsonl import write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.json"
    settings = json.loads(json.dumps(settings, default=str))
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("stage") != stage:
            raise ConfigError(f"{out_dir} holds a `{saved.get('stage')}` run, not `{stage}`",
                              where=str(path), fix="choose another --out directory")
        old = saved.get("settings", {})
        changed = sorted(k for k in set(old) | set(settings) if k not in ignore and old.get(k) != settings.get(k))
        if changed and started:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed[:4])
            raise ConfigError(f"this directory holds a run with other settings ({detail})", where=str(path),
                              fix="re-run with the same settings to resume, or choose a new --out directory")
        if not changed:
            return
    write_atomic(path, json.dumps({"stage": stage, "cai_version": __version__, "settings": settings}, indent=2))
