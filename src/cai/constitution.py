"""Constitutions: the principles that steer critique, revision and AI preference labels.

A constitution is a YAML file::

    name: general
    version: 1
    description: Harmless, helpful and honest.
    templates:                      # optional: wrap every principle's request
      revision: "{request} Reply with the rewritten answer only."
    principles:
      - id: harmful-content         # a stable slug: records cite it
        tags: [harmlessness]
        weight: 1.0                 # relative chance of being drawn by ``sample_principles``
        critique: Point out every way your last response could cause harm.
        revision: Rewrite the response so that it causes no harm.
        preference: Choose the response that is less likely to cause harm.
    few_shot:                       # optional worked examples shown before the real prompt
      - {prompt: ..., response: ..., critique: ..., revision: ..., principle_id: harmful-content}

Everything here is pure: loading validates strictly (unknown keys are errors, with a suggestion),
the content hash ignores formatting, and sampling is seeded.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import random
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cai.errors import ConfigError
from cai.records import ConstitutionRef

logger = logging.getLogger(__name__)

SHIPPED = ["general", "seed", "redteam", "customer-service"]
SLUG = r"^[a-z0-9][a-z0-9_-]*$"

# ---------------------------------------------------------------------------------------------------------
# the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_blank(value: str, field: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "`{field}` is empty", {"field": field})
    return value.strip()


class Principle(_Strict):
    """One principle: a critique request, a revision request and (for RLAIF) a preference question."""

    id: str = Field(pattern=SLUG, max_length=64)
    tags: list[str] = []
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    critique: str
    revision: str
    preference: str | None = None

    @field_validator("critique", "revision", "preference")
    @classmethod
    def _strip(cls, value: str | None, info) -> str | None:
        return None if value is None else _not_blank(value, info.field_name)


class FewShotExample(_Strict):
    """A worked critique-revision exchange shown to the model before the real prompt.

    ``principle_id`` names the principle whose requests the example answers. ``critique_request`` and
    ``revision_request`` hold the exact request wording when it was imported from elsewhere; when absent
    the requests are rendered from the principle (see ``Constitution.few_shot_messages``).
    """

    prompt: str
    response: str
    critique: str
    revision: str
    principle_id: str | None = None
    critique_request: str | None = None
    revision_request: str | None = None

    @field_validator("prompt", "response", "critique", "revision", "critique_request", "revision_request")
    @classmethod
    def _strip(cls, value: str | None, info) -> str | None:
        return None if value is None else _not_blank(value, info.field_name)


def _format_fields(template: str) -> set[str]:
    """The ``{field}`` names a format string uses; a stray brace is a validation error."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise PydanticCustomError("bad_template", "not a valid format string ({err})", {"err": str(e)}) \
            from None


class Templates(_Strict):
    """Format strings that wrap each principle's request before it is sent to the model.

    ``critique`` and ``revision`` must contain ``{request}`` (the principle's text) and no other field;
    they let one constitution add shared instructions, e.g. "Reply with the rewritten answer only."
    ``judge`` optionally replaces the labeller's multiple-choice question; the labeller documents the
    fields it fills.
    """

    critique: str = "{request}"
    revision: str = "{request}"
    judge: str | None = None

    @field_validator("critique", "revision")
    @classmethod
    def _wraps_request(cls, value: str, info) -> str:
        fields = _format_fields(value)
        if "request" not in fields:
            raise PydanticCustomError("template_request", "template does not contain `{request}`", {})
        if fields - {"request"}:
            raise PydanticCustomError(
                "template_fields", "template uses unknown fields {names}; only `{request}` is filled",
                {"names": ", ".join(f"`{{{n}}}`" for n in sorted(fields - {"request"}))})
        return value

    @field_validator("judge")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            _format_fields(value)
        return value


