"""The transformers backend: real batching for chat generation and option log-prob scoring.

Why not ``model.generate``: on a CPU, a batch is only as fast as its slowest row. This loop (1) sorts
conversations by length so a batch holds similar lengths (little left padding), (2) removes rows from the
batch and from the KV cache the moment they finish, so a batch never keeps computing for finished
sequences, (3) samples each row from its own seeded generator, so a conversation's completion depends on
the seed and its own text, not on which other prompts share its batch (resumed runs reproduce), and
(4) runs in the fastest accurate dtype (bf16 on CPUs with AVX512-BF16, where matmuls are ~2.6x fp32).

For a local safetensors Llama checkpoint (the embedded model included) the backend is built without
transformers at all: the lean engine straight from the checkpoint and ``LightTokenizer``; the
transformers model is loaded only if something asks for ``backend.model``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from cai.backends.base import Completion, Conversation, SamplingParams
from cai.errors import ModelError

log = logging.getLogger(__name__)


def encode_chat(tokenizer, conversation: Conversation, prefix: str = "") -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template, an assistant turn opened."""
    text = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
    return tokenizer(text + prefix, add_special_tokens=False)["input_ids"]


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


def packed_chunks(lengths: Sequence[int], max_tokens: int = 4096) -> list[tuple[int, int]]:
    """Split rows (sorted by length, longest first) into contiguous chunks [lo, hi) to encode in one packed
    pass: a chunk closes before it would exceed ``max_tokens`` real tokens (a longer row goes alone)."""
    chunks: list[tuple[int, int]] = []
    lo, size = 0, 0
    for i, n in enumerate(lengths):
        if i > lo and size + n > max_tokens:
            chunks.append((lo, i))
            lo, size = i, 0
        size += n
    if lo < len(lengths):
        chunks.append((lo, len(lengths)))
    return chunks


def shared_prefixes(prompts: Sequence[Sequence[int]], min_tokens: int = 16) -> list[tuple[int, ...]]:
    """The prefixes (at least ``min_tokens`` long) that two or more prompts share, as far as they share
    them: the branch points of the batch's prefix tree, shortest first. Encoding each once lets its
    prompts start from it (instructions common to a batch, a conversation common to two judged replies)."""
    ordered = sorted(tuple(p) for p in prompts)
    found: set[tuple[int, ...]] = set()
    for a, b in zip(ordered[:-1], ordered[1:], strict=True):
        n = 0
        while n < len(a) and n < len(b) and a[n] == b[n]:
            n += 1
        if n >= min_tokens:
            found.add(a[:n])
    return sorted(found, key=lambda t: (len(t), t))


