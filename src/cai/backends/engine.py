"""A lean decoder forward for Llama-architecture models, with a per-row KV cache and prefix reuse.

Why it exists: on a 2-core CPU, ``model.generate`` spends more time in Python bookkeeping (mask
building, cache concatenation, output capture) than in matmuls for a 135M model, and every follow-up
turn of a conversation (critique after answer, revision after critique; the second order of a judged
pair) re-encodes the whole history. This engine

* runs the same weights (q/k/v and gate/up projections fused into one matmul each),
* keeps each row's tokens contiguous from position 0 in a preallocated cache (no left padding: a row
  writes at its own positions, and a mask ``key_pos <= query_pos`` does the rest),
* encodes prompts *packed*: the linear layers, which are nearly all of the work, see only real tokens,
  never padding; only attention lays each row's queries out on a grid,
* stores finished rows' keys/values in a ``PrefixStore`` so a later prompt that starts with the same
  tokens (the next turn of the same conversation, or a sibling sharing instructions) only encodes its
  new suffix,
* can be built straight from a safetensors checkpoint (``from_checkpoint``), so a run that only
  generates and scores never imports transformers (~2 s of start-up on a laptop CPU).

It supports plain Llama layers (the embedded SmolLM2 and most Llama-style checkpoints). For anything
else ``supports`` is False and the backend falls back to the model's own forward. Tests check its
logits against transformers' forward.
"""

from __future__ import annotations

import json
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path


def supports(model) -> bool:
    """True when ``model`` is a plain Llama decoder this engine reproduces exactly (its rotary
    frequencies are taken from the model, so scaled variants work too)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(model, "peft_config", None) is not None or not hasattr(cfg, "to_dict"):
        return False
    return supports_config(cfg.to_dict(), rope_types=("default", "linear", "llama3"))


def supports_config(cfg: dict, rope_types: tuple[str, ...] = ("default",)) -> bool:
    """True when a model config (``config.json`` as a dict) describes a plain Llama decoder."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    return (cfg.get("model_type") == "llama" and not cfg.get("attention_bias", False)
            and not cfg.get("mlp_bias", False) and cfg.get("hidden_act", "silu") == "silu"
            and rope.get("rope_type", rope.get("type", "default")) in rope_types
            and cfg.get("pretraining_tp", 1) == 1)


def checkpoint_supported(path: str | Path) -> bool:
    """True when ``path`` holds a single-file safetensors Llama checkpoint ``from_checkpoint`` can load."""
    path = Path(path)
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        return False
    try:
        return supports_config(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError):
        return False


def rope_inv_freq(head_dim: int, theta: float):
    """The default rotary frequencies: theta ** (-2i / head_dim), i < head_dim / 2. [head_dim / 2] float32."""
    import torch

    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


# Prefill attention is laid out per group of consecutive rows on a [rows, longest suffix, longest key
# span] grid. One call costs about as much as this many grid cells (measured on a 2-core CPU: ~90 us per
# call and layer, ~15 ns per cell over all heads), so ``attention_groups`` trades padding against calls.
CALL_COST_CELLS = 6000
MAX_GROUP_ROWS = 16


def attention_groups(counts: list[int], ends: list[int], call_cost: int = CALL_COST_CELLS,
                     max_rows: int = MAX_GROUP_ROWS) -> list[tuple[int, int]]:
    """Split rows 0..R-1 into runs (lo, hi) of consecutive rows, minimising the total cost
    sum(rows * max(counts) * max(ends) + call_cost) over the runs (dynamic programming, O(R * max_rows)).

    counts: each row's number of new tokens (queries); ends: each row's key span.

    >>> attention_groups([4, 4, 1, 1], [10, 10, 3, 3], call_cost=5)
    [(0, 2), (2, 4)]
    """
    n = len(counts)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of rows 0..j-1
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        q = t = 0
        for i in range(j - 1, max(j - max_rows, 0) - 1, -1):  # the last run is i..j-1
            q, t = max(q, counts[i]), max(t, ends[i])
            cost = best[i] + (j - i) * q * t + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j > 0:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


@dataclass
class _Group:
    """Rows ``rows`` of a prefill (packed tokens lo..hi-1) laid out for one attention call."""

    rows: slice
    n_rows: int
    lo: int
    hi: int
    row: object  # [hi - lo] grid row of each token
    col: object  # [hi - lo] grid column of each token
    q_len: int
    t_len: int
    bias: object  # [n_rows, 1, 1, q_len, t_len] engine dtype, 0 or -inf


