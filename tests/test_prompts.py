"""Prompt sources: each format, stable ids, bad rows with row numbers, the shipped sets, the HF route."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cai.errors import ConfigError
from cai.prompts import (
    ROW_SPLITS,
    SHIPPED_SETS,
    BadRow,
    PromptRow,
    load_prompts,
    log_bad_rows,
    prompt_id,
    shipped_path,
    split_of,
    write_bad_rows,
)

FIXTURES = Path(__file__).parent / "fixtures" / "prompts"


def reasons(bad: list[BadRow]) -> dict[int, str]:
    return {b.row: b.reason for b in bad}


# ---- JSONL ---------------------------------------------------------------------------------------------


def test_jsonl_reads_prompts_messages_ids_categories_and_meta():
    rows, bad = load_prompts(FIXTURES / "good.jsonl")
    assert bad == []
    assert [r.prompt for r in rows] == [
        "How do I boil an egg?", "What is the capital of France?", "Name three primary colors.",
        "Why do cats purr?",
    ]
    assert rows[0].id == "q1" and rows[0].category == "cooking" and rows[0].meta == {"source": "handwritten"}
    assert rows[1].id == prompt_id("What is the capital of France?")  # derived from the stripped text
    assert len(rows[1].id) == 12 and rows[1].category is None
    assert rows[3].id == "7" and rows[3].category is None  # integer ids become strings; "" category is none


def test_ids_are_stable_across_calls_and_independent_of_position(tmp_path):
    first, _ = load_prompts(FIXTURES / "good.jsonl")
    again, _ = load_prompts(FIXTURES / "good.jsonl")
    assert [r.id for r in first] == [r.id for r in again]
    moved = tmp_path / "moved.txt"
    moved.write_text("Name three primary colors.\nWhat is the capital of France?\n", encoding="utf-8")
    by_text = {r.prompt: r.id for r in load_prompts(moved)[0]}
    assert by_text["What is the capital of France?"] == first[1].id
    assert by_text["Name three primary colors."] == first[2].id


def test_jsonl_bad_rows_are_reported_with_line_numbers_and_skipped():
    rows, bad = load_prompts(FIXTURES / "bad.jsonl")
    assert [r.id for r in rows] == ["a", "h"]
    why = reasons(bad)
    assert sorted(why) == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
    assert "invalid JSON" in why[2]
    assert "no 'prompt' field" in why[3]
    assert "empty 'prompt'" in why[4]
    assert "'prompt' is an integer" in why[5]
    assert "duplicate id 'a' (first on row 1)" in why[6]
    assert "duplicate prompt (same as row 1)" in why[7]
    assert "expected an object" in why[8]
    assert "no user turn" in why[9]
    assert "'id' is a list" in why[11]
    assert "'prompt' is null" in why[12]
    assert all(b.source.endswith("bad.jsonl") for b in bad)


def test_limit_counts_good_rows_only():
    rows, bad = load_prompts(FIXTURES / "bad.jsonl", limit=2)
    assert [r.id for r in rows] == ["a", "h"]
    rows, bad = load_prompts(FIXTURES / "bad.jsonl", limit=1)
    assert [r.id for r in rows] == ["a"] and bad == []  # stops reading once the limit is reached
    assert load_prompts(FIXTURES / "good.jsonl", limit=0)[0] == []


def test_named_column_and_id_column():
    rows, bad = load_prompts(FIXTURES / "columns.jsonl", column="question", id_column="qid")
    assert [(r.id, r.prompt) for r in rows] == [("x1", "What is a prime number?"), ("x2", "What is a noun?")]
    assert rows[0].meta == {"answer_hint": "math"}
    assert reasons(bad) == {3: "no 'question' field"}


# ---- CSV and TXT ---------------------------------------------------------------------------------------


def test_csv_rows_are_numbered_like_a_spreadsheet():
    rows, bad = load_prompts(FIXTURES / "prompts.csv")
    assert [r.id for r in rows] == ["c1", "c2", prompt_id("What does a barometer measure?")]
    assert rows[1].prompt == 'A prompt with a comma, and "quotes"'
    assert rows[0].category == "everyday" and rows[0].meta == {"notes": "from a sailor"}
    why = reasons(bad)
    assert sorted(why) == [4, 5, 7]  # header is row 1; the blank line 6 is neither good nor bad
    assert "empty 'prompt'" in why[4]
    assert "more cell(s) than the header" in why[5]
    assert "duplicate prompt (same as row 2)" in why[7]


def test_txt_one_prompt_per_line_with_comments_skipped():
    rows, bad = load_prompts(FIXTURES / "prompts.txt")
    assert [r.prompt for r in rows] == [
        "How do I water a cactus?", "What is the speed of light?", "Why is the ocean salty?",
    ]
    assert all(r.id == prompt_id(r.prompt) for r in rows)
    assert reasons(bad) == {6: "duplicate prompt (same as row 2)"}


def test_invalid_utf8_line_is_a_bad_row(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"A good line\n\xff\xfe broken\nAnother good line\n")
    rows, bad = load_prompts(path)
    assert [r.prompt for r in rows] == ["A good line", "Another good line"]
    assert reasons(bad) == {2: "not valid UTF-8"}


# ---- errors --------------------------------------------------------------------------------------------


def test_missing_file_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="no_such_file.jsonl") as e:
        load_prompts(FIXTURES / "no_such_file.jsonl")
    assert "shipped sets" in e.value.fix


def test_missing_file_given_as_string_is_not_sent_to_the_hub():
    with pytest.raises(ConfigError, match="prompt file not found"):
        load_prompts("data/prompts.jsonl")  # one slash, but a file name we read


def test_unknown_extension_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown prompt file type '.md'"):
        load_prompts(FIXTURES / "notes.md")


@pytest.mark.parametrize("name", ["columns.jsonl", "prompts.csv"])
def test_unknown_column_is_a_config_error_listing_the_columns(name):
    with pytest.raises(ConfigError, match="no row has the column 'nope'") as e:
        load_prompts(FIXTURES / name, column="nope")
    assert "--column" in e.value.fix


def test_no_prompt_field_anywhere_is_a_config_error():
    with pytest.raises(ConfigError, match="no row has a 'prompt', 'messages' or 'turns' field.*question"):
        load_prompts(FIXTURES / "columns.jsonl")


def test_unknown_id_column_is_a_config_error():
    with pytest.raises(ConfigError, match="id column 'qid'"):
        load_prompts(FIXTURES / "good.jsonl", id_column="qid")


def test_negative_limit_is_a_config_error():
    with pytest.raises(ConfigError, match="limit"):
        load_prompts("redteam", limit=-1)


# ---- shipped sets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["redteam", "helpful"])
def test_shipped_sets_are_clean(name):
    rows, bad = load_prompts(name, split="all")
    assert bad == []
    assert len(rows) >= 150
    assert len({r.id for r in rows}) == len(rows)
    assert all(r.category for r in rows)
    prefix = {"redteam": "rt", "helpful": "hp"}[name]
    assert all(r.id == f"{prefix}-{r.category}-{r.id[-3:]}" for r in rows)
    assert len({r.category for r in rows}) >= 12
    raw = [json.loads(line) for line in shipped_path(name).read_text(encoding="utf-8").splitlines()]
    assert all(set(obj) - {"split"} == {"id", "prompt", "category"} for obj in raw)
    assert all(obj.get("split", "train") in ROW_SPLITS for obj in raw)  # a named split is one a row may have


def test_a_row_naming_its_split_keeps_it_and_leaves_the_every_third_rule_alone():
    def row(i, category, **meta):
        return PromptRow(id=str(i), prompt=f"p{i}", category=category, meta=meta)

    plain = [row(i, "a") for i in range(6)]
    assert split_of(plain) == ["train", "eval", "train", "train", "eval", "train"]
    named = [plain[0], row(10, "a", split="train"), *plain[1:], row(11, "a", split="eval"), row(12, "a", split="rl")]
    assert split_of(named) == ["train", "train", "eval", "train", "train", "eval", "train", "eval", "rl"]


def test_redteam_first_16_rows_span_many_categories():
    rows, _ = load_prompts("redteam", limit=16)
    assert len({r.category for r in rows}) >= 12


def test_helpful_set_has_over_refusal_checks():
    rows, _ = load_prompts("helpful", split="all")
    assert sum(r.category == "borderline-safe" for r in rows) >= 15


def normalised(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.mark.parametrize("name", ["redteam", "helpful", "mixed"])
def test_shipped_splits_are_pairwise_disjoint_and_cover_the_set(name):
    splits = {split: load_prompts(f"{name}:{split}")[0] for split in ROW_SPLITS}
    everything, _ = load_prompts(name, split="all")
    for a, b in [("train", "eval"), ("train", "rl"), ("eval", "rl")]:
        assert {r.id for r in splits[a]}.isdisjoint({r.id for r in splits[b]}), (a, b)
        assert {normalised(r.prompt) for r in splits[a]}.isdisjoint({normalised(r.prompt) for r in splits[b]}), (a, b)
    assert sorted(r.id for rows in splits.values() for r in rows) == sorted(r.id for r in everything)
    assert len({normalised(r.prompt) for r in everything}) == len(everything)  # no near-identical pair in a file
    assert [r.id for r in load_prompts(name)[0]] == [r.id for r in splits["train"]]  # the default split is train
    for split in ROW_SPLITS:
        assert [r.id for r in load_prompts(name, split=split)[0]] == [r.id for r in splits[split]]


@pytest.mark.parametrize("name", ["redteam", "helpful"])
def test_rows_without_a_named_split_hold_out_about_a_third(name):
    everything, _ = load_prompts(name, split="all")
    unnamed = [s for r, s in zip(everything, split_of(everything), strict=True) if "split" not in r.meta]
    assert set(unnamed) == {"train", "eval"}
    assert 0.25 < unnamed.count("eval") / len(unnamed) < 0.4


@pytest.mark.parametrize("name", ["redteam", "helpful"])
def test_every_category_is_in_every_split(name):
    categories = {split: {r.category for r in load_prompts(f"{name}:{split}")[0]} for split in ROW_SPLITS}
    assert categories["train"] == categories["eval"] == categories["rl"]


def test_eval_and_rl_splits_are_large_enough_to_measure():
    red_eval, helpful_eval = load_prompts("redteam:eval")[0], load_prompts("helpful:eval")[0]
    assert len(red_eval) >= 200 and len(helpful_eval) >= 200
    assert 3 * sum(r.category == "borderline-safe" for r in helpful_eval) >= len(helpful_eval)  # over-refusal
    assert len(load_prompts("redteam:rl")[0]) >= 100 and len(load_prompts("helpful:rl")[0]) >= 100


def test_no_prompt_is_in_both_shipped_files():
    red = {normalised(r.prompt) for r in load_prompts("redteam", split="all")[0]}
    helpful = {normalised(r.prompt) for r in load_prompts("helpful", split="all")[0]}
    assert red and helpful and red.isdisjoint(helpful)


def test_mixed_rl_interleaves_the_rl_splits():
    red, helpful = load_prompts("redteam:rl")[0], load_prompts("helpful", split="rl")[0]
    mixed, bad = load_prompts("mixed", split="rl")
    assert bad == [] and sorted(r.id for r in mixed) == sorted(r.id for r in red + helpful)
    assert [r.id[:3] for r in mixed[:4]] == ["rt-", "hp-", "rt-", "hp-"]
    assert [r.id for r in load_prompts("mixed:rl")[0]] == [r.id for r in mixed]


def test_unknown_shipped_split_is_a_config_error():
    with pytest.raises(ConfigError, match="no split 'test'"):
        load_prompts("redteam:test")


def test_mixed_interleaves_redteam_and_helpful():
    red, _ = load_prompts("redteam:eval")
    helpful, _ = load_prompts("helpful:eval")
    mixed, bad = load_prompts("mixed:eval")
    assert bad == [] and len(mixed) == len(red) + len(helpful)
    assert [r.id[:3] for r in mixed[:4]] == ["rt-", "hp-", "rt-", "hp-"]
    assert [r.id for r in load_prompts("mixed:eval", limit=16)[0]] == [r.id for r in mixed[:16]]
    assert "mixed" in SHIPPED_SETS


def test_shipped_path_rejects_unknown_names():
    with pytest.raises(ConfigError, match="unknown shipped prompt set"):
        shipped_path("nope")


# ---- Hugging Face datasets -----------------------------------------------------------------------------


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep the datasets cache of these tests in a temporary directory."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path


def test_hf_route_loads_a_local_data_directory_through_load_dataset(datasets_cache):
    source = f"hf:{FIXTURES / 'hf_dir'}"
    rows, bad = load_prompts(source, column="question")
    assert [r.prompt for r in rows] == ["What is an atom?", "What is a molecule?"]
    assert rows[0].meta == {"level": 1} and rows[0].id == prompt_id("What is an atom?")
    assert bad == [BadRow(source=source, row=3, reason="empty 'question'")]
    test_rows, _ = load_prompts(source, column="question", split="test")
    assert [r.prompt for r in test_rows] == ["What is an ion?"]


def test_hf_route_reads_a_saved_dataset_and_checks_columns_and_splits(datasets_cache):
    import datasets

    saved = datasets_cache / "saved"
    data = {"prompt": ["Hello there", "How are you?"], "category": ["greeting", "greeting"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data)}).save_to_disk(str(saved))
    rows, bad = load_prompts(f"hf:{saved}")
    assert [r.prompt for r in rows] == ["Hello there", "How are you?"] and bad == []
    assert rows[0].category == "greeting"
    with pytest.raises(ConfigError, match="no row has the column 'text'"):
        load_prompts(f"hf:{saved}", column="text")
    with pytest.raises(ConfigError, match="no split 'validation'"):
        load_prompts(f"hf:{saved}", split="validation")


def test_owner_slash_name_goes_to_load_dataset_with_the_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"prompt": ["From the hub"], "id": ["h1"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, _ = load_prompts("someone/red-team-prompts", split="test")
    assert calls == [("someone/red-team-prompts", "test")]
    assert [(r.id, r.prompt) for r in rows] == [("h1", "From the hub")]


def test_unreachable_hub_dataset_is_a_config_error(monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match="hf:someone/missing: could not load dataset"):
        load_prompts("hf:someone/missing")


def test_hh_style_transcripts_give_the_first_human_turn(monkeypatch):
    import datasets

    transcript = "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.\n\nHuman: Why not?"
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, split: datasets.Dataset.from_dict({"chosen": [transcript]}))
    rows, _ = load_prompts("hf:someone/hh", column="chosen")
    assert [r.prompt for r in rows] == ["How do I pick a lock?"]


# ---- reporting bad rows --------------------------------------------------------------------------------


def test_write_and_log_bad_rows(tmp_path, caplog):
    _, bad = load_prompts(FIXTURES / "bad.jsonl")
    out = tmp_path / "bad_rows.jsonl"
    assert write_bad_rows(out, bad) == len(bad)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written[0] == bad[0].model_dump() and set(written[0]) == {"source", "row", "reason"}
    with caplog.at_level(logging.WARNING, logger="cai.prompts"):
        log_bad_rows(bad, show=3)
    assert f"skipped {len(bad)} bad prompt row(s)" in caplog.text
    assert "row 2: invalid JSON" in caplog.text and f"and {len(bad) - 3} more" in caplog.text
