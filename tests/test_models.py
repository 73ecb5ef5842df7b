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
    assert resolve("HuggingFaceTB/SmolLM2-135M").path == "HuggingFaceTB/SmolLM2-135M"  # no such folder: Hub id
