"""The lean engine on the real model's shapes, on the machine at hand: grouped-query attention with head_dim
64 and untied embeddings in fp32 and bf16, compared with transformers; the self-check that guards it; and the
NaN guards where numbers leave a backend."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cai.backends import engine as lean
from cai.backends import engine_check
from cai.backends.transformers import TransformersBackend, encode_chat, sample_next
from cai.errors import NumericsError
from conftest import build_tiny_llama


def _has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory, tokenizer) -> Path:
    """SmolLM2-135M's attention shapes in a tiny model: 9 query heads over 3 key/value heads of 64 dims,
    untied input and output embeddings, 2 layers; weights scaled up for peaked distributions, as trained."""
    return build_tiny_llama(tmp_path_factory.mktemp("gqa-llama"), tokenizer, hidden=144, scale=8.0,
                            num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def gqa_reference(gqa_dir, tokenizer):
    """(check sequences, transformers fp32 log-probs at their checked positions)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gqa_dir, dtype=torch.float32).eval()
    seqs = engine_check.check_sequences(lambda c: encode_chat(tokenizer, c))
    return seqs, engine_check.reference_logprobs(model, seqs)


@pytest.fixture(autouse=True)
def private_verdicts(tmp_path, monkeypatch):
    """Verdicts go to a fresh directory per test, so no test reads another's (or the user's) cache."""
    monkeypatch.setattr(engine_check, "_verdict_file", lambda key: tmp_path / "checks" / f"{key}.json")


@pytest.mark.parametrize("dtype,prepack", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False),
                                         (torch.bfloat16, True)])
def test_engine_matches_transformers_on_gqa_shapes_mixed_lengths(gqa_dir, gqa_reference, dtype, prepack):
    seqs, reference = gqa_reference
    assert len({len(s) for s in seqs}) == len(seqs)  # mixed lengths; two share their opening turns
    engine = lean.LlamaEngine.from_checkpoint(gqa_dir, dtype=dtype, prepack=prepack)
    with torch.inference_mode():
        got = engine_check.engine_logprobs(engine, seqs)
    finite, worst = engine_check.compare(got, reference)
    assert finite
    assert worst <= (1e-3 if dtype == torch.float32 else engine_check.BOUNDS["bfloat16"])


def test_engine_output_does_not_depend_on_uninitialised_memory(gqa_dir, gqa_reference, monkeypatch):
    """Uninitialised memory may hold NaN bit patterns. The engine once laid prefill queries on a grid made by
    ``new_empty``: the cells without a query are never read, but under Intel AMX the bf16 matmul spreads a NaN
    of one row into others, and labels came out NaN. Memory handed out as NaN must change nothing (on a CPU
    with AMX this fails without the fix; elsewhere it guards the invariant)."""
    seqs, reference = gqa_reference
    engine = lean.LlamaEngine.from_checkpoint(gqa_dir, dtype=torch.bfloat16)
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: new_empty(self, *a, **k).fill_(math.nan))
    with torch.inference_mode():
        got = engine_check.engine_logprobs(engine, seqs)
    finite, worst = engine_check.compare(got, reference)
    assert finite and worst <= engine_check.BOUNDS["bfloat16"]


@pytest.mark.skipif(not _has_amx(), reason="the CPU has no Intel AMX: its bf16 matmul does not spread NaN across rows")
def test_amx_bf16_matmul_spreads_a_nan_row_into_other_rows():
    """Why the engine keeps every operand finite: on AMX a NaN row of one operand reaches other rows'
    outputs when the inner size is not a multiple of the tile (here 53)."""
    torch.manual_seed(0)
    a, b = torch.randn(3, 87, 53).bfloat16(), torch.randn(3, 53, 64).bfloat16()
    bad = torch.rand(3, 87) < 0.2
    a[bad] = math.nan
    leaked = torch.isnan(a @ b).any(-1) & ~bad
    assert leaked.any()


def test_self_check_rejects_a_broken_path_falls_back_and_caches_the_verdict(gqa_dir, tokenizer, monkeypatch, caplog):
    from transformers import AutoModelForCausalLM

    calls = {"n": 0}

    def broken():
        engine = lean.LlamaEngine.from_checkpoint(gqa_dir, dtype=torch.bfloat16)
        prefill = engine.prefill

        def nan_prefill(*a, **k):
            out = prefill(*a, **k)
            out[0] = math.nan  # one row poisoned, as under AMX
            return out

        engine.prefill = nan_prefill
        return engine

    def good():
        calls["n"] += 1
        return lean.LlamaEngine.from_checkpoint(gqa_dir, dtype=torch.float32)

    def reference():
        return AutoModelForCausalLM.from_pretrained(gqa_dir, dtype=torch.float32).eval()

    cfg = AutoModelForCausalLM.from_pretrained(gqa_dir).config.to_dict()
    with caplog.at_level("WARNING"):
        engine, verdicts = engine_check.choose_engine(cfg, [broken, good], lambda c: encode_chat(tokenizer, c),
                                                      reference)
    assert engine is not None and engine.dtype == torch.float32
    assert [v.trusted for v in verdicts] == [False, True] and not verdicts[0].finite
    assert "not trusted" in caplog.text and "cai env --check" in caplog.text
    engine, verdicts = engine_check.choose_engine(cfg, [broken, good], lambda c: encode_chat(tokenizer, c),
                                                  lambda: pytest.fail("cached verdicts need no reference"))
    assert all(v.cached for v in verdicts) and engine.dtype == torch.float32 and calls["n"] == 2


