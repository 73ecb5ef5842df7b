"""The memory guard: before a stage loads anything, estimate what it needs against what this machine has free.

A training stage gets the largest micro-batch (at most ``MICRO_BATCH_CAP`` rows, a divisor of its batch) whose
estimate fits; where even one row does not fit, or a generation stage does not fit, the stage stops before
loading anything with a ``MemoryGuardError`` (exit status 2) naming the stage, the estimate, the memory free
and what to change. The estimate goes into the stage's cost ledger (``estimate_mib``) beside the measured peak.

The estimate (bytes) is a sum of parts, each from the model's config and the stage's sizes:

- ``runtime``: the interpreter with torch, transformers and TRL imported (``RUNTIME_BYTES``, measured);
- weights: parameters x bytes per parameter (fp32 for training: master weights);
- training state: fp32 gradients (4 bytes) and AdamW's two moments (8 bytes) per trainable parameter;
- activations of one micro-batch pass: tokens x layers x the bytes a layer keeps per token. With activation
  checkpointing a layer keeps its input (``hidden`` floats) and one layer at a time is recomputed whole;
  without it every layer keeps its intermediates (``ModelShape.layer_floats``);
- generation: the engine's weights in its dtype plus its byte-sized key/value caches.

Reads ``cai.memory.available_bytes`` (free memory, a cgroup's ``memory.max``, ``ulimit -v``), less what this
process already holds that the stage does not add (its resident set counts inside ``runtime``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cai.errors import CaiError
from cai.memory import MIB

log = logging.getLogger(__name__)

RUNTIME_BYTES = 900 * MIB  # python + torch (+ transformers and TRL to train), a tokenizer, prompts and records,
                           # what a run's earlier stages leave on the heap (measured in the quickstart's process)
HEADROOM = 0.9  # plan for at most this share of what is free: the estimate is an estimate
ADAM_BYTES = 8  # two fp32 moments per trainable parameter
GRAD_BYTES = 4
LOGIT_COPIES = 4  # fp32 logits, their log-softmax, and the gradients of both in the backward pass

recorded: list[Estimate] = []  # estimates made during the current stage: the ledger reads and clears it


class MemoryGuardError(CaiError):
    """A stage would need more memory than this machine has free: stopped before it loaded anything."""


@dataclass
class Estimate:
    stage: str
    parts: dict[str, int] = field(default_factory=dict)  # name -> bytes
    micro_batch: int | None = None

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / MIB:.0f}" for k, v in self.parts.items())
        return f"{self.total / MIB:.0f} MiB ({parts})"


@dataclass
class ModelShape:
    """What the estimate needs to know about a model."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # key/value heads x head size
    heads: int = 1
    vocab: int = 0

    @classmethod
    def from_config(cls, cfg) -> ModelShape:
        """From a transformers config or its dict (Llama-style names; others through the config's aliases)."""

        from cai.backends.engine import config_value

        def get(key, default=None):
            return config_value(cfg, key, default)

        hidden, layers = get("hidden_size"), get("num_hidden_layers")
        heads = get("num_attention_heads")
        head_dim = get("head_dim") or hidden // heads
        kv_dim = get("num_key_value_heads", heads) * head_dim
        inter = get("intermediate_size") or get("n_inner") or 4 * hidden
        vocab = get("vocab_size")
        tied = get("tie_word_embeddings", True)
        per_layer = hidden * (heads * head_dim) * 2 + hidden * kv_dim * 2 + 3 * hidden * inter + 2 * hidden
        params = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
        return cls(params, layers, hidden, inter, kv_dim, heads, vocab)

    def layer_floats(self, row_tokens: int) -> int:
        """Floats one decoder layer keeps per token for the backward pass: norms, q/k/v, attention output, the
        MLP's gate, up, activation and product, the residuals, and the attention weights over the row
        (a CPU's attention keeps them), with 60% more for copies and the allocator's slack (measured on
        SmolLM2-135M: the formula alone gave 0.35-0.6 of the activations seen)."""
        return int(1.6 * (6 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate + self.heads * row_tokens))


