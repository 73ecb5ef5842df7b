"""The transformers backend: the lean engine matches transformers, batching and seeds behave."""

from __future__ import annotations

import pytest
import torch

from cai.backends.base import SamplingParams
from cai.backends.engine import PrefixStore
from cai.backends.transformers import TransformersBackend, length_batches, sample_next

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


def test_pad_groups_split_on_length_drops_once_big_enough():
    from cai.backends.transformers import pad_groups

    assert pad_groups([100, 90, 40, 35, 5], waste=0.25, min_tokens=150) == [(0, 2), (2, 5)]
    assert pad_groups([100, 90, 40], waste=0.25, min_tokens=10_000) == [(0, 3)]  # too small to split
    assert pad_groups([], min_tokens=1) == []


def test_prefill_in_groups_gives_the_same_logits_and_tokens(backend, monkeypatch):
    import cai.backends.transformers as tb

    prompts = [backend.encode_chat(c) for c in CONVS]
    backend.prefix_store.clear()
    whole = backend._last_logprobs(prompts)
    params = SamplingParams(max_new_tokens=6, do_sample=False)
    backend.prefix_store.clear()
    whole_tokens = [c.token_ids for c in backend.generate(CONVS, params, progress=False)]
    monkeypatch.setattr(tb, "pad_groups", lambda lengths: [(i, i + 1) for i in range(len(lengths))])
    backend.prefix_store.clear()
    assert torch.allclose(backend._last_logprobs(prompts), whole, atol=1e-4)
    backend.prefix_store.clear()
    assert [c.token_ids for c in backend.generate(CONVS, params, progress=False)] == whole_tokens
