"""The RLAIF judge: which of two responses better follows a principle, read from option log-probs.

As in the CAI paper (Bai et al. 2022, sec. 4.1), the judge model sees the conversation, one principle's
preference statement and the two responses as options ``(A)`` and ``(B)``. The label is not parsed from
free text: the answer prefix ``The better response is (`` is appended to the judge's turn and the
probabilities of ``A`` and ``B`` as the next token are read in one forward pass.

Small judges prefer a slot regardless of content, so every pair is judged twice, with the responses
swapped. For a pair (a, b):

* order 1 shows a as (A):  ``p_a_first``  = P(A) = P(a is better | a shown first)
* order 2 shows a as (B):  ``p_a_second`` = P(B) = P(a is better | a shown second)
* soft label ``p_a`` = (p_a_first + p_a_second) / 2, so a pure slot preference cancels out;
  the pair is *position consistent* when both orders prefer the same response.

A comparison is judged under one principle drawn from the constitution (the paper) or under an
ensemble of several, whose probabilities are averaged. Optional extras: few-shot judge examples (chat
turns before the question), and chain-of-thought (the judge writes its reasoning first; the option
probabilities read after it are clamped to a band such as [0.4, 0.6], because reasoning makes them
overconfident).

The default is not the paper's pairwise question but **pointwise scoring with length control**
(``mode="pointwise"``, ``length_control=True``): each response is scored alone (log-odds of "Yes" to
"is the reply good by the principle?", asked before the conversation and the reply), the better score
wins, and the judge's preference for longer answers, read on content-neutral pairs (each reply with and
without a closing line that adds nothing), is taken out. It has no slot to be
biased towards. No configuration of the embedded SmolLM2-135M judges harm better than chance: on all
2,307 usable HH-RLHF harmless test pairs this default (then with the length slope fitted per batch on
the judged pairs themselves) agrees with the human labels 0.493, as did the
earlier form (question after the reply, 128 tokens of context); the shorter answer wins 0.553. On
the first 200 pairs the two forms score 0.490 and 0.585, a gap the full set shows to be noise (bf16
rounding alone moves the 200-pair figure by about 0.03). The current form encodes 35% fewer tokens per
pair (the question is shared by both replies, the context cut to 64 tokens), so it labels ~1.4x faster.
``cai label --agreement FILE --sweep`` measures every configuration. ``cai label --probe`` checks a judge
without human labels (``cai.feedback.probes``): with its length preference removed, this one cannot tell a refusal
from an answer to a harmful request, nor the answer to the question asked from an answer to another.
Asking for chain of thought, few-shot examples or slot calibration selects the pairwise judge.

Template fields, for ``templates.judge`` in a constitution: ``{conversation}`` (the transcript,
"Human: ..." / "Assistant: ..." turns), ``{principle}`` (the preference statement), ``{response_a}``,
``{response_b}``. The instruction (answer with A or B, or think first) is added after it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.errors import ConfigError, ModelError
from cai.feedback.calibration import length_log_ratio, length_slope, logit, sigmoid, swap_slot_prior

log = logging.getLogger(__name__)

OPTIONS = ("A", "B")
TEMPLATE_FIELDS = {"conversation", "principle", "response_a", "response_b"}

DEFAULT_SYSTEM = "You compare two replies of an AI assistant and say which one is better."
DEFAULT_TEMPLATE = (
    "Here is a conversation between a human and an AI assistant.\n\n{conversation}\n\n"
    "Below are two possible next replies from the assistant. {principle}\n\n"
    "(A) {response_a}\n\n(B) {response_b}"
)
ANSWER_INSTRUCTION = "Answer with (A) or (B)."
ANSWER_PREFIX = "The better response is ("
COT_INSTRUCTION = "Think it through in a few sentences first, then say which response is better."
POINTWISE_INSTRUCTION = "Answer Yes or No."
# The question comes first and the reply last, so after each reply only the chat template's turn change
# and the answer prefix are encoded; the question and the conversation are shared by both replies of a pair.
POINTWISE_TEMPLATE = (
    "A reviewer was told: \"{principle}\" Is the assistant's next reply, shown after the conversation, "
    f"a good one by that standard? {POINTWISE_INSTRUCTION}\n\n"
    "Here is a conversation between a human and an AI assistant.\n\n{conversation}\n\n"
    "Here is the assistant's next reply:\n\n{response}"
)
POINTWISE_FIELDS = {"conversation", "principle", "response"}
POINTWISE_PREFIX = "Answer:"
POINTWISE_OPTIONS = ("Yes", "No")
PLACEHOLDER = "[reply]"  # the content-free response: both slots hold it, so any preference is slot bias
COT_ANSWER = "\n\nSo the better response is ("
CHARS_PER_TOKEN = 4  # only when the backend exposes no tokenizer to count with

# Worked examples written for this project: one harmlessness and one helpfulness comparison, answers on
# different letters so they teach the format and not a slot.
FEW_SHOT_EXAMPLES: tuple[dict[str, str], ...] = (
    {
        "conversation": "Human: My neighbour keeps parking in my spot. How do I get back at him?",
        "principle": "Choose the response that is less likely to cause harm to anyone.",
        "response_a": "Get even: wreck something of his so he learns his lesson.",
        "response_b": "That sounds frustrating. Try a friendly word or a polite note first; if it keeps "
                      "happening, your landlord or the local council can enforce the parking rules.",
        "answer": "B",
    },
    {
        "conversation": "Human: What's a good way to remember people's names?",
        "principle": "Choose the response that answers the question more directly and completely.",
        "response_a": "Repeat the name when you are introduced, link it to something memorable about "
                      "the person, and use it once more before you say goodbye.",
        "response_b": "Everyone forgets names sometimes, so I wouldn't worry about it.",
        "answer": "A",
    },
)


class JudgeConfig(BaseModel):
    """How the judge asks and reads. Saved with every labelled pair's provenance."""

    model_config = ConfigDict(extra="forbid")
    principles: Literal["single", "ensemble"] = Field("single", description=(
        "single: one sampled principle per pair; ensemble: the mean over several"))
    ensemble_size: int = Field(4, ge=1, description="distinct principles averaged per comparison")
    mode: Literal["pairwise", "pointwise"] = Field(
        "pointwise", description="pairwise: one multiple-choice question per order; pointwise: each response "
                                "scored alone (P(Yes) that it meets the principle), the better score wins")
    calibrate: Literal["none", "content-free", "swap"] = Field(
        "none", description="remove the judge's slot prior: read from a content-free question per pair, or "
                            "from the swapped orders over the batch (see cai.feedback.calibration)")
    length_control: bool = Field(True, description=(
        "take the judge's length preference out, as measured on content-neutral pairs (see judge())"))
    few_shot: bool = Field(False, description="put the constitution's worked examples before the question")
    cot: bool = Field(False, description=(
        "let the judge reason before it answers, for pairs whose first reading is unsure"))
    cot_max_new_tokens: int = Field(128, ge=1, description="token budget of the judge's reasoning")
    cot_band: tuple[float, float] = Field((0.4, 0.6), description=(
        "first readings of P(option) inside this band get the reasoning pass"))
    max_context_tokens: int = Field(64, ge=16, description="conversation kept, from the right")
    max_response_tokens: int = Field(128, ge=8, description="each response kept, from the left")
    system: str = Field(DEFAULT_SYSTEM, description="the judge's system turn")
    template: str = Field(DEFAULT_TEMPLATE, description=(
        "the pairwise question, with {conversation}, {principle}, {response_a} and {response_b}"))
    answer_prefix: str = Field(ANSWER_PREFIX, description=(
        "the start of the judge's answer, after which the option tokens are read"))
    pointwise_template: str = Field(POINTWISE_TEMPLATE, description=(
        "the pointwise question, with {conversation}, {principle} and {response}"))

    @field_validator("template")
    @classmethod
    def _has_fields(cls, value: str) -> str:
        check_template(value)
        return value

    @field_validator("pointwise_template")
    @classmethod
    def _has_pointwise_fields(cls, value: str) -> str:
        check_template(value, "pointwise judge template", POINTWISE_FIELDS)
        return value

    @model_validator(mode="before")
    @classmethod
    def _pairwise_when_asked(cls, data: Any) -> Any:
        """Chain of thought, few-shot examples and slot calibration are pairwise-judge options: asking
        for one without naming a mode selects the pairwise judge."""
        if isinstance(data, dict) and "mode" not in data and (
                data.get("cot") or data.get("few_shot") or data.get("calibrate") not in (None, "none")):
            return {**data, "mode": "pairwise"}
        return data

    @model_validator(mode="after")
    def _band(self) -> JudgeConfig:
        lo, hi = self.cot_band
        if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
            raise ValueError(f"cot_band must satisfy 0 <= lo <= 0.5 <= hi <= 1, got {self.cot_band}")
        if self.mode == "pointwise":
            extras = [name for name, on in (("cot", self.cot), ("few_shot", self.few_shot),
                                            ("calibrate", self.calibrate != "none")) if on]
            if extras:
                raise ValueError(f"{', '.join(extras)} apply to the pairwise judge only, not to mode=pointwise")
        return self

    def templates(self) -> dict[str, Any]:
        """Every text the judge sends, for provenance."""
        if self.mode == "pointwise":
            return {"judge_system": self.system, "judge_pointwise": self.pointwise_template,
                    "judge_instruction": POINTWISE_INSTRUCTION, "judge_answer_prefix": POINTWISE_PREFIX}
        out: dict[str, Any] = {"judge_system": self.system, "judge": self.template,
                               "judge_answer_prefix": self.answer_prefix}
        out["judge_instruction"] = COT_INSTRUCTION if self.cot else ANSWER_INSTRUCTION
        if self.cot:
            out["judge_cot_answer"] = COT_ANSWER
        if self.few_shot:
            out["judge_few_shot"] = list(FEW_SHOT_EXAMPLES)
        return out


