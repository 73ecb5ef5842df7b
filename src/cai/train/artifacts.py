"""What a training stage leaves behind: a plain model directory, its model card and ``cai_model.json``.

A stage trains and saves into ``out_dir/.partial``; only when everything is written are the files moved
into ``out_dir``, ``config.json`` last. ``cai.models.resolve`` accepts a directory only once it has a
``config.json``, so a run that fails or is killed never leaves a half-written model that ``--model``
would load (an older model in ``out_dir`` stays intact until the new one is complete). Under a
multi-process launcher (``accelerate launch``) every process trains, and only the main one prepares,
writes and publishes the directory (``cai.distributed``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

PARTIAL = ".partial"
SCRATCH = "trainer-scratch"  # the trainer's own output_dir inside the staging dir; never published


class ModelCard(BaseModel):
    """What a trained model records about itself (written to README.md and cai_model.json)."""

    model_config = {"protected_namespaces": ()}
    model_id: str
    stage: str
    base: str
    base_path: str
    constitution: dict[str, Any] | None = None
    data: str
    data_sha256: str
    rows: int
    options: dict[str, Any]
    metrics: dict[str, float | int | None] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    world_size: int = Field(default_factory=lambda: _world_size())  # processes that trained it together
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())


UNTRAINED_OPTIONS = {"micro_batch_size", "logging_steps", "save_every"}  # how a run is split or logged


def trained_model_id(base_id: str, stage: str, data_sha256: str, options: dict) -> str:
    """A readable name specific to the data and the training options, e.g. ``smollm2-135m+sft-1a2b3c4d``: two
    seeds, or two learning rates, on the same data are two models with two names. Options that only split or
    log the run (``UNTRAINED_OPTIONS``; the memory guard picks the micro-batch per machine) are left out."""
    import hashlib
    import json

    trained = {k: v for k, v in options.items() if k not in UNTRAINED_OPTIONS}
    digest = hashlib.sha256((data_sha256 + json.dumps(trained, sort_keys=True, default=str)).encode()).hexdigest()
    return f"{base_id}+{stage}-{digest[:8]}"


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """Yield ``out_dir/.partial`` to save into; on success publish its files into ``out_dir``."""
    from cai.distributed import barrier, is_main

    out_dir = Path(out_dir)
    stage = out_dir / PARTIAL
    if is_main():
        shutil.rmtree(stage, ignore_errors=True)  # left by a killed run
        stage.mkdir(parents=True)
    barrier()
    try:
        yield stage
    except BaseException:
        if is_main():
            shutil.rmtree(stage, ignore_errors=True)
        raise
    barrier()  # every process is done with the stage (and with any collective save) before it is published
    if is_main():
        _publish(stage, out_dir)


def _publish(stage: Path, out_dir: Path) -> None:
    shutil.rmtree(stage / SCRATCH, ignore_errors=True)
    (out_dir / "config.json").unlink(missing_ok=True)  # an older model stops being loadable first
    for item in sorted(stage.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    stage.rmdir()


def merged(model):
    """The plain model behind a trained one: LoRA adapters merged into the base weights."""
    from accelerate.utils import is_peft_model

    return model.merge_and_unload() if is_peft_model(model) else model


def save_model_dir(model, tokenizer, dest: Path, card: ModelCard, state_dict=None) -> Path:
    """Write model weights (safetensors), tokenizer, README.md and cai_model.json into ``dest`` (in the
    main process only; ``state_dict``: the full weights where the model's own are sharded)."""
    from cai.distributed import is_main

    dest = Path(dest)
    if not is_main():
        return dest
    model.save_pretrained(dest, state_dict=state_dict)
    tokenizer.save_pretrained(dest)
    (dest / "README.md").write_text(render_card(card), encoding="utf-8")
    (dest / "cai_model.json").write_text(json.dumps(card.model_dump(), indent=2) + "\n", encoding="utf-8")
    return dest


def trained_model(trainer):
    """``(model, state_dict)`` to save after ``trainer.train()``: LoRA merged; under DeepSpeed ZeRO-3 or
    FSDP, where each process holds a shard, the full weights gathered by accelerate (a collective call:
    every process must make it), else ``None`` (the model's own weights are whole)."""
    if not _sharded(trainer):
        return merged(trainer.model), None
    _no_sharded_lora(trainer)
    return trainer.model, trainer.accelerator.get_state_dict(trainer.model_wrapped)


def saved_weights(trainer, source, options):
    """``(model, state_dict)`` to save after training ``source`` with ``options``: ``trained_model``, or for LoRA
    on a bf16 copy of its base (``options.bf16_frozen_base``) the adapters merged into the base's own fp32
    weights, after the trainer has let go of that copy (the stage must hold no other reference to it)."""
    from cai.train.options import bf16_frozen_base

    if not bf16_frozen_base(options):
        return trained_model(trainer)
    adapters = trained_adapters(trainer)
    trainer.model = trainer.model_wrapped = trainer.callback_handler.model = None  # (the Trainer's own references)
    trainer.accelerator.free_memory()  # accelerate's references to the model and optimizer
    return merged_into_fp32_base(source, *adapters), None


def trained_adapters(trainer) -> tuple[dict[str, Any], Any]:
    """The trained LoRA adapters of ``trainer.model`` (fp32 copies on the CPU) and their peft config, to merge
    into a fresh fp32 copy of the base (``merged_into_fp32_base``) once the trainer's model is released."""
    import torch
    from peft import get_peft_model_state_dict

    if _sharded(trainer):
        _no_sharded_lora(trainer)
    model = trainer.model
    weights = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in get_peft_model_state_dict(model).items()}
    return weights, model.peft_config[model.active_adapter]


