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
