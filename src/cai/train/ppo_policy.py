"""The actor-critic for PPO: a causal LM with a linear value head, its frozen reference, and rollouts.

TRL's value-head model (``AutoModelForCausalLMWithValueHead``) went with its PPO trainer, so the value
head is written here: one linear layer on the policy's last hidden state, sharing the trunk. One
forward pass through the trunk gives both the response tokens' log-probs and the values, and the
vocabulary projection runs on the response positions only.

The reference policy is a frozen copy of the initial weights, or, with LoRA, the same model with its
adapter switched off (peft's ``disable_adapter()``), which costs no memory at all. Under bf16 autocast the
copy keeps its decoder's linear weights in bf16, which is exact: autocast runs those matmuls in bf16 from
fp32 weights too; the embeddings (the tied output head) and norms stay fp32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LORA_TARGETS = "all-linear"


@dataclass
class ActorCritic:
    """The trainable policy (a transformers causal LM, maybe wrapped by peft), its value head and reference.

    ``ref`` is a frozen copy of the initial policy, or ``None`` with LoRA (the adapter is switched off
    instead). ``rollout_model`` generates responses: the policy itself, or a low-precision copy of its
    weights refreshed after each update (``sync_rollout_model``).
    """

    model: Any  # transformers PreTrainedModel or peft PeftModel
    value_head: Any  # torch.nn.Linear(hidden, 1)
    ref: Any | None
    rollout_model: Any
    autocast_dtype: Any | None  # run forward passes under torch.autocast in this dtype; None: as stored
    rollout_dtype: Any = None  # the dtype rollouts compute in (the lean decoder's snapshot is taken in it)

    @property
    def causal_lm(self):
        """The transformers model inside (with LoRA layers injected when peft wraps it)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def trainable_parameters(self) -> list:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return params + list(self.value_head.parameters())

    def autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device_type = next(self.value_head.parameters()).device.type
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    def reference(self):
        """A context in which ``ref_model`` computes the reference policy's log-probs."""
        if self.ref is not None:
            return contextlib.nullcontext(self.ref)
        return _adapter_off(self.model)

    def sync_rollout_model(self) -> None:
        """Copy the updated policy weights into the low-precision rollout copy (if there is one)."""
        if self.rollout_model is self.causal_lm:
            return
        import torch

        with torch.no_grad():
            source = dict(self.causal_lm.named_parameters())
            for name, param in self.rollout_model.named_parameters():
                param.copy_(source[name])


@contextlib.contextmanager
def _adapter_off(peft_model):
    with peft_model.disable_adapter():
        yield peft_model.get_base_model()


def build_actor_critic(causal_lm, *, lora: bool, lora_r: int, rollout_dtype, autocast_dtype, seed: int,
                       rollout_copy: bool = True):
    """Wrap a loaded fp32 causal LM for PPO: add the value head, the reference, LoRA and a rollout copy.

    Trainable weights stay fp32 (optimiser updates of ~1e-6 vanish in bf16). With ``rollout_dtype``
    other than fp32 the rollouts run on a copy stored in that dtype (bf16 generation is faster on a CPU
    with AVX512-BF16), unless ``rollout_copy`` is off: the lean decoder takes its own snapshot of the
    policy in that dtype each step, so a second copy would only hold memory. ``autocast_dtype`` runs the
    scoring and training passes under autocast.
    """
    import torch

    torch.manual_seed(seed)
    hidden = causal_lm.config.get_text_config().hidden_size
    device = causal_lm.device
    value_head = torch.nn.Linear(hidden, 1).to(device)
    torch.nn.init.normal_(value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
    torch.nn.init.zeros_(value_head.bias)
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=LORA_TARGETS,
                            task_type="CAUSAL_LM")
        model, ref = get_peft_model(causal_lm, config), None
    else:
        model, ref = causal_lm, _frozen_copy(causal_lm, linear_dtype=autocast_dtype)
    model.eval()  # no dropout: rollout and update passes must see the same function
    base = model.get_base_model() if lora else model
    rollout = base
    if rollout_copy and rollout_dtype is not None and rollout_dtype != torch.float32 and not lora:
        rollout = _frozen_copy(base).to(rollout_dtype)
    return ActorCritic(model, value_head, ref, rollout, autocast_dtype, rollout_dtype)


