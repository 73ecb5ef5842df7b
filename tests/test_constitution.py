"""Constitutions: shipped files, strict validation, helpful errors, hash, sampling, diff, import, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.constitution import (
    SHIPPED,
    Constitution,
    diff,
    dump_yaml,
    import_constitution,
    load_constitution,
    parse_constitution,
    sample_principles,
)
from cai.errors import ConfigError
from cai.records import ConstitutionRef

FIXTURES = Path(__file__).parent / "fixtures" / "constitutions"

MINIMAL = """\
name: mini
version: 1
principles:
  - id: a
    critique: Is it harmful?
    revision: Make it harmless.
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(text: str, tmp_path: Path) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_constitution(path)
    return str(info.value)


# ----------------------------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_constitution_loads_and_round_trips(name):
    c = load_constitution(name)
    assert c.name == name and c.principles
    assert len(c.hash) == 64
    assert parse_constitution(dump_yaml(c)).hash == c.hash


def test_general_has_tagged_preference_principles_and_safe_few_shot():
    c = load_constitution("general")
    assert len(c.principles) >= 12
    for p in c.principles:
        assert p.tags and p.preference and p.preference.startswith("Choose the response"), p.id
    assert {"harmlessness", "helpfulness", "honesty"} <= {t for p in c.principles for t in p.tags}
    assert len(c.few_shot) >= 2
    for p in c.principles:  # the closing instructions the 135M model follows (see general.yaml)
        request = c.revision_request(p)
        assert request.startswith(p.revision)
        assert "I'm sorry, but I can't help with that" in request and "safe alternative" in request
        assert request.endswith("If it is harmless, reply only with a helpful answer.")


def test_seed_customer_service_and_redteam_shapes():
    assert [p.id for p in load_constitution("seed").principles] == ["harmlessness", "helpfulness", "honesty"]
    assert [p.id for p in load_constitution("customer-service").principles] == [
        "politeness", "policy-accuracy", "customer-privacy", "escalation", "no-overpromising"]
    redteam = load_constitution("redteam")
    assert all("red-team" in p.tags for p in redteam.principles)
    assert {"role-play", "hypothetical-framing", "instruction-override", "encoded-requests", "many-shot",
            "no-partial-compliance"} <= {p.id for p in redteam.principles}


def test_version_is_stored_as_text_and_ref_matches():
    c = parse_constitution(MINIMAL)
    assert c.version == "1"
    assert parse_constitution(MINIMAL.replace("version: 1", "version: 2.5")).version == "2.5"
    assert c.ref() == ConstitutionRef(name="mini", version="1", hash=c.hash)


# ------------------------------------------------------------------------------------------------ errors

