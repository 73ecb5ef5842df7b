"""The backend contract: chat messages in, completions out; and a log-prob scoring call.

A backend is anything with ``model_id``, ``generate`` and ``option_logprobs``. Engines (transformers,
vLLM, an OpenAI-compatible server) implement it; the stages never touch an engine directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    do_sample: bool = True
    stop: tuple[str, ...] = ()
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length"
    token_ids: list[int] = field(default_factory=list, repr=False)  # the generated tokens, the EOS left out
    eos_id: int | None = None  # the end-of-sequence token that ended the completion, if one did


@runtime_checkable
class Backend(Protocol):
    model_id: str

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams, *, desc: str = "generating"
    ) -> list[Completion]:
        """One completion per conversation (the next assistant turn), in input order."""
        ...

    def option_logprobs(
        self, conversations: Sequence[Conversation], prefix: str, options: Sequence[str]
    ) -> list[list[float]]:
        """Log-probabilities of each option as the next token after ``prefix``.

        The conversation is rendered with the chat template, an assistant turn is opened and
        ``prefix`` (e.g. ``"The better response is ("``) is appended; one forward pass per
        conversation gives the next-token distribution, and each option's probability is the sum
        over the vocabulary entries that spell that option (``"A"``, ``" A"``, ``"(A"`` ...).
        Returned values are log-probs, renormalised over the options.
        """
        ...
