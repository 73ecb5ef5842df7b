"""``cai generate`` (a model's answers to prompts, resumable) and ``cai chat`` (talk to a model)."""

from __future__ import annotations

from pathlib import Path

import typer

MODEL_HELP = ("embedded name, local model dir (e.g. `cai sft` output), .gguf file, Hub id or openai:MODEL@URL "
              "(a model on an OpenAI-compatible server)")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("chat")(chat)


def generate(
    prompts: str = typer.Argument(..., help="prompt file (.jsonl/.csv/.txt), a shipped set (redteam, helpful, "
                                            "mixed) or a Hugging Face dataset (hf:owner/name)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for generations.jsonl (re-running resumes)"),
    model: str = typer.Option("smollm2-135m", help=MODEL_HELP),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="token budget of each answer"),
    limit: int = typer.Option(None, help="use only the first N prompts"),
    temperature: float = typer.Option(0.7, help="sampling temperature (0 = greedy)"),
    top_p: float = typer.Option(0.95, "--top-p"),
    seed: int = typer.Option(0),
    system_prompt: str = typer.Option(None, "--system-prompt", help="a system turn before each prompt"),
    batch_size: int = typer.Option(64, "--batch-size", help="prompts generated (and written) together"),
    column: str = typer.Option(None, help="prompt column for CSV/JSONL/datasets"),
    split: str = typer.Option("train", help="dataset split for Hugging Face datasets"),
    dtype: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU has it) | fp32 | bf16 | fp16"),
) -> None:
    """Answer each prompt with a model: DIR/generations.jsonl (id, prompt, response, provenance)."""
    from cai.backends import load_backend, model_identity
    from cai.generation import generate_file
    from cai.logs import setup_console
    from cai.prompts import prompts_for_run
    from cai.runs import check_or_record

    setup_console()
    params = _sampling(max_new_tokens, temperature, top_p, seed)
    rows = prompts_for_run(prompts, out, column=column, split=split, limit=limit)
    answered = out / "generations.jsonl"
    check_or_record(out, "generate", {"model": model_identity(model), "prompts": prompts,
                                      "sampling": params.to_dict(), "system_prompt": system_prompt},
                    started=answered.is_file() and answered.stat().st_size > 0)
    backend = load_backend(model, dtype=dtype, batch_size=batch_size)
    summary = generate_file(rows, out, backend, params, system_prompt=system_prompt, chunk_size=batch_size)
    typer.echo(f"{summary['written']} answers written to {answered} ({summary['resumed']} already there, "
               f"{summary['generated_tokens']} tokens generated)")


def chat(
    model: str = typer.Option("smollm2-135m", help=MODEL_HELP),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="token budget of each reply"),
    temperature: float = typer.Option(0.7, help="sampling temperature (0 = greedy)"),
    top_p: float = typer.Option(0.95, "--top-p"),
    seed: int = typer.Option(0),
    system_prompt: str = typer.Option(None, "--system-prompt", help="a system turn to start the conversation"),
    dtype: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16"),
) -> None:
    """Talk to a model: one message per line on stdin (/reset starts over, /exit or Ctrl-D ends)."""
    import sys

    from cai.backends import load_backend
    from cai.generation import chat as converse

    backend = load_backend(model, dtype=dtype)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(f"chatting with {backend.model_id} (/reset starts over, /exit or Ctrl-D ends)")
    converse(backend, _sampling(max_new_tokens, temperature, top_p, seed), sys.stdin, sys.stdout,
             system_prompt=system_prompt, prompt_mark="> " if interactive else "")


def _sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int):
    from cai.backends.base import SamplingParams
    from cai.errors import ConfigError

    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError("--max-new-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]",
                          fix="check those options")
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          do_sample=temperature > 0, seed=seed)
