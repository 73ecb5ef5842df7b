"""Seconds per optimizer step and peak memory of cai's SFT and DPO stages against TRL 1.16's trainers.

Both sides train the same model on the same rows with the same batch size, maximum sequence length, number
of optimizer steps and learning rate (cai's default for the stage), in one run of this script; it prints
cai/TRL ratios (targets: time <= 0.6x, memory <= 0.4x). It is a benchmark, not a test.

    .venv/bin/python benchmarks/train_step.py --json benchmarks/results/train_step.json
    .venv/bin/python benchmarks/train_step.py --which dpo --steps 1 --batch-size 2 --max-length 128 --builtin-data

Sides (each for ``sft`` and ``dpo``; ``--which`` picks the stages):
  - ``cai``: the project's own stage functions, ``train_sft`` / ``train_dpo`` with ``SFTOptions`` /
    ``DPOOptions`` (``max_steps``, ``batch_size``, ``max_length``, ``learning_rate`` and ``dtype="fp32"``;
    everything else at cai's defaults). ``--cai-dtype auto`` lets cai choose instead (bf16 autocast where
    its start-up check finds bf16 correct and fast on this CPU), which is then no longer an fp32 comparison.
  - ``trl``: ``SFTTrainer`` / ``DPOTrainer`` with TRL's default settings (activation checkpointing, loss,
    optimizer, ...) except what is needed to run here and to match the sizes: ``output_dir``, ``max_steps``,
    ``per_device_train_batch_size``, ``max_length``, ``learning_rate``, ``report_to="none"``,
    ``save_strategy="no"``, ``logging_steps=1``, ``seed=0`` and ``bf16=False``: TRL's default
    ``bf16=True`` errors on a CPU unless ``use_cpu`` is set, so both sides are compared in fp32. The model
    is cai's ``load_causal_lm(resolve(MODEL))`` in fp32 and the tokenizer cai's ``load_tokenizer``; DPO
    gets ``ref_model=None``, so TRL builds its own reference copy (its default). The rows are the ones cai
    trains on: ``read_sft_data(path).rows`` (conversational prompt/completion) for SFT and
    ``hard_label_pairs(read_preference_pairs(path).rows, min_confidence)`` (prompt/chosen/rejected, with
    cai's default ``min_confidence``) for DPO.

This measures CPU training: peak memory is resident host memory, not GPU memory.

How each side is measured:
  - It runs in a fresh subprocess (this file with ``--side``), so its peak resident memory is its own. At the
    end the child reads ``resource.getrusage(RUSAGE_SELF)``: ``ru_maxrss`` (peak RSS), ``ru_utime`` and
    ``ru_stime`` (reported as the kernel share of CPU time, stime / (utime + stime)) and ``ru_minflt``
    (minor page faults), and prints them as one JSON line on stdout. The parent also samples the child's
    ``VmRSS`` from ``/proc/<pid>/status`` every 0.2 s and reports max(sampled, ru_maxrss), in case the
    child resets its own high-water mark.
  - Time is the wall time from loading the model to "training finished", divided by the optimizer steps
    run, so with few steps it includes a load (about a second) and whatever a stage does before its first
    step: TRL copying the model into a reference model, cai precomputing reference log-probabilities.
  - TRL side: the clock runs over loading the tokenizer, the rows and the model, building the dataset and
    the trainer and ``trainer.train()``; steps are ``global_step`` of the train result.
  - cai side: the clock runs over the whole ``train_sft`` / ``train_dpo`` call, which also saves the trained
    model directory (counted against cai). Steps are ``metrics.steps`` of the model card the call writes
    (``cai_model.json``), else ``--steps``. ``--cai-options`` adds options (e.g. LoRA), reported as such.

Data: ``--sft-data`` / ``--pairs``, by default ``runs/quickstart/critique/sft.jsonl`` and
``runs/quickstart/preferences/pairs.jsonl`` where they exist; otherwise (or with ``--builtin-data``) small
files written into a temporary directory from the shipped ``helpful`` training prompts, with fixed,
harmless answers (a polite explanation as completion / chosen, a curt non-answer as rejected). ``--rows N``
trains both sides on the first N rows of each file only: a stage may do work per row of its data before the
first step (cai's DPO computes reference log-probs for the pairs the run may see), so with few steps over a
large file the time mostly measures that; N = steps x batch size models one epoch over the data.

Absolute times depend on the machine and on what else runs on it; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STAGES = ("sft", "dpo")
SIDES = ("cai", "trl")
DEFAULT_DATA = {"sft": Path("runs/quickstart/critique/sft.jsonl"),
                "dpo": Path("runs/quickstart/preferences/pairs.jsonl")}
TARGETS = {"time": 0.6, "memory": 0.4}
SAMPLE_SECONDS = 0.2
ANSWER = ("Thank you for the question. " + "Here is a careful and friendly answer that explains each step "
          "clearly, with a short example and a kind word of encouragement. " * 3).strip()
CURT = "I am not sure. Please ask someone else."


# --- arguments -----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model spec (cai's --model); default: the embedded one")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--which", default="sft,dpo", help="comma-separated stages: sft, dpo")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--sft-data", type=Path, help=f"SFT rows (default: {DEFAULT_DATA['sft']} if it exists)")
    p.add_argument("--pairs", type=Path, help=f"preference pairs (default: {DEFAULT_DATA['dpo']} if it exists)")
    p.add_argument("--builtin-data", action="store_true", help="use small built-in data, ignoring the files")
    p.add_argument("--rows", type=int, help="only the first ROWS rows of each data file (default: all)")
    p.add_argument("--cai-dtype", choices=("fp32", "auto", "bf16"), default="fp32",
                   help="cai's dtype option (default fp32, as the TRL side; auto: cai's own choice)")
    p.add_argument("--cai-options", help="more cai options as JSON, e.g. '{\"lora\": true, \"learning_rate\": 5e-4}'")
    p.add_argument("--threads", type=int, help="torch threads in each child (default: torch's own choice)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side in this process
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.which.split(",") if s.strip()]
    if not stages or set(stages) - set(STAGES):
        p.error(f"--which takes a comma-separated subset of {', '.join(STAGES)}, got {args.which!r}")
    if args.rows is not None and args.rows < 1:
        p.error("--rows must be at least 1")
    args.stages = [s for s in STAGES if s in stages]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side:
        print(json.dumps(run_child(args)), flush=True)
        return
    compare(args)


# --- data ----------------------------------------------------------------------------------------------------

def data_paths(args: argparse.Namespace, scratch: Path) -> dict[str, Path]:
    """The data file per requested stage: the one given, else the quickstart's, else built-in data."""
    given = {"sft": args.sft_data, "dpo": args.pairs}
    paths: dict[str, Path] = {}
    for stage in args.stages:
        path = None if args.builtin_data else given[stage] or _existing(DEFAULT_DATA[stage])
        if path is not None and not path.is_file():
            raise SystemExit(f"{path} does not exist (leave the option out, or pass --builtin-data)")
        path = path.resolve() if path is not None else builtin_data(scratch)[stage]
        paths[stage] = first_rows(path, args.rows, scratch / f"{stage}-first-{args.rows}.jsonl") if args.rows else path
    return paths


