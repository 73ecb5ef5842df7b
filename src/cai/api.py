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
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from cai.backends.base import Backend
    from cai.constitution import Constitution

# what the calls accept (names, not imports: `import cai` stays light)
ModelLike = Union["Backend", str, Path]  # a loaded backend or a model spec
ConstitutionLike = Union["Constitution", str, Path]  # a loaded constitution, a YAML file or a shipped name
Prompts = str | Path | Sequence[str | tuple[str, str]]  # a source, or strings / (id, prompt) pairs


def load_constitution(path_or_name: str | Path) -> Constitution:
    """Load and validate a constitution.

    Args:
        path_or_name: a YAML file, or a shipped name (general, seed, redteam, customer-service).

    Returns:
        The validated ``Constitution``.

    Raises:
        ConfigError: the file is missing or invalid (the message names the line, the field and a fix).
    """
    from cai.constitution import load_constitution as load

    return load(path_or_name)


def load_model(spec: str = "smollm2-135m", **options: Any) -> Backend:
    """Load a model as a generation backend (``generate``, ``option_logprobs``).

    Args:
        spec: the embedded name, a local directory, a .gguf file, a Hub id or ``openai:MODEL@URL``.
        **options: backend options: ``dtype``, ``batch_size``, ``device``.

    Returns:
        The backend; pass it to the other calls to load the model once.
    """
    from cai.backends import load_backend

    return load_backend(spec, **options)


def generate(model: ModelLike, prompts: Sequence[str], *, max_new_tokens: int = 256, temperature: float = 0.7,
             top_p: float = 0.95, seed: int = 0, system_prompt: str | None = None) -> list[str]:
    """Generate one reply per prompt.

    Args:
        model: a backend from ``load_model``, or a model spec.
        prompts: the user messages, one conversation each.
        max_new_tokens: token budget of each reply.
        temperature: sampling temperature (0: greedy).
        top_p: nucleus sampling threshold.
        seed: sampling seed (each row is seeded from it and its prompt).
        system_prompt: a system turn before each prompt.

    Returns:
        The replies, in the order of ``prompts``.
    """
    from cai.backends.base import SamplingParams
    from cai.generation import conversation

    backend = _backend(model)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            do_sample=temperature > 0, seed=seed)
    return [c.text for c in backend.generate([conversation(p, system_prompt) for p in prompts], params)]


def critique_revise(prompts: Prompts, out: str | Path, *, model: ModelLike = "smollm2-135m",
                    constitution: ConstitutionLike = "general", **options: Any) -> dict:
    """Answer, critique and revise each prompt (SL-CAI) into ``out``: records.jsonl and sft.jsonl.

    Args:
        prompts: strings, (id, prompt) pairs, or a source (a file, a shipped set, ``hf:owner/name``).
        out: the output directory; a call into one that holds part of the work resumes it.
        model: a backend or a model spec.
        constitution: a ``Constitution``, a YAML file or a shipped name.
        **options: ``CritiqueOptions`` fields (``rounds``, ``max_new_tokens``, ``temperature``, ...).

    Returns:
        The summary counts (prompts, usable revisions, problems).
    """
    from cai.critique import CritiqueOptions, run_critique
    from cai.prompts import id_text

    rows = _rows(prompts)
    return run_critique(id_text(rows), Path(out), backend=_backend(model),
                        constitution=_constitution(constitution), options=CritiqueOptions(**options))


def label(prompts: Prompts, out: str | Path, *, policy: ModelLike = "smollm2-135m", judge: ModelLike | None = None,
          constitution: ConstitutionLike = "general", **options: Any) -> dict:
    """Sample response pairs and label them with the AI judge (RLAIF) into ``out/pairs.jsonl``.

    Args:
        prompts: strings, (id, prompt) pairs, or a source (a file, a shipped set, ``hf:owner/name``).
        out: the output directory; a call into one that holds part of the work resumes it.
        policy: the backend or model spec that writes the responses.
        judge: the backend or model spec that labels them (default: the policy).
        constitution: a ``Constitution``, a YAML file or a shipped name.
        **options: ``LabelConfig`` fields (``max_new_tokens``, ``seed``, ``judge``, ...).

    Returns:
        The summary: pairs, mean p_chosen, position consistency.
    """
    from cai.feedback.preferences import LabelConfig, label_prompts

    backend = _backend(policy)
    summary = label_prompts(_rows(prompts), policy=backend, judge_backend=_backend(judge) if judge else backend,
                            constitution=_constitution(constitution), out_dir=Path(out),
                            config=LabelConfig(**options))
    return summary.as_dict()


def train_sft(data: str | Path, out: str | Path, *, model: str = "smollm2-135m", **options: Any) -> Path:
    """Fine-tune a model on SL-CAI revisions (loss on the response tokens only).

    Args:
        data: an sft.jsonl from ``critique_revise`` or ``cai critique``.
        out: the directory to save the model into.
        model: the starting model spec.
        **options: ``SFTOptions`` fields (``max_steps``, ``learning_rate``, ``lora``, ...).

    Returns:
        The saved model's directory, usable as a model spec.
    """
    from cai.train.sft import SFTOptions
    from cai.train.sft import train_sft as train

    return train(data, out, model=model, options=SFTOptions(**options))


def train_reward(pairs: str | Path, out: str | Path, *, model: str = "smollm2-135m", **options: Any) -> dict:
    """Train a reward model on soft preference labels.

    Args:
        pairs: a pairs.jsonl from ``label`` or ``cai label``.
        out: the directory to save the reward model into.
        model: the model spec to start from.
        **options: ``RewardOptions`` fields.

    Returns:
        Its report: held-out accuracy and the number of pairs it was measured on.
    """
    from cai.train.reward import RewardOptions
    from cai.train.reward import train_reward as train

    return train(pairs, out, model=model, options=RewardOptions(**options)).model_dump()


def train_dpo(pairs: str | Path, out: str | Path, *, model: str = "smollm2-135m", **options: Any) -> Path:
    """Train a policy with DPO on labelled pairs.

    Args:
        pairs: a pairs.jsonl from ``label`` or ``cai label``.
        out: the directory to save the policy into.
        model: the starting policy (usually the SFT model's directory).
        **options: ``DPOOptions`` fields.

    Returns:
        The saved model's directory, usable as a model spec.
    """
    from cai.train.dpo import DPOOptions
    from cai.train.dpo import train_dpo as train

    return train(pairs, out, model=model, options=DPOOptions(**options))


def refusal_rates(models: Sequence[ModelLike], *, harmful: str = "redteam", safe: str = "helpful",
                  limit: int | None = 32, max_new_tokens: int = 64, seed: int = 0) -> dict[str, dict[str, float]]:
    """Measure how often each model refuses harmful and safe prompts (greedy replies).

    Args:
        models: model specs (or backends) to compare.
        harmful: the harmful prompt source (a shipped set and split, or a file).
        safe: the safe prompt source.
        limit: use only the first N prompts of each set (None: all).
        max_new_tokens: token budget of each reply.
        seed: sampling seed.

    Returns:
        Per model spec: ``harmful_refusal`` and ``safe_refusal`` rates.
    """
    from cai.evaluation.refusal_rates import refusal_comparison

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
