"""A tokenizer for generation that loads without transformers: the ``tokenizers`` library plus a chat template.

Importing transformers costs ~1.75 s here, and the generation backend only needs encode, decode and the
chat template. ``LightTokenizer.load(dir)`` reads ``tokenizer.json`` with the ``tokenizers`` library and
renders the chat template with jinja2 set up the way transformers sets it up, so the ids and strings are
the ones ``AutoTokenizer.from_pretrained(dir)`` gives.

Exactness comes from refusing, not from imitation: whenever the directory asks for something this class
does not reproduce (an unknown tokenizer_config key, a custom tokenizer class, cleanup of decoded spaces,
special tokens transformers would add or re-flag, ...)
``load`` returns None and the caller falls back to ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_SPECIAL_KEYS = ("additional_special_tokens", "extra_special_tokens")

# tokenizer_config.json keys and the values we reproduce (None: any value is fine, it changes nothing here).
# Every other key makes `load` return None.
_KNOWN_CONFIG = {
    "backend": {"tokenizers"},
    "tokenizer_class": {"TokenizersBackend", "PreTrainedTokenizerFast"},  # classes without a custom __init__
    "clean_up_tokenization_spaces": {False},
    "split_special_tokens": {False},
    "add_bos_token": {False},  # transformers ignores both when tokenizer.json exists; we refuse True anyway
    "add_eos_token": {False},
    "add_prefix_space": {False, None},
    "model_input_names": None,  # checked below
    "model_max_length": None,  # only used for truncation and warnings
    "padding_side": None,
    "truncation_side": None,
    "is_local": None,
    "local_files_only": None,
    "name_or_path": None,
    "processor_class": None,
    "chat_template": None,  # checked below
    "added_tokens_decoder": None,  # checked below
    **{name: None for name in SPECIAL_TOKEN_NAMES + EXTRA_SPECIAL_KEYS},  # checked below
}
# model types (config.json) for which AutoTokenizer keeps the TokenizersBackend class the config names;
# for some others it swaps in a model-specific class. Widen only after a parity check.
_MODEL_TYPES = {"llama"}
# chat-template arguments of transformers' apply_chat_template that change its output; refused unless neutral
_NEUTRAL_CHAT_ARGS = {"continue_final_message": False, "return_dict": False, "return_tensors": None,
                      "return_assistant_tokens_mask": False, "padding": False, "truncation": False,
                      "max_length": None, "tokenizer_kwargs": None, "sanitize_control_tokens": False}
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _Unsupported(Exception):
    """The directory asks for something LightTokenizer does not reproduce exactly."""


class Encoding(dict):
    """``{"input_ids": [...], "attention_mask": [...]}``, also readable as attributes (``enc.input_ids``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _token_property(name: str) -> property:
    def get(self) -> str | None:
        return self._special.get(name)

    def set_(self, value: str | None) -> None:
        self._special[name] = None if value is None else str(value)

    return property(get, set_, doc=f"The {name.replace('_', ' ')} string, or None.")


def _token_id_property(name: str) -> property:
    def get(self) -> int | None:
        token = self._special.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    return property(get, doc=f"The id of the {name.replace('_', ' ')}, or None.")


class LightTokenizer:
    """The subset of a Hugging Face fast tokenizer that generation uses, with the same outputs."""

    bos_token = _token_property("bos_token")
    eos_token = _token_property("eos_token")
    unk_token = _token_property("unk_token")
    pad_token = _token_property("pad_token")
    bos_token_id = _token_id_property("bos_token")
    eos_token_id = _token_id_property("eos_token")
    unk_token_id = _token_id_property("unk_token")
    pad_token_id = _token_id_property("pad_token")

    def __init__(self, backend, chat_template: str, special: dict[str, str | None], extra_special: list[str],
                 name_or_path: str = ""):
        self._backend = backend  # a tokenizers.Tokenizer
        self.chat_template = chat_template
        self._special = dict(special)  # named special tokens (SPECIAL_TOKEN_NAMES) -> string or None
        self._extra_special = list(extra_special)
        self.name_or_path = name_or_path

    @classmethod
    def load(cls, path: str | Path) -> LightTokenizer | None:
        """The tokenizer saved in ``path``, or None when it needs anything we do not reproduce exactly."""
        directory = Path(path)
        try:
            config, template = _read_config(directory)
            special, extra = _special_tokens(config, directory)
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
            # padding or truncation baked into tokenizer.json (saved after padded batches, as PPO does):
            # transformers switches both off for every call that does not ask for them, and no call here does
            backend.no_padding()
            backend.no_truncation()
            _check_backend(backend, config, [*filter(None, special.values()), *extra])
        except _Unsupported as why:
            log.debug("no light tokenizer for %s (%s); use AutoTokenizer", directory, why)
            return None
        if backend.post_processor is None:  # transformers installs this no-op template in that case
            from tokenizers.processors import TemplateProcessing

            backend.post_processor = TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
        return cls(backend, template, {k: _content(v) for k, v in special.items()}, [_content(t) for t in extra],
                   name_or_path=str(path))

    # ---- encoding and decoding -------------------------------------------------------------------------

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoding:
        """Encode one string: ``{"input_ids": list[int], "attention_mask": list[int]}``."""
        if not isinstance(text, str):
            raise TypeError(f"LightTokenizer encodes one string at a time, got {type(text).__name__}")
        enc = self._backend.encode(text, add_special_tokens=add_special_tokens)
        return Encoding(input_ids=enc.ids, attention_mask=enc.attention_mask)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids, skip_special_tokens: bool = False) -> str | list[str]:
        """Text of ``ids`` (an int, a sequence of ints or a tensor; a list of rows gives a list of texts),
        special tokens kept unless skipped."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(row, skip_special_tokens) for row in ids]
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_ids(self, tokens):
        """Id of a token string (or ids of a list of them); unknown tokens give ``unk_token_id``."""
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            if index is None:
                unk = self._special.get("unk_token")
                return None if unk is None else self._backend.token_to_id(unk)
            return index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # ---- vocabulary ---------------------------------------------------------------------------------------

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: value for name, value in self._special.items() if value is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self._extra_special]))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    # ---- chat template ----------------------------------------------------------------------------------

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = False,
                            tools: list[dict] | None = None, documents: list[dict] | None = None,
                            chat_template: str | None = None, **kwargs):
        """Render a conversation with the chat template (or the ``chat_template`` string given); with
        ``tokenize`` return its ids, adding no special tokens on top, as transformers does. Extra keyword
        arguments become template variables."""
        for name, neutral in _NEUTRAL_CHAT_ARGS.items():
            if name in kwargs:
                if kwargs.pop(name) != neutral:
                    raise TypeError(f"LightTokenizer.apply_chat_template does not support {name}=; use AutoTokenizer")
        if not messages:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        if isinstance(messages[0], (list, tuple)):
            raise TypeError("LightTokenizer.apply_chat_template renders one conversation at a time")
        if tools is not None and not all(isinstance(t, dict) for t in tools):
            raise TypeError("LightTokenizer takes tools as JSON schema dicts only")
        if documents is not None and not all(isinstance(d, dict) for d in documents):
            raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")
        variables = _plain({**self.special_tokens_map, **kwargs})
        template = _compile(chat_template or self.chat_template)
        text = template.render(messages=_template_messages(messages), tools=_plain(tools), documents=_plain(documents),
                               add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return f"LightTokenizer({self.name_or_path!r}, vocab={len(self)})"


# ---- reading a tokenizer directory ---------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _Unsupported(f"cannot read {path.name}: {e}") from None
    if not isinstance(data, dict):
        raise _Unsupported(f"{path.name} is not a JSON object")
    return data


def _read_config(directory: Path) -> tuple[dict, str]:
    """tokenizer_config.json (checked key by key) and the chat template, or _Unsupported."""
    if not (directory / "tokenizer.json").is_file():
        raise _Unsupported("no tokenizer.json")
    config = _read_json(directory / "tokenizer_config.json")
    if config is None:
        raise _Unsupported("no tokenizer_config.json")
    for key, value in config.items():
        if key not in _KNOWN_CONFIG:
            raise _Unsupported(f"tokenizer_config key {key!r}")
        allowed = _KNOWN_CONFIG[key]
        if allowed is not None and not any(value is a or (value == a and type(value) is type(a)) for a in allowed):
            raise _Unsupported(f"tokenizer_config {key}={value!r}")
    if config.get("tokenizer_class") is None:
        raise _Unsupported("no tokenizer_class (AutoTokenizer would pick one by model type)")
    if config.get("model_input_names", ["input_ids", "attention_mask"]) != ["input_ids", "attention_mask"]:
        raise _Unsupported(f"model_input_names={config['model_input_names']!r}")
    model_config = _read_json(directory / "config.json")
    if model_config is not None and model_config.get("model_type") not in _MODEL_TYPES:
        raise _Unsupported(f"model_type {model_config.get('model_type')!r}")
    if (directory / "chat_templates").is_dir():
        raise _Unsupported("named chat templates (chat_templates/)")
    template_file = directory / "chat_template.jinja"  # takes priority over the config's template
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    if not isinstance(template, str):
        raise _Unsupported("no chat template" if template is None else "several named chat templates")
    return config, template


def _special_tokens(config: dict, directory: Path) -> tuple[dict[str, Any], list[Any]]:
    """Named special tokens and the extra ones, as transformers reads them (values: str or AddedToken dicts).

    special_tokens_map.json is only read when the config has no added_tokens_decoder, and then overrides it.
    """
    special = {name: config.get(name) for name in SPECIAL_TOKEN_NAMES}
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
    if not isinstance(extra, list):
        raise _Unsupported("extra special tokens given as a dict")
    for value in [*special.values(), *extra]:  # the config's dicts must be tagged, else transformers rejects them
        if not (value is None or isinstance(value, str) or isinstance(value, dict) and _is_added_token(value)):
            raise _Unsupported(f"special token {value!r}")
    if "added_tokens_decoder" not in config:
        legacy = _read_json(directory / "special_tokens_map.json") or {}
        for key, value in legacy.items():
            if key not in SPECIAL_TOKEN_NAMES or not isinstance(value, (str, dict)):
                raise _Unsupported(f"special_tokens_map entry {key!r}")
            special[key] = {**value, "special": True} if isinstance(value, dict) else value
    return special, extra


_TOKEN_KEYS = {"content", "special", "normalized", "lstrip", "rstrip", "single_word"}


def _is_added_token(saved: dict, tagged: bool = True) -> bool:
    """Whether transformers reads ``saved`` as an AddedToken: only AddedToken fields, plus the
    ``"__type": "AddedToken"`` tag where it requires one (``tagged``) and nowhere else."""
    if (saved.get("__type") != "AddedToken") if tagged else ("__type" in saved):
        return False
    fields = {k: v for k, v in saved.items() if k != "__type"}
    return isinstance(fields.get("content"), str) and set(fields) <= _TOKEN_KEYS


def _content(token: str | dict | None) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


_PLAIN_SPECIAL = {"special": True, "normalized": False, "lstrip": False, "rstrip": False, "single_word": False}


def _flags(token) -> dict[str, bool]:
    """An added token's flags, from a tokenizers.AddedToken or a saved dict (with AddedToken's defaults)."""
    if isinstance(token, dict):
        special = bool(token.get("special", False))
        return {"special": special, "normalized": bool(token.get("normalized", not special)),
                "lstrip": bool(token.get("lstrip", False)), "rstrip": bool(token.get("rstrip", False)),
                "single_word": bool(token.get("single_word", False))}
    return {name: bool(getattr(token, name)) for name in _PLAIN_SPECIAL}


def _check_backend(backend, config: dict, special_values: list) -> None:
    """Refuse what transformers would change in the backend on load: special tokens it would add or
    re-flag, and added_tokens_decoder entries that differ from tokenizer.json."""
    added = backend.get_added_tokens_decoder()  # id -> tokenizers.AddedToken
    by_content = {token.content: token for token in added.values()}
    for value in special_values:
        token = by_content.get(_content(value))
        if token is None or _flags(token) != _PLAIN_SPECIAL:
            raise _Unsupported(f"special token {_content(value)!r} is not a plain special added token")
        if isinstance(value, dict) and _flags(value) != _PLAIN_SPECIAL:
            raise _Unsupported(f"special token {_content(value)!r} has its own flags")
    for index, saved in (config.get("added_tokens_decoder") or {}).items():
        token = added.get(int(index))
        if not (isinstance(saved, dict) and _is_added_token(saved, tagged=False)) or token is None \
                or saved["content"] != token.content or _flags(saved) != _flags(token):
            raise _Unsupported(f"added_tokens_decoder entry {index} differs from tokenizer.json")


# ---- chat template rendering ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Template data rebuilt from plain JSON types, as transformers does before rendering: subclasses of
    str/int/float become the base type, pydantic models and dataclasses become dicts, and any other
    object becomes an inert ``"<TypeName>"`` string (the sandbox cannot vouch for its methods)."""
    import dataclasses
    from collections.abc import Mapping

    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _template_messages(messages) -> list[dict]:
    """Messages as the template sees them: plain dicts, keys whose value is None dropped, and the
    reasoning text under every name templates read it by (``reasoning_content`` and ``thinking``)."""
    out = []
    for message in _plain(list(messages)):
        if not isinstance(message, dict):
            raise TypeError(f"Chat messages should be dicts, dataclasses or pydantic models, but got {message!r}.")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_KEYS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


