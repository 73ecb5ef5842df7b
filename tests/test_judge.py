"""The judge: label math, both-order reading, principles, chain of thought, option-token matching."""

from __future__ import annotations

import math

import pytest

from cai.errors import ConfigError, ModelError
from cai.feedback.judge import (
    ANSWER_PREFIX,
    COT_ANSWER,
    Comparison,
    check_judge,
    check_template,
    choose_principles,
    clamp,
    first_option_probability,
    first_slot_wins,
    judge,
    judge_conversation,
    position_consistent,
    render_transcript,
    soft_label,
    truncate_left,
    truncate_right,
)
from label_fakes import FakeJudge, options_in, paper_judge, tiny_constitution

USER = [{"role": "user", "content": "How do I get into my neighbour's house while they are away?"}]
SAFE = "I can't help with entering someone's home; a safe option is to ask them for a key."
UNSAFE = "Try the back window."
HARM = (("harm", "Choose the less harmful response."),)


# ---- pure label math --------------------------------------------------------------------------------


def test_first_option_probability_renormalises_over_the_two_options():
    assert first_option_probability([math.log(0.3), math.log(0.1)]) == pytest.approx(0.75)
    assert first_option_probability([-1.0, -1.0]) == pytest.approx(0.5)
    assert first_option_probability([0.0, -math.inf]) == 1.0
    assert first_option_probability([-math.inf, 0.0]) == 0.0
    assert first_option_probability([0.0, 5000.0]) == 0.0  # no overflow


def test_first_option_probability_refuses_unusable_logprobs():
    with pytest.raises(ModelError, match="no usable probability"):
        first_option_probability([-math.inf, -math.inf])


def test_nan_option_logprobs_blame_the_backend_not_the_vocabulary():
    from cai.errors import NumericsError

    with pytest.raises(NumericsError, match="cai env --check") as e:
        first_option_probability([math.nan, 0.0])
    assert "vocabulary" not in str(e.value)


def test_order_averaging_cancels_a_pure_slot_preference():
    # a judge that always says (A) with 0.9: a gets 0.9 when first, 0.1 when second
    assert soft_label(0.9, 0.1) == pytest.approx(0.5)
    assert not position_consistent(0.9, 0.1)
    assert first_slot_wins(0.9, 0.1) == (True, True)


def test_consistency_needs_the_same_winner_in_both_orders():
    assert position_consistent(0.8, 0.6) and position_consistent(0.2, 0.4)
    assert not position_consistent(0.8, 0.4)
    assert not position_consistent(0.5, 0.9)  # 0.5 is no preference
    assert soft_label(0.8, 0.6) == pytest.approx(0.7)
    assert first_slot_wins(0.8, 0.6) == (True, False)


def test_clamp_limits_to_the_band():
    assert clamp(0.99, (0.4, 0.6)) == 0.6
    assert clamp(0.01, (0.4, 0.6)) == 0.4
    assert clamp(0.55, (0.4, 0.6)) == 0.55


# ---- prompts ---------------------------------------------------------------------------------------


def test_question_shows_conversation_principle_and_both_options():
    conv = judge_conversation(paper_judge(), "Q?")
    assert conv[0]["role"] == "system" and conv[-1]["content"].startswith("Q?")
    assert "Answer with (A) or (B)." in conv[-1]["content"]
    assert len(judge_conversation(paper_judge(few_shot=True), "Q?")) == len(conv) + 4
    assert judge_conversation(paper_judge(system=""), "Q?")[0]["role"] == "user"


def test_render_transcript_names_the_speakers_and_skips_system_turns():
    conv = [{"role": "system", "content": "sys"}, {"role": "user", "content": " hi "},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}]
    assert render_transcript(conv) == "Human: hi\n\nAssistant: hello\n\nHuman: and?"


def test_truncation_keeps_the_end_of_the_history_and_the_start_of_a_response(tokenizer):
    text = " ".join(f"word{i}" for i in range(400))
    left = truncate_left(text, 20, tokenizer)
    assert left.startswith("...") and left.endswith("word399")
    assert len(tokenizer.encode(left[3:], add_special_tokens=False)) <= 21
    right = truncate_right(text, 20, tokenizer)
    assert right.startswith("word0") and right.endswith("...")
    assert truncate_left("short", 20, tokenizer) == "short"
    assert truncate_left("x" * 100, 5) == "..." + "x" * 20  # no tokenizer: 4 characters per token


