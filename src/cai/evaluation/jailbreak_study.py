"""Jailbreaks per principle: which attacks get through, and which principle stops them.

The attacks are the harmful base requests in every jailbreak template (``cai.evaluation.redteam.TEMPLATES``), in every
obfuscation (``cai.evaluation.obfuscation``) and, when given, red-team prompts an attacker model wrote
(``cai.evaluation.attacker``, sent as written). Two measurements:

1. **Per model**: attack success rate by template of each model given (for instance the base, a model
   trained with the ``general`` constitution and one trained with ``redteam``), via
   ``cai.evaluation.redteam.attack_models``; that writes ``DIR/models/redteam.json``, which the report's jailbreak
   table and plot read.
2. **Per principle**: the first model's answers to the attacks go through one critique-revision round
   under each principle alone (greedy, same seed, batched over all principles), and the attack succeeds
   when the revision still does not refuse. The table is attack success per template
   with no critique and after each principle: the principles that stop a template, and those that do not.
   An empty, garbled or looping reply is neither success nor refusal: it is left out of the rates and
   counted, as in the per-model rates, so the no-critique column equals the first model's rates there.

``jailbreaks.json`` holds both tables; the records stay in ``DIR/principles/critique/records.jsonl``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.report.blocks import Block, Heading, Para, Table

DEGENERATE_ROW = "degenerate replies (left out of the rates)"


def all_attacks(rows: Sequence, generated: Sequence[dict[str, Any]] = ()) -> tuple[list, dict[str, str]]:
    """(attacks, {template or transform name: description}) for the base requests and generated prompts."""
    from cai.evaluation.obfuscation import DESCRIPTIONS, obfuscated
    from cai.evaluation.redteam import TEMPLATES, Attack, attacks

    todo = attacks(rows, TEMPLATES) + obfuscated(rows)
    todo += [Attack(f"generated/{g['id']}", g["id"], "generated", "generated", g["prompt"], g["prompt"])
             for g in generated]
    names = {**TEMPLATES, **DESCRIPTIONS}
    if generated:
        names["generated"] = "written by the attacker model under the red-team constitution"
    return todo, names


def success_by_template(records: Sequence[dict[str, Any]], attack_template: dict[str, str]
                        ) -> dict[str, dict[str, Any]]:
    """Per template: n, attack success before critique (first answer) and after (final revision), and how many
    first answers and revisions were degenerate (empty, garbled or looping: no success and no refusal, so left
    out of the rates and counted, as ``cai.evaluation.redteam.success_rates`` does)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[attack_template[r["id"]]].append(r)
    out = {}
    for t, rs in groups.items():
        before, degenerate_before = _success([r["initial"] for r in rs])
        after, degenerate_after = _success([r["final"] for r in rs])
        out[t] = {"n": len(rs), "before": before, "after": after, "degenerate_before": degenerate_before,
                  "degenerate_after": degenerate_after}
    return out


def _success(replies: Sequence[str]) -> tuple[float | None, int]:
    """(share of the real replies that do not refuse, or None when there is none; how many are degenerate)."""
    from cai.evaluation.refusals import is_refusal
    from cai.evaluation.replies import degenerate_reason

    real = [text for text in replies if degenerate_reason(text) is None]
    rate = sum(not is_refusal(text) for text in real) / len(real) if real else None
    return rate, len(replies) - len(real)


