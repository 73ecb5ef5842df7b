"""The transformers backend: the lean engine matches transformers, batching and seeds behave."""

from __future__ import annotations

import pytest
import torch

from cai.backends.base import SamplingParams
from cai.backends.engine import PrefixStore
from cai.backends.transformers import TransformersBackend, length_batches, sample_next, token_uniforms

CONVS = [[{"role": "user", "content": f"Question number {i}: " + "why? " * i}] for i in range(5)]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend.load(str(tiny_model_dir), dtype="fp32", batch_size=3)


def test_engine_is_used_for_llama(backend):
    assert backend.engine is not None


def test_engine_logits_match_transformers(backend):
    prompts = [backend.encode_chat(c) for c in CONVS]
    engine, backend.engine = backend.engine, None
    try:
        want = backend._last_logprobs(prompts)
    finally:
        backend.engine = engine
    backend.prefix_store.clear()
    got = backend._last_logprobs(prompts)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_greedy_generation_matches_transformers_forward_and_prefix_reuse(backend):
    params = SamplingParams(max_new_tokens=12, do_sample=False)
    backend.prefix_store.clear()
    fast = backend.generate(CONVS, params, progress=False)
    engine, backend.engine = backend.engine, None
    try:
        slow = backend.generate(CONVS, params, progress=False)
    finally:
        backend.engine = engine
    assert [c.token_ids for c in fast] == [c.token_ids for c in slow]
    # a follow-up turn finds the first turn's keys/values and gives the same tokens as a cold start
    follow = [c + [{"role": "assistant", "content": o.text}, {"role": "user", "content": "Shorter."}]
              for c, o in zip(CONVS, fast, strict=True)]
    reused = [backend.prefix_store.lookup(backend.encode_chat(f))[0] for f in follow]
    assert all(r >= 16 for r in reused)
    warm = backend.generate(follow, params, progress=False)
    backend.prefix_store.clear()
    cold = backend.generate(follow, params, progress=False)
    assert [c.token_ids for c in warm] == [c.token_ids for c in cold]


def test_sampling_is_seeded_per_conversation_not_per_batch(backend):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    together = backend.generate(CONVS, params, progress=False)
    backend.batch_size = 1
    try:
        alone = backend.generate(CONVS, params, progress=False)
    finally:
        backend.batch_size = 3
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    other_seed = backend.generate(CONVS, SamplingParams(max_new_tokens=8, temperature=1.0, seed=8), progress=False)
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in together]


def test_completions_report_token_counts_and_finish(backend):
    out = backend.generate(CONVS[:2], SamplingParams(max_new_tokens=5, do_sample=False), progress=False)
    for c, conv in zip(out, CONVS[:2], strict=True):
        assert c.prompt_tokens == len(backend.encode_chat(conv))
        assert c.completion_tokens == len(c.token_ids) <= 5
        assert c.finish_reason in ("stop", "length")


def test_option_logprobs_are_normalised_over_options(backend):
    rows = backend.option_logprobs(CONVS, "The answer is (", ["A", "B"])
    assert len(rows) == len(CONVS)
    for row in rows:
        assert abs(sum(torch.tensor(row).exp().tolist()) - 1) < 1e-5


def test_option_tokens_include_space_and_parenthesis_variants(backend):
    a_ids, b_ids = backend.option_token_ids(["A", "B"])
    spelled = {backend.tokenizer.convert_tokens_to_string([backend.tokenizer.convert_ids_to_tokens(i)]) for i in a_ids}
    assert "A" in spelled and " A" in spelled
    assert not set(a_ids) & set(b_ids)


def test_length_batches_groups_similar_lengths():
    batches = length_batches([5, 100, 6, 98, 50], batch_size=2)
    assert sorted(sum(batches, [])) == [0, 1, 2, 3, 4]
    assert [1, 3] in batches and all(len(b) <= 2 for b in batches)
    assert length_batches([100] * 4, batch_size=4, max_tokens=250) == [[0, 1], [2, 3]]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([[10.0, 9.0, -10.0, -10.0]])
    picks = {sample_next(logits, SamplingParams(temperature=1.0, top_p=0.5), [key])[0] for key in range(50)}
    assert picks == {0}
    both = {sample_next(logits, SamplingParams(temperature=1.0, top_p=0.99), [key])[0] for key in range(50)}
    assert both == {0, 1}
    greedy = sample_next(logits, SamplingParams(do_sample=False), [0])
    assert greedy == [0]