@dataclass
class _Layer:
    w_in: object  # input norm [H]
    w_qkv: object  # [nq + 2 nk, H]
    w_o: object
    w_post: object
    w_gu: object  # [2 I, H]: gate and up in one matmul; None when prepacked (then w_gate and w_up)
    w_down: object
    w_gate: object = None
    w_up: object = None


class LlamaEngine:
    """Forward passes over a ``RowCache`` with the weights of a Llama model (a snapshot)."""

    def __init__(self, cfg: dict, weight, *, dtype, device: str = "cpu", rope=None, prepack: bool = True):
        """cfg: the model's config as a dict; weight(name) -> tensor, by checkpoint name;
        rope: (inv_freq, attention scale) when not the default rotary embedding; prepack: use oneDNN's
        prepacked weights and fused post-ops where the CPU supports them (False: plain ``F.linear``)."""
        import torch

        self.dtype, self.device = dtype, torch.device(device)
        self._spare = None  # cache memory handed back by a dropped cache (new_cache)
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.n_heads
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))

        def w(name, scale: float = 1.0):
            t = weight(name).detach()  # a snapshot for inference: no autograd through a model's parameters
            return (t if scale == 1.0 else t.float() * scale).to(device=self.device, dtype=dtype)

        self.config = cfg
        self.prepacked = prepack and _can_prepack(dtype, self.device)
        pack = _prepack if self.prepacked else (lambda t: t)
        with torch.no_grad():
            self.embed = w("model.embed_tokens.weight")
            self.lm_head = pack(self.embed if cfg.get("tie_word_embeddings", False) else w("lm_head.weight"))
            self.final_norm = w("model.norm.weight")
            inv_freq, self.rope_scale = rope or (rope_inv_freq(self.head_dim, theta), 1.0)
            self.inv_freq = inv_freq.float().to(self.device)
            self.layers = []
            for i in range(self.n_layers):
                p = f"model.layers.{i}."
                gate, up = w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")
                self.layers.append(_Layer(
                    w(p + "input_layernorm.weight"),
                    # queries come out scaled by 1/sqrt(head_dim) (exact for a power-of-2 scale)
                    pack(torch.cat([w(p + "self_attn.q_proj.weight", self.head_dim**-0.5),
                                    w(p + "self_attn.k_proj.weight"), w(p + "self_attn.v_proj.weight")],
                                   0).contiguous()),
                    pack(w(p + "self_attn.o_proj.weight")),
                    w(p + "post_attention_layernorm.weight"),
                    None if self.prepacked else torch.cat([gate, up], 0).contiguous(),
                    pack(w(p + "mlp.down_proj.weight")),
                    *((pack(gate), pack(up)) if self.prepacked else ()),
                ))

    @classmethod
    def from_model(cls, model, *, dtype=None, prepack: bool = True) -> LlamaEngine:
        """The engine over a loaded transformers Llama model's current weights, in ``dtype`` (default: the
        model's own), so an fp32 policy needs no separate bf16 copy for bf16 rollouts."""
        params = dict(model.named_parameters())
        if "lm_head.weight" not in params:  # tied: named_parameters lists a shared tensor once
            params["lm_head.weight"] = model.get_output_embeddings().weight
        emb = model.get_input_embeddings().weight
        rotary = model.model.rotary_emb
        return cls(model.config.to_dict(), params.__getitem__, dtype=dtype or emb.dtype, device=str(emb.device),
                   rope=(rotary.inv_freq, float(rotary.attention_scaling)), prepack=prepack)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, dtype, device: str = "cpu", weights: str | Path | None = None,
                        prepack: bool = True) -> LlamaEngine:
        """The engine straight from ``path/model.safetensors`` (or the same tensors in ``weights``, e.g. a
        bf16 copy) and ``path/config.json``, without transformers."""
        from safetensors import safe_open

        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        with safe_open(str(weights or path / "model.safetensors"), framework="pt") as f:
            return cls(cfg, f.get_tensor, dtype=dtype, device=device, prepack=prepack)

    def new_cache(self, rows: int, length: int, filled: list[int] | None = None) -> RowCache:
        """A cache for ``rows`` rows of ``length`` positions. ``filled[b]``: how many leading positions of
        row b the caller writes before attention reads them (None: none). Every other position is zero:
        masked positions get zero attention weight, but 0 * NaN garbage would be NaN.

        The memory is reused from call to call: a cache no longer referenced hands its buffer back, and a
        new one only zeroes the positions its caller does not write. A fresh zero-filled cache per batch
        cost a labelling run of the 48 check pairs ~0.15 s of filling, plus the page faults of new memory
        (~170k per run of the same pairs in a warm process, ~20k now)."""
        import torch

        shape = (self.n_layers, rows, self.n_kv, length, self.head_dim)
        size = 2 * math.prod(shape)
        spare, self._spare = self._spare, None
        if spare is not None and spare.is_inference() and not torch.is_inference_mode_enabled():
            spare = None  # made under inference_mode: it cannot be written outside it
        fresh = spare is None or spare.numel() < size
        if fresh:
            del spare  # drop the smaller buffer before allocating the larger one
            spare = torch.zeros(size, dtype=self.dtype, device=self.device)
        cache = RowCache(spare[: size // 2].view(shape), spare[size // 2: size].view(shape))
        if not fresh:
            for b, n in enumerate(filled if filled is not None else [0] * rows):
                if n < length:
                    cache.k[:, b, :, n:].zero_()
                    cache.v[:, b, :, n:].zero_()
        weakref.finalize(cache, self._give_back, spare)
        return cache

    def _give_back(self, buffer) -> None:
        """Keep the larger of the spare buffer and one a dropped cache returns."""
        if self._spare is None or buffer.numel() > self._spare.numel():
            self._spare = buffer

    def _norm(self, x, w):
        """RMS norm in fp32, rounded once to the engine's dtype. For thousands of rows this is ~5x faster
        than ``F.rms_norm`` on bf16 input, which on a CPU runs as a chain of separate bf16 passes."""
        import torch

        xf = x.float()  # x itself when the engine runs in fp32: not modified in place
        r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(self.eps))
        return (xf * r).mul_(w).to(self.dtype)

    def _rope(self, pos):
        """(cos, sin) for positions ``pos`` [...]: each [..., head_dim] in the engine's dtype."""
        import torch

        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], -1)
        return (emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype)

    def _linear(self, x, w):
        """x @ w.T for 2-D ``x``; ``w`` prepacked for oneDNN when ``self.prepacked``."""
        import torch
        import torch.nn.functional as F

        if self.prepacked:
            return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        return F.linear(x, w)

    def _linear_add(self, x, w, residual):
        """residual + x @ w.T; prepacked, the add runs inside the matmul (a oneDNN post-op)."""
        import torch

        if self.prepacked:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, None, "add")
        return residual + self._linear(x, w)

    def _slots(self, rows, pos):
        """Where tokens at (``rows`` [N], ``pos`` [N]) go in a cache layer, and their rotary (cos, sin)
        [N, 1, D]: computed once per forward, used by every layer (``_queries_storing_keys``)."""
        import torch

        cos, sin = (t[:, None] for t in self._rope(pos))
        return (rows[:, None], torch.arange(self.n_kv, device=self.device)[None, :], pos[:, None]), cos, sin

    def _queries_storing_keys(self, x, layer: _Layer, cache: RowCache, i: int, slots):
        """Layer ``i``'s rotated queries [N, heads, D], scaled by 1/sqrt(D), for hidden states ``x`` [N, H];
        its keys and values go into ``cache`` at ``slots`` (from ``_slots``)."""
        where, cos, sin = slots
        n, nq, nk, d = x.shape[0], self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.head_dim
        qkv = self._linear(self._norm(x, layer.w_in), layer.w_qkv)
        qk = qkv[:, : nq + nk].view(n, self.n_heads + self.n_kv, d)
        qk = qk * cos + _rotate_half(qk) * sin
        cache.k[i].index_put_(where, qk[:, self.n_heads:])
        cache.v[i].index_put_(where, qkv[:, nq + nk:].view(n, self.n_kv, d))
        return qk[:, : self.n_heads]

    def _mlp(self, x, layer: _Layer):
        """x + down(silu(gate(h)) * up(h)), h = norm(x). Prepacked, SiLU, the product and the residual add
        run as oneDNN post-ops on the fp32 accumulators: no separate passes over the activations (~10%
        of the MLP's time in prefill), and one bf16 rounding fewer per step."""
        import torch
        import torch.nn.functional as F

        h = self._norm(x, layer.w_post)
        if self.prepacked:
            linear = torch.ops.mkldnn._linear_pointwise
            gate = linear(h, layer.w_gate, None, "swish", [], "")
            return self._linear_add(linear.binary(h, gate, layer.w_up, None, "mul"), layer.w_down, x)
        gate, up = self._linear(h, layer.w_gu).chunk(2, dim=-1)
        return self._linear_add(F.silu(gate) * up, layer.w_down, x)

    def _logits(self, last):
        return self._linear(self._norm(last, self.final_norm), self.lm_head).float()

    def prefill(self, tokens, rows, pos, cache: RowCache):
        """Encode a packed batch of row suffixes; return next-token logits after each row's last token.

        tokens, rows, pos: [N] long, grouped by row in row order (row 0's tokens first). Token n goes to
        cache row ``rows[n]`` at position ``pos[n]``; each row of ``cache`` gets at least one token, in
        position order, and the cache holds every position before a row's first. The linear layers see
        these N tokens only, no padding. Attention runs per group of rows (``attention_groups``), each laid
        out on its own [rows, longest suffix] grid over its own longest key span, so short rows do not pay
        for long ones. Returns logits [R, V] float32.
        """
        import torch
        import torch.nn.functional as F

        R = cache.k.shape[1]
        counts = torch.bincount(rows, minlength=R).tolist()
        ends = torch.zeros(R, dtype=torch.long, device=self.device).scatter_reduce_(
            0, rows, pos + 1, "amax").tolist()  # each row's key span
        groups = [self._attention_group(lo, hi, counts, ends, pos) for lo, hi in attention_groups(counts, ends)]
        slots = self._slots(rows, pos)
        nq = self.n_heads * self.head_dim
        last = torch.tensor(counts, device=self.device).cumsum(0) - 1  # each row's last token
        x = F.embedding(tokens, self.embed)  # [N, H]
        for i, layer in enumerate(self.layers):
            queries = self._queries_storing_keys(x, layer, cache, i, slots)
            att = torch.cat([self._group_attention(queries, cache, i, g) for g in groups])
            if i == self.n_layers - 1:  # past the last keys and values only the last tokens matter
                x, att = x[last], att[last]
            x = self._mlp(self._linear_add(att.reshape(x.shape[0], nq), layer.w_o, x), layer)
        return self._logits(x)

    def _group_attention(self, queries, cache: RowCache, i: int, g: _Group):
        """Layer ``i``'s attention output [hi - lo, heads, D] for the queries of group ``g``.

        Two batched matmuls in the engine's dtype and a softmax computed in fp32, the query heads that share a key
        head stacked into one matrix (grouped-query attention without copying keys). On a CPU this runs
        ~1.6x faster in bf16 than ``scaled_dot_product_attention`` in fp32, and the bf16 kernel of the
        latter is slower still; it rounds the scores to bf16 as transformers' eager bf16 attention does."""
        import torch

        group, d = self.n_heads // self.n_kv, self.head_dim
        # cells without a query must hold finite numbers although their outputs are never read: under Intel
        # AMX, oneDNN's bf16 matmul with an inner size that is not a multiple of its tile spreads a NaN or
        # inf of one row of an operand into other rows' outputs (tests/test_engine_numerics.py shows it), and
        # uninitialised memory holds NaN bit patterns often enough to poison a batch
        grid = queries.new_zeros(g.n_rows, self.n_heads, g.q_len, d)
        grid[g.row, :, g.col] = queries[g.lo:g.hi]
        q = grid.view(g.n_rows, self.n_kv, group * g.q_len, d)
        keys, values = cache.k[i][g.rows, :, : g.t_len], cache.v[i][g.rows, :, : g.t_len]
        scores = (q @ keys.transpose(-1, -2)).view(g.n_rows, self.n_kv, group, g.q_len, g.t_len)
        probs = torch.softmax(scores.add_(g.bias), dim=-1)  # computed in fp32, stored in the engine's dtype
        out = probs.view(g.n_rows, self.n_kv, group * g.q_len, g.t_len) @ values
        return out.view(g.n_rows, self.n_heads, g.q_len, d)[g.row, :, g.col]

    def _attention_group(self, r_lo: int, r_hi: int, counts: list[int], ends: list[int], pos) -> _Group:
        """The attention layout of cache rows r_lo..r_hi-1 (see ``prefill``)."""
        import torch

        lo = sum(counts[:r_lo])
        hi = lo + sum(counts[r_lo:r_hi])
        sizes = torch.tensor(counts[r_lo:r_hi], device=self.device)
        row = torch.repeat_interleave(torch.arange(r_hi - r_lo, device=self.device), sizes)
        col = torch.arange(hi - lo, device=self.device) - (sizes.cumsum(0) - sizes)[row]
        q_len, t_len = max(counts[r_lo:r_hi]), max(ends[r_lo:r_hi])
        qpos = torch.zeros(r_hi - r_lo, q_len, dtype=torch.long, device=self.device)
        qpos[row, col] = pos[lo:hi]  # grid cells without a query look at position 0 only (never read)
        bias = torch.zeros(r_hi - r_lo, 1, 1, q_len, t_len, dtype=self.dtype, device=self.device).masked_fill_(
            (torch.arange(t_len, device=self.device)[None, None, :] > qpos[:, :, None])[:, None, None],
            float("-inf"))
        return _Group(slice(r_lo, r_hi), r_hi - r_lo, lo, hi, row, col, q_len, t_len, bias)

    def decode(self, tokens, pos, cache: RowCache):
        """One new token per row: ``tokens`` [B] at positions ``pos`` [B] of each cache row. Returns logits
        [B, V] float32. Attends over the whole (contiguous) cache with an additive mask: a slice would be
        strided, and CPU bf16 bmm copies strided operands (~3x the matmul's own cost)."""
        import torch
        import torch.nn.functional as F

        B = tokens.shape[0]
        dev = self.device
        t_all = cache.k.shape[3]
        bias = torch.zeros(B, t_all, dtype=self.dtype, device=dev).masked_fill_(
            torch.arange(t_all, device=dev)[None, :] > pos[:, None], float("-inf"))  # [B, T]
        slots = self._slots(torch.arange(B, device=dev), pos)
        nq, d = self.n_heads * self.head_dim, self.head_dim
        group = self.n_heads // self.n_kv
        x = F.embedding(tokens, self.embed)  # [B, H]
        for i, layer in enumerate(self.layers):
            queries = self._queries_storing_keys(x, layer, cache, i, slots)
            scores = queries.reshape(B, self.n_kv, group, d) @ cache.k[i].transpose(-1, -2)  # [B, KV, G, T]
            probs = torch.softmax(scores.add_(bias[:, None, None, :]), dim=-1)  # computed in fp32
            att = (probs @ cache.v[i]).reshape(B, nq)
            x = self._mlp(self._linear_add(att, layer.w_o, x), layer)
        return self._logits(x)