def first_rows(path: Path, rows: int, dest: Path) -> Path:
    """A copy of the first ``rows`` non-empty lines of ``path`` at ``dest``."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    dest.write_text("".join(line + "\n" for line in lines[:rows]), encoding="utf-8")
    return dest


def count_rows(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def builtin_data(scratch: Path) -> dict[str, Path]:
    """Small SFT and preference files from the shipped helpful training prompts (written once per run)."""
    from cai.prompts import load_prompts

    sft, pairs = scratch / "sft.jsonl", scratch / "pairs.jsonl"
    if not (sft.is_file() and pairs.is_file()):
        rows, _ = load_prompts("helpful", split="train", limit=64)
        _write_jsonl(sft, [{"id": r.id, "prompt": r.prompt, "completion": ANSWER} for r in rows])
        _write_jsonl(pairs, [{"id": r.id, "prompt": r.prompt, "chosen": ANSWER, "rejected": CURT, "p_chosen": 1.0}
                             for r in rows])
    return {"sft": sft, "dpo": pairs}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


# --- parent: run the sides, report ---------------------------------------------------------------------------

def compare(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"settings": settings(args), "stages": {}}
    with tempfile.TemporaryDirectory(prefix="train-step-bench-") as scratch:
        paths = data_paths(args, Path(scratch))
        for stage in args.stages:
            sides = {}
            for side in SIDES:
                print(f"running {stage} / {side} ...", file=sys.stderr, flush=True)
                sides[side] = run_side(side, stage, paths[stage], args)
            entry = {"data": str(paths[stage]), "rows": count_rows(paths[stage]), **sides,
                     "ratio": ratios(sides["cai"], sides["trl"])}
            results["stages"][stage] = entry
            print_stage(stage, entry, args)
    results["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"written to {args.json}")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
            "max_length": args.max_length, "rows": args.rows, "cai_dtype": args.cai_dtype,
            "threads": args.threads, "cpus": os.cpu_count(),
            "versions": versions()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("cai", "trl", "transformers", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "?"
    return out


def child_command(side: str, stage: str, data: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, __file__, "--side", side, "--stage", stage, "--data", str(data), "--model", args.model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--cai-dtype", args.cai_dtype]
    if args.cai_options:  # the child builds cai's options from these too (a parent-only option is not applied)
        cmd += ["--cai-options", args.cai_options]
    return cmd + (["--threads", str(args.threads)] if args.threads else [])


def child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no network; never wait on the Hub
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_side(side: str, stage: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one side in a fresh process, sampling its RSS; its JSON result plus the peak RSS in MiB."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(child_command(side, stage, data, args), stdout=out, stderr=err,
                                env=child_env(args), text=True)
        sampled = watch_rss(proc)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = last_json_line(stdout)
    if proc.returncode or result is None:
        sys.stderr.write(stdout[-3000:] + stderr[-5000:])
        raise SystemExit(f"{stage} / {side} failed (exit {proc.returncode})")
    result["sampled_rss_kib"] = sampled
    result["peak_rss_mib"] = max(sampled, result["ru_maxrss_kib"]) / 1024
    return result


def watch_rss(proc: subprocess.Popen) -> int:
    """Poll ``proc`` until it exits; the largest VmRSS (KiB) seen every ``SAMPLE_SECONDS``."""
    peak = 0
    while proc.poll() is None:
        peak = max(peak, vm_rss_kib(proc.pid))
        time.sleep(SAMPLE_SECONDS)
    return peak


def vm_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass  # the process just exited, or no /proc here
    return 0


def last_json_line(stdout: str) -> dict[str, Any] | None:
    """The child's result: the last stdout line that is a JSON object (progress bars may print before it)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def ratios(cai: dict[str, Any], trl: dict[str, Any]) -> dict[str, float]:
    return {"time": cai["seconds_per_step"] / trl["seconds_per_step"],
            "memory": cai["peak_rss_mib"] / trl["peak_rss_mib"]}