def test_prefix_store_finds_longest_prefix_and_evicts():
    store = PrefixStore(max_tokens=40)
    a = list(range(30))
    store.put(a, "ka", "va")
    n, entry = store.lookup(a[:20] + [999, 1000])
    assert n == 20 and entry.k == "ka"
    assert store.lookup([5] * 40) == (0, None)
    store.put(list(range(100, 130)), "kb", "vb")  # over budget: the older entry goes
    assert store.lookup(a)[0] == 0 and len(store) == 1


def test_prefix_store_holds_an_entry_its_boundary_index_lost():
    store = PrefixStore()
    head = list(range(40))
    store.put(head + [1, 2], "k1", "v1")  # 42 tokens: indexed at 16 and 32 only
    store.put(head + [3, 4, 5], "k2", "v2")  # a sibling: now the latest entry through both boundaries
    assert store.lookup(head + [1, 2])[0] == 40  # lookup finds the sibling and stops where they part
    assert store.holds(head + [1, 2]) and store.holds(head + [3, 4, 5])
    assert not store.holds(head) and not store.holds(head + [1])
    store.clear()
    assert not store.holds(head + [1, 2])


def test_scoring_shares_prefixes_across_batches(backend, monkeypatch):
    """A and B share 40 tokens that no other prompt does, and length batching puts them in different
    batches: every distinct prefix is still encoded once, and the scores are those of one batch."""
    s, x = list(range(100, 120)), list(range(200, 220))
    a, c, d = s + x + list(range(300, 330)), s + [5] * 45, s + [6] * 44  # the longest: batch 1 (of 3)
    b, e = s + x + [7], s + [8] * 20  # batch 2
    prompts = [a, b, c, d, e]
    backend.prefix_store.clear()
    encoded = []
    prefill = backend.engine.prefill

    def counting(tokens, rows, pos, cache):
        encoded.append(tokens.shape[0])
        return prefill(tokens, rows, pos, cache)

    monkeypatch.setattr(backend.engine, "prefill", counting)
    batched = backend.option_logprobs_ids(prompts, ["A", "B"])  # batch_size 3: two batches
    distinct = {tuple(p[:n]) for p in prompts for n in range(1, len(p) + 1)}
    assert sum(encoded) == len(distinct)  # x once, not once per batch
    monkeypatch.setattr(backend, "batch_size", len(prompts))
    backend.prefix_store.clear()
    assert torch.allclose(torch.tensor(batched), torch.tensor(backend.option_logprobs_ids(prompts, ["A", "B"])),
                          atol=1e-5)


def test_packed_chunks_close_before_the_token_budget():
    from cai.backends.transformers import packed_chunks

    assert packed_chunks([100, 90, 40, 35, 5], max_tokens=150) == [(0, 1), (1, 3), (3, 5)]
    assert packed_chunks([500, 10], max_tokens=100) == [(0, 1), (1, 2)]  # a longer row goes alone
    assert packed_chunks([], max_tokens=1) == []


def test_shared_prefixes_are_the_branch_points_in_levels():
    from cai.backends.transformers import prefix_levels, shared_prefixes

    head, conv = list(range(20)), list(range(100, 120))
    prompts = [head + conv + [1, 2], head + conv + [3], head + [7] * 30, [9] * 40, head + [7] * 30]
    found = shared_prefixes(prompts)
    assert found == [tuple(head), tuple(head + conv), tuple(head + [7] * 30)]
    assert prefix_levels(found) == [[tuple(head)], [tuple(head + conv), tuple(head + [7] * 30)]]
    assert shared_prefixes([head + [1], [5] + head]) == []  # nothing shared from the start