def _frozen_copy(model, linear_dtype=None):
    """A frozen copy of ``model``; with ``linear_dtype``, its decoder's linear weights stored in that dtype
    (for passes under autocast to ``linear_dtype``, which computes those matmuls in it anyway)."""
    import torch

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    if linear_dtype is not None:
        for module in ref.get_decoder().modules():
            if isinstance(module, torch.nn.Linear):
                module.to(linear_dtype)
    return ref


def forward_response(causal_lm, value_head, input_ids, attention_mask, query_len: int, temperature: float,
                     *, with_entropy: bool = False):
    """Log-probs of the response tokens and the values of the states before them, in one trunk pass.

    input_ids, attention_mask [B, Q + T] (left-padded query of length Q, then the right-padded response)
    -> dict with ``logp`` [B, T], ``values`` [B, T] (when value_head is given) and ``entropy`` [B, T]
    (when asked). Position ids follow the attention mask, as in ``generate``, so left padding does not
    shift positions. Under bf16 autocast only the trunk runs in bf16: its residual stream stays fp32
    and the vocabulary and value heads run in fp32, so log-probs keep fp32 resolution.
    """
    import torch

    from cai.train.ppo_losses import entropy_from_logits, logprobs_from_logits

    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    trunk = causal_lm.get_decoder()
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   use_cache=False).last_hidden_state
    states = hidden[:, query_len - 1 : -1]  # the state before each response token
    with torch.autocast(states.device.type, enabled=False):  # heads in full precision, even under autocast
        states = states.float()
        logits = causal_lm.get_output_embeddings()(states)
        values = value_head(states).squeeze(-1) if value_head is not None else None
    out = {"logp": logprobs_from_logits(logits, input_ids[:, query_len:], temperature)}
    if values is not None:
        out["values"] = values
    if with_entropy:
        out["entropy"] = entropy_from_logits(logits, temperature)
    return out


def response_mask(responses, eos_ids: set[int]):
    """1.0 on each response token up to and including the first end-of-sequence token.

    responses [B, T] (token ids) -> [B, T] float.
    """
    import torch

    is_eos = torch.zeros_like(responses, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= responses == eos
    ended_before = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~ended_before).float()


def eos_token_ids(tokenizer, causal_lm) -> set[int]:
    ids = causal_lm.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@dataclass
class Rollout:
    """One batch of sampled responses: the tensors PPO trains on and the texts the reward model reads.

    input_ids, attention_mask [B, Q + T]; mask [B, T] marks the response tokens; ended [B] is True
    where the response stopped with an end-of-sequence token (False: cut at max_new_tokens).
    """

    input_ids: Any
    attention_mask: Any
    query_len: int
    mask: Any
    ended: Any
    texts: list[str]


def sample_responses(rollout_model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int,
                     temperature: float, top_p: float, eos_ids: set[int]) -> Rollout:
    """Generate one response per prompt in a single batched, left-padded ``generate`` call.

    Sampling is plain temperature (and top-p) sampling with top-k off, so the tokens come from the
    distribution whose log-probs PPO computes. Seed torch before calling for reproducible samples.
    """
    import torch
    from transformers import GenerationConfig

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, padding=True,
                                            return_tensors="pt", return_dict=True)
    finally:
        tokenizer.padding_side = side
    device = rollout_model.device
    input_ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                              max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=sorted(eos_ids), bos_token_id=tokenizer.bos_token_id)
    with torch.no_grad():
        out = rollout_model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
    query_len = input_ids.shape[1]
    responses = out[:, query_len:]
    mask = response_mask(responses, eos_ids)
    ended = torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    for eos in eos_ids:
        ended |= (responses == eos).any(1)
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
    full_attention = torch.cat([attention, mask.long()], dim=1)
    texts = [tokenizer.decode(r[m.bool()], skip_special_tokens=True)
             for r, m in zip(responses, mask, strict=True)]
    return Rollout(torch.cat([input_ids, responses], dim=1), full_attention, query_len, mask, ended, texts)


