"""Jailbreaks per principle: which attacks get through, and which principle stops them.

The attacks are the harmful base requests in every jailbreak template (``cai.redteam.TEMPLATES``), in every
obfuscation (``cai.obfuscation``) and, when given, red-team prompts an attacker model wrote
(``cai.attacker``, sent as written). Two measurements:

1. **Per model**: attack success rate by template of each model given (for instance the base, a model
   trained with the ``general`` constitution and one trained with ``redteam``), via
   ``cai.redteam.attack_models``; that writes ``DIR/models/redteam.json``, which the report's jailbreak
   table and plot read.
2. **Per principle**: the first model's answers to the attacks go through one critique-revision round
   under each principle alone (greedy, same seed: the first answers are the same for every principle), and
   the attack succeeds when the revision still does not refuse. The table is attack success per template
   with no critique and after each principle: the principles that stop a template, and those that do not.

``jailbreaks.json`` holds both tables; records stay under ``DIR/principles/<id>/critique``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.report_blocks import Block, Heading, Para, Table


def all_attacks(rows: Sequence, generated: Sequence[dict[str, Any]] = ()) -> tuple[list, dict[str, str]]:
    """(attacks, {template or transform name: description}) for the base requests and generated prompts."""
    from cai.obfuscation import DESCRIPTIONS, obfuscated
    from cai.redteam import TEMPLATES, Attack, attacks

    todo = attacks(rows, TEMPLATES) + obfuscated(rows)
    todo += [Attack(f"generated/{g['id']}", g["id"], "generated", "generated", g["prompt"], g["prompt"])
             for g in generated]
    names = {**TEMPLATES, **DESCRIPTIONS}
    if generated:
        names["generated"] = "written by the attacker model under the red-team constitution"
    return todo, names


def success_by_template(records: Sequence[dict[str, Any]], attack_template: dict[str, str]
                        ) -> dict[str, dict[str, Any]]:
    """Per template: n, attack success before critique (first answer) and after (final revision)."""
    from cai.refusals import is_refusal

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[attack_template[r["id"]]].append(r)
    return {t: {"n": len(rs), "before": sum(not is_refusal(r["initial"]) for r in rs) / len(rs),
                "after": sum(not is_refusal(r["final"]) for r in rs) / len(rs)} for t, rs in groups.items()}


def per_principle(todo: Sequence, out_dir: Path, *, backend, constitution, options,
                  principle_ids: Sequence[str] = ()) -> dict[str, dict[str, dict[str, Any]]]:
    """{principle id: {template: figures}} after one critique-revision round under that principle alone."""
    from cai.critique import run_critique
    from cai.errors import ConfigError
    from cai.jsonl import read_records

    chosen = [p for p in constitution.principles if not principle_ids or p.id in principle_ids]
    unknown = set(principle_ids) - {p.id for p in constitution.principles}
    if unknown:
        raise ConfigError(f"no principle {', '.join(sorted(unknown))} in constitution {constitution.name}",
                          fix="pick ids from cai constitution show " + constitution.name)
    template_of = {a.id: a.template for a in todo}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for p in chosen:
        alone = constitution.model_copy(update={"principles": [p]})
        d = Path(out_dir) / p.id / "critique"
        run_critique([(a.id, a.prompt) for a in todo], d, backend=backend, constitution=alone,
                     options=options.model_copy(update={"rounds": 1}))
        records = [r for r in read_records(d / "records.jsonl") if r["id"] in template_of]
        out[p.id] = success_by_template(records, template_of)
    return out


def table(principles: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list[list[Any]]]:
    """Rows of template x (no critique, each principle): attack success rates."""
    ids = list(principles)
    templates = list(dict.fromkeys(t for figures in principles.values() for t in figures))
    rows = []
    for t in templates:
        first = next((principles[p][t] for p in ids if t in principles[p]), {"n": 0, "before": None})
        rows.append([t, first["n"], first["before"], *(principles[p].get(t, {}).get("after") for p in ids)])
    return ["template", "n", "no critique", *ids], rows


def stops(principles: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str | None]:
    """Per template, the principle whose round lowers attack success the most (None when none lowers it)."""
    best: dict[str, tuple[float, str | None]] = {}
    for pid, figures in principles.items():
        for t, f in figures.items():
            drop = (f["before"] or 0) - (f["after"] or 0)
            if drop > best.get(t, (0.0, None))[0]:
                best[t] = (drop, pid)
    templates = {t for figures in principles.values() for t in figures}
    return {t: best.get(t, (0.0, None))[1] for t in sorted(templates)}


def attacker_prompts(out_dir: Path, backend, seeds: Sequence[str], *, per_principle: int, seed: int
                     ) -> dict[str, Any]:
    """Attacker-written prompts under the shipped red-team constitution, kept in ``out_dir/generated.json``
    (read back on a re-run, so the attacks stay the same)."""
    import json

    from cai.attacker import generate
    from cai.constitution import load_constitution
    from cai.round_quality import write_json

    path = Path(out_dir) / "generated.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return json.loads(write_json(path, generate(backend, load_constitution("redteam"), seeds,
                                                per_principle=per_principle, seed=seed)).read_text())


def run(models: Sequence[str], rows: Sequence, out_dir: Path, *, load, constitution, prompts: str,
        generate: int = 0, attacker: str | None = None, max_new_tokens: int = 48, seed: int = 0,
        principle_ids: Sequence[str] = ()) -> dict[str, Any]:
    """The whole study into ``out_dir``: the ``jailbreaks.json`` content (``models/redteam.json`` too)."""
    from cai.backends.base import SamplingParams
    from cai.critique import CritiqueOptions
    from cai.redteam import attack_models

    out_dir = Path(out_dir)
    generated = attacker_prompts(out_dir, load(attacker or models[0]), [r.prompt for r in rows],
                                 per_principle=generate, seed=seed) if generate else None
    todo, names = all_attacks(rows, generated["prompts"] if generated else ())
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, do_sample=False, seed=seed)
    attacked = attack_models(models, todo, out_dir / "models", params, templates=names, prompts=prompts, load=load)
    options = CritiqueOptions(rounds=1, seed=seed, max_new_tokens=max_new_tokens, temperature=0.0)
    principles = per_principle(todo, out_dir / "principles", backend=load(models[0]), constitution=constitution,
                               options=options, principle_ids=principle_ids)
    header, cells = table(principles)
    return {
        "study": "jailbreaks", "critic": models[0], "constitution": constitution.ref().model_dump(),
        "base_requests": len({a.base_id for a in todo if a.template != "generated"}), "templates": names,
        "models": {spec: {t: f["asr"] for t, f in m["templates"].items()} for spec, m in attacked["models"].items()},
        "table": {"header": header, "rows": cells}, "per_principle": principles, "stops": stops(principles),
        "generated": None if not generated else {
            "candidates": generated["candidates"], "kept": len(generated["prompts"]), "dropped": generated["dropped"],
            "prompts": generated["prompts"]}}


def report_blocks(data: dict[str, Any], source: str, out_dir: Path) -> list[Block]:
    blocks: list[Block] = [
        Heading("Jailbreaks per principle"),
        Para(f"{data['base_requests']} harmful requests in {len(data['templates'])} templates and obfuscations"
             + (f", plus {data['generated']['kept']} attacker-written prompts (of {data['generated']['candidates']}"
                f" drawn, deduplicated)" if data.get("generated") else "")
             + f" ({source}). Attack success (no refusal, keyword check) of {data['critic']}'s first answer and "
             f"after one critique-revision round under each principle of {data['constitution']['name']} alone.")]
    header, rows = data["table"]["header"], data["table"]["rows"]
    blocks.append(Table(header, rows))
    blocks.append(Table(["template", "stopped best by"], [[t, p or "none"] for t, p in data["stops"].items()]))
    if data.get("models"):
        blocks.append(Para("Attack success per model and template is in the Jailbreaks section above."))
    if (data.get("generated") or {}).get("prompts"):
        blocks.append(Table(["generated prompt", "for principle"],
                            [[g["prompt"], g["principle_id"]] for g in data["generated"]["prompts"]]))
    return blocks
