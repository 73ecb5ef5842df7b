"""Model resolution: the cache key of a converted GGUF file."""

import os

from cai.models import gguf_fingerprint


def test_gguf_cache_key_follows_content_not_path_or_mtime(tmp_path):
    data = os.urandom(3 << 20)
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(b, (1, 1))
    assert gguf_fingerprint(a) == gguf_fingerprint(b)

    changed_tail = bytearray(data)
    changed_tail[-10] ^= 1
    b.write_bytes(bytes(changed_tail))
    assert gguf_fingerprint(a) != gguf_fingerprint(b)

    b.write_bytes(data + b"\0")
    assert gguf_fingerprint(a) != gguf_fingerprint(b)


def test_a_missing_path_under_a_local_folder_is_an_error_not_a_hub_id(tmp_path, monkeypatch):
    import pytest

    from cai.errors import ModelError
    from cai.models import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelError, match="runs/sft does not exist"):
        resolve("runs/sft")
    monkeypatch.setattr("cai.models._hub_cached", lambda repo: True)
    assert resolve("HuggingFaceTB/SmolLM2-135M").path == "HuggingFaceTB/SmolLM2-135M"  # no such folder: Hub id


def test_a_near_miss_of_the_embedded_name_or_an_unreachable_hub_id_fails_at_once(monkeypatch):
    import time

    import pytest

    from cai.errors import ModelError
    from cai.models import resolve

    start = time.monotonic()
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m'"):
        resolve("smollm2-135")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        resolve("someone/no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("cai.models._hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelError, match="the Hub cannot be reached"):
        resolve("someone/no-such-model")
    with pytest.raises(ModelError, match="is a model on a server"):
        resolve("openai:m@http://127.0.0.1:9/v1")
    assert time.monotonic() - start < 5


def test_bf16_weights_are_cached_only_beside_cai_converted_models(tmp_path, monkeypatch, tiny_model_dir):
    import shutil

    import torch
    from safetensors import safe_open

    from cai.backends.engine import LlamaEngine
    from cai.models import cached_weights

    assert cached_weights(tiny_model_dir, torch.bfloat16) is None  # a user's folder: nothing written there
    monkeypatch.setenv("CAI_CACHE", str(tmp_path))
    model = tmp_path / "models" / "tiny-0123"
    shutil.copytree(tiny_model_dir, model)
    assert cached_weights(model, torch.float32) is None
    copy = cached_weights(model, torch.bfloat16)
    assert copy is not None and copy.parent == model and cached_weights(model, torch.bfloat16) == copy
    with safe_open(str(copy), framework="pt") as f, safe_open(str(model / "model.safetensors"), framework="pt") as g:
        assert set(f.keys()) == set(g.keys())
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k).bfloat16()) for k in f.keys())
    tokens, rows, pos = torch.arange(10), torch.zeros(10, dtype=torch.long), torch.arange(10)
    engines = [LlamaEngine.from_checkpoint(model, dtype=torch.bfloat16, weights=w) for w in (None, copy)]
    with torch.inference_mode():
        logits = [e.prefill(tokens, rows, pos, e.new_cache(1, 10)) for e in engines]
    assert torch.equal(*logits)


def test_best_dtype_is_fp32_where_onednn_is_capped_below_native_bf16(monkeypatch):
    import torch

    from cai import models

    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert models.best_dtype("cpu") == torch.bfloat16
    for cap, dtype in (("AVX2", torch.float32), ("avx512_core", torch.float32), ("AVX512_CORE_BF16", torch.bfloat16),
                       ("ALL", torch.bfloat16)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert models.best_dtype("cpu") == dtype, cap
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert models.best_dtype("cpu") == torch.float32
