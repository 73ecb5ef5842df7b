#!/usr/bin/env bash
# Does RLAIF make the embedded model safer? label -> reward -> PPO with the default judge, then the
# refusal rate on the shipped red-team prompts (should rise) and on the helpful prompts (should not),
# and a report of it all in RUN_DIR/report/report.md.
# Usage: bash scripts/refusal_check.sh [RUN_DIR] [extra `cai label` options, e.g. --judge DIR]
# About 15 minutes on a 2-core CPU. Re-running resumes the finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/refusal-check}
shift || true
cai=.venv/bin/cai
$cai label mixed --limit "${RL_PROMPTS:-96}" --samples 2 --max-new-tokens 64 --out "$run/label" "$@"
[ -f "$run/reward/config.json" ] || $cai reward "$run/label/pairs.jsonl" --out "$run/reward" --epochs 2 --lr 2e-5
$cai ppo mixed --limit "${RL_PROMPTS:-96}" --reward-model "$run/reward" --out "$run/ppo" \
    --steps "${PPO_STEPS:-16}" --batch-size 8 --max-new-tokens 48
$cai refusals --model smollm2-135m --model "$run/ppo/policy" --limit "${EVAL_PROMPTS:-80}" --out "$run/refusals"
$cai report "$run" --out "$run/report"
