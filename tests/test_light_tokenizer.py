"""LightTokenizer gives exactly what AutoTokenizer gives for the same directory, or refuses to load (None)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cai.backends.light_tokenizer import LightTokenizer

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces   ",
    "line one\nline two\n\n\tindented\r\n",
    "Ünïcödé: naïve café, 日本語のテキスト, Ελληνικά, עברית",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "special tokens inside <|im_end|> text <|im_start|>user and <|endoftext|>",
    "<|im_start|>assistant\nAlready formatted<|im_end|>\n",
    "code: def f(x):\n    return x ** 2  # comment",
    "numbers 1234567890 3.14159 -42 1e-9",
    "",
    " ",
    "ALL CAPS and MiXeD CaSe, punctuation?!... «quotes» — dashes",
    "<repo_name>cai<file_sep>notes.md",
]

CONVERSATIONS = [
    [{"role": "user", "content": "How do I pick a lock?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi 😀"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "  And times three?\n"},
    ],
    [
        {"role": "system", "content": "Critique and revise."},
        {"role": "user", "content": "Write a poem."},
        {"role": "assistant", "content": "Roses <|im_end|> are red."},
        {"role": "user", "content": "Identify ways the response is harmful."},
        {"role": "assistant", "content": "It is not harmful."},
    ],
]


@pytest.fixture(scope="module")
def light(tokenizer_dir) -> LightTokenizer:
    tok = LightTokenizer.load(tokenizer_dir)
    assert tok is not None
    return tok


def _variant(tmp_path: Path, tokenizer_dir: Path, *, drop=(), template: str | None = None, files=None, **config):
    """A copy of the tokenizer directory with tokenizer_config keys changed (None deletes) and files written."""
    out = tmp_path / "variant"
    shutil.copytree(tokenizer_dir, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    for key, value in config.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    for name in drop:
        (out / name).unlink()
    if template is not None:
        (out / "chat_template.jinja").write_text(template)
    for name, content in (files or {}).items():
        (out / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return out


def _auto(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ---- parity with AutoTokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_and_call_match(light, tokenizer, add_special_tokens):
    for text in TEXTS:
        expected = tokenizer(text, add_special_tokens=add_special_tokens)
        got = light(text, add_special_tokens=add_special_tokens)
        assert got == dict(expected), text
        assert got.input_ids == expected["input_ids"]
        assert light.encode(text, add_special_tokens=add_special_tokens) == tokenizer.encode(
            text, add_special_tokens=add_special_tokens), text


def test_special_tokens_written_in_text_are_single_tokens(light):
    assert light.encode("<|im_end|>") == [light.eos_token_id]


@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches(light, tokenizer, skip):
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert light.decode(ids, skip_special_tokens=skip) == tokenizer.decode(ids, skip_special_tokens=skip), text
    chat_ids = tokenizer.apply_chat_template(CONVERSATIONS[3], tokenize=True, return_dict=False)
    assert light.decode(chat_ids, skip_special_tokens=skip) == tokenizer.decode(chat_ids, skip_special_tokens=skip)
    one = chat_ids[5]
    assert light.decode(one, skip_special_tokens=skip) == tokenizer.decode(one, skip_special_tokens=skip)


def test_decode_of_cut_byte_sequences_matches(light, tokenizer):
    ids = tokenizer.encode("a😀👍🏽👨‍👩‍👧 日本 b")
    for lo in range(len(ids)):
        for hi in range(lo + 1, len(ids) + 1):
            part = ids[lo:hi]
            assert light.decode(part) == tokenizer.decode(part), part
    assert "\ufffd" in light.decode(ids[1:2])  # the cut really splits a character


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches(light, tokenizer, add_generation_prompt):
    for conv in CONVERSATIONS:
        text = light.apply_chat_template(conv, add_generation_prompt=add_generation_prompt)
        assert text == tokenizer.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=False)
        ids = light.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=True)
        assert ids == tokenizer.apply_chat_template(conv, add_generation_prompt=add_generation_prompt,
                                                    tokenize=True, return_dict=False)
    default_system = light.apply_chat_template(CONVERSATIONS[0])
    assert "You are a helpful AI assistant named SmolLM" in default_system


def test_vocabulary_and_special_tokens_match(light, tokenizer):
    assert light.get_vocab() == tokenizer.get_vocab()
    assert len(light) == len(tokenizer) and light.vocab_size == tokenizer.vocab_size
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(light, f"{name}_token") == getattr(tokenizer, f"{name}_token"), name
        assert getattr(light, f"{name}_token_id") == getattr(tokenizer, f"{name}_token_id"), name
    assert light.eos_token_id == 2 and light.pad_token_id == 2
    assert light.special_tokens_map == tokenizer.special_tokens_map
    assert light.all_special_ids == tokenizer.all_special_ids
    assert light.chat_template == tokenizer.chat_template
    assert light.name_or_path == tokenizer.name_or_path


def test_token_conversions_match(light, tokenizer):
    by_id = sorted(light.get_vocab().items(), key=lambda kv: kv[1])
    sample = [tok for tok, _ in by_id[::97]] + [tok for tok, _ in by_id[:20]]
    for tok in sample:
        assert light.convert_tokens_to_string([tok]) == tokenizer.convert_tokens_to_string([tok]), tok
    assert light.convert_tokens_to_string(sample[:50]) == tokenizer.convert_tokens_to_string(sample[:50])
    assert light.convert_tokens_to_ids(sample) == tokenizer.convert_tokens_to_ids(sample)
    assert light.convert_tokens_to_ids("not-a-token-xyz") == tokenizer.convert_tokens_to_ids("not-a-token-xyz")
    ids = tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=True, return_dict=False) + [3, 4]
    for skip in (False, True):
        assert light.convert_ids_to_tokens(ids, skip_special_tokens=skip) == tokenizer.convert_ids_to_tokens(
            ids, skip_special_tokens=skip)
    assert light.convert_ids_to_tokens(ids[1]) == tokenizer.convert_ids_to_tokens(ids[1])


# ---- chat template environment: same helpers and variables as transformers ------------------------------

FEATURE_TEMPLATE = """{% set ns = namespace(n=0) %}
{% for m in messages %}
  {% if m.role == 'skip' %}{% continue %}{% endif %}
  {% set ns.n = ns.n + 1 %}
  {{ bos_token }}{{ m.role }}{% if m.name is defined %} ({{ m.name }}){% endif %}: {{ m.content | tojson }}
  {% if m.thinking is defined %} [{{ m.thinking }}]{% endif %}
  {% if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}{% endgeneration %}{% endif %}
  {{ eos_token }}
{% endfor %}
{% if tools %}{{ tools | tojson(indent=2) }}{% endif %}
{{ ns.n }} {{ custom | default('none') }} {{ dict(a=1) | tojson }} {{ strftime_now('%Y') | length }}
{% if messages[-1].role == 'boom' %}{{ raise_exception('bad role: ' + messages[-1].role) }}{% endif %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_template_helpers_match(tmp_path, tokenizer_dir):
    path = _variant(tmp_path, tokenizer_dir, template=FEATURE_TEMPLATE)
    light, hf = LightTokenizer.load(path), _auto(path)
    conv = [
        {"role": "user", "content": 'He said "<b>hi</b>" & left 😀', "name": None},
        {"role": "user", "content": "again", "name": "bob"},
        {"role": "skip", "content": "ignored"},
        {"role": "assistant", "content": "  fine  ", "reasoning_content": "think first"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for kwargs in ({}, {"add_generation_prompt": True, "custom": "x"}, {"tools": tools}):
        expected = hf.apply_chat_template(conv, tokenize=False, **kwargs)
        assert light.apply_chat_template(conv, **kwargs) == expected, kwargs
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role: boom"):
        light.apply_chat_template([{"role": "boom", "content": ""}])


def test_unsupported_chat_arguments_are_refused(light):
    with pytest.raises(TypeError, match="continue_final_message"):
        light.apply_chat_template(CONVERSATIONS[2], continue_final_message=True)
    assert light.apply_chat_template(CONVERSATIONS[0], return_dict=False, tokenize=True)  # neutral values pass
    with pytest.raises(ValueError, match="empty"):
        light.apply_chat_template([])


def test_chat_template_argument_and_attribute_override(light, tokenizer):
    other = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    expected = tokenizer.apply_chat_template(CONVERSATIONS[1], chat_template=other, tokenize=False)
    assert light.apply_chat_template(CONVERSATIONS[1], chat_template=other) == expected
    light = LightTokenizer.load(light.name_or_path)
    light.chat_template = other
    assert light.apply_chat_template(CONVERSATIONS[1]) == expected


# ---- what it loads, and what it refuses ------------------------------------------------------------------


def test_never_imports_transformers(tokenizer_dir):
    """Importing the module, loading and using the tokenizer leave transformers (and torch) unimported."""
    code = f"""
import sys
from cai.backends.light_tokenizer import LightTokenizer
assert "tokenizers" not in sys.modules and "jinja2" not in sys.modules, "imports should be lazy"
tok = LightTokenizer.load({str(tokenizer_dir)!r})
ids = tok.apply_chat_template([{{"role": "user", "content": "hi"}}], add_generation_prompt=True, tokenize=True)
tok.decode(ids, skip_special_tokens=True); tok.get_vocab(); tok.convert_tokens_to_string(["a"])
bad = [m for m in ("transformers", "torch") if m in sys.modules]
assert not bad, bad
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_loads_a_saved_model_directory(tiny_model_dir, tokenizer):
    """The layout `save_pretrained` writes for a model (as models.py caches the embedded one) loads."""
    light = LightTokenizer.load(tiny_model_dir)
    assert light is not None
    assert light.apply_chat_template(CONVERSATIONS[2], add_generation_prompt=True) == tokenizer.apply_chat_template(
        CONVERSATIONS[2], add_generation_prompt=True, tokenize=False)


def test_loads_the_cached_embedded_model_directory():
    from cai.models import cache_dir

    dirs = sorted((cache_dir() / "models").glob("smollm2-135m-instruct-*/tokenizer.json"))
    if not dirs:
        pytest.skip("the embedded model has not been converted on this machine")
    path = dirs[-1].parent
    light, hf = LightTokenizer.load(path), _auto(path)
    assert light is not None
    for conv in CONVERSATIONS:
        assert light.apply_chat_template(conv, add_generation_prompt=True, tokenize=True) == hf.apply_chat_template(
            conv, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert light.eos_token_id == hf.eos_token_id and light.pad_token_id == hf.pad_token_id


def test_legacy_layout_with_added_tokens_decoder_matches(tmp_path, tokenizer_dir):
    """A transformers-4 style config (added_tokens_decoder, dict special tokens, template in the config)."""
    tok_json = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    decoder = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tok_json["added_tokens"]}
    template = (tokenizer_dir / "chat_template.jinja").read_text()
    eos = {"__type": "AddedToken", **decoder["2"]}
    path = _variant(tmp_path, tokenizer_dir, drop=["chat_template.jinja"], added_tokens_decoder=decoder,
                    eos_token=eos, chat_template=template, clean_up_tokenization_spaces=False,
                    additional_special_tokens=["<repo_name>", "<file_sep>"], backend=None,
                    tokenizer_class="PreTrainedTokenizerFast", files={"config.json": {"model_type": "llama"}})
    light, hf = LightTokenizer.load(path), _auto(path)
    assert light is not None and type(hf).__name__ == "TokenizersBackend"
    assert light.eos_token == hf.eos_token == "<|im_end|>"
    assert light.all_special_ids == hf.all_special_ids
    ids = hf.encode(TEXTS[5] + TEXTS[12])
    assert light.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(
        ids, skip_special_tokens=True)
    assert light.apply_chat_template(CONVERSATIONS[1]) == hf.apply_chat_template(CONVERSATIONS[1], tokenize=False)


def test_special_tokens_map_overrides_config_like_transformers(tmp_path, tokenizer_dir):
    path = _variant(tmp_path, tokenizer_dir, eos_token=None, pad_token=None,
                    files={"special_tokens_map.json": {"eos_token": {"content": "<|endoftext|>", "lstrip": False,
                                                                     "rstrip": False, "normalized": False,
                                                                     "single_word": False},
                                                       "bos_token": "<|im_start|>"}})
    light, hf = LightTokenizer.load(path), _auto(path)
    assert light is not None
    assert (light.eos_token, light.eos_token_id, light.pad_token_id) == (hf.eos_token, hf.eos_token_id, None)
    assert hf.pad_token_id is None
    assert light.apply_chat_template(CONVERSATIONS[0]) == hf.apply_chat_template(CONVERSATIONS[0], tokenize=False)


@pytest.mark.parametrize("change", [
    {"drop": ["tokenizer.json"]},
    {"drop": ["tokenizer_config.json"]},
    {"drop": ["chat_template.jinja"]},  # and none in the config
    {"clean_up_tokenization_spaces": True},
    {"tokenizer_class": "LlamaTokenizer"},
    {"tokenizer_class": None},
    {"add_bos_token": True},
    {"split_special_tokens": True},
    {"some_future_option": 1},
    {"image_token": "<|im_start|>"},  # a model-specific special token: would become a template variable
    {"pad_token": "<pad>"},  # not in tokenizer.json: transformers would add it
    {"chat_template": [{"name": "default", "template": "{{ 1 }}"}], "drop": ["chat_template.jinja"]},
    {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]},
    {"files": {"config.json": {"model_type": "qwen2"}}},
    {"files": {"special_tokens_map.json": {"additional_special_tokens": ["<repo_name>"]}}},
    {"added_tokens_decoder": {"2": {"content": "<|im_end|>", "special": True, "lstrip": True}}},
])
def test_refuses_what_it_does_not_reproduce(tmp_path, tokenizer_dir, change):
    change = dict(change)
    path = _variant(tmp_path, tokenizer_dir, drop=change.pop("drop", ()), files=change.pop("files", None), **change)
    assert LightTokenizer.load(path) is None


def test_ignores_padding_and_truncation_baked_into_tokenizer_json_as_transformers_does(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tok_json = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    tok_json["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    tok_json["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None,
                           "pad_id": 2, "pad_type_id": 0, "pad_token": "<|im_end|>"}
    path = _variant(tmp_path, tokenizer_dir, files={"tokenizer.json": tok_json})
    light, full = LightTokenizer.load(path), AutoTokenizer.from_pretrained(path)
    text = "A sentence with a good many more than eight tokens in it, to see whether it gets cut."
    assert light.encode(text) == full.encode(text) and len(light.encode(text)) > 8
    assert light(text, add_special_tokens=False)["input_ids"] == full(text, add_special_tokens=False)["input_ids"]


def test_pad_token_can_be_set(light):
    light = LightTokenizer.load(light.name_or_path)
    light.pad_token = None
    assert light.pad_token_id is None
    light.pad_token = light.eos_token
    assert light.pad_token_id == light.eos_token_id
