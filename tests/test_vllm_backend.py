"""The vLLM backend is an optional extra: without vLLM it fails with how to install it (GPUs only)."""

from __future__ import annotations

import pytest

from cai.errors import ModelError


def test_the_vllm_backend_says_how_to_install_vllm_where_it_is_missing():
    import importlib.util

    from cai.backends import load_backend

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ModelError, match="vLLM is not installed"):
        load_backend("vllm:smollm2-135m")