def sample_responses_lean(rollout_model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int,
                          temperature: float, top_p: float, eos_ids: set[int], seed: int, dtype=None,
                          prepack: bool = True) -> Rollout:
    """``sample_responses`` through cai's lean decoder (``cai.backends.engine``) over a snapshot of the
    rollout weights: packed prefill, finished rows dropped, keyed sampling. On the 135M model's CPU
    rollouts it is several times faster than ``generate``; tokens come from the same distribution
    (temperature, exact nucleus, no top-k). ``seed`` keys the draws (with each prompt's tokens); the k-th
    repeat (k >= 1) of a prompt in one batch draws under a seed hashed from (``seed``, k), so repeats get
    their own responses, and none shares its key with another step's seed (``seed + k`` would). ``dtype``:
    the snapshot's dtype (default: the model's).
    """
    import torch

    from cai.backends.base import SamplingParams
    from cai.backends.engine import LlamaEngine
    from cai.backends.transformers import TransformersBackend, row_seed

    engine = LlamaEngine.from_model(rollout_model, dtype=dtype, prepack=prepack)
    backend = TransformersBackend(None, tokenizer, "rollout", engine=engine, batch_size=len(prompts),
                                  eos_ids=sorted(eos_ids))
    queries = [backend.encode_chat(p) for p in prompts]
    repeat: dict[tuple[int, ...], int] = {}
    by_repeat: dict[int, list[int]] = {}
    for i, q in enumerate(queries):
        k = repeat[tuple(q)] = repeat.get(tuple(q), -1) + 1
        by_repeat.setdefault(k, []).append(i)
    generated: list[list[int]] = [[] for _ in queries]
    for k, rows in sorted(by_repeat.items()):
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                do_sample=True, seed=seed if k == 0 else row_seed(seed, [k]))
        for i, c in zip(rows, backend.generate_ids([queries[i] for i in rows], params, progress=False),
                        strict=True):
            generated[i] = c.token_ids + ([c.eos_id] if c.eos_id is not None else [])

    input_ids, attention, _ = backend._left_padded(queries)  # on the engine's (the rollout model's) device
    width = max(map(len, generated))
    responses = torch.full((len(queries), width), backend.pad_id, dtype=torch.long)
    mask = torch.zeros(len(queries), width)
    for b, g in enumerate(generated):
        responses[b, : len(g)], mask[b, : len(g)] = torch.tensor(g, dtype=torch.long), 1.0
    ended = torch.tensor([bool(g) and g[-1] in eos_ids for g in generated])
    texts = [tokenizer.decode(g, skip_special_tokens=True) for g in generated]
    responses, mask, ended = responses.to(input_ids.device), mask.to(input_ids.device), ended.to(input_ids.device)
    full_attention = torch.cat([attention, mask.long()], dim=1)
    return Rollout(torch.cat([input_ids, responses], dim=1), full_attention, input_ids.shape[1], mask, ended, texts)


def checked_rollout_engine(model, tokenizer, dtype):
    """The rollout snapshot path (prepacked or not, in ``dtype``) that passes the engine's self-check on this
    machine (``cai.backends.engine_check``; the reference is the fp32 policy itself), or None."""
    import copy

    import torch

    from cai.backends import engine_check
    from cai.backends.engine import LlamaEngine
    from cai.backends.transformers import encode_chat

    def reference():
        return model if model.dtype == torch.float32 else copy.deepcopy(model).float()

    engine, _ = engine_check.choose_engine(
        model.config.to_dict(), [lambda: LlamaEngine.from_model(model, dtype=dtype),
                                 lambda: LlamaEngine.from_model(model, dtype=dtype, prepack=False)],
        lambda c: encode_chat(tokenizer, c), reference)
    return engine
