"""``cai critique``: SL-CAI critique-revision over a prompt set."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.workers import RAY, WORKERS


def register(app: typer.Typer) -> None:
    app.command("critique")(critique)


def critique(
    prompts: str = typer.Argument(..., help="prompt file (.jsonl/.csv/.txt), a shipped set (redteam, helpful, "
                                            "mixed) or a Hugging Face dataset (hf:owner/name)"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (re-running resumes it)"),
    constitution: str = typer.Option("general", help="constitution YAML file or shipped name"),
    model: str = typer.Option("smollm2-135m", help="embedded name, local model dir, .gguf file, Hub id or "
                                                   "openai:MODEL@URL (a model on an OpenAI-compatible server)"),
    rounds: int = typer.Option(4, help="critique-revision rounds per prompt"),
    limit: int = typer.Option(None, help="use only the first N prompts"),
    seed: int = typer.Option(0, help="seed for principle sampling and generation"),
    max_new_tokens: int = typer.Option(192, "--max-new-tokens", help="token budget of each generated turn"),
    batch_size: int = typer.Option(64, "--batch-size", help="prompts generated together (and written together)"),
    temperature: float = typer.Option(0.7, help="sampling temperature (0 = greedy)"),
    strategy: str = typer.Option("random", help="principle sampling: random (the paper) or round-robin"),
    few_shot: int = typer.Option(0, "--few-shot", help="show this many of the constitution's examples first"),
    early_stop: bool = typer.Option(False, "--early-stop", help="stop rounds once a critique finds nothing"),
    column: str = typer.Option(None, help="prompt column for CSV/JSONL/datasets"),
    split: str = typer.Option("train", help="dataset split for Hugging Face datasets"),
    dtype: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU has it) | fp32 | bf16 | fp16"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="allow model code from the Hub"),
    workers: int = WORKERS,
    ray: str = RAY,
) -> None:
    """Answer, critique against sampled principles, revise; write records.jsonl and sft.jsonl."""
    import logging
    import time

    from cai.constitution import load_constitution
    from cai.critique import CritiqueOptions, run_critique
    from cai.errors import ConfigError
    from cai.fanout import Fanout
    from cai.logs import setup_console
    from cai.prompts import id_text, prompts_for_run
    from cai.runs import check_or_record

    setup_console()
    log = logging.getLogger("cai.critique")
    try:
        options = CritiqueOptions(rounds=rounds, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                                  strategy=strategy, few_shot=few_shot, early_stop=early_stop, chunk_size=batch_size)
    except ValueError as e:
        raise ConfigError(f"invalid option: {e}", fix="see `cai critique --help`") from None
    const = load_constitution(constitution)
    rows = prompts_for_run(prompts, out, column=column, split=split, limit=limit, logger=log)
    from cai.backends import model_identity

    check_or_record(out, "critique", {"model": model_identity(model), "constitution": const.ref().model_dump(),
                                      "prompts": prompts, "options": options.model_dump(exclude={"chunk_size"})},
                    started=(out / "records.jsonl").is_file() and (out / "records.jsonl").stat().st_size > 0)
    t0 = time.time()
    backend = Fanout(workers, ray).load(model, dtype=dtype, batch_size=batch_size, trust_remote_code=trust_remote_code)
    summary = run_critique(id_text(rows), out, backend=backend, constitution=const,
                           options=options)
    wall = time.time() - t0
    log.info("critique done in %.0fs: %d records (%d usable for SFT), %d generated tokens", wall,
             summary["records"], summary["sft_usable"], summary["generated_tokens"])
    typer.echo(f"records: {out / 'records.jsonl'}  sft data: {out / 'sft.jsonl'}")