def check_template(template: str, where: str = "judge template", wanted_fields: set[str] = TEMPLATE_FIELDS) -> None:
    """Raise ConfigError unless ``template`` is a format string with exactly ``wanted_fields``."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ConfigError(f"not a valid format string ({e})", where=where,
                          fix="double any literal braces: {{ and }}") from None
    missing, unknown = wanted_fields - fields, fields - wanted_fields
    if missing or unknown:
        parts = ([f"lacks {', '.join('{' + f + '}' for f in sorted(missing))}"] if missing else []) + (
            [f"has unknown {', '.join('{' + f + '}' for f in sorted(unknown))}"] if unknown else [])
        wanted = ", ".join("{" + f + "}" for f in sorted(wanted_fields))
        raise ConfigError(f"the judge template {' and '.join(parts)}", where=where,
                          fix=f"use exactly the fields {wanted}")


# ---- the label math: pure functions over probabilities ---------------------------------------------


def first_option_probability(logprobs: Sequence[float]) -> float:
    """P(first option) from the log-probs of the two options (renormalised over the two).

    logprobs: [2] floats (``-inf`` allowed for one of them). Raises ModelError if neither option has
    any probability, and NumericsError (naming the backend, not the model) if a value is NaN, since such a
    label would be noise, not data.
    """
    la, lb = float(logprobs[0]), float(logprobs[1])
    if math.isnan(la) or math.isnan(lb):
        from cai.errors import NumericsError

        raise NumericsError(f"the judge's option log-probs are {la}, {lb}")
    if la == -math.inf and lb == -math.inf:
        raise ModelError(f"the judge gave no usable probability to the options {OPTIONS} "
                         f"(log-probs {la}, {lb})",
                         fix="use a judge model whose vocabulary has the option letters as tokens")
    if lb - la > 700:  # exp overflow guard; the answer is 0 to double precision
        return 0.0
    return 1.0 / (1.0 + math.exp(lb - la))


def soft_label(p_a_first: float, p_a_second: float) -> float:
    """P(a is better), averaged over the two orders: a slot preference adds to one and takes from the
    other, so it cancels."""
    return (p_a_first + p_a_second) / 2.0


def clamp(p: float, band: tuple[float, float]) -> float:
    """``p`` limited to ``band`` = (lo, hi)."""
    return min(max(p, band[0]), band[1])


def position_consistent(p_a_first: float, p_a_second: float) -> bool:
    """Both orders prefer the same response (strictly; a 0.5 is no preference, hence inconsistent)."""
    return (p_a_first - 0.5) * (p_a_second - 0.5) > 0


def first_slot_wins(p_a_first: float, p_a_second: float) -> tuple[bool, bool]:
    """Whether the response in slot (A) was preferred, in order 1 (a first) and in order 2 (b first)."""
    return p_a_first > 0.5, p_a_second < 0.5


def stable_seed(seed: int, key: str) -> int:
    """A seed for one item, from the run seed and the item's id: resumes and re-orderings agree."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little") & 0x7FFF_FFFF


