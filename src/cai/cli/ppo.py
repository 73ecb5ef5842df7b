"""``cai ppo``: RLAIF by PPO against a reward model from ``cai reward``, with a KL penalty to the start."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("ppo")(ppo)


def ppo(
    prompts: str = typer.Argument(..., help="prompts: a .jsonl/.csv/.txt file, a shipped set or hf:name"),
    reward_model: Path = typer.Option(..., "--reward-model", help="reward model directory from `cai reward`"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (re-run to resume from its checkpoint)"),
    policy: str = typer.Option("smollm2-135m", help="policy to start from: embedded name, local dir (e.g. "
                               "`cai sft` output), .gguf or Hub id"),
    max_steps: int = typer.Option(None, "--max-steps", help="PPO steps (default 8)"),
    beta: float = typer.Option(None, "--beta", help="the KL penalty weight (default 0.05)"),
    batch_size: int = typer.Option(None, "--batch-size", help="rollouts per step (default 8)"),
    mini_batch_size: int = typer.Option(None, "--mini-batch-size", help="rollouts per update (default 4)"),
    micro_batch_size: int = typer.Option(None, "--micro-batch-size", help="rollouts per forward/backward pass, "
                                         "a divisor of --mini-batch-size (default: the largest that fits in "
                                         "memory)"),
    ppo_epochs: int = typer.Option(None, "--ppo-epochs", help="passes over each batch (default 2)"),
    lr: float = typer.Option(None, "--lr", help="learning rate (default 1e-5)"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="response length cap (default 48)"),
    temperature: float = typer.Option(None, help="sampling temperature (default 0.7)"),
    sl_data: Path = typer.Option(None, "--sl-data", help="SL-CAI data (sft.jsonl) mixed into each update"),
    sl_coef: float = typer.Option(None, "--sl-coef", help="weight of the SL loss: L = L_RL + A * L_SL "
                                  "(default 0: no SL term)"),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters; the reference is the base model"),
    adaptive_kl: bool = typer.Option(False, "--adaptive-kl", help="adapt beta towards --target-kl"),
    target_kl: float = typer.Option(None, "--target-kl", help="target KL per response, in nats (default 6)"),
    save_every: int = typer.Option(None, "--save-every", help="checkpoint every N steps (default: at end)"),
    dtype: str = typer.Option(None, help="auto (bf16 compute where the hardware is fast at it) | bf16 | fp32"),
    lean_rollouts: bool = typer.Option(None, "--lean-rollouts/--generate-rollouts",
                                       help="sample rollouts with cai's lean decoder (default, where it supports "
                                       "the policy) or with transformers' generate"),
    seed: int = typer.Option(None, help="random seed (default 0)"),
    limit: int = typer.Option(None, help="use only the first N prompts"),
) -> None:
    """Optimise a policy with PPO against a reward model; writes metrics.jsonl and policy/ in --out."""
    from cai.logs import setup_console
    from cai.prompts import load_prompts, log_bad_rows
    from cai.train.options import options_from_cli
    from cai.train.ppo import PPOOptions, train_ppo

    setup_console()
    options = options_from_cli(
        PPOOptions, max_steps=max_steps, beta=beta, batch_size=batch_size, mini_batch_size=mini_batch_size,
        micro_batch_size=micro_batch_size, ppo_epochs=ppo_epochs, learning_rate=lr, max_new_tokens=max_new_tokens,
        temperature=temperature, sl_coef=sl_coef, lora=lora or None, adaptive_kl=adaptive_kl or None,
        target_kl=target_kl, save_every=save_every, dtype=dtype, seed=seed, lean_rollouts=lean_rollouts,
    )
    rows, bad = load_prompts(prompts, limit=limit)
    log_bad_rows(bad)
    policy_dir = train_ppo([r.prompt for r in rows], reward_model, out, policy=policy, options=options,
                           sl_data=sl_data)
    typer.echo(f"PPO policy written to {policy_dir} (metrics in {out / 'metrics.jsonl'})")
