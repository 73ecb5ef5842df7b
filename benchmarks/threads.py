"""Generation speed with 1 and with 2 torch threads, optionally with one core kept busy by another process.

    .venv/bin/python benchmarks/threads.py [--busy-core] [--repeats 2] [--json benchmarks/results/threads.json]

Each measurement runs in a fresh process: the embedded model answers 8 short prompts, 24 new tokens each,
sampled (after a short warm-up), and the generated tokens per second are reported. ``--busy-core`` starts a
process that spins on one core for the whole run, as another job on the machine would. The load average
at each measurement is recorded: on a shared machine the other work changes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MEASURE = """
import time, torch
torch.set_num_threads({threads})
from cai.backends import load_backend
from cai.backends.base import SamplingParams
backend = load_backend("smollm2-135m")
convs = [[{{"role": "user", "content": f"Tell me about topic number {{i}}."}}] for i in range(8)]
backend.generate(convs[:2], SamplingParams(max_new_tokens=4), progress=False)
start = time.perf_counter()
out = backend.generate(convs, SamplingParams(max_new_tokens=24, temperature=0.7, seed=1), progress=False)
print(sum(c.completion_tokens for c in out) / (time.perf_counter() - start))
"""


def tokens_per_second(threads: int) -> float:
    run = subprocess.run([sys.executable, "-c", MEASURE.format(threads=threads)], capture_output=True, text=True,
                         timeout=1800, check=True)
    return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy-core", action="store_true", help="keep one core busy with a spinning process")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_core else None
    rows = []
    try:
        for _ in range(args.repeats):
            for threads in (1, 2):
                load = os.getloadavg()[0]
                rows.append({"threads": threads, "busy_core": args.busy_core,
                             "tok_s": round(tokens_per_second(threads), 1), "load_average_1m": round(load, 1)})
                print(rows[-1], flush=True)
    finally:
        if spinner is not None:
            spinner.kill()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