def print_stage(stage: str, entry: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n{stage}: model {args.model}, {args.steps} steps, batch {args.batch_size}, "
          f"max length {args.max_length}, data {entry['data']} ({entry['rows']} rows)")
    print(f"{'side':<6}{'s/step':>10}{'peak RSS MiB':>15}{'kernel %':>10}{'minor faults':>14}{'steps':>7}")
    for side in SIDES:
        r = entry[side]
        print(f"{side:<6}{r['seconds_per_step']:>10.2f}{r['peak_rss_mib']:>15.0f}{100 * r['kernel_share']:>10.1f}"
              f"{r['minor_faults']:>14}{r['steps']:>7}")
    ratio = entry["ratio"]
    print(f"ratio cai/trl: time {ratio['time']:.2f}x, memory {ratio['memory']:.2f}x "
          f"(targets <= {TARGETS['time']}x, <= {TARGETS['memory']}x)", flush=True)


# --- child: one side ------------------------------------------------------------------------------------------

def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Train one side in this process; timing plus this process's own resource usage."""
    import resource

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    runner = run_cai if args.side == "cai" else run_trl
    with tempfile.TemporaryDirectory(prefix=f"train-step-{args.stage}-{args.side}-") as work:
        seconds, steps, extra = runner(args.stage, args.data, Path(work), args)
        usage = resource.getrusage(resource.RUSAGE_SELF)  # before the scratch directory is deleted
    cpu = usage.ru_utime + usage.ru_stime
    return {"side": args.side, "stage": args.stage, "seconds": seconds, "steps": steps,
            "seconds_per_step": seconds / max(steps, 1), "ru_maxrss_kib": usage.ru_maxrss,
            "user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime,
            "kernel_share": usage.ru_stime / cpu if cpu else 0.0, "minor_faults": usage.ru_minflt, **extra}


