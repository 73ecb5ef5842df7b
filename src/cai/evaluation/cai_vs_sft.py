"""CAI against plain SFT on the same prompts: does critique and revision add anything over fine-tuning on
the model's own first answers?

From one critique run's records, two SFT data sets with the same prompts (those whose revision is usable,
``cai.critique.sft_rows``), the same options and seed: the revisions (SL-CAI) and the first answers (plain
SFT). Both are trained from the same base (``cai.train.sft.train_sft``), then the base and both models
answer the same held-out harmful and safe prompts (``cai.evaluation.refusal_rates.refusal_comparison``). The files are
``DIR/cai/``, ``DIR/plain/`` (models), ``DIR/refusals.json`` (read by the report's trade-off plot) and
``DIR/cai_vs_sft.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.report.blocks import Block, Heading, Para, Table


def training_sets(records: Sequence[dict[str, Any]], system_prompt: str | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(revisions, first answers) as SFT rows in the messages form, over the same prompts: those whose
    revision is usable."""
    from cai.critique import sft_rows

    cai_rows, plain_rows = [], []
    for rec in records:
        row, _ = sft_rows(rec, system_prompt)
        if not row["usable"]:
            continue
        cai_rows.append(row)
        plain = {**row, "messages": row["messages"][:-1] + [{"role": "assistant", "content": rec["initial"]}]}
        plain_rows.append(plain)
    return cai_rows, plain_rows


def run(records: Sequence[dict[str, Any]], out_dir: Path, *, base: str, sft_options, eval_sets: dict[str, list[str]],
        load, max_new_tokens: int = 64, seed: int = 0, sources: Sequence[str] = (),
        set_names: dict[str, str] | None = None, grader=None,
        grader_agreement: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train both models (skipped when already trained in ``out_dir``), evaluate all three alike.

    ``set_names`` names each evaluation set (e.g. ``{"harmful": "redteam:eval"}``) in ``refusals.json`` and the
    study's JSON, so the report says what was measured. ``grader`` (default the keyword check) reads the replies,
    ``grader_agreement`` (its agreement with the labelled replies) saved beside them. A held-out prompt that is
    also a prompt of the records is an error: the models were trained on it."""
    import json

    from cai.errors import ConfigError
    from cai.evaluation.refusal_rates import refusal_comparison
    from cai.jsonl import write_atomic, write_jsonl_atomic
    from cai.train.sft import train_sft

    trained = {rec.get("prompt") for rec in records}
    seen = sorted({p for prompts in eval_sets.values() for p in prompts if p in trained})
    if seen:
        raise ConfigError(f"{len(seen)} held-out prompt(s) are also prompts of the critique records, so both "
                          f"models were trained on them (first: {seen[0][:80]!r})",
                          where=", ".join(sources) or str(out_dir),
                          fix="evaluate on the shipped sets' eval splits (--harmful redteam:eval --safe "
                              "helpful:eval --offset 0), or raise --offset past the prompts the critique run used")
    names = {k: (set_names or {}).get(k) for k in eval_sets}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cai_rows, plain_rows = training_sets(records)
    if not cai_rows:
        raise ConfigError("no critique record has a usable revision, so there is nothing to train on",
                          where=", ".join(sources) or str(out_dir), fix="run the critique stage on more prompts")
    models = {}
    for name, rows in (("cai", cai_rows), ("plain", plain_rows)):
        data = out_dir / f"{name}_sft.jsonl"
        write_jsonl_atomic(data, rows)
        target = out_dir / name
        if not (target / "config.json").exists():
            train_sft(data, target, model=base, options=sft_options)
        models[name] = str(target)
    specs = {"base": base, **models}
    reports = refusal_comparison(((spec, load(spec)) for spec in specs.values()), eval_sets,
                                 max_new_tokens=max_new_tokens, seed=seed, grader=grader)
    for (name, _), r in zip(specs.items(), reports, strict=True):
        r["model_spec"] = f"{name}: {r['model_spec']}"
    graded = {"grader": grader_agreement} if grader_agreement else {}
    write_atomic(out_dir / "refusals.json", json.dumps({**names, **graded, "models": reports}, indent=2) + "\n")
    return {"study": "cai_vs_sft", "base": base, "sources": list(sources), "train_prompts": len(cai_rows),
            "sft": sft_options.model_dump(mode="json"), "eval": {k: len(v) for k, v in eval_sets.items()},
            "eval_sets": names, **graded,
            "seed": seed, "models": {name: {"spec": spec, **{s: r["sets"][s]["refusal_rate"] for s in eval_sets}}
                                     for (name, spec), r in zip(specs.items(), reports, strict=True)}}


def report_blocks(data: dict[str, Any], source: str, out_dir: Path) -> list[Block]:
    sets = list(data["eval"])
    names = data.get("eval_sets") or {}
    held_out = ", ".join(f"{k}: {v}" + (f" of {names[k]}" if names.get(k) else "") for k, v in data["eval"].items())
    return [Heading("CAI against plain SFT"),
            Para(f"Both fine-tuned from {data['base']} on the same {data['train_prompts']} prompts with the same "
                 "options: on the critique-revision loop's revisions (cai) or on the model's first answers "
                 f"(plain); refusal rates on held-out prompts ({held_out}, {source})."),
            Table(["model", *(f"{s} refused" for s in sets), "model path"],
                  [[name, *(m[s] for s in sets), m["spec"]] for name, m in data["models"].items()])]