def test_template_must_have_the_four_fields():
    check_template("{conversation} {principle} {response_a} {response_b}")
    with pytest.raises(ConfigError, match=r"lacks \{response_b\}"):
        check_template("{conversation} {principle} {response_a}")
    with pytest.raises(ConfigError, match=r"unknown \{extra\}"):
        check_template("{conversation} {principle} {response_a} {response_b} {extra}")
    with pytest.raises(ConfigError):
        paper_judge(template="{conversation}")


def test_cot_band_is_checked():
    with pytest.raises(ValueError):
        paper_judge(cot_band=(0.6, 0.4))
    with pytest.raises(ValueError):
        paper_judge(unknown_key=1)


# ---- principles --------------------------------------------------------------------------------------


def test_single_principle_is_seeded_by_item_and_only_from_preference_principles():
    c = tiny_constitution()
    picks = {choose_principles(c, f"p{i}", paper_judge(), seed=0) for i in range(40)}
    assert {p[0][0] for p in picks} == {"harm", "honest"}  # never `no-pref`
    again = choose_principles(c, "p1", paper_judge(), seed=0)
    assert choose_principles(c, "p1", paper_judge(), seed=0) == again


def test_ensemble_takes_distinct_principles():
    c = tiny_constitution()
    picked = choose_principles(c, "x", paper_judge(principles="ensemble", ensemble_size=5), seed=3)
    assert sorted(pid for pid, _ in picked) == ["harm", "honest"]


def test_constitution_without_preference_statements_is_an_error():
    from cai.constitution import parse_constitution

    c = parse_constitution("name: n\nversion: 1\nprinciples:\n  - {id: a, critique: c, revision: r}\n")
    with pytest.raises(ConfigError, match="preference"):
        choose_principles(c, "x", paper_judge(), seed=0)


# ---- judging with a backend ----------------------------------------------------------------------------


def test_judge_reads_each_order_in_one_call_and_averages():
    backend = FakeJudge(slot_bias=1.0)  # prefers content ("safe") and slot (A)
    comps = [Comparison(USER, SAFE, UNSAFE, HARM), Comparison(USER, UNSAFE, SAFE, HARM)]
    j1, j2 = judge(backend, comps, paper_judge())
    assert [n for n, _ in backend.option_calls] == [2, 2]  # one call per order, all pairs in it
    assert all(prefix == ANSWER_PREFIX for _, prefix in backend.option_calls)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert j1.p_a_first == pytest.approx(sig(3.0)) and j1.p_a_second == pytest.approx(sig(1.0))
    assert j1.p_a == pytest.approx((sig(3.0) + sig(1.0)) / 2) and j1.consistent
    assert j2.p_a == pytest.approx(1 - j1.p_a) and j2.consistent
    # order 1 shows a first, order 2 shows it second
    assert options_in(backend.seen[0]) == (SAFE, UNSAFE) and options_in(backend.seen[2]) == (UNSAFE, SAFE)


def test_pure_slot_bias_gives_half_and_inconsistent():
    backend = FakeJudge(score=lambda t: 0.0, slot_bias=3.0)
    (j,) = judge(backend, [Comparison(USER, SAFE, UNSAFE, HARM)], paper_judge())
    assert j.p_a == pytest.approx(0.5) and not j.consistent


def test_ensemble_averages_over_principles():
    principles = (("harm", "Choose the less harmful response."), ("honest", "Choose the more honest one."))
    # this judge only cares when the principle is about harm
    backend = FakeJudge()
    backend.score = lambda text: 0.0
    original = backend.p_first
    backend.p_first = lambda conv: original(conv) if "honest" in conv[-1]["content"] else (
        0.9 if options_in(conv)[0] == SAFE else 0.1)
    (j,) = judge(backend, [Comparison(USER, SAFE, UNSAFE, principles)], paper_judge(principles="ensemble"))
    assert j.principle_ids == ("harm", "honest")
    assert j.p_a_first == pytest.approx((0.9 + 0.5) / 2) and j.p_a_second == pytest.approx((0.9 + 0.5) / 2)
    # one call per (principle, order): order 2 of a principle right after its order 1
    assert [n for n, _ in backend.option_calls] == [1, 1, 1, 1]
    shown = [("harmful" in c[-1]["content"], options_in(c)[0] == SAFE) for c in backend.seen]
    assert shown == [(True, True), (True, False), (False, True), (False, False)]


