#!/usr/bin/env bash
# Re-resolve requirements/lock.txt, the pinned versions every set-up installs (scripts/setup.sh reads it as
# constraints): one commit, one set of versions on every machine. Run it after changing a dependency in
# pyproject.toml and commit the result. torch is left out (scripts/setup.sh installs torch==2.13.0 first,
# the CPU build); the lock is universal (every platform and Python >= 3.11), so it also lists the CUDA
# packages PyPI's torch would pull, which a constraint never installs by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m uv pip compile pyproject.toml --extra test --extra report --extra ray --extra docs \
    --extra openai --universal --python-version 3.11 --no-emit-package torch -q -o requirements/lock.txt
echo "requirements/lock.txt: $(grep -c '==' requirements/lock.txt) pinned packages"
