"""The lock file pins every dependency the set-up installs (scripts/lock.sh re-resolves it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_and_locked_extra_is_pinned_in_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in ("test", "report", "ray", "docs", "openai"):  # the extras scripts/lock.sh resolves
        wanted += project["optional-dependencies"][extra]
    pinned = {_name(line.split("==")[0]) for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    missing = sorted({_name(r) for r in wanted} - pinned - {"torch"})  # torch: installed first by setup.sh
    assert not missing, f"not in requirements/lock.txt (run bash scripts/lock.sh): {missing}"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c requirements/lock.txt" in setup  # the set-up installs the locked versions
