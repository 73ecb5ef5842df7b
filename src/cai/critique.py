"""SL-CAI: critique and revise the model's own answers against sampled principles (Bai et al. 2022, §3).

For each prompt the model first answers. Then, for each of N rounds, a principle is sampled, the model is
asked (as a follow-up turn in the same conversation) to critique its last answer against it, and then to
revise the answer in light of the critique. The final revision becomes supervised data. With
``critique_step: false`` the revision request follows the answer at once (critique-free revision: a
small model often echoes its own critique instead of revising).

Revisions are cleaned (a leading "Revised response:" label and anything after the first repeated sentence
are cut) and filtered: a revision that is empty, unchanged from the answer, echoes the critique, describes
the response instead of answering, or loops on a phrase is not trained on; the counts are logged. As in
the CAI paper, answers to harmless prompts (``run_helpful``, plain answers with no critique) can be mixed
into the SFT data, so the model learns when to decline, not to decline everything; those that refuse or
loop are left out.

All prompts of a chunk move through the steps together, so each step is one batched ``generate`` call;
the backend reuses the cached conversation prefix, so a follow-up turn only encodes its new tokens. Each
finished record is appended to ``records.jsonl`` at once, so a killed run loses at most its current chunk
and a re-run skips what is done.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import Backend, Completion, SamplingParams
from cai.constitution import Constitution, sample_principles
from cai.records import CritiqueRecord, CritiqueRound, Provenance

log = logging.getLogger(__name__)


class CritiqueOptions(BaseModel):
    """How the critique-revision loop runs (saved with every run)."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(4, ge=1, le=16, description="critique-revision rounds per prompt (the paper uses 4)")
    strategy: Literal["random", "round-robin"] = Field("random", description=(
        "how principles are drawn for each round: random (weighted, seeded) or round-robin"))
    seed: int = Field(0, description="seed of principle sampling and generation")
    max_new_tokens: int = Field(192, ge=1, description="token budget of each answer, critique and revision")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling threshold")
    few_shot: int = Field(0, ge=0, description="how many of the constitution's examples to show first")
    early_stop: bool = Field(False, description="stop a prompt's rounds once a critique finds nothing to fix")
    system_prompt: str | None = Field(None, description="a system turn before each conversation")
    chunk_size: int = Field(64, ge=1, description="prompts carried through the loop together")
    critique_step: bool = Field(True, description="false: critique-free revision (revise right after answering)")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              do_sample=self.temperature > 0, seed=self.seed)


NOTHING_TO_FIX = re.compile(
    r"\b(no (harmful|unethical|dangerous|problematic|issues?|problems?|changes?)|nothing (harmful|to (fix|change|"
    r"improve))|(is|was) (not|n't) harmful|does not contain any harmful|already (safe|appropriate|harmless))\b",
    re.IGNORECASE,
)


def critique_says_nothing_to_fix(critique: str) -> bool:
    """True when a critique states there is nothing to change (used for the optional early stop)."""
    return bool(NOTHING_TO_FIX.search(critique[:300]))


_LEADING_LABEL = re.compile(r"^\s*(\*\*)?(revised|rewritten|revision|new|improved)?\s*(response|answer|revision)"
                            r"\s*(\*\*)?\s*:\s*", re.IGNORECASE)


_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n+|$)")


def cut_repeats(text: str) -> str:
    """``text`` up to its first repeated sentence: small models often loop ("I'm sorry... I'm sorry...")."""
    seen, kept = set(), []
    for m in _SENTENCE.finditer(text):
        key = " ".join(m.group().lower().split()).strip(".!? ")
        if not key:
            kept.append(m.group())
            continue
        if key in seen:
            break
        seen.add(key)
        kept.append(m.group())
    return "".join(kept).strip()


def clean_revision(text: str) -> str:
    """Drop a leading "Revised response:"-style label a small model often adds, and any loop after it."""
    return cut_repeats(_LEADING_LABEL.sub("", text, count=1).strip())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


# a reply cut off by the token budget ends mid-sentence; SFT would teach the end-of-turn token right there
_ENDS = (".", "!", "?", ")", "]", '"', "'", "`", ":", ";", "*", "\u201d")
_BOUNDARY = re.compile(r"(?<![0-9])[.!?](?=\s|[A-Z])|\n")


