"""``cai grpo``: RLAIF with TRL's GRPO or RLOO trainer, a reward model or the judge as the reward."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("grpo")(grpo)


def grpo(
    prompts: str = typer.Argument(..., help="prompts: a .jsonl/.csv/.txt file, a shipped set or hf:name"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory: policy/, metrics.jsonl, checkpoints/"),
    reward: str = typer.Option(None, "--reward-model", help="reward model directory from `cai reward`"),
    judge: str = typer.Option(None, "--judge", help="or: a judge model (embedded name, dir, .gguf, Hub id or "
                              "openai:MODEL@URL) scoring under --constitution"),
    constitution: str = typer.Option("general", help="constitution the judge scores under"),
    policy: str = typer.Option("smollm2-135m", help="policy to start from (e.g. `cai sft` output)"),
    algorithm: str = typer.Option(None, help="grpo (group-normalised advantages) | rloo (leave-one-out) "
                                  "[default: grpo]"),
    steps: int = typer.Option(None, "--steps", help="optimiser steps [default: 8]"),
    num_generations: int = typer.Option(None, "--num-generations", help="completions per prompt [default: 4]"),
    batch_size: int = typer.Option(None, "--batch-size", help="completions per device step [default: 4]"),
    grad_accum: int = typer.Option(None, "--grad-accum", help="steps to accumulate per update [default: 1]"),
    lr: float = typer.Option(None, "--lr", help="learning rate [default: 1e-6]"),
    beta: float = typer.Option(None, help="KL weight towards the starting policy [default: 0.04]"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="completion length cap [default: 48]"),
    temperature: float = typer.Option(None, help="sampling temperature [default: 0.7]"),
    principles: str = typer.Option(None, help="judge: single | ensemble [default: ensemble]"),
    use_vllm: bool = typer.Option(False, "--vllm", help="generate with vLLM (GPUs; TRL's vllm extra)"),
    save_every: int = typer.Option(None, "--save-every", help="checkpoint every N steps; a re-run resumes"),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters, merged into the saved policy"),
    dtype: str = typer.Option(None, help="auto (fp32 + bf16 autocast on GPUs) | fp32 | bf16"),
    seed: int = typer.Option(None, help="random seed [default: 0]"),
    limit: int = typer.Option(None, help="use only the first N prompts"),
) -> None:
    """Optimise a policy with TRL's GRPO/RLOO, scored by a cai reward model or the constitution's judge."""
    from cai.errors import ConfigError
    from cai.logs import setup_console
    from cai.prompts import load_prompts, log_bad_rows
    from cai.train.grpo import OnlineRLOptions, train_online
    from cai.train.options import options_from_cli

    setup_console()
    if (reward is None) == (judge is None):
        raise ConfigError("give exactly one of --reward-model DIR and --judge MODEL", where="command line",
                          fix="e.g. --reward-model runs/rm, or --judge smollm2-135m --constitution general")
    options = options_from_cli(
        OnlineRLOptions, algorithm=algorithm, max_steps=steps, num_generations=num_generations,
        batch_size=batch_size, grad_accum=grad_accum, learning_rate=lr, beta=beta, max_new_tokens=max_new_tokens,
        temperature=temperature, judge_principles=principles, use_vllm=use_vllm or None, save_every=save_every,
        lora=lora or None, dtype=dtype, seed=seed, reward="judge" if judge else "reward_model",
    )
    rows, bad = load_prompts(prompts, limit=limit)
    log_bad_rows(bad)
    path = train_online([r.prompt for r in rows], out, reward or judge, policy=policy, options=options,
                        constitution=constitution)
    typer.echo(f"{options.algorithm.upper()} policy written to {path} (rewards per step in {out / 'metrics.jsonl'})")