def training_estimate(stage: str, shape: ModelShape, *, micro_batch: int, row_tokens: int, seqs_per_row: int = 1,
                      trainable: int | None = None, weight_bytes: int = 4, checkpointing: bool = True,
                      logit_tokens: int = 0, extra: dict[str, int] | None = None) -> Estimate:
    """The memory a training stage needs: ``micro_batch`` rows of ``row_tokens`` tokens per pass, each row
    ``seqs_per_row`` sequences (2 for DPO: chosen and rejected); ``trainable``: trainable parameters (all by
    default; LoRA trains a few); ``logit_tokens``: tokens per sequence whose whole-vocabulary logits the loss
    holds (PPO's response tokens; SFT and DPO compute theirs in chunks, ``cai.train.lean_head``);
    ``extra``: parts that do not depend on the micro-batch (a reference model, a reward model)."""
    trainable = shape.params if trainable is None else trainable
    tokens = micro_batch * row_tokens * seqs_per_row
    if checkpointing:  # a layer input per layer, plus one layer recomputed whole during the backward pass
        act_floats = tokens * (shape.layers * shape.hidden * 2 + shape.layer_floats(row_tokens))
    else:
        act_floats = tokens * shape.layers * shape.layer_floats(row_tokens)
    largest = max(shape.params - shape.layers * (3 * shape.hidden * shape.intermediate), 0)  # the embedding
    return Estimate(stage, {
        "runtime": RUNTIME_BYTES,
        "weights": shape.params * weight_bytes,
        "gradients": trainable * GRAD_BYTES,
        "optimizer": trainable * ADAM_BYTES,
        "activations": act_floats * 4,
        "optimizer step": min(largest, trainable) * GRAD_BYTES * 2,  # AdamW's temporaries for the largest tensor
        **({"logits": micro_batch * seqs_per_row * logit_tokens * shape.vocab * 4 * LOGIT_COPIES}
           if logit_tokens else {}),
        **(extra or {}),
    }, micro_batch)


def generation_estimate(stage: str, shape: ModelShape, *, weight_bytes: int, models: int = 1) -> Estimate:
    """The memory a generation stage needs: ``models`` backends, each with its weights and byte-sized caches."""
    from cai.backends.engine import BATCH_CACHE_BYTES, PREFIX_STORE_BYTES

    return Estimate(stage, {"runtime": RUNTIME_BYTES,
                            "weights": models * shape.params * weight_bytes,
                            "key/value caches": models * (BATCH_CACHE_BYTES + PREFIX_STORE_BYTES)})


def room() -> tuple[int | None, str]:
    """(bytes a stage may add to this process, what limits it); None where nothing can be read."""
    from cai.memory import available_bytes

    return available_bytes()


def _needs(estimate: Estimate, held: int) -> int:
    """Bytes the stage will add to a process already holding ``held`` bytes (counted inside ``runtime``)."""
    return max(estimate.total - held, estimate.total - estimate.parts.get("runtime", 0))


def fits(estimate: Estimate, free: int | None, held: int) -> bool:
    return free is None or _needs(estimate, held) <= free * HEADROOM


def fit_micro_batch(stage: str, shape: ModelShape, *, batch_size: int, wanted: int | None, cap: int,
                    fix: str, **sizes) -> Estimate:
    """The estimate at the largest micro-batch that fits (a divisor of ``batch_size``, at most ``wanted`` or
    ``cap``), recorded for the ledger; raises ``MemoryGuardError`` when one row does not fit either."""
    from cai.memory import rss_bytes

    free, limit = room()
    held = rss_bytes() or 0
    top = min(wanted or cap, batch_size)
    candidates = [m for m in range(top, 0, -1) if batch_size % m == 0]
    for m in candidates:
        estimate = training_estimate(stage, shape, micro_batch=m, **sizes)
        if fits(estimate, free, held):
            if wanted and m < wanted:
                log.warning("%s: micro_batch_size %d needs %s, more than %s allows (%.0f MiB); using %d", stage,
                            wanted, training_estimate(stage, shape, micro_batch=wanted, **sizes).describe(), limit,
                            (free or 0) / MIB, m)
            return record(estimate, free, limit)
    smallest = training_estimate(stage, shape, micro_batch=1, **sizes)
    raise _too_big(smallest, free, limit, held, fix)


def check(estimate: Estimate, fix: str) -> Estimate:
    """Record ``estimate``, or raise ``MemoryGuardError`` when it does not fit."""
    from cai.memory import rss_bytes

    free, limit = room()
    held = rss_bytes() or 0
    if not fits(estimate, free, held):
        raise _too_big(estimate, free, limit, held, fix)
    return record(estimate, free, limit)


def record(estimate: Estimate, free: int | None, limit: str) -> Estimate:
    recorded.append(estimate)
    log.info("memory guard: %s needs about %s%s; %s MiB free (%s)", estimate.stage, estimate.describe(),
             f" at micro-batch {estimate.micro_batch}" if estimate.micro_batch else "",
             "?" if free is None else f"{free / MIB:.0f}", limit)
    return estimate