def complete_part(text: str) -> str:
    """``text`` up to its last complete sentence or line when it was cut off mid-sentence (a reply that hit its
    token budget); ``text`` itself when it ends a sentence, or when no complete sentence of two words or more
    would be left (a one-sentence reply is kept whole rather than lost)."""
    text = text.rstrip()
    if text.endswith(_ENDS):
        return text
    cuts = [m.end() for m in _BOUNDARY.finditer(text)]
    kept = text[:cuts[-1]].rstrip() if cuts else ""
    return kept if len(kept.split()) >= 2 else text


def revision_problem(initial: str, critique: str, revision: str) -> str | None:
    """Why a revision should not become training data, or None when it is usable.

    Small models often echo the critique instead of answering, or loop on one phrase.
    """
    words = revision.lower().split()
    if len(words) < 2:
        return "empty"
    if words == initial.lower().split():
        return "unchanged"
    crit = critique.lower().split()
    if crit and len(words) >= 8:
        shared = set(_ngrams(words, 4)) & set(_ngrams(crit, 4))
        if len(shared) >= 0.5 * max(1, len(_ngrams(words, 4))):
            return "echoes the critique"
    if re.match(r"^\s*(the|this|your|my)\s+(last\s+)?(response|answer)\s+(is|was|contains|could|does)", revision,
                re.IGNORECASE):
        return "describes the response instead of answering"
    grams = _ngrams(words, 4)
    if len(grams) >= 8 and len(set(grams)) < 0.5 * len(grams):
        return "repeats itself"
    return None


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt seed, so a prompt's principles do not depend on which chunk it ran in."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little")


def opening_messages(constitution: Constitution, options: CritiqueOptions, prompt: str) -> list[dict[str, str]]:
    """The conversation before the first answer: system prompt, few-shot exchanges, the user's prompt."""
    msgs: list[dict[str, str]] = []
    if options.system_prompt:
        msgs.append({"role": "system", "content": options.system_prompt})
    for example in constitution.few_shot[: options.few_shot]:
        msgs += constitution.few_shot_messages(example)
    msgs.append({"role": "user", "content": prompt})
    return msgs


def provenance(constitution: Constitution, backend: Backend, options: CritiqueOptions,
               principle_ids: list[str]) -> Provenance:
    return Provenance(
        stage="critique", constitution=constitution.ref(), principle_ids=principle_ids, model=backend.model_id,
        templates={"critique": constitution.templates.critique, "revision": constitution.templates.revision,
                   "system_prompt": options.system_prompt, "few_shot": options.few_shot},
        sampling=options.sampling().to_dict(), seed=options.seed,
        strategy=options.strategy, rounds=options.rounds,
    )


def run_chunk(backend: Backend, constitution: Constitution, prompts: Sequence[tuple[str, str]],
              options: CritiqueOptions) -> list[CritiqueRecord]:
    """The SL-CAI loop for a chunk of (id, prompt) pairs, every step batched across the chunk."""
    params = options.sampling()
    # 1. the model answers each prompt
    convs = [opening_messages(constitution, options, text) for _, text in prompts]
    answers = backend.generate(convs, params, desc="initial answers")
    current = [a.text for a in answers]
    tokens = [{"prompt": a.prompt_tokens, "completion": a.completion_tokens} for a in answers]
    rounds: list[list[CritiqueRound]] = [[] for _ in prompts]
    principles = [sample_principles(constitution, options.rounds, seed=prompt_seed(options.seed, pid),
                                    strategy=options.strategy, start=prompt_seed(options.seed, pid) % 997)
                  for pid, _ in prompts]
    active = list(range(len(prompts)))
    for r in range(options.rounds):
        if not active:
            break
        # 2. a sampled principle's critique request, as a follow-up turn (unless critique-free)
        for i in active:
            convs[i] = convs[i] + [{"role": "assistant", "content": current[i]}]
        if options.critique_step:
            for i in active:
                convs[i] = convs[i] + [{"role": "user", "content": constitution.critique_request(principles[i][r])}]
            critiques = backend.generate([convs[i] for i in active], params, desc=f"round {r + 1}: critiques")
        else:
            critiques = [Completion(text="", prompt_tokens=0, completion_tokens=0) for _ in active]
        # 3. the revision request, after the model's own critique (or right after its answer)
        for i, c in zip(active, critiques, strict=True):
            convs[i] = convs[i] + ([{"role": "assistant", "content": c.text}] if options.critique_step else []) + [
                {"role": "user", "content": constitution.revision_request(principles[i][r])}]
        revisions = backend.generate([convs[i] for i in active], params, desc=f"round {r + 1}: revisions")
        still = []
        for i, c, v in zip(active, critiques, revisions, strict=True):
            revised = clean_revision(v.text) or current[i]
            rounds[i].append(CritiqueRound(principle_id=principles[i][r].id, critique=c.text, revision=revised,
                                           critique_tokens=c.completion_tokens, revision_tokens=v.completion_tokens))
            current[i] = revised
            tokens[i]["completion"] += c.completion_tokens + v.completion_tokens
            tokens[i]["prompt"] += c.prompt_tokens + v.prompt_tokens
            if not (options.early_stop and options.critique_step and critique_says_nothing_to_fix(c.text)):
                still.append(i)
        active = still
    records = []
    for i, (pid, text) in enumerate(prompts):
        _, problem = training_revision(answers[i].text, [(x.critique, x.revision) for x in rounds[i]])
        records.append(CritiqueRecord(
            id=pid, prompt=text, initial=answers[i].text, rounds=rounds[i], final=current[i],
            stopped_early=len(rounds[i]) < options.rounds, token_counts=tokens[i],
            usable=problem is None, problem=problem,
            provenance=provenance(constitution, backend, options, [x.principle_id for x in rounds[i]]),
        ))
    return records