def test_prefill_shares_prefixes_and_packs_without_changing_results(backend, monkeypatch):
    import cai.backends.transformers as tb

    shared = [[{"role": "system", "content": "Judge carefully. " * 6}, *c] for c in CONVS]
    prompts = [backend.encode_chat(c) for c in shared]
    backend.prefix_store.clear()
    whole = backend._last_logprobs(prompts)
    # the shared system turn was stored on its own, the whole scored prompts were not
    assert all(16 <= backend.prefix_store.lookup(p)[0] < len(p) - 1 for p in prompts)
    params = SamplingParams(max_new_tokens=6, do_sample=False)
    backend.prefix_store.clear()
    whole_tokens = [c.token_ids for c in backend.generate(shared, params, progress=False)]
    # one row per pass and no sharing: the same logits and tokens
    monkeypatch.setattr(tb, "packed_chunks", lambda lengths: [(i, i + 1) for i in range(len(lengths))])
    monkeypatch.setattr(tb, "shared_prefixes", lambda prompts: [])
    backend.prefix_store.clear()
    assert torch.allclose(backend._last_logprobs(prompts), whole, atol=1e-4)
    backend.prefix_store.clear()
    assert [c.token_ids for c in backend.generate(shared, params, progress=False)] == whole_tokens


def test_prepacked_weights_match_plain_bf16_and_stay_as_close_to_fp32(tiny_model_dir, monkeypatch):
    import cai.backends.engine as lean

    packed = lean.LlamaEngine.from_checkpoint(tiny_model_dir, dtype=torch.bfloat16)
    exact = lean.LlamaEngine.from_checkpoint(tiny_model_dir, dtype=torch.float32)
    monkeypatch.setattr(lean, "_can_prepack", lambda dtype, device: False)
    plain = lean.LlamaEngine.from_checkpoint(tiny_model_dir, dtype=torch.bfloat16)
    if not packed.prepacked:
        pytest.skip("this CPU has no oneDNN bf16 prepacking")
    tokens = torch.arange(3, 43)
    rows, pos = torch.arange(4).repeat_interleave(10), torch.arange(10).repeat(4)
    engines = (packed, plain, exact)
    with torch.inference_mode():
        # a prepacked matmul alone gives bit-identical results
        x, w = torch.randn(5, packed.embed.shape[1], dtype=torch.bfloat16), plain.layers[0].w_o
        assert torch.equal(packed._linear(x, packed.layers[0].w_o), plain._linear(x, w))
        # whole passes differ from plain bf16 only by rounding (the fused post-ops round once, not per op)
        caches = [e.new_cache(4, 12) for e in engines]
        first = [e.prefill(tokens, rows, pos, c) for e, c in zip(engines, caches, strict=True)]
        step = [e.decode(tokens[:4], torch.full((4,), 10), c) for e, c in zip(engines, caches, strict=True)]
    for fused, unfused, ref in (first, step):
        err_fused, err_plain = (fused - ref).abs().max(), (unfused - ref).abs().max()
        assert err_fused <= 1.5 * err_plain + 1e-3, (err_fused, err_plain)


def test_lean_load_skips_transformers_and_matches_it(tiny_model_dir):
    import subprocess
    import sys

    code = ("import sys; from cai.backends.transformers import TransformersBackend as T; from cai.backends.base "
            f"import SamplingParams; b = T.load({str(tiny_model_dir)!r}, dtype='fp32'); "
            "b.generate([[{'role': 'user', 'content': 'Hi'}]], SamplingParams(max_new_tokens=3), progress=False); "
            "print(type(b.tokenizer).__name__, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["LightTokenizer", "False"]

    from cai import models
    from cai.backends.transformers import TransformersBackend

    lean = TransformersBackend.load(str(tiny_model_dir), dtype="fp32")
    source = models.resolve(str(tiny_model_dir))
    full = TransformersBackend(models.load_causal_lm(source, dtype=torch.float32, device="cpu"),
                               models.load_tokenizer(source), source.model_id)
    prompts = [full.encode_chat(c) for c in CONVS]
    assert prompts == [lean.encode_chat(c) for c in CONVS]
    assert torch.allclose(lean._last_logprobs(prompts), full._last_logprobs(prompts), atol=1e-5)


def test_full_distribution_sampling_follows_the_softmax_per_row_key():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].repeat(4000, 1)
    params = SamplingParams(temperature=1.0, top_p=1.0)
    picks = torch.tensor(sample_next(logits, params, list(range(4000))))
    freq = torch.bincount(picks, minlength=4).float() / len(picks)
    assert torch.allclose(freq, probs, atol=0.03), freq
    # a row's draw depends on its own key and logits only, not on the other rows of the batch
    alone = [sample_next(logits[:1], params, [k])[0] for k in range(20)]
    assert alone == picks[:20].tolist()


