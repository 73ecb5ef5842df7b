"""The pipeline's ``studies`` stage: the studies of ``cai compare`` / ``cai study`` from a recipe key.

    studies: {principles: true, rounds: true, compare: [customer-service], cai_vs_sft: true,
              jailbreaks: true, helpfulness: true, limit: 8}

Each study reads what the run already made (the critique records, the SFT model, the judge) and writes
its JSON under ``<run>/studies/``, where the run's report finds it. The refusal figures of ``cai_vs_sft`` are read
by the evaluate stage's grader (``evaluate.grader``). The analyses of the critique records
(principles, rounds) generate nothing; the others generate, at ``limit`` prompts per set.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StudyOptions(BaseModel):
    """The studies stage: which studies run on the run's own files."""

    model_config = ConfigDict(extra="forbid")
    principles: bool = Field(True, description="per-principle effect of the run's critique records")
    rounds: bool = Field(True, description="refusal rate per critique round of the run's records")
    compare: list[str] = Field(default_factory=list, description="other constitutions run on the critique prompts")
    cai_vs_sft: bool = Field(False, description="SFT on the first answers against SFT on the revisions")
    jailbreaks: bool = Field(False, description="templates, obfuscations and principles against base and final")
    helpfulness: bool = Field(False, description="win rate and Elo of the SFT and final model against the base")
    limit: int = Field(8, ge=1, description="prompts of each set for the studies that generate")
    max_new_tokens: int = Field(48, ge=1, description="token budget of each generated reply")
    judge_evidence: list[str] = Field(default_factory=list, description="the judge's agreement.json / probes.json")


def run_studies(ctx) -> dict[str, Any]:
    """Run the studies the recipe asks for; returns {study: json path}."""
    from cai.evaluation.round_quality import evidence_from, write_json
    from cai.jsonl import read_records
    from cai.prompts import id_text

    opts: StudyOptions = ctx.config.studies
    out = ctx.out / "studies"
    const = ctx.constitution()
    records_path = ctx.out / "critique" / "records.jsonl"
    records = read_records(records_path) if records_path.exists() else []
    base = ctx.config.model
    written: dict[str, str] = {}

    def save(name: str, data: dict[str, Any]) -> None:
        written[name] = str(write_json(out / f"{name}.json", data))

    if records and opts.principles:
        from cai.evaluation.principle_effect import study

        save("principles", study({"harmful": records}, const, sources=[str(records_path)]))
    if records and opts.rounds:
        from cai.evaluation.round_quality import rounds_study

        save("rounds", rounds_study({"harmful": records}, ctx.config.critique.rounds, constitution=const))
    if opts.compare:
        from cai.constitution import load_constitution
        from cai.evaluation.compare import compare

        sets = {"harmful": id_text(ctx.prompts("critique_prompts"))[: opts.limit],
                "safe": _pairs(ctx.config.evaluate.safe, opts.limit)}
        save("compare", compare([const, *map(load_constitution, opts.compare)], sets, out / "compare",
                                backend=ctx.backend(base), options=ctx.config.critique))
    if records and opts.cai_vs_sft:
        from cai.evaluation.cai_vs_sft import run

        def offset(source: str) -> int:  # an eval split is disjoint from the training prompts already
            return 0 if source.endswith(":eval") else len(records)

        from cai.evaluation.graders import agreement, make_grader

        grader = make_grader(ctx.config.evaluate.grader, ctx.config.evaluate.grader_model, load=ctx.backend)
        sources = {"harmful": ctx.config.evaluate.harmful, "safe": ctx.config.evaluate.safe}
        eval_sets = {k: [p for _, p in _pairs(src, opts.limit, offset(src))] for k, src in sources.items()}
        save("cai_vs_sft", run(records, out / "cai_vs_sft", base=base, sft_options=ctx.config.sft,
                               eval_sets=eval_sets, load=ctx.backend, max_new_tokens=opts.max_new_tokens,
                               seed=ctx.config.evaluate.seed, sources=[str(records_path)],
                               set_names={k: f"{src} [{offset(src)}:{offset(src) + opts.limit}]"
                                          for k, src in sources.items()},
                               grader=grader, grader_agreement=agreement(grader)))
    if opts.jailbreaks:
        from cai.constitution import load_constitution
        from cai.evaluation.jailbreak_study import run as attack
        rows = prompt_rows(ctx.config.evaluate.harmful, opts.limit)
        save("jailbreaks", attack(list(dict.fromkeys([base, ctx.policy])), rows, out / "jailbreaks", load=ctx.backend,
                                  constitution=load_constitution("redteam"), prompts=ctx.config.evaluate.harmful,
                                  max_new_tokens=opts.max_new_tokens, seed=ctx.config.evaluate.seed))
    if opts.helpfulness:
        from cai.backends.base import SamplingParams
        from cai.evaluation.helpfulness import follow_ups
        from cai.evaluation.helpfulness import study as helpful

        sft = [str(ctx.out / "sft")] if (ctx.out / "sft" / "config.json").exists() else []
        models = list(dict.fromkeys([base, *sft, ctx.policy]))
        if len(models) > 1:
            params = SamplingParams(max_new_tokens=opts.max_new_tokens, temperature=0.0, do_sample=False,
                                    seed=ctx.config.evaluate.seed)
            rows = prompt_rows(ctx.config.evaluate.safe, opts.limit)
            save("helpfulness", helpful(models, id_text(rows), out / "helpfulness",
                                        load=ctx.backend, judge_spec=ctx.config.judge_model or base, params=params,
                                        judge_evidence=evidence_from(opts.judge_evidence) if opts.judge_evidence
                                        else None, follow=follow_ups(rows)))
    ctx._backends.clear()
    return written


def prompt_rows(source: str, limit: int | None, offset: int = 0) -> list:
    """Prompts ``offset`` .. ``offset + limit`` of a prompt source; an error when there are none."""
    from cai.errors import ConfigError
    from cai.prompts import load_prompts, log_bad_rows

    rows, bad = load_prompts(source, limit=None if limit is None else limit + offset)
    log_bad_rows(bad)
    rows = rows[offset:]
    if not rows:
        raise ConfigError("no usable prompts", where=source, fix="check the source, the limit and the offset")
    return rows


def _pairs(source: str, limit: int | None, offset: int = 0) -> list[tuple[str, str]]:
    from cai.prompts import id_text

    return id_text(prompt_rows(source, limit, offset))