@lru_cache(maxsize=16)
def _compile(template: str):
    return _environment().from_string(template)


@lru_cache(maxsize=1)
def _environment():
    """The sandboxed jinja2 environment transformers renders chat templates in (same options and helpers)."""
    import datetime

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < (3, 1, 6):
        raise ImportError(f"chat templates need jinja2>=3.1.6 (older ones have sandbox escapes); "
                          f"found {jinja2.__version__}: pip install -U jinja2")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # no HTML escaping
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_generation_extension(), loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=_safe_namespace(), dict=_PlainDict(),
                       strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    return env


def _generation_extension():
    """``{% generation %}...{% endgeneration %}`` marks assistant text for assistant-token masks; it renders
    as a call block around its body, as in transformers (the masks themselves are not computed here)."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationBlock(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationBlock


def _safe_namespace():
    """jinja2's ``namespace()`` without underscore attributes (no way to reach Python internals)."""
    from jinja2.exceptions import SecurityError
    from jinja2.utils import Namespace

    def check(names) -> None:
        for name in names:
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"chat templates cannot set namespace attribute {name!r}")

    class SafeNamespace(Namespace):
        def __init__(*args, **kwargs):
            self, attrs = args[0], dict(*args[1:], **kwargs)
            check(attrs)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            check([name])
            Namespace.__setitem__(self, name, value)

    return SafeNamespace


class _PlainDict:
    """The template's ``dict``: ``dict(...)`` and ``dict.fromkeys(...)`` without the rest of the dict type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)
