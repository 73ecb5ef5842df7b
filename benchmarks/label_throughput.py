"""Labelling throughput: cai's log-prob judge (both orders) against the seed design's free-text judge.

The seed design asked the model "Respond with A or B and explain why", generated 64 new tokens per
pair, one pair at a time, and parsed the letter. cai reads the option probabilities after an answer
prefix in one forward pass per order, batched. Both run here on the same human pairs (HH-RLHF format);
cai is timed as the whole ``cai label --agreement`` command, start-up and model load included.

    python benchmarks/label_throughput.py PAIRS.jsonl[.gz] [--pairs 48] [--seed-pairs 12]

Prints pairs/s for both and the ratio, in wall time and in CPU time (CPU time is steadier on a busy
machine; on a quiet one the two ratios agree).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def read_rows(path: Path, n: int) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(n), strict=False)]


def split_last_turn(transcript: str) -> tuple[str, str]:
    i = transcript.rfind("\n\nAssistant:")
    return transcript[:i], transcript[i + len("\n\nAssistant:"):]


def seed_judge_rate(rows: list[dict]) -> tuple[float, float]:
    """The seed design's judge: free text, 64 sampled tokens, one pair at a time, fp32.

    Returns (wall, cpu) pairs/s.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.models import resolve

    path = resolve("smollm2-135m").path  # the same weights the seed loaded from the GGUF file
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for row in rows:
        history, a = split_last_turn(row["chosen"])
        _, b = split_last_turn(row["rejected"])
        question = (f"Consider the following principles: harmlessness, helpfulness, honesty.\n{history}"
                    f"\n\nResponse A: {a}\n\nResponse B: {b}\n\nWhich response better aligns with the "
                    "principles? Respond with \"A\" or \"B\" and explain why:")
        x = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
        with torch.no_grad():
            model.generate(**x, max_new_tokens=64, do_sample=True, temperature=0.7)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(rows) / wall, len(rows) / cpu


def cai_rate(rows: list[dict], workdir: Path) -> tuple[float, float, dict]:
    """``cai label --agreement`` as a command, load included. (wall, cpu) pairs/s and agreement.json."""
    pairs = workdir / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cai = Path(sys.executable).with_name("cai")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    done = subprocess.run([str(cai), "label", "--agreement", str(pairs), "--out", str(workdir / "a")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"cai label --agreement failed:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads((workdir / "a" / "agreement.json").read_text())
    return result["n"] / wall, result["n"] / cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="HH-RLHF style JSONL (or .jsonl.gz) with chosen/rejected")
    parser.add_argument("--pairs", dest="n", type=int, default=48, help="pairs for cai (default 48)")
    parser.add_argument("--seed-pairs", type=int, default=12, help="pairs for the slow seed judge")
    parser.add_argument("--skip", type=int, default=1000, help="rows to skip first (default 1000)")
    args = parser.parse_args()
    rows = read_rows(args.file, args.skip + args.n)[args.skip:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        ours_wall, ours_cpu, result = cai_rate(rows, Path(tmp))
    seed_wall, seed_cpu = seed_judge_rate(rows[: args.seed_pairs])
    print(f"seed free-text judge: {seed_wall:.3f} pairs/s wall, {seed_cpu:.3f} pairs/s CPU "
          f"({args.seed_pairs} pairs, one at a time, 64 new tokens)")
    print(f"cai log-prob judge:   {ours_wall:.3f} pairs/s wall, {ours_cpu:.3f} pairs/s CPU "
          f"({result['n']} pairs, both orders, start-up and load included)")
    print(f"ratio: {ours_wall / seed_wall:.1f}x wall, {ours_cpu / seed_cpu:.1f}x CPU (target 20x)")
    print(f"agreement {result['agreement']:.3f}, position consistency {result['position_consistency']:.3f}")


if __name__ == "__main__":
    main()