# ---- principles per comparison ----------------------------------------------------------------------


def judging_principles(constitution) -> list:
    """The principles with a ``preference`` statement; a ConfigError if there are none."""
    pool = constitution.preference_principles()
    if not pool:
        raise ConfigError("no principle has a `preference` statement, so none can judge a pair",
                          where=f"constitution {constitution.name}",
                          fix="add `preference: Choose the response that ...` to some principles")
    return pool


def choose_principles(constitution, key: str, config: JudgeConfig, *, seed: int
                      ) -> tuple[tuple[str, str], ...]:
    """The (id, preference statement) pairs that judge comparison ``key``.

    "single": one principle drawn by weight (``sample_principles``), as in the paper; "ensemble":
    ``ensemble_size`` distinct principles (a seeded shuffle), whose probabilities are averaged.
    Only principles with a ``preference`` statement take part.
    """
    from cai.constitution import sample_principles

    pool = judging_principles(constitution)
    seed = stable_seed(seed, key)
    if config.principles == "single":
        judges = constitution.model_copy(update={"principles": pool})
        picked = sample_principles(judges, 1, seed=seed)
    else:
        picked = random.Random(seed).sample(pool, min(config.ensemble_size, len(pool)))
    return tuple((p.id, p.preference) for p in picked)


# ---- building the question ---------------------------------------------------------------------------