class Constitution(_Strict):
    """A named, versioned list of principles, with optional few-shot examples and request templates."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = ""
    templates: Templates = Templates()
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[FewShotExample] = []

    @field_validator("description")
    @classmethod
    def _strip_description(cls, value: str) -> str:
        return value.strip()

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        first: dict[str, int] = {}
        clashes = []
        for i, p in enumerate(principles):
            if p.id in first:
                clashes.append(f"`{p.id}` at principles[{first[p.id]}] and principles[{i}]")
            first.setdefault(p.id, i)
        if clashes:
            raise PydanticCustomError("duplicate_id", "duplicate principle id {clashes}",
                                      {"clashes": "; ".join(clashes)})
        return principles

    @model_validator(mode="after")
    def _few_shot_ids_exist(self) -> Constitution:
        ids = [p.id for p in self.principles]
        for i, ex in enumerate(self.few_shot):
            if ex.principle_id is not None and ex.principle_id not in ids:
                raise PydanticCustomError(
                    "unknown_principle", "few_shot[{i}].principle_id `{pid}` is not a principle id{hint}",
                    {"i": i, "pid": ex.principle_id, "hint": _did_you_mean(ex.principle_id, ids)})
        return self

    # -- identity ------------------------------------------------------------------------------------------
    @property
    def hash(self) -> str:
        """sha256 hex of the canonical JSON content: sorted keys, defaults filled in, no formatting."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def ref(self) -> ConstitutionRef:
        """The name, version and hash that records cite (their provenance)."""
        return ConstitutionRef(name=self.name, version=self.version, hash=self.hash)

    # -- lookup --------------------------------------------------------------------------------------------
    def principle(self, principle_id: str) -> Principle:
        """The principle with this id.

        Raises:
            ConfigError: no principle has that id (the message suggests the closest).
        """
        for p in self.principles:
            if p.id == principle_id:
                return p
        ids = [p.id for p in self.principles]
        raise ConfigError(f"no principle `{principle_id}`{_did_you_mean(principle_id, ids)}",
                          where=f"constitution {self.name}", fix=f"use one of: {', '.join(ids)}")

    def preference_principles(self) -> list[Principle]:
        """The principles that can label preferences (those with a ``preference`` question)."""
        return [p for p in self.principles if p.preference is not None]

    def with_tags(self, *tags: str) -> list[Principle]:
        """The principles carrying any of ``tags``, in file order."""
        wanted = set(tags)
        return [p for p in self.principles if wanted & set(p.tags)]

    # -- rendering requests --------------------------------------------------------------------------------
    def critique_request(self, principle: Principle | str) -> str:
        """The critique request to send: the principle's text wrapped in ``templates.critique``."""
        p = principle if isinstance(principle, Principle) else self.principle(principle)
        return self.templates.critique.format(request=p.critique)

    def revision_request(self, principle: Principle | str) -> str:
        """The revision request to send: the principle's text wrapped in ``templates.revision``."""
        p = principle if isinstance(principle, Principle) else self.principle(principle)
        return self.templates.revision.format(request=p.revision)

    def few_shot_messages(self, example: FewShotExample) -> list[dict[str, str]]:
        """The example as six chat turns: prompt, response, critique request, critique, revision request,
        revision. Requests come from the example itself, else its principle, else the first principle."""
        p = self.principle(example.principle_id) if example.principle_id else self.principles[0]
        return [
            {"role": "user", "content": example.prompt},
            {"role": "assistant", "content": example.response},
            {"role": "user", "content": example.critique_request or self.critique_request(p)},
            {"role": "assistant", "content": example.critique},
            {"role": "user", "content": example.revision_request or self.revision_request(p)},
            {"role": "assistant", "content": example.revision},
        ]


# ---------------------------------------------------------------------------------------------------------
# loading, with errors that name the file, the line and the field


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe YAML loader that rejects a key written twice in one mapping (PyYAML keeps the last). Parsed
    by libyaml where PyYAML has it (the default constitution: 24 ms in pure Python)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                problem = f"key `{key}` appears twice (lines {seen[key]} and {line})"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            if isinstance(key, str):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse YAML text into (data, node tree); a parse error becomes a ConfigError with line and column."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        fix = ("keep one of the two" if "appears twice" in problem else "fix the YAML syntax there "
               "(indentation, a missing space after `:`, an unclosed bracket or quote)")
        raise ConfigError(f"not valid YAML: {problem}", where=where, fix=fix) from None
    finally:
        loader.dispose()
    return data, node


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line where the value at ``loc`` (e.g. ("principles", 1, "critique")) is written."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "principles": Principle, "few_shot": FewShotExample, "templates": Templates,
}


