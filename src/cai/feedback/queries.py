"""Query texts from RL engines, split back into (conversation, response) for a reward model or the judge.

Engines such as OpenRLHF send a remote reward model one text per rollout: the prompt as the policy saw
it (chat-templated by the *policy's* tokenizer) followed by the response, decoded with the special tokens
kept and the padding removed (``--remote_rm_url``: ``{"query": [...], "prompts": [...], "labels": [...]}``).
A ``cai`` reward model scores a chat rendered with *its own* template (``cai.train.reward``), so the text
is parsed back into messages first. Understood here:

* chat templates whose turns are marked by special tokens: ChatML (``<|im_start|>role ... <|im_end|>``:
  SmolLM, Qwen), Llama 3 (``<|start_header_id|>role<|end_header_id|> ... <|eot_id|>``), Gemma
  (``<start_of_turn>role ... <end_of_turn>``);
* HH-RLHF transcripts (``Human: ... \\n\\nAssistant: ...``);
* otherwise, when the engine also sent the prompt and the query starts with it: the prompt as one user
  turn and the rest as the response.

The last turn must be the assistant's: it is the response; the turns before it are the conversation.
A text that fits none of these is reported (``None``), never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class _Template:
    """One family of chat templates: where a turn starts (naming its role) and the token that ends it."""

    name: str
    turn: re.Pattern  # group "role" names the turn's role; the content runs to the next turn or `end`
    end: str
    roles: dict[str, str]


_TEMPLATES = (
    _Template("chatml", re.compile(r"<\|im_start\|>(?P<role>\w+)\n"), "<|im_end|>",
              {"system": "system", "user": "user", "assistant": "assistant"}),
    _Template("llama3", re.compile(r"<\|start_header_id\|>(?P<role>\w+)<\|end_header_id\|>\n\n"), "<|eot_id|>",
              {"system": "system", "user": "user", "assistant": "assistant"}),
    _Template("gemma", re.compile(r"<start_of_turn>(?P<role>\w+)\n"), "<end_of_turn>",
              {"user": "user", "model": "assistant"}),
)
_HH_TURN = re.compile(r"(?:^|\n\n)(?P<role>Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# tokens an engine may leave around a decoded sequence: BOS/EOS/padding of common tokenizers
_EDGE_TOKENS = ("<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>", "<s>", "</s>", "<bos>", "<eos>", "<pad>",
                "<|im_end|>", "<|eot_id|>", "<end_of_turn>")


def split_query(text: str, prompt: str | None = None, *, extra_edge_tokens: tuple[str, ...] = ()
                ) -> tuple[Conversation, str] | None:
    """``(conversation, response)`` of one query text (see the module docstring), or ``None``.

    ``prompt``: the prompt text the engine sent with the query, if any. ``extra_edge_tokens``: more
    special tokens (e.g. the scoring tokenizer's pad and EOS) to strip from the response's end.
    """
    edges = _EDGE_TOKENS + tuple(t for t in extra_edge_tokens if t)
    for template in _TEMPLATES:
        if template.turn.search(text):
            return _last_assistant_turn(_templated_turns(text, template, edges))
    if _HH_TURN.match(text.lstrip()):
        return _last_assistant_turn(_hh_turns(text.strip()))
    if prompt and text.startswith(prompt) and len(text) > len(prompt):
        user = _strip_edges(prompt, edges)
        response = _strip_edges(text[len(prompt):], edges)
        return ([{"role": "user", "content": user}], response) if user else None
    return None


def _templated_turns(text: str, template: _Template, edges: tuple[str, ...]) -> Conversation | None:
    starts = list(template.turn.finditer(text))
    turns = []
    for k, m in enumerate(starts):
        role = template.roles.get(m.group("role"))
        if role is None:
            return None  # a role this parser does not know (a tool turn, ...): not guessed at
        stop = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        content = text[m.end():stop].split(template.end, 1)[0]
        turns.append({"role": role, "content": _strip_edges(content, edges)})
    return turns


def _hh_turns(text: str) -> Conversation:
    parts = _HH_TURN.split(text)  # ["", role, content, role, content, ...]
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2],
                                                                                           strict=True)]


def _last_assistant_turn(turns: Conversation | None) -> tuple[Conversation, str] | None:
    if not turns or turns[-1]["role"] != "assistant" or not any(t["role"] == "user" for t in turns[:-1]):
        return None
    return turns[:-1], turns[-1]["content"]


def _strip_edges(text: str, edges: tuple[str, ...]) -> str:
    """``text`` without surrounding whitespace and any run of ``edges`` tokens at either end."""
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for token in edges:
            if text.startswith(token):
                text, changed = text[len(token):].strip(), True
            if text.endswith(token):
                text, changed = text[: -len(token)].strip(), True
    return text