def render_transcript(conversation: Sequence[dict[str, str]]) -> str:
    """A conversation as "Human: ..." / "Assistant: ..." paragraphs (system turns are left out)."""
    names = {"user": "Human", "assistant": "Assistant"}
    turns = [m for m in conversation if m["role"] in names]
    return "\n\n".join(f"{names[m['role']]}: {m['content'].strip()}" for m in turns)


def truncate_left(text: str, max_tokens: int, tokenizer=None) -> str:
    """The last ``max_tokens`` tokens of ``text`` (``...`` marks a cut). Without a tokenizer, a token
    counts as ``CHARS_PER_TOKEN`` characters."""
    if tokenizer is None:
        keep = max_tokens * CHARS_PER_TOKEN
        return text if len(text) <= keep else "..." + text[-keep:]
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else "..." + tokenizer.decode(ids[-max_tokens:]).lstrip("\ufffd")


def truncate_right(text: str, max_tokens: int, tokenizer=None) -> str:
    """The first ``max_tokens`` tokens of ``text`` (``...`` marks a cut)."""
    if tokenizer is None:
        keep = max_tokens * CHARS_PER_TOKEN
        return text if len(text) <= keep else text[:keep] + "..."
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]).rstrip("\ufffd") + "..."


def judge_question(template: str, conversation: str, principle: str, first: str, second: str) -> str:
    """The multiple-choice question, ``first`` as (A) and ``second`` as (B)."""
    return template.format(conversation=conversation, principle=principle, response_a=first,
                           response_b=second)


def few_shot_turns(config: JudgeConfig) -> list[dict[str, str]]:
    """The worked examples as chat turns: the question, then the answer as the judge would give it."""
    turns = []
    for ex in FEW_SHOT_EXAMPLES:
        q = judge_question(config.template, ex["conversation"], ex["principle"], ex["response_a"],
                           ex["response_b"])
        turns.append({"role": "user", "content": f"{q}\n\n{ANSWER_INSTRUCTION}"})
        turns.append({"role": "assistant", "content": f"{config.answer_prefix}{ex['answer']})"})
    return turns


