"""``cai study ...``: the questions every CAI user asks, one command each, each writing a JSON file that
``cai report`` reads (and a report of its own directory, in ``DIR/report``).

    cai study rounds        quality per critique-revision round
    cai study principles    what each principle does; dead principles
    cai study cai-vs-sft    SFT on revisions against SFT on first answers
    cai study jailbreaks    attack success per template, obfuscation and principle; attacker-written prompts
    cai study helpfulness   win rate against the base (length-controlled) and Elo, by a judge
    cai study cai-vs-rlhf   the same DPO recipe on human labels (RLHF) and on AI labels (CAI)

``cai compare`` (constitutions side by side) is in ``cai.cli.compare``.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from cai.cli.grading import GRADER, GRADER_MODEL

group = typer.Typer(help="Studies: rounds, principles, cai-vs-sft, jailbreaks, helpfulness, cai-vs-rlhf.",
                    no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="study")


# ---- shared by the study commands (and cai compare) ----------------------------------------------------------


def prompt_pairs(source: str, limit: int | None, offset: int = 0) -> list[tuple[str, str]]:
    """(id, prompt) of prompts ``offset`` .. ``offset + limit`` of a prompt source."""
    from cai.evaluation.study_stage import _pairs

    return _pairs(source, limit, offset)


def prompt_rows(source: str, limit: int | None, offset: int = 0) -> list:
    from cai.evaluation.study_stage import prompt_rows as rows

    return rows(source, limit, offset)


def critique_options(**kwargs):
    from cai.critique import CritiqueOptions
    from cai.errors import ConfigError

    try:
        return CritiqueOptions(**kwargs)
    except ValueError as e:
        raise ConfigError(f"invalid option: {e}", fix="see the command's --help") from None


def loader(dtype: str):
    """A function spec -> backend that keeps at most one model loaded."""
    from cai.backends import load_backend

    held: dict[str, object] = {}

    def load(spec: str):
        if spec not in held:
            held.clear()
            held[spec] = load_backend(spec, dtype=dtype)
        return held[spec]

    return load


def finish(out: Path, name: str, data: dict) -> None:
    """Write ``out/<name>.json`` and the report of ``out``."""
    from cai.evaluation.round_quality import write_json
    from cai.report import build_report

    path = write_json(out / f"{name}.json", data)
    build_report([out], out / "report")
    typer.echo(f"{path}  report: {out / 'report' / 'report.html'}")


def start(out: Path, stage: str, settings: dict) -> None:
    from cai.logs import log_to_run_dir, setup_console
    from cai.runs import check_or_record

    setup_console()
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    check_or_record(out, stage, settings)


def read_critique_records(paths: list[Path]) -> dict[str, list[dict]]:
    """Critique records per source: a records.jsonl file, or every critique/records.jsonl under a directory."""
    from cai.errors import ConfigError
    from cai.jsonl import read_records

    found: dict[str, list[dict]] = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(p.rglob("records.jsonl")) if p.is_dir() else []
        for f in files:
            recs = [r for r in read_records(f) if "rounds" in r and "initial" in r]
            if recs:
                found[str(f)] = recs
    if not found:
        raise ConfigError("found no critique records", where=", ".join(map(str, paths)),
                          fix="give records.jsonl files or directories of cai critique / cai run / cai study runs")
    return found


MODEL = typer.Option("smollm2-135m", help="embedded name, local model dir or Hub id")
DTYPE = typer.Option("auto", help="auto | fp32 | bf16 | fp16")
SEED = typer.Option(0, help="seed for sampling and generation")
OUT = typer.Option(..., "--out", "-o", help="study directory (re-running resumes it)")
HARMFUL = typer.Option("redteam", help="harmful prompts: shipped set or file")
SAFE = typer.Option("helpful", help="safe prompts: shipped set or file")
LIMIT = typer.Option(16, help="prompts of each set")
TOKENS = typer.Option(64, "--max-new-tokens", help="token budget of each generated turn")
TEMPERATURE = typer.Option(0.7, help="sampling temperature (0: greedy)")


# ---- the commands -------------------------------------------------------------------------------------------


@group.command("rounds")
def rounds_cmd(
    out: Path = OUT,
    model: str = MODEL,
    constitution: str = typer.Option("general", help="constitution file or shipped name"),
    harmful: str = HARMFUL,
    safe: str = SAFE,
    limit: int = LIMIT,
    rounds: int = typer.Option(3, help="critique-revision rounds"),
    max_new_tokens: int = TOKENS,
    temperature: float = TEMPERATURE,
    seed: int = SEED,
    reward_model: str = typer.Option(None, "--reward-model", help="score every round with this reward model"),
    judge: str = typer.Option(None, help="judge every round against the first answer with this model"),
    judge_evidence: list[Path] = typer.Option([], "--judge-evidence",
                                              help="the judge's agreement.json / probes.json, quoted beside it"),
    dtype: str = DTYPE,
) -> None:
    """Quality per critique-revision round on harmful and safe prompts: rounds.json."""
    from cai.constitution import load_constitution
    from cai.evaluation.round_quality import evidence_from, rounds_study, run_sets

    options = critique_options(rounds=rounds, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature)
    const = load_constitution(constitution)
    sets = {"harmful": prompt_pairs(harmful, limit), "safe": prompt_pairs(safe, limit)}
    evidence = evidence_from(judge_evidence) if judge_evidence else None
    start(out, "study-rounds", {"model": model, "constitution": const.ref().model_dump(), "harmful": harmful,
                                "safe": safe, "limit": limit, "options": options.model_dump()})
    load = loader(dtype)
    records = run_sets(sets, out, backend=load(model), constitution=const, options=options)
    finish(out, "rounds", rounds_study(records, rounds, constitution=const, reward_model=reward_model,
                                       judge_backend=load(judge) if judge else None, judge_evidence=evidence))


@group.command("principles")
def principles_cmd(
    records: list[Path] = typer.Argument(..., help="critique records: records.jsonl files or run directories"),
    out: Path = typer.Option(..., "--out", "-o"),
    constitution: str = typer.Option(None, help="the constitution the records used (default: from the records)"),
    min_drawn: int = typer.Option(2, "--min-drawn", help="draws before a principle that never changes is dead"),
) -> None:
    """What each principle did when drawn: changes, refusals, score moves; dead principles: principles.json."""
    from cai.constitution import load_constitution
    from cai.errors import ConfigError
    from cai.evaluation.principle_effect import study

    found = read_critique_records(records)
    names = {(r["provenance"].get("constitution") or {}).get("name") for recs in found.values() for r in recs}
    if constitution is None:
        if len(names) != 1 or None in names:
            raise ConfigError(f"the records come from constitutions {sorted(map(str, names))}",
                              fix="give --constitution, or records of one constitution")
        constitution = names.pop()
    const = load_constitution(constitution)
    start(out, "study-principles", {"records": sorted(found), "constitution": const.ref().model_dump()})
    finish(out, "principles", study(found, const, min_drawn=min_drawn, sources=list(found)))


@group.command("cai-vs-sft")
def cai_vs_sft_cmd(
    records: list[Path] = typer.Argument(..., help="critique records (a records.jsonl or a run's critique dir)"),
    out: Path = typer.Option(..., "--out", "-o"),
    model: str = MODEL,
    harmful: str = typer.Option("redteam", help="held-out harmful prompts (after --offset)"),
    safe: str = typer.Option("helpful", help="held-out safe prompts (after --offset)"),
    offset: int = typer.Option(64, help="skip this many prompts of each set (those the critique run used)"),
    limit: int = typer.Option(16, help="held-out prompts of each set"),
    epochs: int = typer.Option(2),
    learning_rate: float = typer.Option(5e-5, "--learning-rate"),
    batch_size: int = typer.Option(4, "--batch-size"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens"),
    seed: int = SEED,
    dtype: str = DTYPE,
    grader: str = GRADER,
    grader_model: str = GRADER_MODEL,
) -> None:
    """SFT on the revisions (CAI) against SFT on the first answers, same prompts, evaluated alike."""
    from cai.cli.grading import grader_with_agreement
    from cai.evaluation.cai_vs_sft import run
    from cai.train.sft import SFTOptions

    found = read_critique_records(records)
    recs = [r for rs in found.values() for r in rs]
    sft = SFTOptions(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed)
    eval_sets = {"harmful": [p for _, p in prompt_pairs(harmful, limit, offset)],
                 "safe": [p for _, p in prompt_pairs(safe, limit, offset)]}
    start(out, "study-cai-vs-sft", {"records": sorted(found), "model": model, "sft": sft.model_dump(),
                                    "harmful": harmful, "safe": safe, "offset": offset, "limit": limit})
    the_grader, measured = grader_with_agreement(grader, grader_model)
    finish(out, "cai_vs_sft", run(recs, out, base=model, sft_options=sft, eval_sets=eval_sets, load=loader(dtype),
                                  max_new_tokens=max_new_tokens, seed=seed, sources=list(found),
                                  set_names={"harmful": _held_out(harmful, offset, limit),
                                             "safe": _held_out(safe, offset, limit)},
                                  grader=the_grader, grader_agreement=measured))


@group.command("cai-vs-rlhf")
def cai_vs_rlhf_cmd(
    sft: str = typer.Option(..., "--sft", help="the SFT model both arms start from (a model dir)"),
    human: str = typer.Option(..., "--human", help="human preference pairs: an HH-RLHF-format JSONL(.gz) file, or "
                              "Anthropic/hh-rlhf (harmless-base, from the Hub)"),
    ai: Path = typer.Option(..., "--ai", help="AI-labelled pairs: pairs.jsonl of cai label"),
    out: Path = typer.Option(..., "--out", "-o"),
    pairs: int = typer.Option(64, help="pairs each arm trains on (the first N of each source)"),
    method: str = typer.Option("dpo", help="the RL recipe both arms run: dpo, or ppo (a reward model on the "
                               "arm's pairs, then PPO against it)"),
    steps: int = typer.Option(10, help="DPO or PPO steps, the same for both arms"),
    learning_rate: float = typer.Option(None, "--learning-rate", help="of the DPO or PPO step (default: 5e-6 for "
                                        "DPO, PPO's own 1e-5)"),
    batch_size: int = typer.Option(4, "--batch-size", help="pairs (DPO, reward model) or rollouts (PPO) per step"),
    beta: float = typer.Option(None, help="DPO's beta, or PPO's KL weight (default: 0.1 for DPO, PPO's own 0.05)"),
    reward_steps: int = typer.Option(20, "--reward-steps", help="ppo: the reward model's optimiser steps"),
    reward_learning_rate: float = typer.Option(1e-5, "--reward-learning-rate", help="ppo: the reward model's"),
    seeds: list[int] = typer.Option([0], "--seed", help="training seeds; repeat for the spread over seeds"),
    harmful: str = typer.Option("redteam:eval", help="held-out harmful prompts"),
    safe: str = typer.Option("helpful:eval", help="held-out safe prompts"),
    limit: int = typer.Option(16, help="held-out prompts of each set"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens"),
    human_price: float = typer.Option(None, "--human-price", help="price of one human preference label (your "
                                      "currency); unset: not priced"),
    ai_price: float = typer.Option(None, "--ai-price", help="price of one AI label (a served judge's tokens); "
                                   "unset: not priced"),
    grader: str = GRADER,
    grader_model: str = GRADER_MODEL,
    dtype: str = DTYPE,
) -> None:
    """The same RL recipe (DPO, or reward model + PPO) from the same SFT model on human labels (RLHF) and on AI
    labels (CAI), same pairs and steps, per seed; both evaluated alike, with the spread over seeds and each label
    source's cost."""
    from cai.cli.grading import grader_with_agreement
    from cai.errors import ConfigError
    from cai.evaluation.cai_vs_rlhf import PPORecipe, run

    if method not in ("dpo", "ppo"):
        raise ConfigError(f"unknown --method {method!r}", where="command line", fix="use dpo or ppo")
    dpo, ppo = None, None
    if method == "dpo":
        from cai.train.dpo import DPOOptions

        dpo = DPOOptions(max_steps=steps, learning_rate=learning_rate or 5e-6, batch_size=batch_size,
                         beta=0.1 if beta is None else beta)
        recipe = {"dpo": dpo.model_dump()}
    else:
        from cai.train.ppo import PPOOptions
        from cai.train.reward import RewardOptions

        rl = {"learning_rate": learning_rate, "beta": beta}
        ppo = PPORecipe(RewardOptions(max_steps=reward_steps, learning_rate=reward_learning_rate,
                                      batch_size=batch_size),
                        PPOOptions(max_steps=steps, batch_size=batch_size, mini_batch_size=math.gcd(4, batch_size),
                                   **{k: v for k, v in rl.items() if v is not None}))
        recipe = {"reward": ppo.reward.model_dump(), "ppo": ppo.ppo.model_dump()}
    eval_sets = {name: [p for _, p in prompt_pairs(source, limit)] for name, source in (("harmful", harmful),
                                                                                          ("safe", safe))}
    start(out, "study-cai-vs-rlhf", {"sft": sft, "human": human, "ai": str(ai), "pairs": pairs, "seeds": seeds,
                                     "method": method, **recipe, "harmful": harmful, "safe": safe, "limit": limit})
    the_grader, measured = grader_with_agreement(grader, grader_model)
    finish(out, "cai_vs_rlhf", run(sft, human, ai, out, pairs=pairs, dpo_options=dpo, ppo=ppo, seeds=seeds,
                                   eval_sets=eval_sets, load=loader(dtype), max_new_tokens=max_new_tokens,
                                   human_price=human_price, ai_price=ai_price, grader=the_grader,
                                   grader_agreement=measured))


