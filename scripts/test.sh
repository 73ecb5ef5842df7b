#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (slow tests included: they use the real embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,report,ray  # ray: the fan-out tests (tests/test_fanout.py)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q "$@"
