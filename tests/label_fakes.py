"""Small Backend stand-ins for the label-stage tests: a scripted policy and a judge that reads options.

``FakeJudge`` parses the judge question (default template: ``(A) ...`` / ``(B) ...``), scores each
response with ``score`` and adds ``slot_bias`` (log-odds) towards slot (A), so tests can build judges
that prefer content, prefer a slot, or both.
"""

from __future__ import annotations

import math
import re

from cai.backends.base import Completion, SamplingParams

_OPTIONS = re.compile(r"\(A\) (?P<a>.*?)\n\n\(B\) (?P<b>.*?)\n\n(?:Answer with|Think it through)", re.S)


class FakePolicy:
    """Responses from a function of (prompt, seed); counts its calls and conversations."""

    def __init__(self, reply=None, model_id: str = "fake-policy"):
        self.model_id = model_id
        self.reply = reply or (lambda prompt, seed: f"answer {seed % 97} to: {prompt}")
        self.calls: list[int] = []

    def generate(self, conversations, params: SamplingParams, *, desc: str = "generating"):
        self.calls.append(len(conversations))
        texts = [self.reply(c[-1]["content"], params.seed) for c in conversations]
        return [Completion(text=t, prompt_tokens=5, completion_tokens=5) for t in texts]

    def option_logprobs(self, conversations, prefix, options):
        raise AssertionError("the policy is not the judge here")


def options_in(conversation) -> tuple[str, str]:
    """The two responses shown in a judge question (slot A, slot B)."""
    m = _OPTIONS.search(conversation[-1]["content"])
    assert m, conversation[-1]["content"]
    return m["a"], m["b"]


class FakeJudge:
    """P(A) = sigmoid(score(A) - score(B) + slot_bias); records every call."""

    def __init__(self, score=None, slot_bias: float = 0.0, model_id: str = "fake-judge",
                 reasoning: str = "Hmm."):
        self.model_id = model_id
        self.score = score or (lambda text: 2.0 if "safe" in text else 0.0)
        self.slot_bias = slot_bias
        self.reasoning = reasoning
        self.option_calls: list[tuple[int, str]] = []  # (conversations, prefix) per call
        self.generate_calls = 0
        self.seen: list[list[dict[str, str]]] = []

    def p_first(self, conversation) -> float:
        a, b = options_in(conversation)
        return 1.0 / (1.0 + math.exp(-(self.score(a) - self.score(b) + self.slot_bias)))

    def option_logprobs(self, conversations, prefix, options):
        assert list(options) == ["A", "B"]
        self.option_calls.append((len(conversations), prefix))
        self.seen.extend(conversations)
        out = []
        for c in conversations:
            p = self.p_first(c)
            out.append([math.log(p) if p > 0 else -math.inf, math.log(1 - p) if p < 1 else -math.inf])
        return out

    def generate(self, conversations, params: SamplingParams, *, desc: str = "generating"):
        self.generate_calls += 1
        return [Completion(text=self.reasoning, prompt_tokens=5, completion_tokens=3) for _ in conversations]


def tiny_constitution():
    """Two preference principles (and one without), for tests that need no YAML file."""
    from cai.constitution import parse_constitution

    return parse_constitution(
        "name: test\nversion: 1\nprinciples:\n"
        "  - {id: harm, critique: c, revision: r, preference: Choose the less harmful response.}\n"
        "  - {id: honest, critique: c, revision: r, preference: Choose the more honest response.}\n"
        "  - {id: no-pref, critique: c, revision: r}\n",
        source="test.yaml",
    )


def paper_judge(**overrides):
    """The paper's judge (pairwise multiple choice, no length control), which FakeJudge answers."""
    from cai.feedback.judge import JudgeConfig

    return JudgeConfig(**{"mode": "pairwise", "length_control": False, **overrides})
