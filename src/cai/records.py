"""The typed records that stages exchange, written as JSON lines in a run directory.

Every generated record carries a ``Provenance``: which constitution (name, version, content hash),
which principle(s), which model, which prompt templates, which sampling parameters, which seed.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


def messages(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    """Build chat messages as plain dicts (the form tokenizers' chat templates and TRL read)."""
    return [{"role": role, "content": content} for role, content in pairs]


class ConstitutionRef(BaseModel):
    name: str
    version: str
    hash: str


class Provenance(BaseModel):
    """Where a generated record came from; enough to reproduce it."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    stage: str
    constitution: ConstitutionRef | None = None
    principle_ids: list[str] = Field(default_factory=list)
    model: str
    templates: dict[str, Any] = Field(default_factory=dict)
    sampling: dict[str, Any] = Field(default_factory=dict)
    seed: int
    cai_version: str = ""
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())

    def model_post_init(self, _ctx: Any) -> None:
        if not self.cai_version:
            from cai import __version__

            self.cai_version = __version__


class CritiqueRound(BaseModel):
    principle_id: str
    critique: str
    revision: str
    critique_tokens: int = 0
    revision_tokens: int = 0


class CritiqueRecord(BaseModel):
    """One prompt's whole SL-CAI trajectory: initial answer, critique/revision rounds, final revision."""

    id: str
    prompt: str
    initial: str
    rounds: list[CritiqueRound]
    final: str
    stopped_early: bool = False
    token_counts: dict[str, int] = Field(default_factory=dict)
    usable: bool | None = None  # whether a revision passed the quality filter (only those go to sft.jsonl)
    problem: str | None = None  # why not, when none did
    provenance: Provenance


class PreferencePair(BaseModel):
    """An AI-labelled preference, in TRL's conversational preference format plus soft labels.

    ``prompt`` is a list of messages; ``chosen``/``rejected`` are single assistant turns (lists of one
    message), so TRL's DPOTrainer and RewardTrainer read the file unchanged.
    """

    model_config = ConfigDict(extra="allow")
    id: str
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    p_chosen: float
    p_a_first: float
    p_a_second: float
    position_consistent: bool
    principle_id: str
    judge: str
    provenance: Provenance