def test_chain_of_thought_reads_after_the_reasoning_and_clamps():
    backend = FakeJudge(reasoning="Response A refuses politely.")
    (j,) = judge(backend, [Comparison(USER, SAFE, UNSAFE, HARM)], paper_judge(cot=True, cot_band=(0.4, 0.6)))
    assert backend.generate_calls == 1
    assert all(prefix == "Response A refuses politely." + COT_ANSWER for _, prefix in backend.option_calls)
    assert j.p_a_first == 0.6 and j.p_a_second == 0.6  # raw 0.88 in both orders, clamped
    assert j.reasoning == ("Response A refuses politely.",) * 2
    assert "Think it through" in backend.seen[0][-1]["content"]


def test_judge_truncates_long_histories_from_the_left():
    backend = FakeJudge()
    long_user = [{"role": "user", "content": "old " * 2000 + "the latest question"}]
    judge(backend, [Comparison(long_user, SAFE, UNSAFE, HARM)], paper_judge(max_context_tokens=32))
    text = backend.seen[0][-1]["content"]
    assert "the latest question" in text and len(text) < 1000


def test_check_judge_refuses_a_judge_without_option_tokens():
    class NoOptions(FakeJudge):
        def option_logprobs(self, conversations, prefix, options):
            return [[-math.inf, -math.inf] for _ in conversations]

    with pytest.raises(ModelError, match="fix"):
        check_judge(NoOptions(), paper_judge())
    check_judge(FakeJudge(), paper_judge())


# ---- the transformers backend's option tokens -------------------------------------------------------


def _manual_option_logprobs(backend, conversation, option_ids):
    import torch

    ids = backend.encode_chat(conversation, ANSWER_PREFIX)
    with torch.no_grad():
        logits = backend.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    logp = torch.log_softmax(logits, -1)
    per = torch.stack([logp[ids_].logsumexp(-1) for ids_ in option_ids])
    return (per - per.logsumexp(-1)).tolist()


def test_smollm2_tokenizer_option_tokens_and_scores(tiny_model_dir, tokenizer):
    from cai.backends.transformers import TransformersBackend

    backend = TransformersBackend.load(str(tiny_model_dir), dtype="fp32")
    ids_a, ids_b = backend.option_token_ids(["A", "B"])
    vocab = tokenizer.get_vocab()
    assert {vocab["A"], vocab["ĠA"]} <= set(ids_a) and {vocab["B"], vocab["ĠB"]} <= set(ids_b)
    assert not set(ids_a) & set(ids_b)
    conv = judge_conversation(paper_judge(), "Which? (A) yes (B) no")
    (got,) = backend.option_logprobs([conv], ANSWER_PREFIX, ["A", "B"])
    assert got == pytest.approx(_manual_option_logprobs(backend, conv, [ids_a, ids_b]), abs=1e-4)
    assert math.exp(got[0]) + math.exp(got[1]) == pytest.approx(1.0)


def _merged_tokenizer(tokenizer):
    """A byte-level BPE tokenizer whose vocabulary has merged ' A', '(A', ' (A' (and B) tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # lets "(A" merge
    tok.decoder = decoders.ByteLevel()
    corpus = ["The better response is (A) or (B). (A (B (A (B A B A B"] * 50 + ["hello world, which one?"] * 5
    special = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = tokenizer.chat_template
    return fast


def test_merged_option_tokens_are_all_summed(tmp_path, tokenizer):
    from cai.backends.transformers import TransformersBackend
    from conftest import build_tiny_llama

    merged = _merged_tokenizer(tokenizer)
    vocab = merged.get_vocab()
    spellings = [s for s in ("A", "ĠA", "(A", "Ġ(A") if s in vocab]
    assert "(A" in spellings or "Ġ(A" in spellings, f"the test tokenizer lacks merged tokens: {spellings}"
    model_dir = build_tiny_llama(tmp_path / "merged", merged)
    backend = TransformersBackend.load(str(model_dir), dtype="fp32")
    ids_a, ids_b = backend.option_token_ids(["A", "B"])
    assert {vocab[s] for s in spellings} <= set(ids_a)  # the letter alone and every merged spelling
    texts = [merged.convert_tokens_to_string([merged.convert_ids_to_tokens(i)]) for i in ids_a]
    assert all(t.strip().lstrip("(").strip() == "A" for t in texts), texts  # and nothing else
    assert not set(ids_a) & set(ids_b) and any("(B" in merged.convert_ids_to_tokens(i) for i in ids_b)
    conv = judge_conversation(paper_judge(), "which one?")
    (got,) = backend.option_logprobs([conv], ANSWER_PREFIX, ["A", "B"])
    assert got == pytest.approx(_manual_option_logprobs(backend, conv, [ids_a, ids_b]), abs=1e-4)


def test_judge_without_option_tokens_is_a_model_error(tmp_path, tokenizer):
    """A judge whose vocabulary has no 'A'/'B' at all: clear ModelError before any work."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from cai.backends.transformers import TransformersBackend
    from conftest import build_tiny_llama

    words = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "[UNK]", "hello", "the", "is", "(", "response"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", unk_token="[UNK]")
    fast.chat_template = tokenizer.chat_template
    backend = TransformersBackend.load(str(build_tiny_llama(tmp_path / "noab", fast)), dtype="fp32")
    with pytest.raises(ModelError, match="option"):
        check_judge(backend, paper_judge())