def prefix_levels(prefixes: Sequence[tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
    """``prefixes`` in levels: each one after every other that it extends, so a level can be encoded
    in one pass on top of the levels before it."""
    left = sorted(set(prefixes), key=len)
    levels = []
    while left:
        level = [p for p in left if not any(len(q) < len(p) and p[: len(q)] == q for q in left)]
        levels.append(level)
        done = set(level)
        left = [p for p in left if p not in done]
    return levels


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
    Every draw depends on the row's key and its own probabilities only, not on batch composition.

    * top_p < 1: the nucleus is searched among the ``top_k`` most likely tokens (sorting the whole
      vocabulary costs more than the model's forward on a CPU); a row whose top_k tokens hold less than
      ``top_p`` of the mass falls back to the full vocabulary, so the result is exact. The draw is
      Gumbel-max with noise indexed by token id (``token_uniforms``).
    * top_p = 1 (the whole distribution): inverse-CDF sampling over the vocabulary in id order with one
      keyed uniform per row -- exact, and no sort at all.
    """
    import torch

    if bool(logits.isnan().any()):  # argmax of NaN is token 0: garbage text, never an error, without this
        from cai.errors import NumericsError

        raise NumericsError(f"NaN next-token logits in {int(logits.isnan().any(-1).sum())} of {logits.shape[0]} rows "
                            "while sampling")
    if not params.do_sample or params.temperature <= 0:
        return logits.argmax(-1).tolist()
    scaled = logits.float() / params.temperature
    key_t = torch.tensor(keys, dtype=torch.long, device=scaled.device)[:, None]
    if params.top_p >= 1.0:
        return _inverse_cdf_pick(scaled, key_t).tolist()
    probs = torch.softmax(scaled, dim=-1)  # cheaper than logsumexp, and topk then gives probabilities
    k = min(top_k, scaled.shape[-1])
    top_p, top_i = probs.topk(k, dim=-1)  # sorted, descending
    mass = top_p.sum(-1)
    picks = _gumbel_pick(top_p, top_i, key_t, params.top_p).tolist()
    for b in range(len(keys)):  # rows whose nucleus reaches past the top_k: the whole vocabulary, sorted
        if k < scaled.shape[-1] and float(mass[b]) < params.top_p:
            p_row, i_row = probs[b].sort(descending=True)
            picks[b] = int(_gumbel_pick(p_row[None], i_row[None], key_t[b:b + 1], params.top_p)[0])
    return picks


def _inverse_cdf_pick(scaled, keys, block: int = 256):
    """Per row, the token where the cumulative softmax of ``scaled`` [B, V] first exceeds the row's keyed
    uniform (``keys`` [B, 1] long). Two levels, so no sequential scan (nor float64 copy) covers the whole
    vocabulary, which took most of a step's sampling: the uniform picks a block of ``block`` tokens by the
    blocks' masses, then a token inside the block by its float64 cumulative sum, rescaled to the block's
    mass so the two levels agree (no token's share is lost to rounding)."""
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(scaled, dim=-1)
    n, v = probs.shape
    blocks = (F.pad(probs, (0, -v % block)) if v % block else probs).view(n, -1, block)
    block_cdf = blocks.sum(-1).double().cumsum(-1)  # [B, V / block]
    u = token_uniforms(torch.zeros_like(keys), keys) * block_cdf[:, -1:]
    b = torch.searchsorted(block_cdf, u).clamp_(max=block_cdf.shape[1] - 1)  # [B, 1]
    start = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks.gather(1, b[:, :, None].expand(n, 1, block)).squeeze(1).double().cumsum(-1)  # [B, block]
    target = (u - start) / (block_cdf.gather(1, b) - start) * inner[:, -1:]
    t = torch.searchsorted(inner, target).clamp_(max=block - 1)
    return (b * block + t).clamp_(max=v - 1).squeeze(-1)


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

    def __init__(self, model, tokenizer, model_id: str, *, batch_size: int = 64, max_batch_tokens: int | None = None,
                 engine=None, load_model=None, eos_ids: Sequence[int] = (), use_engine: bool = True):
        """``model``: a transformers causal LM, or None with ``engine`` given and ``load_model`` to build
        the model only if something needs it (the fallback forward, tests). Without ``engine``, the lean
        engine is built over ``model`` when it supports it, ``use_engine`` allows it and its self-check
        passes on this machine (``cai.backends.engine_check``). ``max_batch_tokens`` (padded tokens per batch)
        and the prefix store are sized from byte budgets (``engine.BATCH_CACHE_BYTES``,
        ``engine.PREFIX_STORE_BYTES``) at the dtype the keys and values are kept in."""
        from cai.backends import engine as lean

        self._model, self._load_model = model, load_model
        self.tokenizer, self.model_id = tokenizer, model_id
        self.verdicts: list = []  # the self-checks behind the choice of path (engine_check.Verdict)
        if engine is None and model is not None and use_engine and lean.supports(model):
            engine, self.verdicts = checked_engine_for(model, tokenizer)
        self.engine = engine
        self.device = engine.device if engine is not None else next(model.parameters()).device
        cfg, kv_dtype = (engine.config, engine.dtype) if engine is not None else (model.config, model.dtype)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or lean.tokens_in(lean.BATCH_CACHE_BYTES, cfg, kv_dtype)
        gen_eos = _as_list(model.generation_config.eos_token_id) if model is not None else []
        self._eos = set(_as_list(tokenizer.eos_token_id)) | set(gen_eos) | set(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos, default=0)
        self._option_ids: dict[tuple[str, ...], list[list[int]]] = {}
        self.prefix_store = lean.PrefixStore(lean.tokens_in(lean.PREFIX_STORE_BYTES, cfg, kv_dtype))
        log.debug("fast engine: %s", "on" if self.engine else "off (model's own forward)")

    @property
    def model(self):
        """The transformers model (loaded on first use when the backend was built from a checkpoint)."""
        if self._model is None:
            self._model = self._load_model()
        return self._model

    @classmethod
    def load(cls, spec: str | None = None, *, dtype=None, device: str | None = None, batch_size: int = 64,
             trust_remote_code: bool = False, force_check: bool = False) -> TransformersBackend:
        """The backend for a model spec. The lean engine is used where one of its paths passes its
        self-check on this machine (cached; ``force_check`` runs it again); ``backend.verdicts`` lists the
        checks behind the choice."""
        from cai import models

        source = models.resolve(spec)
        device = device or models.default_device()
        dtype = models.parse_dtype(dtype, device) if isinstance(dtype, str) or dtype is None else dtype
        verdicts: list = []
        lean = None if trust_remote_code else cls._load_lean(source, dtype, device, batch_size, verdicts, force_check)
        if isinstance(lean, cls):
            lean.verdicts = verdicts
            return lean
        tok = models.load_tokenizer(source, trust_remote_code=trust_remote_code)
        model = models.load_causal_lm(source, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        log.info("loaded %s (%s) on %s as %s", source.model_id, source.path, device, dtype)
        backend = cls(model, tok, source.model_id, batch_size=batch_size, use_engine=lean is None)
        if backend.engine is None and model.dtype != torch_fp32():
            from cai.backends import engine_check

            def reference():
                return models.load_causal_lm(source, dtype=torch_fp32(), device=device,
                                             trust_remote_code=trust_remote_code)

            verdict = engine_check.check_model_forward(model, lambda c: encode_chat(tok, c), reference,
                                                       force=force_check)
            verdicts.append(verdict)
            if not verdict.trusted:  # the reference itself: slow, never wrong
                model = models.load_causal_lm(source, dtype=torch_fp32(), device=device,
                                              trust_remote_code=trust_remote_code)
                backend = cls(model, tok, source.model_id, batch_size=batch_size, use_engine=False)
        backend.verdicts = verdicts + backend.verdicts
        return backend

    @classmethod
    def _load_lean(cls, source, dtype, device: str, batch_size: int, verdicts: list, force_check: bool = False
                   ) -> TransformersBackend | bool | None:
        """The backend straight from a local safetensors Llama checkpoint, without importing transformers
        (its import alone is ~2 s of a CPU run's start-up); None when the checkpoint needs transformers,
        False when no engine path passed its self-check on this machine."""
        import json
        from pathlib import Path

        import torch

        from cai import models
        from cai.backends import engine, engine_check
        from cai.backends.light_tokenizer import LightTokenizer

        if not source.is_local or not engine.checkpoint_supported(source.path):
            return None
        tok = LightTokenizer.load(source.path)
        if tok is None:
            return None
        gen = Path(source.path) / "generation_config.json"
        eos = _as_list(json.loads(gen.read_text()).get("eos_token_id")) if gen.is_file() else []

        def build(dt, prepack=True):
            return lambda: engine.LlamaEngine.from_checkpoint(
                source.path, dtype=dt, device=device, weights=models.cached_weights(source.path, dt), prepack=prepack)

        cfg = json.loads((Path(source.path) / "config.json").read_text())
        candidates = [build(dtype), build(dtype, prepack=False)]
        if dtype != torch.float32:
            candidates.append(build(torch.float32))
        lean, found = engine_check.choose_engine(
            cfg, candidates, lambda c: encode_chat(tok, c),
            lambda: models.load_causal_lm(source, dtype=torch.float32, device=device), force=force_check)
        verdicts += found
        if lean is None:
            return False
        log.info("loaded %s (%s) on %s as %s, lean engine", source.model_id, source.path, device, lean.dtype)
        return cls(None, tok, source.model_id, batch_size=batch_size, engine=lean, eos_ids=eos,
                   load_model=lambda: models.load_causal_lm(source, dtype=lean.dtype, device=device))

    # ---- rendering -------------------------------------------------------------------------------

    def encode_chat(self, conversation: Conversation, prefix: str = "") -> list[int]:
        """Token ids of a conversation rendered with the chat template, an assistant turn opened."""
        return encode_chat(self.tokenizer, conversation, prefix)

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
        eos: list[int | None] = [None] * n
        alive = list(range(n))  # original row index of each row still in the batch
        stop_strings = tuple(params.stop)
        with torch.inference_mode():
            cache_arg = {_cache_kwarg(self.model): cache}
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                use_cache=True, logits_to_keep=1, **cache_arg).logits[:, -1]
            next_pos = positions[:, -1] + 1
            for _step in range(params.max_new_tokens):
                picks = sample_next(logits, params, [step_key(seeds[r], _step) for r in alive])
                keep = []
                for j, (r, t) in enumerate(zip(alive, picks, strict=True)):
                    if t in self._eos:
                        finish[r], eos[r] = "stop", t
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
                                    use_cache=True, **cache_arg).logits[:, -1]
                next_pos = next_pos + 1
        return [self._completion(p, t, f, stop_strings, e)
                for p, t, f, e in zip(prompts, new_tokens, finish, eos, strict=True)]

    def _prefill(self, prompts: list[list[int]], extra: int):
        """Encode prompts into a fresh cache: first what two or more of them share (``_store_shared``),
        then each prompt's own rest on top of its longest stored prefix. Returns (cache, logits [B, V],
        order): cache row s holds prompts[order[s]]."""
        self._store_shared(prompts)
        return self._encode(prompts, extra)

    def _store_shared(self, prompts: list[list[int]]) -> None:
        """Encode what two or more of ``prompts`` share and the prefix store lacks (``shared_prefixes``),
        level by level, into the prefix store."""
        store = self.prefix_store
        for level in prefix_levels([p for p in shared_prefixes(prompts)
                                    if not store.holds(p) and store.lookup(list(p))[0] < len(p)]):
            cache, _, order = self._encode([list(p) for p in level], 0)
            for s, i in enumerate(order):
                self._remember(cache, s, list(level[i]))
            del cache  # its memory serves the next level's cache (LlamaEngine.new_cache)

    def _encode(self, prompts: list[list[int]], extra: int):
        """Encode prompts into a fresh cache with room for ``extra`` more tokens per row, reusing stored
        prefixes; packed (no padding), longest suffix first. Returns (cache, logits [B, V], order)."""
        import torch

        hits = [self.prefix_store.lookup(p) for p in prompts]
        reuse = [min(m, len(p) - 1) for (m, _), p in zip(hits, prompts, strict=True)]
        todo = [len(p) - r for p, r in zip(prompts, reuse, strict=True)]
        order = sorted(range(len(prompts)), key=lambda i: -todo[i])
        cache = self.engine.new_cache(len(prompts), max(len(p) for p in prompts) + extra,
                                      filled=[len(prompts[i]) for i in order])
        for s, i in enumerate(order):
            if reuse[i] > 0:
                entry = hits[i][1]
                cache.k[:, s, :, : reuse[i]] = entry.k[:, :, : reuse[i]]
                cache.v[:, s, :, : reuse[i]] = entry.v[:, :, : reuse[i]]
        dev = self.engine.device
        logits = []
        for lo, hi in packed_chunks([todo[i] for i in order]):
            rows = order[lo:hi]
            tokens = torch.tensor([t for i in rows for t in prompts[i][reuse[i]:]], device=dev)
            where = torch.tensor([b for b, i in enumerate(rows) for _ in range(todo[i])], device=dev)
            pos = torch.tensor([q for i in rows for q in range(reuse[i], len(prompts[i]))], device=dev)
            logits.append(self.engine.prefill(tokens, where, pos, cache.rows(lo, hi)))
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
        eos: list[int | None] = [None] * n
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
                        next_ids.append(self.pad_id)
                        continue
                    done = t in self._eos
                    if done:
                        eos[r] = t
                    else:
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
                pos = torch.tensor([fed[r] if r >= 0 else 0 for r in slot_of], device=dev)
                logits = self.engine.decode(torch.tensor(next_ids, device=dev), pos, cache)
                for r in slot_of:
                    if r >= 0:
                        fed[r] += 1
        return [self._completion(p, t, f, stop_strings, e)
                for p, t, f, e in zip(prompts, new_tokens, finish, eos, strict=True)]

    def _hit_stop(self, tokens: list[int], stops: tuple[str, ...]) -> bool:
        tail = self.tokenizer.decode(tokens[-8:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _completion(self, prompt: list[int], tokens: list[int], finish: str, stops: tuple[str, ...],
                    eos: int | None = None) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stops:
            if s in text:
                text = text[: text.index(s)]
        return Completion(text=text.strip(), prompt_tokens=len(prompt), completion_tokens=len(tokens),
                          finish_reason=finish, token_ids=tokens, eos_id=eos)

    # ---- scoring ---------------------------------------------------------------------------------

    def option_token_ids(self, options: Sequence[str]) -> list[list[int]]:
        """For each option, the vocabulary ids whose text is that option with optional leading space
        and/or opening parenthesis (``A``, `` A``, ``(A``, `` (A``) -- tokenizers differ in which exist."""
        key = tuple(options)
        if key not in self._option_ids:
            vocab = self.tokenizer.get_vocab()
            found: list[list[int]] = []
            for opt in options:
                # decoding all ~50k entries takes ~0.1 s per option: decode only those that can spell it
                # (an ASCII option appears in the raw token, as do byte-fallback entries such as <0x41>)
                maybe = [(t, i) for t, i in vocab.items() if opt in t or t.startswith("<0x")] if opt.isascii() \
                    else vocab.items()
                ids = sorted({i for tok, i in maybe
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
            if self.engine is not None and len(batches) > 1:
                # what prompts share is found over all of them, not batch by batch: batches are cut by
                # length, so two prompts with one instruction (or the two replies of a judged pair) often
                # land in different batches, and the second batch would encode the shared part again
                # (8,917 -> 8,331 tokens for the 48 pairs of the labelling benchmark)
                self._store_shared(prompts)
            for idx in batches:
                logp = self._last_logprobs([prompts[i] for i in idx])
                if bool(logp.isnan().any()):
                    from cai.errors import NumericsError

                    path = "the lean engine" if self.engine is not None else "the model's forward"
                    raise NumericsError(f"NaN in {int(logp.isnan().any(-1).sum())} of {len(idx)} scored prompts "
                                        f"({path}, {self.model_id})")
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
            # what these prompts share is stored by _prefill; the whole prompts are not (a scored prompt is
            # rarely scored again, and copying every row's keys/values cost ~2% of a labelling run)
            cache, logits, order = self._prefill(prompts, 0)
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
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)


def torch_fp32():
    import torch

    return torch.float32


def checked_engine_for(model, tokenizer):
    """(The lean engine over ``model``'s weights if a path of it passes its self-check here, else None,
    and the verdicts). Without an engine the model's own forward runs. The reference is the model itself in
    fp32 (a copy if it is not)."""
    import copy

    from cai.backends import engine as lean
    from cai.backends import engine_check

    def reference():
        return model if model.dtype == torch_fp32() else copy.deepcopy(model).float()

    return engine_check.choose_engine(
        model.config.to_dict(), [lambda: lean.LlamaEngine.from_model(model),
                                 lambda: lean.LlamaEngine.from_model(model, prepack=False)],
        lambda c: encode_chat(tokenizer, c), reference)


def _cache_kwarg(model) -> str:
    """The forward argument that takes a KV cache: ``cache`` since transformers renamed ``past_key_values``
    (deprecated, removed in 5.40); the old name on the 5.x releases before the rename."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]


class _null_bar:
    def __enter__(self):
        return lambda k=1: None

    def __exit__(self, *exc):
        return False