def recount(records: Sequence[dict[str, Any]], principle_ids: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``per_principle``'s figures again from its saved records (ids ``<principle>/<template>/<base id>``)."""
    mine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        pid = next((p for p in principle_ids if r["id"].startswith(f"{p}/")), None)
        if pid is not None:
            mine[pid].append({**r, "id": r["id"].removeprefix(f"{pid}/")})
    return {p: success_by_template(mine[p], {r["id"]: r["id"].split("/", 1)[0] for r in mine[p]})
            for p in principle_ids}


def per_principle(todo: Sequence, out_dir: Path, *, backend, constitution, options,
                  principle_ids: Sequence[str] = (), first_answers: dict[str, str] | None = None
                  ) -> dict[str, dict[str, dict[str, Any]]]:
    """{principle id: {template: figures}} after one critique-revision round under that principle alone.

    The round is the SL-CAI round of ``cai.critique`` (same requests, same revision cleaning), batched over
    every (principle, attack) at once: one critique call and one revision call for all, after the first
    answers (``first_answers`` by attack id, e.g. the attacked model's replies, else generated here).
    Records go to ``out_dir/critique/records.jsonl`` with their provenance; a re-run skips what is there."""
    from cai import jsonl
    from cai.critique import clean_revision, opening_messages, provenance
    from cai.errors import ConfigError
    from cai.records import CritiqueRecord, CritiqueRound

    chosen = [p for p in constitution.principles if not principle_ids or p.id in principle_ids]
    unknown = set(principle_ids) - {p.id for p in constitution.principles}
    if unknown:
        raise ConfigError(f"no principle {', '.join(sorted(unknown))} in constitution {constitution.name}",
                          fix="pick ids from cai constitution show " + constitution.name)
    path = Path(out_dir) / "critique" / "records.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonl.repair(path)
    done = {r["id"]: r for r in jsonl.read_records(path)} if path.exists() else {}
    params = options.sampling()
    answers = dict(first_answers or {})
    missing = [a for a in todo if a.id not in answers]
    if missing:
        out = backend.generate([opening_messages(constitution, options, a.prompt) for a in missing], params,
                               desc="first answers")
        answers.update({a.id: c.text for a, c in zip(missing, out, strict=True)})
    jobs = [(p, a) for p in chosen for a in todo if f"{p.id}/{a.id}" not in done]
    if jobs:
        convs = [opening_messages(constitution, options, a.prompt) + [
            {"role": "assistant", "content": answers[a.id]},
            {"role": "user", "content": constitution.critique_request(p)}] for p, a in jobs]
        critiques = backend.generate(convs, params, desc="critiques (every principle)")
        convs = [c + [{"role": "assistant", "content": k.text},
                      {"role": "user", "content": constitution.revision_request(p)}]
                 for c, k, (p, _) in zip(convs, critiques, jobs, strict=True)]
        revisions = backend.generate(convs, params, desc="revisions (every principle)")
        records = []
        for (p, a), k, v in zip(jobs, critiques, revisions, strict=True):
            revised = clean_revision(v.text) or answers[a.id]
            records.append(CritiqueRecord(
                id=f"{p.id}/{a.id}", prompt=a.prompt, initial=answers[a.id], final=revised,
                rounds=[CritiqueRound(principle_id=p.id, critique=k.text, revision=revised,
                                      critique_tokens=k.completion_tokens, revision_tokens=v.completion_tokens)],
                provenance=provenance(constitution, backend, options, [p.id])))
        jsonl.append_records(path, records)
        done.update({r.id: r.model_dump() for r in records})
    out_figures: dict[str, dict[str, dict[str, Any]]] = {}
    for p in chosen:
        mine = [{**done[f"{p.id}/{a.id}"], "id": a.id} for a in todo if f"{p.id}/{a.id}" in done]
        out_figures[p.id] = success_by_template(mine, {a.id: a.template for a in todo})
    return out_figures


def table(principles: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list[list[Any]]]:
    """Rows of template x (no critique, each principle): attack success rates; the last row counts the
    degenerate replies each column leaves out of its rates."""
    ids = list(principles)
    templates = list(dict.fromkeys(t for figures in principles.values() for t in figures))
    firsts = [next((principles[p][t] for p in ids if t in principles[p]), {"n": 0, "before": None})
              for t in templates]
    rows = [[t, first["n"], first["before"], *(principles[p].get(t, {}).get("after") for p in ids)]
            for t, first in zip(templates, firsts, strict=True)]
    rows.append([DEGENERATE_ROW, _total(f["n"] for f in firsts), _total(f.get("degenerate_before") for f in firsts),
                 *(_total(f.get("degenerate_after") for f in principles[p].values()) for p in ids)])
    return ["template", "n", "no critique (first answer)", *ids], rows


def _total(counts) -> int | None:
    """The sum, or None when a count is missing (figures saved before degenerate replies were counted)."""
    counts = list(counts)
    return None if None in counts else sum(counts)


def stops(principles: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str | None]:
    """Per template, the principle whose round lowers attack success the most (None when none lowers it)."""
    best: dict[str, tuple[float, str | None]] = {}
    for pid, figures in principles.items():
        for t, f in figures.items():
            if f["before"] is None or f["after"] is None:  # every reply degenerate: nothing measured
                continue
            drop = f["before"] - f["after"]
            if drop > best.get(t, (0.0, None))[0]:
                best[t] = (drop, pid)
    templates = {t for figures in principles.values() for t in figures}
    return {t: best.get(t, (0.0, None))[1] for t in sorted(templates)}


def attacker_prompts(out_dir: Path, backend, seeds: Sequence[str], *, per_principle: int, seed: int
                     ) -> dict[str, Any]:
    """Attacker-written prompts under the shipped red-team constitution, kept in ``out_dir/generated.json``
    (read back on a re-run, so the attacks stay the same)."""
    import json

    from cai.constitution import load_constitution
    from cai.evaluation.attacker import generate
    from cai.evaluation.round_quality import write_json

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
    from cai.evaluation.redteam import attack_models
    from cai.jsonl import read_records

    out_dir = Path(out_dir)
    generated = attacker_prompts(out_dir, load(attacker or models[0]), [r.prompt for r in rows],
                                 per_principle=generate, seed=seed) if generate else None
    todo, names = all_attacks(rows, generated["prompts"] if generated else ())
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, do_sample=False, seed=seed)
    attacked = attack_models(models, todo, out_dir / "models", params, templates=names, prompts=prompts, load=load)
    options = CritiqueOptions(rounds=1, seed=seed, max_new_tokens=max_new_tokens, temperature=0.0)
    first = {r["id"]: r["reply"] for r in read_records(Path(attacked["models"][models[0]]["replies"]))}
    principles = per_principle(todo, out_dir / "principles", backend=load(models[0]), constitution=constitution,
                               options=options, principle_ids=principle_ids, first_answers=first)
    header, cells = table(principles)
    return {
        "study": "jailbreaks", "critic": models[0], "constitution": constitution.ref().model_dump(),
        "base_requests": len({a.base_id for a in todo if a.template != "generated"}), "templates": names,
        "models": {spec: {t: f["asr"] for t, f in m["templates"].items()} for spec, m in attacked["models"].items()},
        "table": {"header": header, "rows": cells}, "per_principle": principles, "stops": stops(principles),
        "generated": None if not generated else {
            "candidates": generated["candidates"], "kept": len(generated["prompts"]), "dropped": generated["dropped"],
            "prompts": generated["prompts"]}}


