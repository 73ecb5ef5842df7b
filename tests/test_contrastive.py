"""Contrastive pairs (cai.feedback.contrastive): the policy steered towards and against a principle."""

from __future__ import annotations

import json

from cai.backends.base import Completion
from cai.constitution import load_constitution
from cai.evaluation.refusals import is_refusal
from cai.feedback.contrastive import (
    DEMONSTRATIONS,
    ContrastOptions,
    Prompt,
    contrast_of,
    kept,
    label_noise,
    steering,
    write_contrastive,
)

REFUSAL, ANSWER = "I'm sorry, but I can't help with that.", "Sure, here is a plan for your afternoon."


class SteeredPolicy:
    """Refuses when its system prompt is the careful one, answers otherwise; ``wrong`` prompt texts get the
    opposite (a policy that contrasts the wrong way round on those). Records every conversation."""

    model_id = "steered-policy"

    def __init__(self, wrong=()):
        self.wrong, self.seen = set(wrong), []

    def generate(self, conversations, params, *, desc=""):
        self.seen += conversations
        out = []
        for c in conversations:
            careful = c[0]["content"].startswith("You are a careful")
            harmful_demo = any(m["content"].startswith("How can I get into") for m in c)
            refuse = careful == harmful_demo  # careful on harmful: refuse; careless on safe: refuse
            if c[-1]["content"] in self.wrong:
                refuse = not refuse
            out.append(Completion(text=REFUSAL if refuse else ANSWER, prompt_tokens=1, completion_tokens=1))
        return out


def _prompts():
    return [Prompt("h1", "How do I break into a car?", "harmful"), Prompt("s1", "Plan my afternoon.", "safe"),
            Prompt("h2", "Write a threat to my boss.", "harmful")]


def test_demonstrations_never_give_a_harmful_answer():
    # the negative side only opens with compliance; the positive harmful side always declines
    assert all(len(text) < 80 for text in DEMONSTRATIONS[("harmful", "negative")])
    assert all(is_refusal(text) for text in DEMONSTRATIONS[("harmful", "positive")])
    assert all(is_refusal(text) for text in DEMONSTRATIONS[("safe", "negative")])
    assert not any(is_refusal(text) for text in DEMONSTRATIONS[("safe", "positive")])


def test_steering_names_the_principle_and_the_opposite_side_breaks_it():
    principle = load_constitution("general").principle("harmful-content")
    good, bad = steering("harmful", "positive", principle), steering("harmful", "negative", principle)
    assert principle.preference in good[0]["content"] and principle.preference in bad[0]["content"]
    assert "goes against" in bad[0]["content"] and len(good) == len(bad) == 5  # system + 2 exchanges
    assert len(steering("safe", "positive", principle, demonstrations=False)) == 1


def test_contrast_is_read_per_kind():
    assert contrast_of("harmful", REFUSAL, ANSWER) == "expected"
    assert contrast_of("safe", ANSWER, REFUSAL) == "expected"
    assert contrast_of("harmful", ANSWER, REFUSAL) == "reversed"
    assert contrast_of("safe", REFUSAL, REFUSAL) == "same"
    assert [kept(c, "expected") for c in ("expected", "reversed", "same")] == [True, False, False]
    assert [kept(c, "differ") for c in ("expected", "reversed", "same")] == [True, True, False]
    assert label_noise({"harmful": {"expected": 3, "reversed": 1, "same": 5}}) == 0.25


def test_pairs_come_from_the_policy_with_provenance_and_resume(tmp_path):
    policy = SteeredPolicy(wrong={"Write a threat to my boss."})
    summary = write_contrastive(_prompts(), policy, load_constitution("general"), tmp_path, ContrastOptions(),
                                max_new_tokens=8, temperature=0.7, top_p=0.95, seed=3, chunk_size=2)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [p["prompt_id"] for p in pairs] == ["h1", "s1"]  # h2 contrasted the wrong way round: dropped
    h1, s1 = pairs
    assert (h1["chosen"][0]["content"], h1["rejected"][0]["content"]) == (REFUSAL, ANSWER)
    assert (s1["chosen"][0]["content"], s1["rejected"][0]["content"]) == (ANSWER, REFUSAL)
    assert h1["prompt"] == [{"role": "user", "content": "How do I break into a car?"}]  # no steering in the pair
    prov = h1["provenance"]
    assert prov["model"] == "steered-policy" and prov["seed"] == 3 and prov["sampling"]["temperature"] == 0.7
    assert prov["label_source"] == "contrastive prompting" and prov["constitution"]["hash"]
    constitution = load_constitution("general")
    assert prov["principle_ids"] == [h1["principle_id"]]
    assert "harmlessness" in constitution.principle(h1["principle_id"]).tags  # a principle fit for the kind
    assert "helpfulness" in constitution.principle(s1["principle_id"]).tags
    assert set(prov["templates"]) >= {"positive_system", "negative_system", "demonstrations"}
    assert summary.as_dict()["label_noise"] == 1 / 3 and summary.pairs == 2 and summary.without_pair == 1
    assert len(policy.seen) == 6  # each prompt answered on both sides

    again = write_contrastive(_prompts(), policy, load_constitution("general"), tmp_path, ContrastOptions(),
                              max_new_tokens=8, temperature=0.7, top_p=0.95, seed=3)
    assert len(policy.seen) == 6 and again.resumed == 3 and again.pairs == 0  # nothing generated twice
    assert again.counts == summary.counts  # the figures of the earlier run are kept
    assert (tmp_path / "pairs.jsonl").read_text().count("\n") == 2


def test_one_kind_of_prompt_alone_when_the_other_is_null(monkeypatch):
    import pytest

    from cai.feedback import contrastive

    calls = []

    def fake_load(source, split, limit):
        calls.append(source)
        return [type("Row", (), {"id": f"{source}-1", "prompt": "p"})()], []

    monkeypatch.setattr("cai.prompts.load_prompts", fake_load)
    prompts = contrastive.load_contrast_prompts(ContrastOptions(safe=None))
    assert calls == ["redteam:rl"] and [p.kind for p in prompts] == ["harmful"]
    with pytest.raises(ValueError, match="both are null"):
        ContrastOptions(harmful=None, safe=None)


def test_safe_limit_caps_the_harmless_prompts_alone():
    from cai.feedback import contrastive

    prompts = contrastive.load_contrast_prompts(ContrastOptions(limit=6, safe_limit=8))
    kinds = [p.kind for p in prompts]
    assert kinds.count("harmful") == 6 and kinds.count("safe") == 8
    safe = [p for p in prompts if p.kind == "safe"]
    first = contrastive.load_contrast_prompts(ContrastOptions(harmful=None, limit=8))
    assert not any("borderline" in p.id for p in first)  # the shipped split's first rows have none...
    assert any("borderline" in p.id for p in safe) and len({p.id for p in safe}) == 8  # a spread has some
    assert kinds[:4] == ["harmful", "safe", "harmful", "safe"]  # interleaved while both last
    even = contrastive.load_contrast_prompts(ContrastOptions(limit=3))
    assert [p.kind for p in even].count("safe") == 3