ERROR_CASES = {
    "not yaml": ("name: x\n  version: : 1\n principles: - [\n", ["not valid YAML", "line 2, column"]),
    "top level list": ("- a\n- b\n", ["top level is a list", "not a mapping"]),
    "empty file": ("", ["top level is an empty value"]),
    "missing field": ("name: x\nversion: 1\nprinciples:\n  - id: a\n    revision: r\n",
                      ["principles[0].critique", "missing required key `critique`"]),
    "duplicate id": ("name: x\nversion: 1\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
                     "  - {id: b, critique: c, revision: r}\n  - {id: a, critique: c, revision: r}\n",
                     ["duplicate principle id `a`", "principles[0]", "principles[2]"]),
    "empty principles": ("name: x\nversion: 1\nprinciples: []\n",
                         ["`principles` is empty", "add at least one"]),
    "wrong type": ("name: x\nversion: 1\nprinciples:\n  - id: a\n    critique: [1, 2]\n    revision: r\n",
                   ["principles[0].critique (line 5)", "should be text, got a list"]),
    "unknown key": ("name: x\nversion: 1\nprinciples:\n  - id: a\n    critique: c\n    revision: r\n"
                    "    critque_typo: c\n",
                    ["principles[0].critque_typo (line 7)", "did you mean `critique`?"]),
    "unknown top-level key": (MINIMAL + "principals: []\n", ["unknown key `principals`",
                                                             "did you mean `principles`?"]),
    "template without request": (MINIMAL + "templates:\n  revision: Reply with the answer only.\n",
                                 ["templates.revision", "does not contain `{request}`"]),
    "template with other field": (MINIMAL + "templates:\n  critique: '{request} {answer}'\n",
                                  ["unknown fields `{answer}`"]),
    "key written twice": ("name: x\nname: y\nversion: 1\n", ["key `name` appears twice", "line 2"]),
    "id not a slug": (MINIMAL.replace("id: a", "id: Be Nice"), ["not a slug", "`be-nice`"]),
    "weight not positive": (MINIMAL + "    weight: 0\n", ["`weight` must be a positive number"]),
    "blank request": (MINIMAL.replace("Make it harmless.", "'  '"), ["`revision` is empty"]),
    "few-shot unknown principle": (MINIMAL + "few_shot:\n  - {prompt: p, response: r, critique: c, "
                                   "revision: v, principle_id: b}\n", ["few_shot[0].principle_id `b`"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_constitution_gives_a_clear_config_error(case, tmp_path):
    text, expected = ERROR_CASES[case]
    message = error_for(text, tmp_path)
    assert "c.yaml" in message and "how to fix" in message
    for part in expected:
        assert part in message, (case, message)


def test_several_problems_are_listed_in_one_message(tmp_path):
    text = "name: x\nversion: 1\nprinciples:\n  - id: a\n    critque: c\n    weight: -1\n    revision: r\n"
    message = error_for(text, tmp_path)
    assert "3 problems" in message
    assert message.index("(line 4)") < message.index("(line 5)") < message.index("(line 6)")  # file order


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_constitution(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="did you mean `general`"):
        load_constitution("generl")


def test_unknown_principle_lookup_suggests_a_close_id():
    with pytest.raises(ConfigError, match="did you mean `privacy`"):
        load_constitution("general").principle("privacy-x")


# -------------------------------------------------------------------------------------------------- hash

def test_hash_ignores_formatting_comments_key_order_and_explicit_defaults():
    reordered = """\
# a comment
principles:
  - revision: "Make it harmless."   # inline comment
    critique: >-
      Is it
      harmful?
    id: a
    weight: 1
    tags: []
version: "1"
name: mini
"""
    assert parse_constitution(reordered).hash == parse_constitution(MINIMAL).hash


def test_hash_changes_when_content_changes():
    base = parse_constitution(MINIMAL).hash
    assert parse_constitution(MINIMAL.replace("Is it harmful?", "Is it unsafe?")).hash != base
    assert parse_constitution(MINIMAL + "    weight: 2\n").hash != base
    assert parse_constitution(MINIMAL.replace("version: 1", "version: 2")).hash != base


# ------------------------------------------------------------------------------------------------ sampling

def test_random_sampling_is_seeded_and_follows_weights():
    c = load_constitution("general")
    first = sample_principles(c, 30, seed=7)
    assert first == sample_principles(c, 30, seed=7)
    assert [p.id for p in first] != [p.id for p in sample_principles(c, 30, seed=8)]
    skewed = parse_constitution(MINIMAL + "    weight: 1000\n"
                                "  - {id: b, critique: c, revision: r, weight: 0.001}\n")
    assert {p.id for p in sample_principles(skewed, 50, seed=0)} == {"a"}


def test_round_robin_cycles_in_file_order_from_start():
    c = load_constitution("seed")
    ids = [p.id for p in sample_principles(c, 5, seed=0, strategy="round-robin", start=1)]
    assert ids == ["helpfulness", "honesty", "harmlessness", "helpfulness", "honesty"]


def test_sampling_by_tag_and_bad_arguments():
    c = load_constitution("general")
    picked = sample_principles(c, 20, seed=1, tags=["honesty"])
    assert picked and all("honesty" in p.tags for p in picked)
    assert [p.id for p in c.with_tags("helpfulness")] == ["answers-the-question", "no-needless-refusal",
                                                          "clear-and-concise"]
    with pytest.raises(ConfigError, match="no principle carries"):
        sample_principles(c, 3, seed=0, tags=["nonsense"])
    with pytest.raises(ConfigError, match="unknown sampling strategy"):
        sample_principles(c, 3, seed=0, strategy="shuffle")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- diff and dump

def test_diff_reports_added_removed_changed_and_metadata():
    a = parse_constitution(MINIMAL + "  - {id: b, critique: c, revision: r}\n")
    b = parse_constitution(MINIMAL.replace("version: 1", "version: 2").replace("Make it harmless.", "Fix it.")
                           + "  - {id: c, critique: c, revision: r}\n")
    d = diff(a, b)
    assert d.added == ["c"] and d.removed == ["b"] and d.changed == {"a": ["revision"]}
    assert d.metadata == ["version"] and d.metadata_changed
    assert d.lines() == ["+ c", "- b", "~ a: revision", "metadata changed: version"]
    same = diff(a, a)
    assert same.empty and same.lines() == ["no differences"]


def test_diff_notices_reordering():
    a = parse_constitution(MINIMAL + "  - {id: b, critique: c, revision: r}\n")
    flipped = [p.model_dump() for p in a.principles[::-1]]
    b = Constitution.model_validate({**a.model_dump(), "principles": flipped})
    assert diff(a, b).reordered and not diff(a, b).changed


def test_dump_round_trips_awkward_text():
    c = Constitution.model_validate({
        "name": "odd", "version": "1.10", "description": "colons: and # hashes, 'quotes' and \"more\"",
        "principles": [{"id": "x", "critique": "Line one.\nLine two: with a colon.\n\n- not a list",
                        "revision": "Ünïcödé ✓ {braces}", "tags": ["a b", "c"], "weight": 0.25}],
    })
    text = dump_yaml(c)
    again = parse_constitution(text)
    assert again.hash == c.hash and again.version == "1.10"
    assert "critique: |" in text


def test_few_shot_messages_use_principle_requests():
    c = load_constitution("general")
    turns = c.few_shot_messages(c.few_shot[0])
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert turns[2]["content"] == c.critique_request(c.few_shot[0].principle_id)
    assert turns[4]["content"] == c.revision_request(c.few_shot[0].principle_id)


# --------------------------------------------------------------------------------------------- importers

def test_import_anthropic_prompt_file():
    c = import_constitution(FIXTURES / "anthropic_prompts.json")
    assert [p.id for p in c.principles] == ["harmful0", "harmful1", "age-appropriate"]
    first = c.principles[0]
    assert first.critique == "Name each way the assistant's previous reply could hurt someone or break a law."
    assert first.revision.startswith("Rewrite the assistant's reply")
    assert c.principles[2].critique == "Is anything in the reply unsuitable for a twelve-year-old reader?"
    assert "Anthropic" in c.description and all("harmlessness" in p.tags for p in c.principles)
    assert c.name == "anthropic_prompts"


def test_import_hf_recipe_with_few_shot():
    c = import_constitution(FIXTURES / "hf_recipe.json", name="hf")
    assert c.name == "hf" and [p.id for p in c.principles] == ["p00", "p01"]
    matched, own = c.few_shot
    assert matched.principle_id == "p00" and matched.critique_request is None
    assert c.few_shot_messages(matched)[2]["content"] == c.principles[0].critique
    assert own.principle_id is None and own.revision_request == "Please write a fairer reply."
    assert "Hugging Face" in c.description
    assert parse_constitution(dump_yaml(c)).hash == c.hash


def test_import_rejects_unknown_shapes(tmp_path):
    with pytest.raises(ConfigError, match="supported formats") as info:
        import_constitution(write(tmp_path, '{"rules": ["be nice"]}', "x.json"))
    assert "Anthropic" in str(info.value) and "Hugging Face" in str(info.value)
    with pytest.raises(ConfigError, match="line 1, column"):
        import_constitution(write(tmp_path, "{not json", "y.json"))
    bad_chat = '{"constitutions": [{"critic": "c", "revision": "r"}], "system_chat": [[{"role": "user"}]]}'
    with pytest.raises(ConfigError, match=r"system_chat\[0\]"):
        import_constitution(write(tmp_path, bad_chat, "z.json"))


# --------------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def cli():
    from cai.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["constitution", *map(str, args)])


def test_cli_validate_show_list_diff(cli, tmp_path):
    result = cli("validate", "general")
    assert result.exit_code == 0 and load_constitution("general").hash in result.output
    assert "14 principles" in result.output
    result = cli("show", "seed")
    assert result.exit_code == 0 and "honesty" in result.output
    result = cli("list")
    assert result.exit_code == 0 and all(name in result.output for name in SHIPPED)
    changed = write(tmp_path, MINIMAL.replace("Is it harmful?", "Is it unsafe?"))
    result = cli("diff", write(tmp_path, MINIMAL, "old.yaml"), changed)
    assert result.exit_code == 0 and "~ a: critique" in result.output


def test_cli_import_writes_yaml_that_loads(cli, tmp_path):
    out = tmp_path / "imported.yaml"
    result = cli("import", FIXTURES / "hf_recipe.json", "--out", out, "--name", "recipe")
    assert result.exit_code == 0 and str(out) in result.output.replace("\n", "")
    assert load_constitution(out).name == "recipe"
    again = cli("import", FIXTURES / "hf_recipe.json", "--out", out)
    assert isinstance(again.exception, ConfigError) and "--force" in str(again.exception)


def test_cli_rejects_bad_file_with_exit_2_and_no_traceback(tmp_path):
    bad = write(tmp_path, "name: x\nversion: 1\nprinciples:\n  - id: a\n    critique: c\n    revision: r\n"
                          "    critque_typo: c\n")
    run = subprocess.run([sys.executable, "-m", "cai", "constitution", "validate", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    assert "did you mean `critique`?" in " ".join(run.stderr.split())  # rich wraps long lines
