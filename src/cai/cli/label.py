"""``cai label``: RLAIF preference labels (pairs.jsonl), or the judge's agreement with human labels."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from cai.cli.workers import RAY, WORKERS

EMBEDDED = "smollm2-135m"
PROBE_MAX_NEW_TOKENS = 96  # probe replies: long enough to show whether the policy complies


def register(app: typer.Typer) -> None:
    app.command("label")(label)


def label(
    prompts: str = typer.Argument(None, help="prompts to sample pairs for: a shipped set (redteam, helpful, "
                                             "mixed), a .jsonl/.csv/.txt file, or hf:owner/name"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (pairs.jsonl or agreement.json)"),
    policy: str = typer.Option(EMBEDDED, help="model that writes the responses"),
    judge: str = typer.Option(EMBEDDED, help="model that labels them (loaded once if equal to --policy)"),
    constitution: str = typer.Option("general", help="constitution file or shipped name"),
    samples: int = typer.Option(2, "--samples", "-k", help="responses per prompt; all pairs are judged"),
    limit: int = typer.Option(None, help="use only the first N prompts (or human pairs)"),
    seed: int = typer.Option(0, help="sampling and principle-choice seed"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="length limit of each sampled response"),
    principles: str = typer.Option("single", help="single: one sampled principle per pair (the paper); "
                                                  "ensemble: average several"),
    ensemble_size: int = typer.Option(4, "--ensemble-size", help="principles averaged per pair (ensemble)"),
    cot: bool = typer.Option(False, "--cot", help="judge reasons first; probabilities clamped to [0.4, 0.6]"),
    few_shot: bool = typer.Option(False, "--few-shot", help="show the judge two worked examples first"),
    mode: str = typer.Option(None, help="pairwise (multiple choice, both orders) or pointwise (each response "
                                        "scored alone); default: the measured best, see `cai.feedback.judge`"),
    calibrate: str = typer.Option(None, help="slot-prior calibration: none, content-free or swap"),
    length_control: bool = typer.Option(None, "--length-control/--no-length-control",
                                        help="take the judge's preference for longer answers out"),
    agreement: Path = typer.Option(None, "--agreement", help="human-labelled pairs (JSONL or CSV): measure "
                                   "the judge's agreement with them instead of labelling prompts"),
    sweep: bool = typer.Option(False, "--sweep", help="with --agreement: measure every judge configuration "
                               "side by side (sweep.json, sweep.md)"),
    from_critique: Path = typer.Option(None, "--from-critique", help="preferences by construction, no judge: "
                                       "each revision of this `cai critique` run over its initial answer"),
    p_constructed: float = typer.Option(0.9, "--p-constructed", help="p_chosen of constructed pairs"),
    compare_judge: list[str] = typer.Option(None, "--compare-judge", help="with --sweep: a further judge to "
                                            "measure (model or reward-model directory); repeatable"),
    probe: bool = typer.Option(False, "--probe", help="measure the judge on label-free probe pairs built from "
                               "the policy's replies to the shipped prompts: refusal, over-refusal, "
                               "relevance (see cai.feedback.probes)"),
    dtype: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU has it) | fp32 | bf16 | fp16; local "
                              "models only"),
    workers: int = WORKERS,
    ray: str = RAY,
) -> None:
    """Sample response pairs and label them with the AI judge in both orders (or measure agreement)."""
    from cai.errors import ConfigError
    from cai.logs import setup_console

    setup_console()
    if sum(x is not None for x in (prompts, agreement, from_critique)) + probe != 1:
        raise ConfigError("give exactly one of PROMPTS, --agreement FILE, --probe or --from-critique DIR",
                          where="cai label",
                          fix="`cai label PROMPTS --out DIR` labels new pairs; "
                              "`cai label --agreement FILE --out DIR` scores the judge on human pairs; "
                              "`cai label --probe --out DIR` scores it on label-free probe pairs; "
                              "`cai label --from-critique DIR --out DIR` builds pairs from revisions")
    if (workers or ray) and prompts is None:
        raise ConfigError("--workers and --ray fan out the labelling of PROMPTS only", where="cai label",
                          fix="leave them out with --agreement, --probe or --from-critique")
    if from_critique is not None:
        from cai.feedback.constructed import write_constructed

        if not 0.5 <= p_constructed <= 1.0:
            raise ConfigError(f"--p-constructed must be in [0.5, 1], got {p_constructed}", where="cai label",
                              fix="use e.g. 0.9")
        summary = write_constructed(from_critique, out, p_constructed)
        typer.echo(f"{summary['pairs']} constructed pairs written to {out / 'pairs.jsonl'} "
                   f"({summary['records_without_pair']} records without a usable revision)")
        return
    from cai.feedback.judge import JudgeConfig

    given = {"mode": mode, "calibrate": calibrate, "length_control": length_control}
    judge_config = _validated(JudgeConfig, principles=principles, ensemble_size=ensemble_size, cot=cot,
                              few_shot=few_shot, **{k: v for k, v in given.items() if v is not None})
    the_constitution = _constitution(constitution)
    if the_constitution.templates and the_constitution.templates.judge:
        judge_config = judge_config.model_copy(update={"template": the_constitution.templates.judge})
    if (sweep or compare_judge) and agreement is None and not probe:
        raise ConfigError("--sweep and --compare-judge measure judges on human labels or probes",
                          where="cai label", fix="add --agreement FILE or --probe")
    if probe:
        _probe(out, policy, [judge, *(compare_judge or [])], the_constitution, judge_config, limit=limit,
               seed=seed, max_new_tokens=min(max_new_tokens, PROBE_MAX_NEW_TOKENS), sweep=sweep, dtype=dtype)
    elif sweep:
        _sweep(agreement, out, [judge, *(compare_judge or [])], the_constitution, judge_config, limit=limit,
               seed=seed, dtype=dtype)
    elif agreement is not None:
        _agreement(agreement, out, judge, the_constitution, judge_config, limit=limit, seed=seed, dtype=dtype)
    else:
        _label(prompts, out, policy, judge, the_constitution, judge_config, limit=limit, seed=seed,
               samples=samples, max_new_tokens=max_new_tokens, dtype=dtype, workers=workers, ray=ray)


def _validated(model, **values):
    """A pydantic config from CLI values; a bad value becomes a ConfigError naming the option."""
    from pydantic import ValidationError

    from cai.errors import ConfigError

    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = "--" + str(err["loc"][-1]).replace("_", "-") if err["loc"] else "options"
        raise ConfigError(f"{field}: {err['msg']}", where="cai label",
                          fix=f"check the value of {field}") from None


def _constitution(name: str):
    from cai.constitution import load_constitution
    from cai.feedback.judge import check_template, judging_principles

    c = load_constitution(name)
    judging_principles(c)  # fail before any model loads
    if c.templates and c.templates.judge:
        check_template(c.templates.judge, where=f"{name}: templates.judge")
    return c


def _load(spec: str, dtype: str = "auto"):
    """A generation backend, or a reward-model scorer when ``spec`` is a saved reward model."""
    from cai.feedback.reward_judge import RewardJudge, is_reward_model_dir

    if is_reward_model_dir(spec):
        return RewardJudge.load(spec)
    from cai.backends import load_backend

    return load_backend(spec, dtype=dtype)


def _agreement(path: Path, out: Path, judge_spec: str, constitution, config, *, limit, seed: int,
               backend=None, show: bool = True, dtype: str = "auto") -> dict:
    import hashlib
    import json

    from cai.feedback import agreement as agr
    from cai.feedback.judge import order_free
    from cai.jsonl import write_atomic, write_jsonl_atomic
    from cai.logs import log_to_run_dir
    from cai.prompts import log_bad_rows

    start = time.perf_counter()
    pairs, bad = agr.read_human_pairs(path, limit=limit)
    log_bad_rows(bad)
    backend = backend or _load(judge_spec, dtype)
    # no check_judge probe first: judging starts at once, a vocabulary without the options fails before the
    # first forward pass, every reading is checked (NaN, no mass) chunk by chunk, and nothing is written
    # before the end. The probe cost a short run ~0.15 s (its own forward pass and first-call set-up)
    judgements = agr.judge_human_pairs(pairs, backend, constitution, config, seed=seed)
    seconds = time.perf_counter() - start
    result = agr.measure(pairs, judgements)
    result["order_free"] = order_free(backend, config)  # one response at a time: no position figures
    result.update({
        "judge": {"model": backend.model_id, "config": config.model_dump(mode="json")},
        "constitution": constitution.ref().model_dump(),
        "source": {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "pairs": len(pairs), "bad_rows": [b.model_dump() for b in bad]},
        "seed": seed,
        "seconds": round(seconds, 2),
        "pairs_per_second": round(len(pairs) / seconds, 3),
    })
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    write_jsonl_atomic(out / "agreement_pairs.jsonl", agr.judgement_rows(pairs, judgements))
    write_atomic(out / "agreement.json", json.dumps(result, indent=2) + "\n")
    logging.getLogger(__name__).info(
        "judge %s agrees with the human labels of %s on %.3f of %d pairs (%.2f pairs/s); details in %s",
        backend.model_id, path, result["agreement"], result["n"], result["pairs_per_second"],
        out / "agreement.json")
    if show:
        _print_agreement(result, out / "agreement.json")
    return result


def _sweep(path: Path, out: Path, judge_specs: list[str], constitution, config, *, limit, seed: int,
           loaded: dict | None = None, what: str | None = None, dtype: str = "auto") -> list[dict]:
    import json

    from cai.feedback import agreement as agr
    from cai.feedback.judge import check_judge
    from cai.jsonl import write_atomic
    from cai.logs import log_to_run_dir
    from cai.prompts import log_bad_rows

    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    pairs, bad = agr.read_human_pairs(path, limit=limit)
    log_bad_rows(bad)
    judges = []
    loaded = {} if loaded is None else loaded
    for spec in judge_specs:
        backend = loaded[spec] = loaded.get(spec) or _load(spec, dtype)
        check_judge(backend, config)
        judges.append((spec, backend))
    rows = []
    for row in agr.run_sweep(pairs, judges, constitution, config, seed=seed):
        rows.append(row)  # written after each configuration, so a long sweep keeps what it measured
        table = agr.sweep_table(rows, len(pairs), *([what] if what else []))
        write_atomic(out / "sweep.json", json.dumps({"source": str(path), "n": len(pairs), "seed": seed,
                                                     "constitution": constitution.ref().model_dump(),
                                                     "rows": rows}, indent=2) + "\n")
        write_atomic(out / "sweep.md", table)
    typer.echo(table)
    typer.echo(f"written to {out / 'sweep.json'} and {out / 'sweep.md'}")
    return rows


def _probe(out: Path, policy_spec: str, judge_specs: list[str], constitution, config, *, limit, seed: int,
           max_new_tokens: int, sweep: bool, dtype: str = "auto") -> None:
    """``cai label --probe``: build the probe pairs (``cai.feedback.probes``) with the policy, then measure the judge
    on each probe as on human labels (or every configuration, with --sweep): DIR/<probe>/, DIR/probes.json."""
    import json

    from cai.backends import load_backend
    from cai.feedback.probes import BETTER, build_probes
    from cai.jsonl import write_atomic, write_jsonl_atomic
    from cai.logs import log_to_run_dir
    from cai.prompts import load_prompts, log_bad_rows

    sets = {}
    for name in ("redteam", "helpful"):
        rows, bad = load_prompts(name, limit=limit)
        log_bad_rows(bad)
        sets[name] = rows
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    policy = load_backend(policy_spec, dtype=dtype)
    probes = build_probes(policy, sets["redteam"], sets["helpful"], max_new_tokens=max_new_tokens, seed=seed)
    loaded = {policy_spec: policy}
    summary: dict = {"policy": policy.model_id, "seed": seed, "probes": {}}
    for name, rows in probes.items():
        path = out / name / "pairs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(path, rows)
        if not rows:
            summary["probes"][name] = {"n": 0, "note": "no usable pair (every policy reply refused or was empty)"}
            continue
        typer.echo(f"probe {name}: {len(rows)} pairs")
        if sweep:
            summary["probes"][name] = {"n": len(rows), "sweep": _sweep(
                path, out / name, judge_specs, constitution, config, limit=None, seed=seed, loaded=loaded, dtype=dtype,
                what=f"`{name}` probe pairs (agreement: the judge prefers the {BETTER[name]})")}
        else:
            spec = judge_specs[0]
            loaded[spec] = loaded.get(spec) or _load(spec, dtype)
            result = _agreement(path, out / name, spec, constitution, config, limit=None, seed=seed,
                                backend=loaded[spec], show=False)
            summary["probes"][name] = {k: result.get(k) for k in (
                "n", "agreement", "position_consistency", "longer_wins_rate", "human_chose_longer_rate")}
            summary["judge"] = result["judge"]
    write_atomic(out / "probes.json", json.dumps(summary, indent=2) + "\n")
    if not sweep:
        _print_probes(summary)
    typer.echo(f"written to {out / 'probes.json'}")


def _print_probes(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from cai.feedback.probes import BETTER

    table = Table(title=f"judge {summary.get('judge', {}).get('model', '-')} on probe pairs "
                        f"(replies by {summary['policy']})")
    for name, justify in (("probe", "left"), ("the better reply", "left"), ("pairs", "right"),
                          ("judge picks it", "right"), ("longer wins", "right")):
        table.add_column(name, justify=justify)
    for name, r in summary["probes"].items():
        cells = [f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in ("agreement", "longer_wins_rate")]
        table.add_row(name, BETTER[name], str(r["n"]), *cells)
    Console().print(table)


def _print_agreement(result: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"judge {result['judge']['model']} vs human labels ({result['n']} pairs)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("agreement", "agreement"), ("position consistency", "position_consistency"),
            ("first-slot win rate", "first_slot_win_rate"), ("longer wins rate", "longer_wins_rate"),
            ("human chose longer", "human_chose_longer_rate"),
            ("length-matched agreement", "length_matched_agreement"),
            ("mean p(human chosen)", "mean_p_human_chosen"), ("pairs / s", "pairs_per_second")]
    for name, key in rows:
        value = result.get(key)
        if result.get("order_free") and key in ("position_consistency", "first_slot_win_rate"):
            table.add_row(name, "n/a (order-free)")
            continue
        table.add_row(name, "-" if value is None else f"{value:.3f}")
    console = Console()
    console.print(table)
    console.print(f"written to {path}")


def _load_pair(policy_spec: str, judge_spec: str, dtype: str = "auto") -> tuple:
    """(policy, judge) backends; one object when the specs are equal."""
    policy = _load(policy_spec, dtype)
    return policy, policy if judge_spec == policy_spec else _load(judge_spec, dtype)


def _label(prompts: str, out: Path, policy_spec: str, judge_spec: str, constitution, judge_config, *, limit,
           seed: int, samples: int, max_new_tokens: int, dtype: str = "auto", workers: int = 0,
           ray: str | None = None) -> None:
    from functools import partial

    from cai.errors import ConfigError
    from cai.fanout import Fanout
    from cai.feedback.judge import check_judge
    from cai.feedback.preferences import LabelConfig, label_prompts
    from cai.logs import log_to_run_dir
    from cai.prompts import load_prompts, log_bad_rows, write_bad_rows

    config = _validated(LabelConfig, samples=samples, max_new_tokens=max_new_tokens, seed=seed,
                        judge=judge_config)
    rows, bad = load_prompts(prompts, limit=limit)
    log_bad_rows(bad)
    if not rows:
        raise ConfigError("no usable prompt", where=prompts, fix="see the skipped rows above")
    out.mkdir(parents=True, exist_ok=True)
    log_to_run_dir(out)
    write_bad_rows(out / "bad_rows.jsonl", bad)
    if workers or ray:
        policy = judge_backend = Fanout(workers, ray).start(partial(_load_pair, policy_spec, judge_spec, dtype))
        policy.ask(lambda pair: check_judge(pair[1], config.judge))
    else:
        policy, judge_backend = _load_pair(policy_spec, judge_spec, dtype)
        check_judge(judge_backend, config.judge)
    summary = label_prompts(rows, policy=policy, judge_backend=judge_backend, constitution=constitution,
                            out_dir=out, config=config).as_dict()
    mean = summary["mean_p_chosen"]
    typer.echo(f"{summary['pairs']} pairs written to {out / 'pairs.jsonl'} "
               f"({summary['resumed']} prompts already done, {summary['without_pair']} without a pair"
               + (f"; mean p_chosen {mean:.3f}, position consistency {summary['position_consistency']:.3f})"
                  if mean is not None else ")"))