def _too_big(estimate: Estimate, free: int | None, limit: str, held: int, fix: str) -> MemoryGuardError:
    need = _needs(estimate, held)
    return MemoryGuardError(
        f"stage {estimate.stage} needs about {need / MIB:.0f} MiB more than this process holds (estimate "
        f"{estimate.describe()}), and {limit} leaves {(free or 0) / MIB:.0f} MiB; stopped before loading "
        "anything, nothing is lost", where=f"stage {estimate.stage}",
        fix=f"{fix}; or free memory and run the same command again: finished stages are kept and it resumes")


def shape_of(source) -> ModelShape:
    """The shape of a resolved model (``cai.models.resolve``) or of a model directory, from its config."""
    from transformers import AutoConfig

    return ModelShape.from_config(AutoConfig.from_pretrained(getattr(source, "path", source)))


def longest_tokens(tokenizer, conversations: list[list[dict]], max_length: int, sample: int = 16) -> int:
    """Tokens of the longest conversation as the chat template renders it (measured on the ``sample`` longest
    by characters), at most ``max_length``."""
    longest = sorted(conversations, key=lambda c: sum(len(m["content"]) for m in c), reverse=True)[:sample]
    counts = [len(tokenizer(tokenizer.apply_chat_template(c, tokenize=False))["input_ids"]) for c in longest]
    return min(max(counts, default=1), max_length)


def fit_training(stage: str, source, tokenizer, options, conversations: list[list[dict]], seqs_per_row: int = 1,
                 frozen_base: bool = False):
    """``options`` with the micro-batch the guard chose for a training stage on ``conversations`` (or a
    ``MemoryGuardError`` before anything is loaded); ``frozen_base`` as in ``weights_dtype``."""
    from cai.train.options import MICRO_BATCH_CAP, weights_dtype

    shape = shape_of(source)
    trainable = shape.params // 50 if options.lora else None  # LoRA adapters: a small share of the weights
    estimate = fit_micro_batch(
        stage, shape, batch_size=options.batch_size, wanted=options.micro_batch_size, cap=MICRO_BATCH_CAP,
        fix=f"set {stage}.micro_batch_size to 1 (--micro-batch-size 1), a smaller {stage}.max_length, or "
            f"{stage}.lora: true (trains adapters only)",
        row_tokens=longest_tokens(tokenizer, conversations, options.max_length), seqs_per_row=seqs_per_row,
        trainable=trainable, weight_bytes=weights_dtype(options, frozen_base=frozen_base).itemsize,
        checkpointing=options.gradient_checkpointing)
    return options.model_copy(update={"micro_batch_size": estimate.micro_batch})


def fit_rl(stage: str, shape: ModelShape, tokenizer, prompts: list[list[dict]], *, batch_size: int, wanted: int | None,
           max_new_tokens: int, lora: bool, checkpointing: bool, extra: dict[str, int], fix: str) -> Estimate:
    """The estimate at the largest micro-batch that fits for an online RL stage (PPO, GRPO, RLOO) training a
    policy of ``shape`` on ``prompts``: a pass holds ``micro`` rollouts of the longest prompt plus
    ``max_new_tokens``, with the whole-vocabulary logits of their response tokens; ``extra``: the reference,
    rollout and reward models' bytes (``rl_model_parts``). Raises ``MemoryGuardError`` before anything is
    loaded when one rollout does not fit."""
    from cai.train.options import MICRO_BATCH_CAP

    prompt_tokens = longest_tokens(tokenizer, prompts, max_length=1_000_000)
    return fit_micro_batch(stage, shape, batch_size=batch_size, wanted=wanted, cap=MICRO_BATCH_CAP, fix=fix,
                           row_tokens=prompt_tokens + max_new_tokens, logit_tokens=max_new_tokens,
                           trainable=shape.params // 50 if lora else None, checkpointing=checkpointing,
                           extra=extra)


def rl_model_parts(policy: ModelShape, *, reference_bytes: int, rollout_bytes: int, reward=None,
                   reward_bytes: int = 4) -> dict[str, int]:
    """Bytes an online RL stage holds besides the policy it trains: a frozen reference at ``reference_bytes``
    per parameter (0: none, e.g. LoRA switches its adapters off instead), a rollout copy or decoder snapshot
    at ``rollout_bytes`` (0: none) with its key/value caches, and a reward model (a directory or resolved
    model; None: a function or a served scorer) at ``reward_bytes`` per parameter."""
    from cai.backends.engine import BATCH_CACHE_BYTES

    parts = {}
    if reference_bytes:
        parts["reference"] = policy.params * reference_bytes
    if rollout_bytes:
        parts["rollout weights"] = policy.params * rollout_bytes + BATCH_CACHE_BYTES
    if reward is not None:
        parts["reward model"] = shape_of(reward).params * reward_bytes
    return parts