def test_backend_falls_back_to_a_checked_path(gqa_dir, monkeypatch):
    """When no lean path passes, the backend runs transformers' own forward (checked too), never the
    failing path."""
    monkeypatch.setattr(engine_check, "run_check", lambda engine, seqs, ref, *, path: engine_check.Verdict(
        False, path, "x", "cpu", math.inf, 1.0, False, "forced"))
    backend = TransformersBackend.load(str(gqa_dir), dtype="bf16")
    assert backend.engine is None
    assert [v.trusted for v in backend.verdicts][-1] is True and backend.verdicts[-1].path.startswith("transformers")
    out = backend.option_logprobs([[{"role": "user", "content": "Pick one."}]], "Answer: (", ["A", "B"])
    assert all(math.isfinite(x) for x in out[0])


def test_nan_scores_stop_with_the_real_cause(tiny_model_dir, monkeypatch):
    backend = TransformersBackend.load(str(tiny_model_dir), dtype="fp32")
    monkeypatch.setattr(backend.engine, "prefill", lambda tokens, rows, pos, cache: torch.full(
        (cache.k.shape[1], len(backend.tokenizer)), math.nan))
    with pytest.raises(NumericsError, match="cai env --check"):
        backend.option_logprobs([[{"role": "user", "content": "Pick one."}]], "Answer: (", ["A", "B"])


def test_sampling_refuses_nan_logits():
    from cai.backends.base import SamplingParams

    logits = torch.zeros(2, 10)
    logits[1, 3] = math.nan
    for params in (SamplingParams(max_new_tokens=1, do_sample=False),
                   SamplingParams(max_new_tokens=1, temperature=0.7, do_sample=True)):
        with pytest.raises(NumericsError, match="1 of 2 rows"):
            sample_next(logits, params, [1, 2])


def test_env_check_prints_isa_and_verdict(tiny_model_dir, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    monkeypatch.setattr(engine_check, "onednn_isa", lambda: "test ISA")
    result = CliRunner().invoke(app, ["env", "--check", "--model", str(tiny_model_dir), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    for word in ("cpu isa flags", "onednn isa", "test ISA", "max log-prob deviation", "trusted"):
        assert word in result.output


@pytest.mark.slow
def test_embedded_engine_matches_fp32_on_mixed_length_batches(embedded_model_dir):
    """The real model, in the dtype this machine picks: the engine's log-probs stay within the bound of an
    fp32 transformers forward on a mixed-length batch with a shared prefix, prefix reuse and decode steps."""
    from cai.models import best_dtype, load_causal_lm, resolve

    backend = TransformersBackend.load("smollm2-135m", force_check=True)
    assert backend.engine is not None and backend.verdicts[0].trusted, [v.line() for v in backend.verdicts]
    seqs = engine_check.check_sequences(backend.encode_chat)
    reference = engine_check.reference_logprobs(load_causal_lm(resolve("smollm2-135m"), dtype=torch.float32), seqs)
    engine = lean.LlamaEngine.from_checkpoint(embedded_model_dir, dtype=best_dtype("cpu"))
    with torch.inference_mode():
        finite, worst = engine_check.compare(engine_check.engine_logprobs(engine, seqs), reference)
    assert finite and worst <= engine_check.BOUNDS[str(engine.dtype).removeprefix("torch.")]


def test_a_fine_tuned_checkpoint_reuses_its_base_models_verdict_but_not_another_architecture():
    """A trainer saves ``use_cache: false`` and may rewrite token ids: the arithmetic is the same, so the key is;
    a changed shape is checked again."""
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "use_cache": True, "eos_token_id": 2,
           "transformers_version": "5.24.0"}
    key = engine_check.verdict_key(cfg, dtype=torch.bfloat16, device="cpu", path="engine")
    tuned = {**cfg, "use_cache": False, "eos_token_id": [2, 3], "transformers_version": "5.25.0"}
    assert engine_check.verdict_key(tuned, dtype=torch.bfloat16, device="cpu", path="engine") == key
    wider = {**cfg, "hidden_size": 128}
    assert engine_check.verdict_key(wider, dtype=torch.bfloat16, device="cpu", path="engine") != key