def training_revision(initial: str, rounds: Sequence[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(the revision to train on, None) -- the last one that passes ``revision_problem`` -- or (None, why
    the last revision does not) when none passes. ``rounds``: (critique, revision) in order."""
    problem = None
    for critique, revision in reversed(rounds):
        why = revision_problem(initial, critique, revision)
        if why is None:
            return revision, None
        problem = problem or why
    return None, problem or "no revision"


def sft_rows(record: dict, system_prompt: str | None = None) -> tuple[dict, dict]:
    """The record's training pair in TRL's two conversational forms.

    Returns ({"messages": [...]}, {"prompt": [...], "completion": [...]}), both with ``usable`` and
    ``problem``. The final revision is used unless it is degenerate (see ``revision_problem``), in which case
    the last usable revision is; a record with no usable revision keeps its final one, marked
    ``usable: false`` (``write_sft_files`` leaves those out of the SFT files). A revision cut off by the token
    budget is trained up to its last complete sentence (``complete_part``), so that SFT does not teach the model
    to end its turn mid-sentence.
    """
    chosen, problem = training_revision(record["initial"], [(rd["critique"], rd["revision"]) for rd in
                                                             record["rounds"]])
    chosen = None if chosen is None else complete_part(chosen)
    usable = chosen is not None
    prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": record["prompt"]}]
    completion = [{"role": "assistant", "content": chosen if usable else record["final"]}]
    meta = {"id": record["id"], "constitution": record["provenance"].get("constitution"),
            "usable": usable, "problem": None if usable else problem}
    return {"messages": prompt + completion, **meta}, {"prompt": prompt, "completion": completion, **meta}


def run_critique(prompts: Sequence[tuple[str, str]], out_dir: Path, *, backend: Backend,
                 constitution: Constitution, options: CritiqueOptions) -> dict:
    """Run (or resume) the stage into ``out_dir``: records.jsonl, sft.jsonl, sft_prompt_completion.jsonl.

    Returns a summary with counts. Prompts whose id already has a record are skipped. ``backend`` may be
    ``cai.fanout.Workers``: the chunks then run on Ray workers.
    """
    from cai import jsonl
    from cai.fanout import map_chunks
    from cai.logs import progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "records.jsonl"
    if jsonl.repair(records_path):
        log.warning("dropped a partial last line of %s left by an interrupted run", records_path)
    done = {r["id"] for r in jsonl.read_records(records_path)}
    todo = [(pid, text) for pid, text in prompts if pid not in done]
    if done:
        log.info("resuming: %d of %d prompts already done", len(prompts) - len(todo), len(prompts))
    with progress(len(todo), "critique-revision (prompts)") as advance:
        for chunk, records in map_chunks(backend, lambda b, c: run_chunk(b, constitution, c, options), todo,
                                         options.chunk_size):
            jsonl.append_records(records_path, records)
            advance(len(chunk))
    return write_sft_files(out_dir, options.system_prompt)


def answer_problem(answer: str) -> str | None:
    """Why a plain answer to a harmless prompt should not be mixed into the SFT data, or None."""
    from cai.evaluation.refusals import is_refusal

    if len(answer.split()) < 2:
        return "empty"
    if is_refusal(answer):
        return "refuses a harmless request"
    return "repeats itself" if revision_problem("", "", answer) == "repeats itself" else None


def helpful_rows(record: dict, system_prompt: str | None = None) -> tuple[dict, dict]:
    """A helpful record's training pair in the two forms ``sft_rows`` gives (``usable`` and ``problem``)."""
    problem = answer_problem(record["answer"])
    prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": record["prompt"]}]
    completion = [{"role": "assistant", "content": complete_part(record["answer"])}]
    meta = {"id": record["id"], "constitution": record["provenance"].get("constitution"), "kind": "helpful",
            "usable": problem is None, "problem": problem}
    return {"messages": prompt + completion, **meta}, {"prompt": prompt, "completion": completion, **meta}


def run_helpful(prompts: Sequence[tuple[str, str]], out_dir: Path, *, backend: Backend, constitution: Constitution,
                options: CritiqueOptions) -> int:
    """Plain answers to harmless prompts, appended to ``helpful.jsonl`` (resumable, with provenance), to be
    mixed into the SFT data (the CAI paper mixed helpfulness samples in). Returns how many were written."""
    from cai import jsonl
    from cai.logs import progress

    path = Path(out_dir) / "helpful.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonl.repair(path)
    done = {r["id"] for r in jsonl.read_records(path)}
    todo = [(pid, text) for pid, text in prompts if pid not in done]
    with progress(len(todo), "helpful answers (prompts)") as advance:
        for start in range(0, len(todo), options.chunk_size):
            chunk = todo[start:start + options.chunk_size]
            convs = [opening_messages(constitution, options.model_copy(update={"few_shot": 0}), text)
                     for _, text in chunk]
            answers = backend.generate(convs, options.sampling(), desc="helpful answers")
            jsonl.append_records(path, [
                {"id": pid, "prompt": text, "answer": cut_repeats(a.text), "kind": "helpful",
                 "token_counts": {"prompt": a.prompt_tokens, "completion": a.completion_tokens},
                 "provenance": provenance(constitution, backend, options, []).model_dump(mode="json")}
                for (pid, text), a in zip(chunk, answers, strict=True)])
            advance(len(chunk))
    return len(todo)


def write_sft_files(out_dir: Path, system_prompt: str | None = None) -> dict:
    """(Re)build the SFT files from records.jsonl (and helpful.jsonl, when there is one), so they never hold
    a duplicate after a resume. Logs how many rows each filter dropped."""
    from collections import Counter

    from cai import jsonl

    records = jsonl.read_records(out_dir / "records.jsonl")
    helpful = jsonl.read_records(out_dir / "helpful.jsonl") if (out_dir / "helpful.jsonl").exists() else []
    pairs = [sft_rows(r, system_prompt) for r in records] + [helpful_rows(r, system_prompt) for r in helpful]
    # only usable rows, so TRL's trainers read the files as they are; records.jsonl keeps every record
    jsonl.write_jsonl_atomic(out_dir / "sft.jsonl", [m for m, _ in pairs if m["usable"]])
    jsonl.write_jsonl_atomic(out_dir / "sft_prompt_completion.jsonl", [pc for m, pc in pairs if m["usable"]])
    gen = sum(r.get("token_counts", {}).get("completion", 0) for r in records + helpful)
    usable = sum(m["usable"] for m, _ in pairs)
    dropped = dict(Counter(m["problem"] for m, _ in pairs if not m["usable"]))
    helpful_usable = sum(m["usable"] for m, _ in pairs[len(records):])
    log.info("SFT data: %d of %d revisions usable, %d of %d helpful answers; left out: %s",
             usable - helpful_usable, len(records), helpful_usable, len(helpful), dropped or "none")
    return {"records": len(records), "sft_usable": usable, "sft_unusable": len(pairs) - usable,
            "helpful_records": len(helpful), "helpful_usable": helpful_usable, "dropped": dropped,
            "generated_tokens": gen}