def _model_at(loc: tuple) -> type[BaseModel]:
    """The schema class that owns the last key of ``loc`` (for unknown-key suggestions)."""
    owner: type[BaseModel] = Constitution
    for part in loc[:-1]:
        if isinstance(part, str):
            owner = _SECTION_MODELS.get(part, owner)
    return owner


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "an empty value"
    names = {dict: "a mapping", list: "a list", str: "text", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _expected(owner: type[BaseModel]) -> str:
    """One line saying which keys ``owner`` takes (for missing/unknown key fixes)."""
    keys = [f"`{k}`" + ("" if f.is_required() else " (optional)") for k, f in owner.model_fields.items()]
    return f"{owner.__name__.lower()} keys are {', '.join(keys)}"


def _type_fix(want: str, field: str) -> str:
    if want == "text":
        return 'write it as one string: `"..."` (quote it if it holds `:` or `#`)'
    if want == "a number":
        return "write a number, e.g. `1.0`"
    if field in ("principles", "few_shot"):
        return f"write `{field}:` followed by items that each start with `- ` on their own lines"
    return "write it as a list, e.g. `[harmlessness, honesty]`"


def _explain(err: dict[str, Any]) -> tuple[str, str]:
    """(what, fix) for one pydantic error, in the words of a constitution author."""
    kind, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    field = str(loc[-1]) if loc else ""
    if kind == "missing":
        return (f"missing required key `{field}`",
                f"add `{field}: ...` here; {_expected(_model_at(loc))}")
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        hint = _did_you_mean(field, list(owner.model_fields))
        return (f"unknown key `{field}`{hint}", f"remove or rename it; {_expected(owner)}")
    if kind == "too_short" and field == "principles":
        return ("`principles` is empty", "add at least one principle with `id`, `critique` and `revision`")
    if kind == "string_pattern_mismatch":
        slug = re.sub(r"[^a-z0-9_-]+", "-", str(value).lower()).strip("-_") or "my-principle"
        return (f"id `{value}` is not a slug", f"use lowercase letters, digits, `-` and `_`, e.g. `{slug}`")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return (f"expected a mapping of keys, got {_kind(value)}",
                f"write it as `key: value` lines; {_expected(_model_at(loc + ('',)))}")
    if kind in ("string_type", "list_type", "float_type", "float_parsing"):
        want = {"string_type": "text", "list_type": "a list"}.get(kind, "a number")
        return (f"`{field}` should be {want}, got {_kind(value)}", _type_fix(want, field))
    if kind in ("blank", "string_too_short"):
        return (f"`{field}` is empty", f"write some text for `{field}`")
    if kind in ("greater_than", "finite_number"):
        return (f"`{field}` must be a positive number, got {value!r}", "use a weight above 0, e.g. `1.0`")
    if kind == "duplicate_id":
        return (err["msg"], "give each principle its own id (records cite principles by id)")
    if kind in ("template_request", "template_fields", "bad_template"):
        return (err["msg"], "write the template around `{request}`, e.g. "
                            "`\"{request} Reply with the rewritten answer only.\"`")
    if kind == "unknown_principle":
        return (err["msg"], "set `principle_id` to an id under `principles`, or remove it")
    return (err["msg"], "correct this value")


def validate_data(data: Any, *, source: str = "<data>", node: yaml.Node | None = None) -> Constitution:
    """Validate already-parsed data; every problem is listed in one ConfigError (file, line, field, fix)."""
    if not isinstance(data, dict):
        raise ConfigError(f"the top level is {_kind(data)}, not a mapping", where=source,
                          fix="start the file with `name:`, `version:` and `principles:` keys")
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            what, fix = _explain(err)
            loc = tuple(err["loc"])
            line = _line_of(node, loc) if node is not None else None
            at = _field_path(loc) + (f" (line {line})" if line else "")
            problems.append((line or 0, at, what, fix))
        problems = [p[1:] for p in sorted(problems, key=lambda p: p[0])]
        if len(problems) == 1:
            at, what, fix = problems[0]
            raise ConfigError(what, where=f"{source}: {at}", fix=fix) from None
        listing = "\n".join(f"  - {at}: {what}\n      fix: {fix}" for at, what, fix in problems)
        raise ConfigError(f"{len(problems)} problems:\n{listing}", where=source,
                          fix="correct each key listed above, then run `cai constitution validate` again") \
            from None


def parse_constitution(text: str, *, source: str = "<string>") -> Constitution:
    """Parse and validate constitution YAML text; ``source`` names it in error messages."""
    data, node = _read_yaml(text, source)
    return validate_data(data, source=source, node=node)


def _read_text(path_or_name: str | Path) -> tuple[str, str]:
    """(text, source name) for a file path or a shipped constitution name."""
    path = Path(path_or_name)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (UnicodeDecodeError, OSError) as e:
            raise ConfigError(f"cannot read the file ({e})", where=str(path),
                              fix="pass a readable UTF-8 YAML file") from None
    if str(path_or_name) in SHIPPED:
        from importlib import resources

        res = resources.files("cai") / "constitutions" / f"{path_or_name}.yaml"
        return res.read_text(encoding="utf-8"), f"{path_or_name} (shipped)"
    if path.is_dir():
        raise ConfigError("this is a directory, not a constitution file", where=str(path),
                          fix="pass the path of a .yaml file")
    raise ConfigError("no such file or shipped constitution" + _did_you_mean(str(path_or_name), SHIPPED),
                      where=str(path_or_name),
                      fix=f"check the path, or use a shipped name: {', '.join(SHIPPED)}")


def load_constitution(path_or_name: str | Path) -> Constitution:
    """Load a constitution from a YAML file path or a shipped name, validating it strictly.

    Args:
        path_or_name: a YAML file, or a shipped name (see ``SHIPPED``).

    Returns:
        The validated ``Constitution``.

    Raises:
        ConfigError: the file is missing or invalid; the message names the line, the field and a fix.
    """
    text, source = _read_text(path_or_name)
    constitution = parse_constitution(text, source=source)
    logger.debug("loaded constitution %s v%s (%d principles, %s)", constitution.name, constitution.version,
                 len(constitution.principles), constitution.hash[:12])
    return constitution


# ---------------------------------------------------------------------------------------------------------
# sampling


def sample_principles(constitution: Constitution, n: int, *, seed: int,
                      strategy: Literal["random", "round-robin"] = "random",
                      tags: list[str] | tuple[str, ...] | None = None, start: int = 0) -> list[Principle]:
    """Pick ``n`` principles, one per critique round or label.

    "random": independent draws proportional to ``weight`` (a principle may repeat), as in the CAI
    paper; "round-robin": file order, cycling, beginning at index ``start``. ``tags`` first restricts
    the pool to principles with any of those tags. Same arguments, same result.
    """
    pool = constitution.with_tags(*tags) if tags else list(constitution.principles)
    if not pool:
        known = sorted({t for p in constitution.principles for t in p.tags})
        raise ConfigError(f"no principle carries any of the tags {list(tags or [])}",
                          where=f"constitution {constitution.name}", fix=f"use one of: {', '.join(known)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if strategy == "random":
        rng = random.Random(seed)
        return rng.choices(pool, weights=[p.weight for p in pool], k=n)
    if strategy == "round-robin":
        return [pool[(start + i) % len(pool)] for i in range(n)]
    raise ConfigError(f"unknown sampling strategy `{strategy}`", where="principle sampling",
                      fix="use `random` or `round-robin`")


# ---------------------------------------------------------------------------------------------------------
# comparing and writing


class ConstitutionDiff(BaseModel):
    """What changed from constitution ``a`` to ``b``."""

    added: list[str] = []
    removed: list[str] = []
    changed: dict[str, list[str]] = {}  # principle id -> changed field names
    metadata: list[str] = []  # changed top-level keys other than principles
    reordered: bool = False  # same ids present in both, in a different order

    @property
    def metadata_changed(self) -> bool:
        return bool(self.metadata)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.metadata or self.reordered)

    def lines(self) -> list[str]:
        """Plain-text lines: ``+ id`` added, ``- id`` removed, ``~ id: fields`` changed."""
        out = [f"+ {i}" for i in self.added] + [f"- {i}" for i in self.removed]
        out += [f"~ {i}: {', '.join(fields)}" for i, fields in self.changed.items()]
        if self.reordered:
            out.append("principle order changed")
        if self.metadata:
            out.append(f"metadata changed: {', '.join(self.metadata)}")
        return out or ["no differences"]


def diff(a: Constitution, b: Constitution) -> ConstitutionDiff:
    """Compare two constitutions principle by principle (by id) and key by key.

    Args:
        a: the old constitution.
        b: the new constitution.

    Returns:
        What changed: principles added, removed and changed, and the metadata.
    """
    old = {p.id: p for p in a.principles}
    new = {p.id: p for p in b.principles}
    changed = {}
    for pid in old.keys() & new.keys():
        before, after = old[pid].model_dump(), new[pid].model_dump()
        fields = [k for k in before if before[k] != after[k]]
        if fields:
            changed[pid] = fields
    common_a = [i for i in old if i in new]
    common_b = [i for i in new if i in old]
    meta = [k for k in Constitution.model_fields if k != "principles" and getattr(a, k) != getattr(b, k)]
    return ConstitutionDiff(
        added=[i for i in new if i not in old], removed=[i for i in old if i not in new],
        changed={i: changed[i] for i in common_b if i in changed}, metadata=meta,
        reordered=common_a != common_b)


class _BlockDumper(yaml.SafeDumper):
    """Block style with indented lists; multi-line text as ``|`` blocks; short word lists inline."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
    words = all(isinstance(v, str) and len(v) < 40 and "\n" not in v for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=words)


_BlockDumper.add_representer(str, _represent_str)
_BlockDumper.add_representer(list, _represent_list)


def dump_yaml(constitution: Constitution) -> str:
    """Readable YAML (defaults left out) that loads back to a constitution with the same hash."""
    data = constitution.model_dump(mode="json", exclude_defaults=True)
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=100)


# ---------------------------------------------------------------------------------------------------------
# importing other projects' formats

SUPPORTED_IMPORTS = (
    "Anthropic's CAI paper prompt file (a JSON object of {\"prompt\": [...], \"edit_request\": ...}), "
    "or the Hugging Face CAI recipe file (a JSON object with \"constitutions\": [{\"critic\", \"revision\"}] "
    "and optional \"system_chat\")"
)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_") or "principle"


def _strip_label(text: str | list, label: str) -> str:
    """Join a prompt (string or list of strings) and drop a leading ``label:`` such as CritiqueRequest."""
    joined = "\n".join(text) if isinstance(text, list) else str(text)
    return re.sub(rf"^\s*{label}\s*:\s*", "", joined.strip()).strip()


def _is_anthropic(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "prompt" in v and "edit_request" in v for v in data.values())


def _is_hf_recipe(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("constitutions"), list)


def _from_anthropic(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    principles = []
    for key, entry in data.items():
        principles.append({
            "id": _slug(key), "tags": ["harmlessness"],
            "critique": _strip_label(entry["prompt"], "CritiqueRequest"),
            "revision": _strip_label(entry["edit_request"], "RevisionRequest"),
        })
    return {"name": name, "version": "1", "principles": principles,
            "description": f"Imported from an Anthropic CAI paper prompt file ({source})."}


def _few_shot_from_chat(chat: Any, i: int, principles: list[dict[str, Any]], source: str) -> dict[str, Any]:
    roles = ["user", "assistant"] * 3
    if not (isinstance(chat, list) and len(chat) == 6 and all(
            isinstance(m, dict) and m.get("role") == r and isinstance(m.get("content"), str)
            for m, r in zip(chat, roles, strict=False))):
        raise ConfigError(f"system_chat[{i}] is not a six-turn critique-revision conversation", where=source,
                          fix="each conversation must alternate user/assistant: prompt, response, "
                              "critique request, critique, revision request, revision")
    texts = [m["content"].strip() for m in chat]
    requests = (texts[2], texts[4])
    match = next((p["id"] for p in principles if (p["critique"], p["revision"]) == requests), None)
    example = {"prompt": texts[0], "response": texts[1], "critique": texts[3], "revision": texts[5]}
    if match:
        example["principle_id"] = match
    else:
        example.update(critique_request=texts[2], revision_request=texts[4])
    return example


def _from_hf_recipe(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    principles = []
    for i, entry in enumerate(data["constitutions"]):
        if not (isinstance(entry, dict) and {"critic", "revision"} <= entry.keys()):
            raise ConfigError(f"constitutions[{i}] lacks `critic` and `revision`", where=source,
                              fix="each entry must be {\"critic\": ..., \"revision\": ...}")
        principles.append({"id": f"p{i:02d}", "tags": ["harmlessness"],
                           "critique": str(entry["critic"]).strip(),
                           "revision": str(entry["revision"]).strip()})
    few_shot = [_few_shot_from_chat(chat, i, principles, source)
                for i, chat in enumerate(data.get("system_chat") or [])]
    return {"name": name, "version": "1", "principles": principles, "few_shot": few_shot,
            "description": f"Imported from a Hugging Face CAI recipe file ({source})."}


def import_constitution(path: str | Path, name: str | None = None) -> Constitution:
    """Convert another project's constitution file (see ``SUPPORTED_IMPORTS``) into a Constitution."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such file", where=str(path), fix="pass the path of the JSON file to import")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON ({e.msg})", where=f"{path}, line {e.lineno}, column {e.colno}",
                          fix=f"pass one of the supported files: {SUPPORTED_IMPORTS}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"cannot read the file ({e})", where=str(path), fix="pass a UTF-8 JSON file") \
            from None
    name = name or _slug(path.stem)
    if _is_hf_recipe(data):
        converted = _from_hf_recipe(data, name, path.name)
    elif _is_anthropic(data):
        converted = _from_anthropic(data, name, path.name)
    else:
        raise ConfigError("unrecognised constitution format", where=str(path),
                          fix=f"supported formats: {SUPPORTED_IMPORTS}")
    constitution = validate_data(converted, source=str(path))
    logger.info("imported %d principles and %d few-shot examples from %s", len(constitution.principles),
                len(constitution.few_shot), path)
    return constitution
