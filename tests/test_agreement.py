"""Human-labelled pairs: parsing the three input shapes, bad rows, the agreement figures, the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cai.errors import ConfigError
from cai.feedback.agreement import (
    agreement_metrics,
    chosen_longer,
    judge_human_pairs,
    parse_hh_transcript,
    read_human_pairs,
)
from cai.feedback.judge import Judgement
from label_fakes import FakeJudge, paper_judge

FIX = Path(__file__).parent / "fixtures" / "pairs"


def test_parse_hh_transcript_multi_turn_and_empty_last_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and you?\n\nAssistant:"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and you?"}, {"role": "assistant", "content": ""},
    ]
    assert parse_hh_transcript("Human: hi\n\nAssistant: yo")[1] == {"role": "assistant", "content": "yo"}
    assert parse_hh_transcript("no markers here") is None
    assert parse_hh_transcript("preamble\n\nHuman: hi") is None


def test_hh_pairs_share_history_and_differ_in_the_last_turn():
    pairs, bad = read_human_pairs(FIX / "hh.jsonl")
    assert not bad and len(pairs) == 4
    p = pairs[1]
    assert [m["role"] for m in p.conversation] == ["user", "assistant", "user"]
    assert p.chosen.startswith("A regular bedtime") and p.rejected == "Just stay up until you're exhausted."
    assert pairs[2].chosen == ""  # an empty reply is a response humans can prefer
    assert p.id == "line-2" and p.line == 2


def test_plain_strings_with_a_prompt_column_from_csv():
    pairs, bad = read_human_pairs(FIX / "plain.csv")
    assert [p.id for p in pairs] == ["c1", "c2"]
    assert pairs[0].conversation == [{"role": "user", "content": "How do I pick a lock?"}]
    assert len(bad) == 1 and bad[0].row == 4 and "`chosen` is empty" in bad[0].reason


def test_message_lists_with_and_without_prompt():
    (m1, m2), bad = read_human_pairs(FIX / "messages.jsonl")
    assert not bad
    assert m1.conversation[0]["content"] == "How can I cheat on my exam?" and m1.rejected.startswith("Write")
    assert m2.conversation == [{"role": "user", "content": "My friend seems really down lately."}]
    assert m2.chosen.startswith("It's kind") and m2.rejected.startswith("Ignore")


def test_bad_rows_are_reported_with_line_numbers():
    pairs, bad = read_human_pairs(FIX / "bad.jsonl")
    assert [p.line for p in pairs] == [6]
    reasons = {b.row: b.reason for b in bad}
    assert "`rejected` is missing" in reasons[1]
    assert "`chosen` is empty" in reasons[2]
    assert "not valid JSON" in reasons[3]
    assert "differ before their last assistant turn" in reasons[4]
    assert "no `prompt` column" in reasons[5]


def test_nothing_usable_is_fatal_and_names_the_lines(tmp_path):
    with pytest.raises(ConfigError, match="line 1") as e:
        read_human_pairs(FIX / "all_bad.jsonl")
    assert e.value.where.endswith("all_bad.jsonl") and e.value.fix
    with pytest.raises(ConfigError, match="not found"):
        read_human_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ConfigError, match="unknown preference file type"):
        read_human_pairs(tmp_path / "x.parquet")
    (tmp_path / "h.csv").write_text("prompt,chosen\nx,y\n")
    with pytest.raises(ConfigError, match="lacks rejected"):
        read_human_pairs(tmp_path / "h.csv")


def test_gzipped_jsonl_and_limit(tmp_path):
    gz = tmp_path / "hh.jsonl.gz"
    gz.write_bytes(gzip.compress((FIX / "hh.jsonl").read_bytes()))
    pairs, _ = read_human_pairs(gz, limit=3)
    assert len(pairs) == 3


def test_agreement_metrics_on_known_judgements():
    js = [
        Judgement(0.9, 0.7, ("harm",)),  # agrees, consistent, slot A wins in order 1 only
        Judgement(0.8, 0.2, ("harm",)),  # p 0.5: a tie, not agreement; inconsistent; slot A wins twice
        Judgement(0.3, 0.1, ("harm",)),  # disagrees, consistent
        Judgement(0.6, 0.6, ("harm",)),  # agrees
    ]
    m = agreement_metrics(js, [True, None, False, True])
    assert m["n"] == 4 and m["agreement"] == 0.5 and m["ties"] == 1
    assert m["position_consistency"] == 0.75
    assert m["first_slot_win_rate"] == pytest.approx((1 + 2 + 1 + 1) / 8)
    # longer wins: pair 1 (chosen longer, judged for it), pair 3 (rejected longer, judge preferred it),
    # pair 4 (chosen longer, preferred); pair 2 has equal lengths
    assert m["longer_wins_rate"] == 1.0 and m["human_chose_longer_rate"] == pytest.approx(2 / 3)
    assert m["mean_p_human_chosen"] == pytest.approx((0.8 + 0.5 + 0.2 + 0.6) / 4)


def test_judging_human_pairs_puts_the_human_choice_in_slot_a_first():
    pairs, _ = read_human_pairs(FIX / "plain.csv")
    backend = FakeJudge(score=lambda t: 2.0 if "doctor" in t or "locksmith" in t else 0.0)
    from label_fakes import tiny_constitution

    js = judge_human_pairs(pairs, backend, tiny_constitution(), paper_judge(), seed=0)
    assert all(j.p_a > 0.5 and j.consistent for j in js)
    assert chosen_longer(pairs[0]) is True


# ---- the CLI -----------------------------------------------------------------------------------------


def _run_cli(monkeypatch, args, backend):
    from typer.testing import CliRunner

    import cai.cli.label as label_cli
    from cai.cli import app

    loads = []
    monkeypatch.setattr(label_cli, "_load", lambda spec, dtype="auto": loads.append(spec) or backend)
    result = CliRunner().invoke(app, ["label", "--mode", "pairwise", "--no-length-control", *args])
    return result, loads


def test_cli_agreement_writes_the_figures(tmp_path, monkeypatch):
    out = tmp_path / "a"
    backend = FakeJudge(slot_bias=0.5)
    result, loads = _run_cli(monkeypatch, ["--agreement", str(FIX / "hh.jsonl"), "--out", str(out)], backend)
    assert result.exit_code == 0, result.output
    a = json.loads((out / "agreement.json").read_text())
    for key in ("n", "agreement", "position_consistency", "first_slot_win_rate", "longer_wins_rate",
                "mean_p_human_chosen", "judge", "constitution", "source"):
        assert key in a
    assert a["n"] == 4 and a["judge"]["model"] == "fake-judge"
    assert a["judge"]["config"]["principles"] == "single"
    assert a["constitution"]["name"] == "general"
    assert len((out / "agreement_pairs.jsonl").read_text().splitlines()) == 4
    assert loads == ["smollm2-135m"]
    assert "agreement" in result.output


def test_cli_agreement_bad_file_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    from cai.cli import _run

    out = tmp_path / "a"
    argv = ["cai", "label", "--agreement", str(FIX / "all_bad.jsonl"), "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    assert _run() == 2  # the exit status main() ends the process with
    assert not (out / "agreement.json").exists()


def test_cli_needs_exactly_one_of_prompts_and_agreement(tmp_path, monkeypatch):
    result, _ = _run_cli(monkeypatch, ["--out", str(tmp_path / "x")], FakeJudge())
    assert result.exit_code != 0 and "exactly one" in str(result.exception)
    result, _ = _run_cli(monkeypatch, ["redteam", "--agreement", str(FIX / "hh.jsonl"), "--out",
                                       str(tmp_path / "x")], FakeJudge())
    assert "exactly one" in str(result.exception)


def test_cli_rejects_bad_option_values(tmp_path, monkeypatch):
    result, loads = _run_cli(monkeypatch, ["--agreement", str(FIX / "hh.jsonl"), "--out", str(tmp_path / "x"),
                                           "--principles", "all"], FakeJudge())
    assert "--principles" in str(result.exception) and not loads


@pytest.mark.slow
def test_agreement_with_the_embedded_judge(tmp_path, monkeypatch, embedded_model_dir):
    """The real 135M judge end to end on the four fixture pairs (figures are not asserted)."""
    from typer.testing import CliRunner

    from cai.cli import app

    out = tmp_path / "a"
    result = CliRunner().invoke(app, ["label", "--agreement", str(FIX / "hh.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    a = json.loads((out / "agreement.json").read_text())
    assert a["n"] == 4 and 0 <= a["agreement"] <= 1 and a["judge"]["model"] == "smollm2-135m"


def test_cli_agreement_with_a_tiny_real_model(tmp_path, tiny_model_dir):
    """The transformers backend end to end (random 2-layer model: the figures are noise)."""
    from typer.testing import CliRunner

    from cai.cli import app

    out = tmp_path / "a"
    result = CliRunner().invoke(app, ["label", "--agreement", str(FIX / "messages.jsonl"), "--out", str(out),
                                      "--judge", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    a = json.loads((out / "agreement.json").read_text())
    assert a["n"] == 2 and 0 <= a["agreement"] <= 1 and a["judge"]["model"].endswith(tiny_model_dir.name)


def test_chain_of_thought_with_a_tiny_real_model(tiny_model_dir):
    from cai.backends.transformers import TransformersBackend

    backend = TransformersBackend.load(str(tiny_model_dir), dtype="fp32")
    pairs, _ = read_human_pairs(FIX / "messages.jsonl")
    config = paper_judge(cot=True, cot_max_new_tokens=4, cot_band=(0.45, 0.55))
    from label_fakes import tiny_constitution

    js = judge_human_pairs(pairs, backend, tiny_constitution(), config)
    assert all(0.45 <= j.p_a_first <= 0.55 and 0.45 <= j.p_a_second <= 0.55 for j in js)
    assert all(len(j.reasoning) == 2 for j in js)


def test_cli_uses_the_constitutions_judge_template_and_checks_it(tmp_path, monkeypatch):
    template = "Conversation:\\n{conversation}\\n\\nRule: {principle}\\n\\n(A) {response_a}\\n\\n(B) {response_b}"
    body = ("name: t\nversion: 1\ntemplates:\n  judge: \"TEMPLATE\"\nprinciples:\n"
            "  - {id: harm, critique: c, revision: r, preference: Choose the less harmful response.}\n")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(body.replace("TEMPLATE", template))
    bad.write_text(body.replace("TEMPLATE", "Conversation: {conversation} (A) {response_a}"))
    backend = FakeJudge()
    args = ["--agreement", str(FIX / "hh.jsonl"), "--out", str(tmp_path / "a"), "--constitution"]
    result, _ = _run_cli(monkeypatch, [*args, str(good)], backend)
    assert result.exit_code == 0, result.output
    assert backend.seen[-1][-1]["content"].startswith("Conversation:\nHuman:")
    assert "Rule: Choose the less harmful response." in backend.seen[-1][-1]["content"]
    result, loads = _run_cli(monkeypatch, [*args, str(bad)], backend)
    assert "templates.judge" in str(result.exception) and "lacks" in str(result.exception) and not loads