def learning_rate(stage: str) -> float:
    """cai's default learning rate for ``stage``; both sides train with it."""
    from cai.train.dpo import DPOOptions
    from cai.train.sft import SFTOptions

    return (SFTOptions() if stage == "sft" else DPOOptions()).learning_rate


def load_model(spec: str, bf16: bool = False):
    """The model in fp32 (as both sides train it unless ``--cai-dtype bf16``: then in bf16, as cai loads it)."""
    import torch

    from cai.models import load_causal_lm, resolve

    return load_causal_lm(resolve(spec), dtype=torch.bfloat16 if bf16 else torch.float32)


def run_cai(stage: str, data: Path, work: Path, args: argparse.Namespace) -> tuple[float, int, dict[str, Any]]:
    """Seconds of the whole stage call (it loads the model, trains and saves it) and its optimizer steps."""
    train, options = cai_stage(stage, args)
    started = time.perf_counter()
    out = train(data, work / "model", model=args.model, options=options)
    steps = card_steps(Path(out)) or args.steps
    return time.perf_counter() - started, steps, {"options": options.model_dump(mode="json")}


def cai_stage(stage: str, args: argparse.Namespace):
    """The stage function and its options at the benchmark's sizes."""
    sizes = {"max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
             "learning_rate": learning_rate(stage), "dtype": args.cai_dtype,
             **json.loads(args.cai_options or "{}")}  # --cai-options win (e.g. LoRA's own learning rate)
    if stage == "sft":
        from cai.train.sft import SFTOptions, train_sft

        return train_sft, SFTOptions(**sizes)
    from cai.train.dpo import DPOOptions, train_dpo

    return train_dpo, DPOOptions(**sizes)


def card_steps(out: Path) -> int | None:
    """``metrics.steps`` of the model card a stage writes, if it is there."""
    try:
        return int(json.loads((out / "cai_model.json").read_text())["metrics"]["steps"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def run_trl(stage: str, data: Path, work: Path, args: argparse.Namespace) -> tuple[float, int, dict[str, Any]]:
    """Seconds from loading the model to "training finished" with TRL's trainer, and its optimizer steps."""
    from cai.models import load_tokenizer, resolve

    started = time.perf_counter()
    tokenizer = load_tokenizer(resolve(args.model))
    rows = trl_rows(stage, data)
    model = load_model(args.model)
    trainer = trl_trainer(stage, model, tokenizer, rows, work, args)
    result = trainer.train()
    return time.perf_counter() - started, result.global_step, {}


def trl_rows(stage: str, data: Path) -> list[dict[str, Any]]:
    """The rows cai trains on: prompt/completion for SFT, prompt/chosen/rejected for DPO."""
    if stage == "sft":
        from cai.train.data import read_sft_data

        return read_sft_data(data).rows
    from cai.train.data import read_preference_pairs
    from cai.train.dpo import DPOOptions, hard_label_pairs

    return hard_label_pairs(read_preference_pairs(data).rows, DPOOptions().min_confidence)


def trl_trainer(stage: str, model, tokenizer, rows: list[dict[str, Any]], work: Path, args: argparse.Namespace):
    """TRL's trainer with its defaults, except the sizes and what a CPU run needs (see the module docstring)."""
    from datasets import Dataset

    config = dict(output_dir=str(work / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                  max_length=args.max_length, learning_rate=learning_rate(stage), bf16=False, report_to="none",
                  save_strategy="no", logging_steps=1, seed=0)
    dataset = Dataset.from_list(rows)
    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer(model=model, args=SFTConfig(**config), train_dataset=dataset, processing_class=tokenizer)
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer(model=model, ref_model=None, args=DPOConfig(**config), train_dataset=dataset,
                      processing_class=tokenizer)


if __name__ == "__main__":
    main()