def judge_conversation(config: JudgeConfig, question: str) -> list[dict[str, str]]:
    """Chat messages asking ``question``: system line, optional few-shot turns, the question."""
    shots = few_shot_turns(config) if config.few_shot else []
    instruction = COT_INSTRUCTION if config.cot else ANSWER_INSTRUCTION
    return _system_turn(config) + shots + [{"role": "user", "content": f"{question}\n\n{instruction}"}]


def _system_turn(config: JudgeConfig) -> list[dict[str, str]]:
    return [{"role": "system", "content": config.system}] if config.system else []


# ---- judging --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Two responses to one conversation, to be judged under ``principles`` ((id, statement) pairs).

    ``conversation`` holds the messages before the responses (ending with the user's turn); response
    ``a`` is the one shown first in order 1.
    """

    conversation: list[dict[str, str]]
    a: str
    b: str
    principles: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Judgement:
    """Both orders' readings for one comparison (averaged over its principles). With chain of thought,
    ``reasoning`` holds the judge's texts, order 1 then order 2, for each principle in turn."""

    p_a_first: float
    p_a_second: float
    principle_ids: tuple[str, ...]
    reasoning: tuple[str, ...] = ()

    @property
    def p_a(self) -> float:
        return soft_label(self.p_a_first, self.p_a_second)

    @property
    def consistent(self) -> bool:
        return position_consistent(self.p_a_first, self.p_a_second)


def judge(backend, comparisons: Sequence[Comparison], config: JudgeConfig) -> list[Judgement]:
    """Judge every comparison under each of its principles (in both orders, when pairwise).

    ``backend``: a generation Backend (the judge is asked questions), or a reward model scorer
    (``cai.feedback.reward_judge.RewardJudge``, pointwise by nature: the higher reward wins). The readings are
    corrected as ``config`` asks (slot prior, length preference; see ``cai.feedback.calibration``).
    """
    if not comparisons:
        return []
    if not config.length_control:
        return [r.judgement() for r in _readings(backend, comparisons, config)]
    if config.mode == "pointwise" and not getattr(backend, "is_reward_model", False):
        readings, slope = _pointwise_readings_and_slope(backend, comparisons, config)
    else:
        readings, slope = _readings(backend, comparisons, config), neutral_length_slope(backend, comparisons, config)
    readings = _without_length_preference(readings, comparisons, getattr(backend, "tokenizer", None), slope)
    return [r.judgement() for r in readings]


def _readings(backend, comparisons: Sequence[Comparison], config: JudgeConfig) -> list[_Reading]:
    if getattr(backend, "is_reward_model", False):
        return _reward_readings(backend, comparisons)
    if config.mode == "pointwise":
        return _pointwise_readings(backend, comparisons, config)
    return _pairwise_readings(backend, comparisons, config)


# A closing line that adds length and no content: a reply with it and the same reply without it differ
# in length only, so the judge's preference between them is its length preference.
NEUTRAL_TAIL = " Let me know if you have any other questions."
NEUTRAL_PAIRS = 8  # comparisons of a batch whose replies give the content-neutral pairs


def neutral_pairs(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Content-neutral pairs from the first ``NEUTRAL_PAIRS`` comparisons: each reply against itself with
    ``NEUTRAL_TAIL`` added, the longer one first for ``a`` and second for ``b``."""
    out = []
    for c in comparisons[:NEUTRAL_PAIRS]:
        out.append(Comparison(c.conversation, c.a.rstrip() + NEUTRAL_TAIL, c.a, c.principles))
        out.append(Comparison(c.conversation, c.b, c.b.rstrip() + NEUTRAL_TAIL, c.principles))
    return out


def neutral_length_slope(backend, comparisons: Sequence[Comparison], config: JudgeConfig) -> float:
    """The judge's length preference (log-odds per unit log length ratio), read on content-neutral pairs
    (``neutral_pairs``), never on the pairs being labelled: fitting it on those would remove any content
    preference that happens to go with length, e.g. a short refusal preferred to a long harmful answer."""
    pairs = neutral_pairs(comparisons)
    readings = _readings(backend, pairs, config)
    tokenizer = getattr(backend, "tokenizer", None)
    deltas = [length_log_ratio(_size(c.a, tokenizer), _size(c.b, tokenizer)) for c in pairs]
    return length_slope([(r.first + r.second) / 2 for r in readings], deltas)


def _pointwise_readings_and_slope(backend, comparisons: Sequence[Comparison],
                                  config: JudgeConfig) -> tuple[list[_Reading], float]:
    """``_pointwise_readings`` and ``neutral_length_slope`` from one scoring pass. A content-neutral pair is a
    compared reply against its twin with ``NEUTRAL_TAIL``; scored alone, the reply's score is the one the
    comparison already has, so only the twins are scored on top (the same figures from fewer scored texts)."""
    head = comparisons[:NEUTRAL_PAIRS]
    items = [(c.conversation, r, c.principles) for c in comparisons for r in (c.a, c.b)]
    items += [(c.conversation, r.rstrip() + NEUTRAL_TAIL, c.principles) for c in head for r in (c.a, c.b)]
    scores = pointwise_scores(backend, items, config)
    own, twins = scores[: 2 * len(comparisons)], scores[2 * len(comparisons):]
    neutral = [d for i in range(len(head)) for d in (twins[2 * i] - own[2 * i], own[2 * i + 1] - twins[2 * i + 1])]
    tokenizer = getattr(backend, "tokenizer", None)
    deltas = [length_log_ratio(_size(c.a, tokenizer), _size(c.b, tokenizer)) for c in neutral_pairs(comparisons)]
    return _score_readings(comparisons, own), length_slope(neutral, deltas)


@dataclass
class _Reading:
    """Log-odds that response a is better, as read in order 1 and in order 2 (equal when order-free)."""

    first: float
    second: float
    principle_ids: tuple[str, ...]
    reasoning: tuple[str, ...] = ()

    def judgement(self) -> Judgement:
        return Judgement(p_a_first=sigmoid(self.first), p_a_second=sigmoid(self.second),
                         principle_ids=self.principle_ids, reasoning=self.reasoning)


def order_free(backend, config: JudgeConfig) -> bool:
    """True when the judge sees one response at a time (pointwise, or a reward model): no slot, no order."""
    return config.mode == "pointwise" or getattr(backend, "is_reward_model", False)


def _shown(c: Comparison, config: JudgeConfig, tokenizer) -> tuple[str, str, str]:
    """(transcript, a, b) as the judge sees them: the conversation cut from the left, responses from the right."""
    context = truncate_left(render_transcript(c.conversation), config.max_context_tokens, tokenizer)
    a = truncate_right(c.a.strip(), config.max_response_tokens, tokenizer)
    b = truncate_right(c.b.strip(), config.max_response_tokens, tokenizer)
    return context, a, b


def _pairwise_readings(backend, comparisons: Sequence[Comparison], config: JudgeConfig) -> list[_Reading]:
    """The multiple-choice judge, both orders, averaged over each comparison's principles.

    For each principle slot (one with "single", several with "ensemble"), all order-1 questions go to
    the backend in one ``option_logprobs`` call, then all order-2 ones: one forward pass per question.
    Calls come in this order so that a backend keeping recent prefixes (the transformers backend does)
    encodes each pair's shared beginning -- instructions and conversation -- once, not once per order
    (and once more for the content-free question, when calibrating).
    """
    tokenizer = getattr(backend, "tokenizer", None)
    slots: list[list[tuple[int, str, list, list]]] = []
    for i, c in enumerate(comparisons):
        context, a, b = _shown(c, config, tokenizer)
        for k, (_pid, statement) in enumerate(c.principles):
            if k == len(slots):
                slots.append([])
            slots[k].append((i, context, _ask(config, context, statement, a, b),
                             _ask(config, context, statement, b, a)))
    sum_first, sum_second = [0.0] * len(comparisons), [0.0] * len(comparisons)
    reasons: list[list[str]] = [[] for _ in comparisons]
    for k, slot in enumerate(slots):
        p_first, p_second_slot_a, why_first, why_second = _read_both_orders(
            backend, [q for *_, q, _ in slot], [q for *_, q in slot], config)
        l1, l2 = [logit(p) for p in p_first], [logit(p) for p in p_second_slot_a]
        prior = _slot_prior(backend, config, [(i, ctx) for i, ctx, _, _ in slot], comparisons, k, l1, l2)
        for n, (i, *_rest) in enumerate(slot):
            sum_first[i] += sigmoid(l1[n] - prior[n])
            sum_second[i] += sigmoid(-(l2[n] - prior[n]))  # in order 2, response a sits in slot (B)
            reasons[i] += [why_first[n], why_second[n]] if config.cot else []
    return [_Reading(logit(sum_first[i] / len(c.principles)), logit(sum_second[i] / len(c.principles)),
                     tuple(pid for pid, _ in c.principles), tuple(reasons[i]))
            for i, c in enumerate(comparisons)]


def _slot_prior(backend, config: JudgeConfig, items: list[tuple[int, str]], comparisons: Sequence[Comparison],
                k: int, l1: list[float], l2: list[float]) -> list[float]:
    """The slot prior (log-odds for slot A) to subtract from each reading of principle slot ``k``."""
    if config.calibrate == "swap":
        return [swap_slot_prior(l1, l2)] * len(items)
    if config.calibrate == "content-free":
        blanks = [_ask(config, ctx, comparisons[i].principles[k][1], PLACEHOLDER, PLACEHOLDER) for i, ctx in items]
        return [logit(p) for p in _read(backend, blanks, config.answer_prefix)]
    return [0.0] * len(items)


def _pointwise_readings(backend, comparisons: Sequence[Comparison], config: JudgeConfig) -> list[_Reading]:
    """Each response scored alone: log-odds of "Yes" to "is it good by the principle?"; a's score minus
    b's, averaged over the comparison's principles. No order, so both readings are the same."""
    items = [(c.conversation, response, c.principles) for c in comparisons for response in (c.a, c.b)]
    scores = pointwise_scores(backend, items, config)  # a then b: they share the transcript, encoded once
    return _score_readings(comparisons, scores)


def _score_readings(comparisons: Sequence[Comparison], scores: Sequence[float]) -> list[_Reading]:
    """Pointwise readings from the scores of each comparison's a and b (in that order): a's minus b's."""
    return [_Reading(scores[2 * i] - scores[2 * i + 1], scores[2 * i] - scores[2 * i + 1],
                     tuple(pid for pid, _ in c.principles)) for i, c in enumerate(comparisons)]


def pointwise_scores(backend, items: Sequence[tuple[list[dict[str, str]], str, tuple[tuple[str, str], ...]]],
                     config: JudgeConfig) -> list[float]:
    """The pointwise judge's score of each (conversation, response, principles): the log-odds of "Yes" to
    "is the reply good by the principle?", averaged over the principles. One ``option_logprobs`` call."""
    tokenizer = getattr(backend, "tokenizer", None)
    questions, owner = [], []
    for i, (conversation, response, principles) in enumerate(items):
        context = truncate_left(render_transcript(conversation), config.max_context_tokens, tokenizer)
        shown = truncate_right(response.strip(), config.max_response_tokens, tokenizer)
        for _pid, statement in principles:
            questions.append(_ask_pointwise(config, context, statement, shown))
            owner.append(i)
    logps = backend.option_logprobs(questions, POINTWISE_PREFIX, POINTWISE_OPTIONS) if questions else []
    sums = [0.0] * len(items)
    for i, lp in zip(owner, logps, strict=True):
        sums[i] += logit(first_option_probability(lp))
    return [sums[i] / max(len(principles), 1) for i, (_c, _r, principles) in enumerate(items)]


def _reward_readings(scorer, comparisons: Sequence[Comparison]) -> list[_Reading]:
    """A reward model as judge: reward(a) - reward(b) as the log-odds (Bradley-Terry), both orders alike."""
    convs = [c.conversation for c in comparisons for _ in (0, 1)]
    responses = [r for c in comparisons for r in (c.a, c.b)]
    rewards = scorer.score(convs, responses)
    return [_Reading(rewards[2 * i] - rewards[2 * i + 1], rewards[2 * i] - rewards[2 * i + 1], ("reward-model",))
            for i in range(len(comparisons))]


def _size(text: str, tokenizer) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) if tokenizer is not None else len(text)


def _without_length_preference(readings: list[_Reading], comparisons: Sequence[Comparison], tokenizer,
                               slope: float) -> list[_Reading]:
    """Readings with a length preference of ``slope`` (log-odds per unit log length ratio) taken out."""
    deltas = [length_log_ratio(_size(c.a, tokenizer), _size(c.b, tokenizer)) for c in comparisons]
    log.info("judge length preference: %.3f log-odds per unit log length ratio (content-neutral pairs), "
             "removed", slope)
    return [_Reading(r.first - slope * d, r.second - slope * d, r.principle_ids, r.reasoning)
            for r, d in zip(readings, deltas, strict=True)]


def _ask_pointwise(config: JudgeConfig, context: str, statement: str, response: str) -> list[dict[str, str]]:
    question = config.pointwise_template.format(conversation=context, principle=statement, response=response)
    return _system_turn(config) + [{"role": "user", "content": question}]


def _ask(config: JudgeConfig, context: str, statement: str, first: str, second: str) -> list[dict[str, str]]:
    return judge_conversation(config, judge_question(config.template, context, statement, first, second))


def _read_both_orders(backend, firsts: list, seconds: list, config: JudgeConfig
                      ) -> tuple[list[float], list[float], list[str], list[str]]:
    """P(A) for every order-1 and order-2 question, and the reasoning before it (chain of thought)."""
    if not config.cot:
        blank = [""] * len(firsts)
        return _read(backend, firsts, config.answer_prefix), _read(backend, seconds, config.answer_prefix), \
            blank, blank
    p, why = _read_after_reasoning(backend, firsts + seconds, config)  # one generate call for both orders
    n = len(firsts)
    return p[:n], p[n:], why[:n], why[n:]


def _read(backend, conversations: list[list[dict[str, str]]], prefix: str) -> list[float]:
    """P(A) for each conversation, one forward pass each."""
    return [first_option_probability(lp) for lp in backend.option_logprobs(conversations, prefix, OPTIONS)]


def _read_after_reasoning(backend, conversations: list[list[dict[str, str]]], config: JudgeConfig
                          ) -> tuple[list[float], list[str]]:
    """Chain of thought: generate reasoning (one batched call), then read P(A) after it, clamped."""
    from cai.backends.base import SamplingParams

    params = SamplingParams(max_new_tokens=config.cot_max_new_tokens, do_sample=False, temperature=0.0)
    reasons = [c.text.strip() for c in backend.generate(conversations, params, desc="judge reasoning")]
    probs = []
    for conv, reason in zip(conversations, reasons, strict=True):
        # the reasoning continues the judge's own turn, so each conversation has its own prefix
        (p,) = _read(backend, [conv], f"{reason}{COT_ANSWER}")
        probs.append(clamp(p, config.cot_band))
    return probs, reasons


def check_judge(backend, config: JudgeConfig) -> None:
    """Fail fast, before any expensive work, if the judge cannot score the options at all.

    A backend that finds no vocabulary entry for an option raises ModelError itself; this also catches
    one that returns NaN or no probability mass for both options.
    """
    if getattr(backend, "is_reward_model", False):
        return
    if config.mode == "pointwise":
        probe = _ask_pointwise(config, "Human: Hi!", "Choose the better reply.", "Hello!")
        prefix, options = POINTWISE_PREFIX, POINTWISE_OPTIONS
    else:
        probe = _ask(config, "Human: Hi!", "Choose the better reply.", "Hello!", "Hi there!")
        prefix, options = config.answer_prefix, OPTIONS
    (lp,) = backend.option_logprobs([probe], prefix, options)
    if len(lp) != len(options):
        raise ModelError(f"the judge backend returned {len(lp)} log-probs for {len(options)} options",
                         fix="check the backend's option_logprobs implementation")
    first_option_probability(lp)

