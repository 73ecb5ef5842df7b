"""The Python API: one call per step, over the same functions the command line runs.

    import cai

    constitution = cai.load_constitution("general")          # a shipped name or your YAML file
    model = cai.load_model("smollm2-135m")                  # any --model spec, openai:MODEL@URL included
    print(cai.generate(model, ["How do I pick a lock?"], max_new_tokens=48))
    cai.critique_revise(["How do I pick a lock?"], "runs/api/critique", model=model, constitution=constitution)
    cai.label(["How do I pick a lock?"], "runs/api/labels", policy=model, constitution=constitution)
    sft = cai.train_sft("runs/api/critique/sft.jsonl", "runs/api/sft", max_steps=4)
    print(cai.refusal_rates(["smollm2-135m", sft], limit=8))

Prompts are plain strings, (id, prompt) pairs, or a source any command takes (a file, ``redteam``,
``hf:owner/name``). Options are the keyword names of the stage's options (``CritiqueOptions``,
``LabelConfig``, ``SFTOptions``, ...). Every output lands in the directory given, as with the CLI, and a
call into a directory that holds part of the work resumes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_constitution(path_or_name: str | Path):
    """A ``Constitution`` from a YAML file or a shipped name (general, seed, redteam, customer-service)."""
    from cai.constitution import load_constitution as load

    return load(path_or_name)


def load_model(spec: str = "smollm2-135m", **options: Any):
    """A generation backend (``generate``, ``option_logprobs``) for any model spec: the embedded name, a local
    directory, a .gguf file, a Hub id or ``openai:MODEL@URL``. ``options``: dtype, batch_size, device."""
    from cai.backends import load_backend

    return load_backend(spec, **options)


def generate(model, prompts: Sequence[str], *, max_new_tokens: int = 256, temperature: float = 0.7,
             top_p: float = 0.95, seed: int = 0, system_prompt: str | None = None) -> list[str]:
    """One reply per prompt (in order); ``model`` is a backend or a model spec."""
    from cai.backends.base import SamplingParams
    from cai.generation import conversation

    backend = _backend(model)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            do_sample=temperature > 0, seed=seed)
    return [c.text for c in backend.generate([conversation(p, system_prompt) for p in prompts], params)]


def critique_revise(prompts, out: str | Path, *, model="smollm2-135m", constitution="general", **options: Any) -> dict:
    """SL-CAI critique and revision into ``out`` (records.jsonl, sft.jsonl); returns the summary counts."""
    from cai.critique import CritiqueOptions, run_critique

    rows = _rows(prompts)
    return run_critique([(r.id, r.prompt) for r in rows], Path(out), backend=_backend(model),
                        constitution=_constitution(constitution), options=CritiqueOptions(**options))


def label(prompts, out: str | Path, *, policy="smollm2-135m", judge=None, constitution="general",
          **options: Any) -> dict:
    """RLAIF preference labels into ``out/pairs.jsonl`` (the judge defaults to the policy); returns the
    summary (pairs, mean p_chosen, position consistency)."""
    from cai.feedback.preferences import LabelConfig, label_prompts

    backend = _backend(policy)
    summary = label_prompts(_rows(prompts), policy=backend, judge_backend=_backend(judge) if judge else backend,
                            constitution=_constitution(constitution), out_dir=Path(out),
                            config=LabelConfig(**options))
    return summary.as_dict()


def train_sft(data: str | Path, out: str | Path, *, model: str = "smollm2-135m", **options: Any) -> Path:
    """Fine-tune ``model`` on sft.jsonl; returns the saved model's directory (a model spec)."""
    from cai.train.sft import SFTOptions
    from cai.train.sft import train_sft as train

    return train(data, out, model=model, options=SFTOptions(**options))


def train_reward(pairs: str | Path, out: str | Path, *, model: str = "smollm2-135m", **options: Any) -> dict:
    """A reward model on pairs.jsonl into ``out``; returns its report (held-out accuracy and n)."""
    from cai.train.reward import RewardOptions
    from cai.train.reward import train_reward as train

    return train(pairs, out, model=model, options=RewardOptions(**options)).model_dump()


def train_dpo(pairs: str | Path, out: str | Path, *, model: str = "smollm2-135m", **options: Any) -> Path:
    """DPO on pairs.jsonl; returns the saved model's directory."""
    from cai.train.dpo import DPOOptions
    from cai.train.dpo import train_dpo as train

    return train(pairs, out, model=model, options=DPOOptions(**options))


def refusal_rates(models: Sequence[str], *, harmful="redteam", safe="helpful", limit: int | None = 32,
                  max_new_tokens: int = 64, seed: int = 0) -> dict[str, dict[str, float]]:
    """Evaluation: per model spec, the share of harmful and of safe prompts it refuses (greedy replies)."""
    from cai.evaluation.refusals import refusal_comparison

    sets = {name: [r.prompt for r in _rows(source, limit)] for name, source in (("harmful", harmful),
                                                                               ("safe", safe))}
    reports = refusal_comparison(((str(m), _backend(m)) for m in models), sets, max_new_tokens=max_new_tokens,
                                 seed=seed)
    return {r["model_spec"]: {"harmful_refusal": r["sets"]["harmful"]["refusal_rate"],
                              "safe_refusal": r["sets"]["safe"]["refusal_rate"]} for r in reports}


def _backend(model):
    return load_model(str(model)) if isinstance(model, (str, Path)) else model


def _constitution(c):
    return load_constitution(c) if isinstance(c, (str, Path)) else c


def _rows(prompts, limit: int | None = None):
    """PromptRows from a source spec (file, shipped set, hf:...), or from strings / (id, prompt) pairs."""
    from cai.errors import ConfigError
    from cai.prompts import PromptRow, load_prompts, log_bad_rows

    if isinstance(prompts, (str, Path)):
        rows, bad = load_prompts(str(prompts), limit=limit)
        log_bad_rows(bad)
    else:
        rows = [PromptRow(id=p[0], prompt=p[1]) if isinstance(p, tuple) else PromptRow(id=f"p{i}", prompt=p)
                for i, p in enumerate(prompts)][:limit]
    if not rows:
        raise ConfigError("no usable prompts", where=str(prompts)[:80], fix="pass prompts or a prompt file")
    return rows