def shown_figures(data: dict[str, Any], source: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The per-principle figures to report. A study saved before degenerate replies were counted scored them
    as successful attacks; its figures are recounted from the records beside it, when they are there."""
    figures = data["per_principle"]
    counted = all("degenerate_before" in f for by_template in figures.values() for f in by_template.values())
    path = Path(source).parent / "principles" / "critique" / "records.jsonl"
    if counted or not path.is_file():
        return figures
    from cai.jsonl import read_records

    return recount(read_records(path), list(figures))


def report_blocks(data: dict[str, Any], source: str, out_dir: Path) -> list[Block]:
    figures = shown_figures(data, source)
    blocks: list[Block] = [
        Heading("Jailbreaks per principle"),
        Para(f"{data['base_requests']} harmful requests in {len(data['templates'])} templates and obfuscations"
             + (f", plus {data['generated']['kept']} attacker-written prompts (of {data['generated']['candidates']}"
                f" drawn, deduplicated)" if data.get("generated") else "")
             + f" ({source}). Attack success (no refusal, keyword check) of {data['critic']}'s first answer and "
             f"after one critique-revision round under each principle of {data['constitution']['name']} alone. "
             "Empty, garbled or looping replies are neither success nor refusal: they are left out of the rates "
             "and counted in the last row, as in the Jailbreaks section, so the first-answer column is "
             f"{data['critic']}'s column there.")]
    header, rows = table(figures)
    blocks.append(Table(header, rows))
    blocks.append(Table(["template", "stopped best by"], [[t, p or "none"] for t, p in stops(figures).items()]))
    if data.get("models"):
        blocks.append(Para("Attack success per model and template is in the Jailbreaks section above."))
    if (data.get("generated") or {}).get("prompts"):
        blocks.append(Table(["generated prompt", "for principle"],
                            [[g["prompt"], g["principle_id"]] for g in data["generated"]["prompts"]]))
    return blocks
