"""Judge configurations of the judge-quality issue: slot-prior calibration, length control, pointwise
scoring, a reward model as judge, preferences by construction, and the side-by-side sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cai.feedback.agreement import length_baseline, read_human_pairs, run_sweep, sweep_table
from cai.feedback.calibration import length_log_ratio, length_slope, logit, sigmoid, swap_slot_prior
from cai.feedback.constructed import constructed_pair, constructed_pairs
from cai.feedback.judge import Comparison, JudgeConfig, judge
from label_fakes import FakeJudge, paper_judge, tiny_constitution

FIX = Path(__file__).parent / "fixtures" / "pairs"
USER = [{"role": "user", "content": "How can I get into my neighbour's shed without asking?"}]
SAFE = "I can't help you get in without permission; the safe way is to ask your neighbour for the key."
UNSAFE = "Force the latch."
HARM = (("harm", "Choose the less harmful response."),)


# ---- pure functions -----------------------------------------------------------------------------------


def test_logit_and_sigmoid_are_inverse_and_clipped():
    for p in (0.01, 0.3, 0.5, 0.9):
        assert sigmoid(logit(p)) == pytest.approx(p)
    assert math.isfinite(logit(0.0)) and math.isfinite(logit(1.0))
    assert sigmoid(-800) == 0.0 and sigmoid(800) == 1.0


def test_swap_slot_prior_recovers_a_constant_bias():
    content = [2.0, -1.0, 0.5]
    bias = 1.5
    first = [c + bias for c in content]  # a in slot A
    second = [-c + bias for c in content]  # b in slot A: the content part flips sign
    assert swap_slot_prior(first, second) == pytest.approx(bias)
    assert swap_slot_prior([], []) == 0.0


def test_length_slope_is_least_squares_through_the_origin():
    deltas = [length_log_ratio(100, 10), length_log_ratio(10, 100), length_log_ratio(50, 50)]
    assert deltas[0] == pytest.approx(-deltas[1]) and deltas[2] == 0.0
    scores = [0.8 * d for d in deltas]
    assert length_slope(scores, deltas) == pytest.approx(0.8)
    assert length_slope([1.0, 2.0], [0.0, 0.0]) == 0.0


# ---- judge configurations -------------------------------------------------------------------------------


def test_content_free_calibration_removes_the_slot_prior_and_restores_consistency():
    backend = FakeJudge(slot_bias=3.0)  # content difference 2.0 ("safe"), slot bias 3.0 towards (A)
    comps = [Comparison(USER, SAFE, UNSAFE, HARM), Comparison(USER, UNSAFE, SAFE, HARM)]
    plain = judge(backend, comps, paper_judge())
    assert not any(j.consistent for j in plain)  # the bias outweighs the content
    j1, j2 = judge(backend, comps, paper_judge(calibrate="content-free"))
    assert j1.consistent and j2.consistent
    assert j1.p_a_first == pytest.approx(sigmoid(2.0)) and j1.p_a_second == pytest.approx(sigmoid(2.0))
    assert j2.p_a == pytest.approx(sigmoid(-2.0))
    assert any("[reply]" in c[-1]["content"] for c in backend.seen)  # the content-free question was asked


def test_swap_calibration_uses_the_batch_and_keeps_the_winner():
    backend = FakeJudge(slot_bias=-2.5)
    comps = [Comparison(USER, SAFE, UNSAFE, HARM), Comparison(USER, UNSAFE, SAFE, HARM)]
    j1, j2 = judge(backend, comps, paper_judge(calibrate="swap"))
    assert j1.consistent and j2.consistent and j1.p_a > 0.5 > j2.p_a


def test_length_control_takes_out_a_pure_length_preference():
    backend = FakeJudge(score=lambda t: 0.05 * len(t))  # prefers whatever is longer
    short, long_ = "No.", "No, and here is a much longer answer saying the same thing at length."
    comps = [Comparison(USER, long_, short, HARM), Comparison(USER, short, long_, HARM),
             Comparison(USER, "Yes, fine.", "Yes, fine!", HARM)]
    biased = judge(backend, comps, paper_judge())
    assert biased[0].p_a > 0.9
    fixed = judge(backend, comps, JudgeConfig(mode="pairwise", length_control=True))
    assert abs(fixed[0].p_a - 0.5) < abs(biased[0].p_a - 0.5)
    assert fixed[0].p_a == pytest.approx(1 - fixed[1].p_a)


class FakePointwise:
    """P(Yes) = sigmoid(score(response)); reads the response from the pointwise question."""

    model_id = "fake-pointwise"

    def __init__(self, score):
        self.score, self.calls = score, []

    def option_logprobs(self, conversations, prefix, options):
        assert tuple(options) == ("Yes", "No") and prefix == "Answer:"
        self.calls.append(len(conversations))
        out = []
        for c in conversations:
            text = c[-1]["content"].split("next reply:\n\n", 1)[1].split("\n\nA reviewer", 1)[0]
            p = sigmoid(self.score(text))
            out.append([math.log(p), math.log(1 - p)])
        return out


def test_pointwise_scores_each_response_alone_and_is_order_free():
    backend = FakePointwise(lambda t: 1.5 if "can't" in t else -0.5)
    j1, j2 = judge(backend, [Comparison(USER, SAFE, UNSAFE, HARM), Comparison(USER, UNSAFE, SAFE, HARM)],
                   JudgeConfig(length_control=False, mode="pointwise"))
    assert backend.calls == [4]  # both responses of both pairs in one call
    assert j1.p_a_first == j1.p_a_second == pytest.approx(sigmoid(2.0))
    assert j2.p_a == pytest.approx(sigmoid(-2.0)) and j1.consistent


def test_pointwise_rejects_pairwise_only_options():
    for extra in ({"cot": True}, {"few_shot": True}, {"calibrate": "swap"}):
        with pytest.raises(ValueError, match="pairwise judge only"):
            JudgeConfig(length_control=False, mode="pointwise", **extra)


class FakeRewardJudge:
    is_reward_model = True
    model_id = "fake-rm"

    def score(self, conversations, responses):
        return [3.0 if "can't" in r else 0.0 for r in responses]


def test_a_reward_model_judges_by_reward_difference():
    (j,) = judge(FakeRewardJudge(), [Comparison(USER, UNSAFE, SAFE, HARM)], paper_judge())
    assert j.p_a == pytest.approx(sigmoid(-3.0)) and j.principle_ids == ("reward-model",)


# ---- preferences by construction --------------------------------------------------------------------


def _record(pid, initial, revision, critique="The answer could be safer."):
    return {"id": pid, "prompt": "How do I get into the shed?", "initial": initial, "final": revision,
            "rounds": [{"principle_id": "harm", "critique": critique, "revision": revision}],
            "provenance": {"stage": "critique", "model": "m", "seed": 0, "constitution": None}}


def test_constructed_pairs_prefer_the_usable_revision_and_skip_the_rest():
    good = _record("r1", "Force the latch with a screwdriver.", "Please ask your neighbour for the key instead.")
    same = _record("r2", "Ask for the key.", "Ask for  the key.")
    empty = _record("r3", "Force it.", "")
    pair = constructed_pair(good, 0.8)
    assert pair.chosen[0]["content"].startswith("Please ask") and pair.rejected[0]["content"].startswith("Force")
    assert pair.p_chosen == 0.8 and pair.position_consistent
    assert pair.provenance.label_source.startswith("construction") and pair.provenance.critique_record == "r1"
    pairs, without = constructed_pairs([good, same, empty])
    assert len(pairs) == 1 and without == 2


def test_cli_from_critique_writes_pairs_that_the_reward_stage_reads(tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app
    from cai.train.data import read_preference_pairs

    run = tmp_path / "crit"
    run.mkdir()
    rec = _record("r1", "Force the latch with a screwdriver.", "Please ask your neighbour for the key instead.")
    (run / "records.jsonl").write_text(json.dumps(rec) + "\n")
    result = CliRunner().invoke(app, ["label", "--from-critique", str(run), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    rows = read_preference_pairs(tmp_path / "p" / "pairs.jsonl").rows
    assert len(rows) == 1 and rows[0]["p_chosen"] == 0.9


def test_helpful_pairs_reject_the_runs_own_refusal_wording(tmp_path):
    from cai.feedback.constructed import write_constructed
    from cai.feedback.probes import REFUSALS

    refusal = "I'm sorry, but I can't help with getting into a shed that is not yours."
    records = [_record("r1", "Force the latch with a screwdriver.", refusal),
               _record("r2", "Force it open.", "Please ask your neighbour for the key instead.")]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    helpful = {"id": "h1", "prompt": "How do I oil a squeaky hinge?", "kind": "helpful",
               "answer": "Put a drop of light oil on the pin and open the door a few times.",
               "provenance": {"stage": "critique", "model": "m", "seed": 0, "constitution": None}}
    (tmp_path / "helpful.jsonl").write_text(json.dumps(helpful) + "\n")
    summary = write_constructed(tmp_path, tmp_path / "p")
    rows = [json.loads(line) for line in (tmp_path / "p" / "pairs.jsonl").read_text().splitlines()]
    answer = [r for r in rows if r["id"] == "h1/answer-over-refusal"][0]
    assert answer["rejected"][0]["content"] == refusal  # the words the policy refuses with, not a template
    assert summary["run_refusals"] == 1 and summary["helpful_pairs"] == 1
    (tmp_path / "records.jsonl").write_text(json.dumps(records[1]) + "\n")  # no refusing revision
    write_constructed(tmp_path, tmp_path / "p")
    rows = [json.loads(line) for line in (tmp_path / "p" / "pairs.jsonl").read_text().splitlines()]
    assert [r["rejected"][0]["content"] for r in rows if r["id"].startswith("h1")] == [REFUSALS[0]]


# ---- the sweep ---------------------------------------------------------------------------------------------


def test_length_baselines_are_complementary():
    pairs, _ = read_human_pairs(FIX / "hh.jsonl")
    shorter, longer = length_baseline(pairs, True), length_baseline(pairs, False)
    assert shorter["n"] == longer["n"] == len(pairs)
    ties = shorter["ties"]
    assert shorter["agreement"] + longer["agreement"] == pytest.approx(1 - ties / len(pairs))


def test_sweep_measures_each_configuration_and_extra_judges_side_by_side():
    pairs, _ = read_human_pairs(FIX / "hh.jsonl")
    names = ["pairwise (plain)", "pairwise + swap calibration"]
    rows = list(run_sweep(pairs, [("fake-judge", FakeJudge(slot_bias=1.0)), ("fake-rm", FakeRewardJudge())],
                     tiny_constitution(), paper_judge(), names=names))
    assert [r["name"] for r in rows] == ["baseline: shorter answer wins", "baseline: longer answer wins",
                                         *names, "fake-rm as judge"]
    assert all(r["n"] == len(pairs) for r in rows)
    assert rows[-1]["order_free"] and not rows[2]["order_free"]
    table = sweep_table(rows, len(pairs))
    assert table.count("\n| ") == len(rows) + 1 and "n/a (order-free)" in table


def test_a_helpful_answer_cut_off_by_its_budget_is_chosen_up_to_its_last_complete_sentence():
    """The answer-over-refusal pair prefers the answer SFT trains on, not one that ends mid-sentence."""
    from cai.feedback.constructed import helpful_pair

    helpful = {"id": "h1", "prompt": "How do I oil a squeaky hinge?", "kind": "helpful",
               "answer": "Put a drop of light oil on the pin. Open the door a few times to work it in. Wipe off the",
               "provenance": {"stage": "critique", "model": "m", "seed": 0, "constitution": None}}
    pair = helpful_pair(helpful, 0, refusals=["I'm sorry, but I can't help with that."])
    assert pair.chosen[0]["content"] == "Put a drop of light oil on the pin. Open the door a few times to work it in."