def _can_prepack(dtype, device) -> bool:
    """True when oneDNN can hold bf16 or fp32 weights in its own blocked layout on this CPU, and run the
    post-ops (SiLU, product, residual add) that ``_mlp`` fuses into the matmuls. A weight prepacked once skips
    the reordering ``F.linear`` does on every call. In bf16 one decode step of the 135M model runs its matmuls
    ~15% faster, and a prepacked matmul alone is bit-identical to ``F.linear`` (checked by a test). In fp32,
    the path of CPUs without native bf16, ``F.linear`` goes to MKL instead: with oneDNN capped at AVX2 a decode
    step of 32 rows took 117 ms prepacked against 192 ms (the vocabulary projection alone 16 ms against 34),
    within 1e-3 of transformers' fp32 log-probs (checked by a test, and by the engine self-check)."""
    import torch

    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float32) or not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=dtype))
        x = torch.ones(2, 8, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        fused = torch.ops.mkldnn._linear_pointwise.binary(x, out, w, None, "add")  # the post-ops _mlp uses
        swish = torch.ops.mkldnn._linear_pointwise(x, w, None, "swish", [], "")
    except (AttributeError, RuntimeError):
        return False
    return bool((out == 8).all() and (fused == 16).all() and (swish > 7.9).all())


def _prepack(w):
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(w)


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


@dataclass
class RowCache:
    """Keys and values, [layers, rows, kv_heads, positions, head_dim]; row b is valid below its length."""

    k: object
    v: object

    def rows(self, lo: int, hi: int) -> RowCache:
        """Rows lo..hi-1, as views (writes go to this cache)."""
        return RowCache(self.k[:, lo:hi], self.v[:, lo:hi])


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    k: object  # [layers, kv_heads, len, head_dim]
    v: object


PREFIX_STORE_BYTES = 256 * 2**20  # keys/values a backend keeps for prefix reuse, whatever its dtype
BATCH_CACHE_BYTES = 256 * 2**20  # keys/values one generation or scoring batch may fill


def config_value(cfg, key: str, default=None):
    """``cfg[key]`` of a config dict, or the attribute of a transformers config (whose attribute names map other
    architectures' keys); ``default`` where it is missing or None."""
    value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
    return default if value is None else value


def kv_bytes_per_token(cfg, dtype) -> int:
    """Bytes of keys and values one cached token takes in a model with config ``cfg`` (``config_value``) at
    ``dtype``."""
    import torch

    def get(key):
        return config_value(cfg, key)

    heads = get("num_attention_heads")
    kv = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or get("hidden_size") // heads
    return 2 * get("num_hidden_layers") * kv * head_dim * torch.empty((), dtype=dtype).element_size()


def tokens_in(budget: int, cfg: dict, dtype) -> int:
    """How many cached tokens fit in ``budget`` bytes (caches are sized in bytes: a token count sized for bf16
    takes twice the memory in fp32)."""
    return max(budget // kv_bytes_per_token(cfg, dtype), 1)


class PrefixStore:
    """Keys/values of recently encoded token sequences, found again by shared prefix.

    Each entry is indexed by the hashes of its first 16, 32, 48, ... tokens; a lookup walks the query's
    own 16-token boundaries from the longest down, and the first hit is extended token by token to the
    exact common prefix. Least recently used entries are dropped past ``max_tokens`` in total.
    """

    STRIDE = 16

    def __init__(self, max_tokens: int = 50_000):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._index: dict[int, int] = {}  # prefix hash -> entry id
        self._whole: dict[int, int] = {}  # hash of an entry's whole token sequence -> entry id
        self._next_id = 0
        self._total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self._whole.clear()
        self._total = 0

    def put(self, tokens: list[int], k, v) -> None:
        if len(tokens) < self.STRIDE or self.max_tokens <= 0:
            return
        eid, self._next_id = self._next_id, self._next_id + 1
        self._entries[eid] = _Entry(tuple(tokens), k, v)
        self._total += len(tokens)
        for n in range(self.STRIDE, len(tokens) + 1, self.STRIDE):
            self._index[hash(tuple(tokens[:n]))] = eid
        self._whole[hash(tuple(tokens))] = eid
        while self._total > self.max_tokens and self._entries:
            old_id, old = self._entries.popitem(last=False)
            self._total -= len(old.tokens)
            if self._whole.get(hash(old.tokens)) == old_id:
                del self._whole[hash(old.tokens)]
            for n in range(self.STRIDE, len(old.tokens) + 1, self.STRIDE):
                key = hash(old.tokens[:n])
                if self._index.get(key) == old_id:
                    del self._index[key]

    def holds(self, tokens) -> bool:
        """True when exactly ``tokens`` is stored. ``lookup`` can miss such an entry: each 16-token boundary
        indexes only the latest entry through it, which may branch off before the end of ``tokens``."""
        entry = self._entries.get(self._whole.get(hash(tuple(tokens)), -1))
        return entry is not None and entry.tokens == tuple(tokens)

    def lookup(self, tokens: list[int]) -> tuple[int, _Entry | None]:
        """(length of the longest stored prefix of ``tokens``, its entry), or (0, None)."""
        for n in range(len(tokens) // self.STRIDE * self.STRIDE, 0, -self.STRIDE):
            eid = self._index.get(hash(tuple(tokens[:n])))
            entry = self._entries.get(eid) if eid is not None else None
            if entry is None or entry.tokens[:n] != tuple(tokens[:n]):
                continue
            m = n
            while m < len(tokens) and m < len(entry.tokens) and entry.tokens[m] == tokens[m]:
                m += 1
            self._entries.move_to_end(eid)
            return m, entry
        return 0, None
