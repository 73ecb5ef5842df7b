"""Plain generation: a model's answers to prompts (``cai generate``) and a conversation (``cai chat``).

``generate_file`` appends each chunk's answers to ``generations.jsonl`` as it finishes (whole lines,
fsynced), so a re-run skips the prompt ids already answered and a killed run loses at most one chunk.
Each row carries its provenance (model, sampling parameters, seed, system prompt).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from cai.backends.base import Backend, Conversation, SamplingParams

log = logging.getLogger(__name__)


def conversation(prompt: str, system_prompt: str | None = None) -> Conversation:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]


def generate_file(rows: Sequence[Any], out_dir: Path, backend: Backend, params: SamplingParams, *,
                  system_prompt: str | None = None, chunk_size: int = 64) -> dict[str, int]:
    """Answer ``rows`` (objects with ``.id`` and ``.prompt``) into ``out_dir/generations.jsonl``, resuming.

    Returns {"prompts", "resumed", "written", "generated_tokens"} for this call."""
    from cai import jsonl
    from cai.records import Provenance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "generations.jsonl"
    if jsonl.repair(path):
        log.warning("dropped a partial last line of %s left by an interrupted run", path)
    done = {r.get("id") for r in jsonl.read_records(path)}
    todo = [r for r in rows if r.id not in done]
    if len(todo) < len(rows):
        log.info("resuming: %d of %d prompts already answered", len(rows) - len(todo), len(rows))
    provenance = Provenance(stage="generate", model=backend.model_id, sampling=params.to_dict(), seed=params.seed,
                            templates={"system_prompt": system_prompt}).model_dump(mode="json")
    tokens = 0
    for start in range(0, len(todo), chunk_size):  # the backend shows each chunk's progress
        chunk = todo[start:start + chunk_size]
        answers = backend.generate([conversation(r.prompt, system_prompt) for r in chunk], params,
                                   desc=f"generating ({start + len(chunk)}/{len(todo)} prompts)")
        jsonl.append_records(path, [
            {"id": r.id, "prompt": r.prompt, "response": a.text, "finish_reason": a.finish_reason,
             "completion_tokens": a.completion_tokens, "provenance": provenance}
            for r, a in zip(chunk, answers, strict=True)])
        tokens += sum(a.completion_tokens for a in answers)
    return {"prompts": len(rows), "resumed": len(rows) - len(todo), "written": len(todo),
            "generated_tokens": tokens}


def chat(backend: Backend, params: SamplingParams, lines: Iterable[str], write: TextIO, *,
         system_prompt: str | None = None, prompt_mark: str = "") -> int:
    """A conversation over ``lines`` (one user turn per line), each reply written to ``write`` as it comes.

    ``/reset`` starts a new conversation, ``/exit`` (or the end of the input) ends it. The whole history
    goes to the model each turn (the backend reuses its cached prefix). Returns the number of replies."""
    from dataclasses import replace

    history: Conversation = conversation("", system_prompt)[:-1]
    replies = 0
    if prompt_mark:
        write.write(prompt_mark)
        write.flush()
    for line in lines:
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = history[:1] if system_prompt else []
            write.write("(new conversation)\n")
        elif text:
            history = history + [{"role": "user", "content": text}]
            answer = backend.generate([history], replace(params, seed=params.seed + replies), desc="chat",
                                      **_quiet(backend))[0]
            history = history + [{"role": "assistant", "content": answer.text}]
            write.write(answer.text + "\n")
            replies += 1
        if prompt_mark:
            write.write(prompt_mark)
        write.flush()
    return replies


def _quiet(backend) -> dict:
    """No progress bar per chat turn where the backend has one to switch off."""
    import inspect

    return {"progress": False} if "progress" in inspect.signature(backend.generate).parameters else {}
