#!/usr/bin/env bash
# Set up if needed, then run the main job on the embedded default model: the pipeline in
# recipes/quickstart.yaml (SL-CAI critique-revision and SFT, then preference pairs and DPO, then
# refusal rates of the base and the final model and the report, runs/quickstart/report/report.md),
# written to runs/quickstart (re-running resumes it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/cai run recipes/quickstart.yaml --out runs/quickstart "$@"
