"""Shared fixtures: tiny random models built locally from a config with the embedded model's tokenizer.

Nothing is downloaded. The tokenizer is the real SmolLM2 one (from the installed GGUF package), so chat
templates and special tokens behave as in production; the weights are random and tiny.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one torch thread, especially on a busy shared CPU (the training tests
    use it module-wide: ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded model's tokenizer saved as a plain directory (read once from the GGUF file)."""
    from transformers import AutoTokenizer

    from cai.models import EMBEDDED_GGUF, embedded_gguf_path

    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=EMBEDDED_GGUF)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tiny_llama(out: Path, tokenizer, *, seed: int = 0, hidden: int = 32, layers: int = 2, scale: float = 1.0,
                     **config) -> Path:
    """A random Llama with the SmolLM2 tokenizer saved to ``out``; ``config`` overrides LlamaConfig fields,
    ``scale`` multiplies every weight matrix (larger weights: more peaked distributions)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 2048, "tie_word_embeddings": True, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **config})
    model = LlamaForCausalLM(config)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(scale)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 32-wide random Llama with the SmolLM2 tokenizer, saved as a local model directory."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real embedded model's plain cached copy (converted from GGUF on first use, ~20 s)."""
    from cai.models import resolve

    return Path(resolve("smollm2-135m").path)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, tokenizer) -> Path:
    """A random 2-layer reward model (sequence classifier, 1 output) with the SmolLM2 tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
