"""The transformers backend: real batching for chat generation and option log-prob scoring.

Why not ``model.generate``: on a CPU, a batch is only as fast as its slowest row. This loop (1) sorts
conversations by length so a batch holds similar lengths (little left padding), (2) removes rows from the
batch and from the KV cache the moment they finish, so a batch never keeps computing for finished
sequences, (3) samples each row from its own seeded generator, so a conversation's completion depends on
the seed and its own text, not on which other prompts share its batch (resumed runs reproduce), and
(4) runs in the fastest accurate dtype (bf16 on CPUs with AVX512-BF16, where matmuls are ~2.6x fp32).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from cai.backends.base import Completion, Conversation, SamplingParams
from cai.errors import ModelError

log = logging.getLogger(__name__)


def row_seed(seed: int, token_ids: Sequence[int]) -> int:
    """A per-conversation seed: the run seed mixed with a hash of the prompt tokens."""
    h = hashlib.sha256(f"{seed}:".encode() + bytes(str(list(token_ids)), "ascii")).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), at most ``batch_size`` rows each
    and, if given, at most ``max_tokens`` padded tokens per batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        if cur is not None and len(cur) < batch_size and (
            max_tokens is None or lengths[cur[0]] * (len(cur) + 1) <= max_tokens
        ):
            cur.append(i)
        else:
            batches.append([i])
    return batches


def pad_groups(lengths: Sequence[int], waste: float = 0.25, min_tokens: int = 2048) -> list[tuple[int, int]]:
    """Split rows sorted by length (longest first) into contiguous groups [lo, hi) to encode together.

    A group closes when the next row is more than ``waste`` shorter than the group's longest and the
    group already holds ``min_tokens`` padded tokens (small groups are not worth a separate pass).
    """
    groups: list[tuple[int, int]] = []
    lo = 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or (lengths[i] < (1 - waste) * lengths[lo] and lengths[lo] * (i - lo) >= min_tokens):
            groups.append((lo, i))
            lo = i
    return groups


_M31 = 0x7FFF_FFFF


def token_uniforms(token_ids, key: int):
    """Uniform(0, 1) noise for each token id under ``key``: a counter-based hash, so a token's noise does
    not depend on which other candidates were considered or in what order."""
    x = (token_ids + key) & _M31
    for _ in range(3):
        x = (x * 1103515245 + 12345) & _M31
        x = x ^ (x >> 16)
    return (x.double() + 0.5) / (_M31 + 1)


def sample_next(logits, params: SamplingParams, keys: list[int], top_k: int = 256) -> list[int]:
    """Next token per row: greedy, or temperature + nucleus (top-p) sampling keyed per row and step.

    logits: [B, V] float; keys: one int per row (mix of the row's seed and the step). Returns B token ids.
    The nucleus is searched among the ``top_k`` most likely tokens (sorting the whole vocabulary costs more
    than the model's forward on a CPU); a row whose top_k tokens hold less than ``top_p`` of the mass falls
    back to the full vocabulary, so the result is exact. Each row draws by the Gumbel-max trick with noise
    indexed by token id (``token_uniforms``), so the draw depends on the row's seed and its own
    probabilities only, not on batch composition.
    """
    import torch

    if not params.do_sample or params.temperature <= 0:
        return logits.argmax(-1).tolist()
    scaled = logits.float() / params.temperature
    log_z = scaled.logsumexp(-1, keepdim=True)
    k = min(top_k, scaled.shape[-1])
    top_l, top_i = scaled.topk(k, dim=-1)  # sorted, descending
    top_p = (top_l - log_z).exp()
    mass = top_p.sum(-1)
    key_t = torch.tensor(keys, dtype=torch.long, device=top_i.device)[:, None]
    picks = _gumbel_pick(top_p, top_i, key_t, params.top_p).tolist()
    full = k < scaled.shape[-1] and params.top_p >= 1.0
    for b in range(len(keys)):  # rows whose nucleus reaches past the top_k: the whole vocabulary, sorted
        if full or float(mass[b]) < params.top_p:
            p_row, i_row = (scaled[b] - log_z[b]).exp().sort(descending=True)
            picks[b] = int(_gumbel_pick(p_row[None], i_row[None], key_t[b:b + 1], params.top_p)[0])
    return picks


def _gumbel_pick(probs, ids, keys, top_p: float):
    """Per row, the Gumbel-max draw among ``ids`` (sorted by ``probs``, descending) cut to the nucleus.

    probs, ids: [B, K]; keys: [B, 1] long. Returns [B] token ids.
    """
    if top_p < 1.0:
        probs = probs * (probs.cumsum(-1) - probs < top_p)  # always keeps the top token
    gumbel = -(-token_uniforms(ids, keys).log()).log()
    return ids.gather(-1, (probs.double().log() + gumbel).argmax(-1, keepdim=True)).squeeze(-1)


def step_key(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) & _M31


class TransformersBackend:
    """A local Hugging Face causal LM behind the ``Backend`` contract."""

    def __init__(self, model, tokenizer, model_id: str, *, batch_size: int = 64, max_batch_tokens: int = 65536):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.device = next(model.parameters()).device
        self._eos = {t for t in _as_list(tokenizer.eos_token_id) + _as_list(model.generation_config.eos_token_id)}
        self._option_ids: dict[tuple[str, ...], list[list[int]]] = {}
        from cai.backends import engine

        self.engine = engine.LlamaEngine(model) if engine.supports(model) else None
        self.prefix_store = engine.PrefixStore()
        log.debug("fast engine: %s", "on" if self.engine else "off (model's own forward)")

    @classmethod
    def load(cls, spec: str | None = None, *, dtype=None, device: str | None = None, batch_size: int = 64,
             trust_remote_code: bool = False) -> TransformersBackend:
        from cai import models

        source = models.resolve(spec)
        device = device or models.default_device()
        dtype = models.parse_dtype(dtype, device) if isinstance(dtype, str) or dtype is None else dtype
        tok = models.load_tokenizer(source, trust_remote_code=trust_remote_code)
        model = models.load_causal_lm(source, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        log.info("loaded %s (%s) on %s as %s", source.model_id, source.path, device, dtype)
        return cls(model, tok, source.model_id, batch_size=batch_size)

    # ---- rendering -------------------------------------------------------------------------------

    def encode_chat(self, conversation: Conversation, prefix: str = "") -> list[int]:
        """Token ids of a conversation rendered with the chat template, an assistant turn opened."""
        text = self.tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text + prefix, add_special_tokens=False)["input_ids"]

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams, *,
                 desc: str = "generating", progress: bool = True) -> list[Completion]:
        prompts = [self.encode_chat(c) for c in conversations]
        return self.generate_ids(prompts, params, desc=desc, progress=progress)

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, *, desc: str = "generating",
                     progress: bool = True) -> list[Completion]:
        from cai.logs import progress as bar

        out: list[Completion | None] = [None] * len(prompts)
        lengths = [len(p) + params.max_new_tokens for p in prompts]  # cache positions a row can fill
        batches = length_batches(lengths, self.batch_size, self.max_batch_tokens)
        with bar(len(prompts), desc) if progress else _null_bar() as advance:
            for idx in batches:
                decode = self._engine_decode if self.engine is not None else self._decode_batch
                for i, c in zip(idx, decode([prompts[i] for i in idx], params), strict=True):
                    out[i] = c
                advance(len(idx))
        return out  # type: ignore[return-value]

    def _decode_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Prefill a left-padded batch, then decode token by token, dropping rows as they finish."""
        import torch
        from transformers import DynamicCache

        n = len(prompts)
        ids, mask, positions = self._left_padded(prompts)
        seeds = [row_seed(params.seed, p) for p in prompts]
        cache = DynamicCache()
        new_tokens: list[list[int]] = [[] for _ in range(n)]
        finish = ["length"] * n
        alive = list(range(n))  # original row index of each row still in the batch
        stop_strings = tuple(params.stop)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            next_pos = positions[:, -1] + 1
            for _step in range(params.max_new_tokens):
                picks = sample_next(logits, params, [step_key(seeds[r], _step) for r in alive])
                keep = []
                for j, (r, t) in enumerate(zip(alive, picks, strict=True)):
                    if t in self._eos:
                        finish[r] = "stop"
                        continue
                    new_tokens[r].append(t)
                    if stop_strings and self._hit_stop(new_tokens[r], stop_strings):
                        finish[r] = "stop"
                        continue
                    keep.append(j)
                if not keep or _step == params.max_new_tokens - 1:
                    break
                if len(keep) < len(alive):
                    sel = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(sel)
                    mask, next_pos = mask[sel], next_pos[sel]
                    picks = [picks[j] for j in keep]
                    alive = [alive[j] for j in keep]
                step_ids = torch.tensor(picks, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
                logits = self.model(input_ids=step_ids, attention_mask=mask, position_ids=next_pos.unsqueeze(1),
                                    past_key_values=cache, use_cache=True).logits[:, -1]
                next_pos = next_pos + 1
        return [self._completion(p, t, f, stop_strings) for p, t, f in zip(prompts, new_tokens, finish, strict=True)]

    def _prefill(self, prompts: list[list[int]], extra: int):
        """Encode prompts into a fresh cache, reusing stored prefixes.

        Returns (cache, logits [B, V], order): cache row s holds prompts[order[s]]. Rows are ordered by
        the length of what is left to encode and encoded in groups of similar length (``pad_groups``),
        so a few long suffixes do not make every row pay for their padding.
        """
        import torch

        hits = [self.prefix_store.lookup(p) for p in prompts]
        reuse = [min(m, len(p) - 1) for (m, _), p in zip(hits, prompts, strict=True)]
        todo = [len(p) - r for p, r in zip(prompts, reuse, strict=True)]
        order = sorted(range(len(prompts)), key=lambda i: -todo[i])
        # padding after a short suffix is written past the row's end too, so leave room for it
        cache = self.engine.new_cache(len(prompts), max(r + todo[order[0]] for r in reuse) + extra)
        for s, i in enumerate(order):
            if reuse[i] > 0:
                entry = hits[i][1]
                cache.k[:, s, :, : reuse[i]] = entry.k[:, :, : reuse[i]]
                cache.v[:, s, :, : reuse[i]] = entry.v[:, :, : reuse[i]]
        dev = self.engine.device
        logits = []
        for lo, hi in pad_groups([todo[i] for i in order]):
            rows = order[lo:hi]
            width = todo[rows[0]]
            tokens = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
            for b, i in enumerate(rows):
                tokens[b, : todo[i]] = torch.tensor(prompts[i][reuse[i]:])
            start = torch.tensor([reuse[i] for i in rows])
            n_valid = torch.tensor([todo[i] for i in rows])
            logits.append(self.engine.forward(tokens.to(dev), start.to(dev), n_valid.to(dev), cache.rows(lo, hi)))
        return cache, torch.cat(logits), order

    def _remember(self, cache, row: int, tokens: list[int]) -> None:
        n = len(tokens)
        self.prefix_store.put(tokens, cache.k[:, row, :, :n].clone(), cache.v[:, row, :, :n].clone())

    def _engine_decode(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Prefill (reusing cached prefixes), then decode one token per step for every live row.

        Finished rows are remembered in the prefix store and, once at most half of the cache's rows are
        alive, the cache is compacted to the live rows, so dead rows cost at most 2x while no per-step
        gather is ever needed.
        """
        import torch

        n = len(prompts)
        seeds = [row_seed(params.seed, p) for p in prompts]
        new_tokens: list[list[int]] = [[] for _ in range(n)]
        finish = ["length"] * n
        stop_strings = tuple(params.stop)
        with torch.inference_mode():
            cache, logits, slot_of = self._prefill(prompts, params.max_new_tokens + 1)
            # slot_of: cache row -> original index (-1: dead)
            fed = [len(p) for p in prompts]  # tokens in the cache per original index
            live = list(range(n))
            for step in range(params.max_new_tokens):
                keys = [step_key(seeds[r], step) if r >= 0 else 0 for r in slot_of]
                picks = sample_next(logits, params, keys)
                next_ids = []
                for s, t in enumerate(picks):
                    r = slot_of[s]
                    if r < 0:
                        next_ids.append(self.tokenizer.pad_token_id)
                        continue
                    done = t in self._eos
                    if not done:
                        new_tokens[r].append(t)
                        done = bool(stop_strings) and self._hit_stop(new_tokens[r], stop_strings)
                    if done or step == params.max_new_tokens - 1:
                        finish[r] = "stop" if done else "length"
                        self._remember(cache, s, (prompts[r] + new_tokens[r])[: fed[r]])
                        slot_of[s] = -1
                        live.remove(r)
                    next_ids.append(t)
                if not live:
                    break
                if len(live) * 2 <= len(slot_of) and len(slot_of) > 1:
                    keep = [s for s, r in enumerate(slot_of) if r >= 0]
                    sel = torch.tensor(keep, device=self.engine.device)
                    cache.k, cache.v = cache.k[:, sel].contiguous(), cache.v[:, sel].contiguous()
                    slot_of = [slot_of[s] for s in keep]
                    next_ids = [next_ids[s] for s in keep]
                dev = self.engine.device
                start = torch.tensor([fed[r] if r >= 0 else 0 for r in slot_of], device=dev)
                logits = self.engine.forward(torch.tensor(next_ids, device=dev)[:, None], start,
                                             torch.ones(len(slot_of), dtype=torch.long, device=dev), cache)
                for r in slot_of:
                    if r >= 0:
                        fed[r] += 1
        return [self._completion(p, t, f, stop_strings) for p, t, f in zip(prompts, new_tokens, finish, strict=True)]

    def _hit_stop(self, tokens: list[int], stops: tuple[str, ...]) -> bool:
        tail = self.tokenizer.decode(tokens[-8:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _completion(self, prompt: list[int], tokens: list[int], finish: str, stops: tuple[str, ...]) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stops:
            if s in text:
                text = text[: text.index(s)]
        return Completion(text=text.strip(), prompt_tokens=len(prompt), completion_tokens=len(tokens),
                          finish_reason=finish, token_ids=tokens)

    # ---- scoring ---------------------------------------------------------------------------------

    def option_token_ids(self, options: Sequence[str]) -> list[list[int]]:
        """For each option, the vocabulary ids whose text is that option with optional leading space
        and/or opening parenthesis (``A``, `` A``, ``(A``, `` (A``) -- tokenizers differ in which exist."""
        key = tuple(options)
        if key not in self._option_ids:
            vocab = self.tokenizer.get_vocab()
            found: list[list[int]] = []
            for opt in options:
                ids = sorted({i for tok, i in vocab.items()
                              if self.tokenizer.convert_tokens_to_string([tok]).strip().lstrip("(").strip() == opt})
                if not ids:
                    raise ModelError(
                        f"the vocabulary of {self.model_id} has no token for option {opt!r}",
                        fix="use a judge model whose tokenizer has single-token option letters, or other options",
                    )
                found.append(ids)
            self._option_ids[key] = found
        return self._option_ids[key]

    def option_logprobs(self, conversations: Sequence[Conversation], prefix: str, options: Sequence[str], *,
                        desc: str = "scoring", progress: bool = False) -> list[list[float]]:
        prompts = [self.encode_chat(c, prefix) for c in conversations]
        return self.option_logprobs_ids(prompts, options, desc=desc, progress=progress)

    def option_logprobs_ids(self, prompts: list[list[int]], options: Sequence[str], *, desc: str = "scoring",
                            progress: bool = False) -> list[list[float]]:
        """One forward pass per prompt (batched by length); log-probs over the options, renormalised."""
        import torch

        from cai.logs import progress as bar

        option_ids = self.option_token_ids(options)
        out: list[list[float] | None] = [None] * len(prompts)
        batches = length_batches([len(p) for p in prompts], self.batch_size, self.max_batch_tokens)
        with bar(len(prompts), desc) if progress else _null_bar() as advance, torch.inference_mode():
            for idx in batches:
                logp = self._last_logprobs([prompts[i] for i in idx])
                per_option = torch.stack([logp[:, ids].logsumexp(-1) for ids in option_ids], dim=-1)
                per_option = per_option - per_option.logsumexp(-1, keepdim=True)
                for i, row in zip(idx, per_option.tolist(), strict=True):
                    out[i] = row
                advance(len(idx))
        return out  # type: ignore[return-value]

    def _last_logprobs(self, prompts: list[list[int]]):
        """Next-token log-probs after each prompt: [B, V] float32."""
        import torch

        if self.engine is not None:
            cache, logits, order = self._prefill(prompts, 0)
            for s, i in enumerate(order):
                self._remember(cache, s, prompts[i])
            back = torch.empty(len(order), dtype=torch.long)
            back[torch.tensor(order)] = torch.arange(len(order))
            return torch.log_softmax(logits, dim=-1)[back]

        ids, mask, positions = self._left_padded(prompts)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def _left_padded(self, prompts: list[list[int]]):
        """(input ids, attention mask, position ids), each [B, T] on the model's device, left-padded."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]


class _null_bar:
    def __enter__(self):
        return lambda k=1: None

    def __exit__(self, *exc):
        return False