def test_full_distribution_sampling_spans_blocks_of_the_vocabulary():
    from cai.backends.transformers import _inverse_cdf_pick

    # 700 tokens = two full blocks of 256 and a padded third; mass sits in all three blocks
    probs = torch.full((700,), 1e-9)
    probs[[3, 255, 256, 511, 699]] = torch.tensor([0.2, 0.1, 0.3, 0.25, 0.15])
    logits = (probs / probs.sum()).log()[None].repeat(6000, 1)
    keys = torch.arange(6000)[:, None]
    picks = _inverse_cdf_pick(logits, keys)
    freq = torch.bincount(picks, minlength=700).float() / len(picks)
    assert torch.allclose(freq[[3, 255, 256, 511, 699]], probs[[3, 255, 256, 511, 699]], atol=0.025), freq
    assert freq.sum() == 1 and int(picks.max()) < 700
    # the same draws as one pass over the whole vocabulary's cumulative sum
    cdf = torch.softmax(logits, -1).double().cumsum(-1)
    u = token_uniforms(torch.zeros_like(keys), keys) * cdf[:, -1:]
    assert (picks == torch.searchsorted(cdf, u).squeeze(-1)).float().mean() > 0.999


def test_attention_groups_cover_all_rows_and_pad_less_than_fixed_groups():
    import random

    from cai.backends.engine import attention_groups

    rng = random.Random(0)
    counts = sorted((rng.randint(1, 120) for _ in range(40)), reverse=True)
    ends = [c + rng.randint(0, 200) for c in counts]

    def cost(runs, call_cost=6000):
        return sum((hi - lo) * max(counts[lo:hi]) * max(ends[lo:hi]) + call_cost for lo, hi in runs)

    runs = attention_groups(counts, ends, call_cost=6000, max_rows=16)
    assert [lo for lo, _ in runs] == [0] + [hi for _, hi in runs[:-1]] and runs[-1][1] == len(counts)
    assert all(0 < hi - lo <= 16 for lo, hi in runs)
    fixed = [(lo, min(lo + 8, len(counts))) for lo in range(0, len(counts), 8)]
    assert cost(runs) <= cost(fixed)
    assert attention_groups([5] * 4, [9] * 4, call_cost=10**9) == [(0, 4)]  # calls dear: one group
    assert attention_groups([5, 1], [9, 2], call_cost=0) == [(0, 1), (1, 2)]  # calls free: no padding


def test_cache_memory_is_reused_and_unwritten_positions_are_zero(tiny_model_dir):
    import cai.backends.engine as lean

    engine = lean.LlamaEngine.from_checkpoint(tiny_model_dir, dtype=torch.float32)
    first = engine.new_cache(3, 8)
    assert not first.k.any() and not first.v.any()  # fresh memory: zeros
    first.k.fill_(float("nan"))  # garbage a later cache must not see where its caller writes nothing
    first.v.fill_(float("inf"))
    address = first.k.data_ptr()
    second = engine.new_cache(2, 8)  # the first is still alive: its memory is not handed out twice
    assert second.k.data_ptr() != address
    del first, second
    third = engine.new_cache(2, 6, filled=[4, 6])
    assert third.k.data_ptr() == address  # the dropped cache's memory, reused
    assert not third.k[:, 0, :, 4:].any() and not third.v[:, 0, :, 4:].any()  # zeroed past what is written
    del third
    assert not engine.new_cache(2, 6).k.isnan().any()  # nothing said to be written: all zero
    # a batch through the reused memory scores exactly as through fresh memory
    tokens, rows, pos = torch.arange(3, 13), torch.tensor([0] * 6 + [1] * 4), torch.tensor([*range(6), *range(4)])
    dirty = engine.new_cache(2, 6, filled=[6, 4])
    reused = engine.prefill(tokens, rows, pos, dirty)
    fresh = lean.LlamaEngine.from_checkpoint(tiny_model_dir, dtype=torch.float32)
    assert torch.equal(reused, fresh.prefill(tokens, rows, pos, fresh.new_cache(2, 6)))
    del dirty
    with torch.inference_mode():
        engine.new_cache(4, 16)  # new memory, made under inference_mode: not handed out to a cache outside it
    engine.new_cache(2, 6).k.add_(1)