def merged_into_fp32_base(source, adapters: dict[str, Any], config):
    """``adapters`` (``trained_adapters``) merged into the base model's own fp32 weights, loaded afresh.

    LoRA that trained on a bf16 copy of its frozen base (``weights_dtype(frozen_base=True)``) is merged here,
    not into that copy: upcasting the copy would save every base weight rounded to bf16, and would hold the
    bf16 and the fp32 model at once (the SFT stage's peak). Call it after the training model is released."""
    import torch
    from peft import get_peft_model, set_peft_model_state_dict

    from cai.memory import release
    from cai.models import load_causal_lm

    release()
    model = get_peft_model(load_causal_lm(source, dtype=torch.float32), config)
    missing = [k for k in set_peft_model_state_dict(model, adapters).missing_keys if "lora_" in k]
    if missing:
        raise RuntimeError(f"trained adapters do not fit the base model: {len(missing)} missing, e.g. {missing[0]}")
    return model.merge_and_unload()


def _sharded(trainer) -> bool:
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    kind = accelerator.distributed_type
    return kind == DistributedType.FSDP or (
        kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3)


def _no_sharded_lora(trainer) -> None:
    from accelerate.utils import is_peft_model

    from cai.errors import ConfigError

    if is_peft_model(trainer.model):
        raise ConfigError("LoRA adapters cannot be merged from sharded (ZeRO-3 / FSDP) weights here",
                          fix="train LoRA with DDP or ZeRO-2 (recipes/accelerate/ddp.yaml, zero2.yaml)")


def first_logged(trainer, key: str) -> float | None:
    """The first value of ``key`` in a trainer's log history (e.g. the first step's loss)."""
    return next((float(entry[key]) for entry in trainer.state.log_history if key in entry), None)


def last_logged(trainer, key: str) -> float | None:
    """The most recent value of ``key`` in a trainer's log history (e.g. the last logged loss)."""
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return float(entry[key])
    return None


def _world_size() -> int:
    from cai.distributed import world_size

    return world_size()


def library_versions() -> dict[str, str]:
    """The installed versions of cai and the libraries that shape its results (those not installed left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("cai", "torch", "transformers", "trl", "peft", "datasets"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def render_card(card: ModelCard) -> str:
    """A Hugging Face style model card: YAML front matter, then a table of where the model came from."""
    c = card.constitution
    if c is None:
        constitution = "not recorded in the data"
    elif "mixed" in c:
        constitution = "several: " + ", ".join(_constitution_label(x) for x in c["mixed"])
    else:
        constitution = _constitution_label(c)
    metrics = ", ".join(f"{k} = {_fmt(v)}" for k, v in card.metrics.items()) or "none"
    rows = [
        ("Stage", card.stage),
        ("Base model", f"{card.base} (`{card.base_path}`)"),
        ("Constitution", constitution),
        ("Data", f"`{card.data}` ({card.rows} rows, sha256 `{card.data_sha256}`)"),
        ("Metrics", metrics),
        ("Processes", f"{card.world_size} (data parallel)" if card.world_size > 1 else "1"),
        ("Libraries", ", ".join(f"{k} {v}" for k, v in card.versions.items())),
        ("Created", card.created_at),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"---\nbase_model: {card.base}\nlibrary_name: transformers\n"
        f"tags: [cai, constitutional-ai, {card.stage}]\n---\n\n"
        f"# {card.model_id}\n\n"
        f"Trained by the `cai` toolkit, stage `{card.stage}` ({STAGE_BLURBS.get(card.stage, '')}).\n\n"
        f"| | |\n|---|---|\n{table}\n\n"
        f"## Options\n\n```json\n{json.dumps(card.options, indent=2)}\n```\n"
    )


STAGE_BLURBS = {
    "sft": "SL-CAI: supervised fine-tuning on constitution-guided revisions, loss on response tokens only",
    "reward": "a preference model: one scalar score per (prompt, response), trained on AI preference labels",
    "dpo": "RLAIF by direct preference optimisation on AI-labelled pairs",
    "ppo": "RLAIF by PPO against a reward model trained on AI preference labels, with a KL penalty to the reference",
}


def _constitution_label(c: dict[str, Any]) -> str:
    return f"{c.get('name', '?')} {c.get('version', '?')} (hash `{c.get('hash', '?')}`)"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