# ---- length control -----------------------------------------------------------------------------------

REFUSAL = "I can't help with that, it is unsafe."
HARMFUL_ANSWER = "Sure, here is a long answer that goes on and on with many details and steps. " * 3


def test_length_control_keeps_a_content_preference_collinear_with_length():
    # the judge prefers the safe reply, which is also the shorter one, in every pair: fitting the length
    # slope on these pairs would erase the preference (every label 0.5); content-neutral pairs do not
    backend = FakeJudge(score=lambda text: 3.0 if "unsafe" in text else 0.0)
    comps = [Comparison(USER, REFUSAL, HARMFUL_ANSWER, HARM) for _ in range(3)]
    for j in judge(backend, comps, paper_judge(length_control=True)):
        assert j.p_a > 0.9


def test_length_control_removes_a_pure_length_preference():
    backend = FakeJudge(score=lambda text: 0.5 * math.log(len(text) + 1))  # longer reads better, nothing else
    short, long = "Paris is the capital.", "Paris is the capital of France, and its largest city by far."
    (raw,) = judge(backend, [Comparison(USER, long, short, HARM)], paper_judge())
    (controlled,) = judge(backend, [Comparison(USER, long, short, HARM)], paper_judge(length_control=True))
    assert raw.p_a > 0.6 and abs(controlled.p_a - 0.5) < 0.02


class PointwiseFake:
    """Answers the pointwise question: P(Yes) = sigmoid(score(reply)); records every reply it scored."""

    def __init__(self, score):
        self.score, self.scored = score, []

    def option_logprobs(self, conversations, prefix, options):
        out = []
        for c in conversations:
            reply = c[-1]["content"].split("Here is the assistant's next reply:\n\n", 1)[1]
            self.scored.append(reply)
            p = 1 / (1 + math.exp(-self.score(reply)))
            out.append([math.log(p), math.log(1 - p)])
        return out


def test_pointwise_length_control_reuses_the_compared_replies_scores_for_the_neutral_pairs():
    from cai.feedback.judge import (
        NEUTRAL_PAIRS,
        JudgeConfig,
        _readings,
        _without_length_preference,
        neutral_length_slope,
    )

    def score(text):  # a content preference and a length preference
        return (2.0 if "unsafe" in text else 0.0) + 0.3 * math.log(len(text) + 1)

    comps = [Comparison(USER, REFUSAL + " " * (i % 3), HARMFUL_ANSWER[: 40 + 7 * i], HARM) for i in range(11)]
    config = JudgeConfig(mode="pointwise", length_control=True)
    shared = PointwiseFake(score)
    got = judge(shared, comps, config)
    two_pass = PointwiseFake(score)  # the readings, then the neutral pairs scored on their own
    slope = neutral_length_slope(two_pass, comps, config)
    want = _without_length_preference(_readings(two_pass, comps, config), comps, None, slope)
    assert [j.p_a for j in got] == pytest.approx([r.judgement().p_a for r in want], abs=1e-12)
    assert all(j.p_a > 0.5 for j in got)  # the refusal is preferred, length taken out
    # the neutral pairs' plain replies are the compared ones: only their twins are scored again
    assert len(shared.scored) == 2 * len(comps) + 2 * NEUTRAL_PAIRS
    assert len(two_pass.scored) == 2 * len(comps) + 4 * NEUTRAL_PAIRS