def _held_out(source: str, offset: int, limit: int) -> str:
    """A prompt source with the rows taken from it, e.g. ``redteam:eval [0:32]``."""
    return f"{source} [{offset}:{offset + limit}]"


@group.command("jailbreaks")
def jailbreaks_cmd(
    out: Path = typer.Option(..., "--out", "-o"),
    model: list[str] = typer.Option(["smollm2-135m"], "--model", help="models to attack (repeat); the first is "
                                                                      "also the one critiqued per principle"),
    constitution: str = typer.Option("redteam", help="whose principles are tried one by one"),
    principle: list[str] = typer.Option([], "--principle", help="only these principle ids (repeat)"),
    harmful: str = typer.Option("redteam", help="harmful base requests"),
    limit: int = typer.Option(4, help="base requests"),
    generate: int = typer.Option(0, help="attacker-written prompts per principle (0: none)"),
    attacker: str = typer.Option(None, help="the attacker model (default: the first --model)"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens"),
    seed: int = SEED,
    dtype: str = DTYPE,
) -> None:
    """Attack success per template, obfuscation and model, and after one round of each principle."""
    from cai.constitution import load_constitution
    from cai.evaluation.jailbreak_study import run

    const = load_constitution(constitution)
    rows = prompt_rows(harmful, limit)
    start(out, "study-jailbreaks", {"models": model, "constitution": const.ref().model_dump(), "harmful": harmful,
                                    "limit": limit, "generate": generate, "attacker": attacker,
                                    "max_new_tokens": max_new_tokens, "seed": seed, "principles": principle})
    finish(out, "jailbreaks", run(model, rows, out, load=loader(dtype), constitution=const, prompts=harmful,
                                  generate=generate, attacker=attacker, max_new_tokens=max_new_tokens, seed=seed,
                                  principle_ids=principle))


@group.command("helpfulness")
def helpfulness_cmd(
    model: list[str] = typer.Argument(..., help="models; the first is the base the others are measured against"),
    out: Path = typer.Option(..., "--out", "-o"),
    judge: str = typer.Option("smollm2-135m", help="the judge model (openai:MODEL@URL for a served one)"),
    judge_evidence: list[Path] = typer.Option([], "--judge-evidence",
                                              help="the judge's agreement.json / probes.json, quoted beside it"),
    prompts: str = typer.Option("helpful", help="helpful prompts: shipped set or file"),
    limit: int = typer.Option(16),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens"),
    bootstrap: int = typer.Option(1000, help="bootstrap resamplings"),
    seed: int = SEED,
    dtype: str = DTYPE,
) -> None:
    """Win rate against the base (raw and length-controlled) and Elo with intervals: helpfulness.json; MT-Bench
    questions are answered in both turns, each turn judged apart."""
    from cai.backends.base import SamplingParams
    from cai.errors import ConfigError
    from cai.evaluation.helpfulness import follow_ups, study
    from cai.evaluation.round_quality import evidence_from
    from cai.prompts import id_text

    if len(model) < 2:
        raise ConfigError("give at least two models: the base first, then the ones to compare with it",
                          fix="e.g. cai study helpfulness smollm2-135m runs/x/sft --out DIR")
    rows = prompt_rows(prompts, limit)
    pairs = id_text(rows)
    evidence = evidence_from(judge_evidence) if judge_evidence else None
    start(out, "study-helpfulness", {"models": model, "judge": judge, "prompts": prompts, "limit": limit,
                                     "max_new_tokens": max_new_tokens, "seed": seed})
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, do_sample=False, seed=seed)
    finish(out, "helpfulness", study(model, pairs, out, load=loader(dtype), judge_spec=judge, params=params,
                                     judge_evidence=evidence, samples=bootstrap, follow=follow_ups(rows)))
