"""What PPO reads: prompt batches in a seeded order, and the SL-CAI examples for the optional SL term.

The SL term (``--sl-data``) is the SL-CAI cross-entropy on revised responses, computed on the response
tokens only and mixed into each PPO update. Its file is the SFT data ``cai.train.data.read_sft_data``
reads (rows ``{"prompt": [messages], "completion": [one assistant message]}``).
"""

from __future__ import annotations

import random
from typing import Any

SL_MAX_TOKENS = 1024


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The prompt indices for ``step`` (1-based): consecutive slices of seeded shuffles of range(n).

    Depends only on (n, batch_size, step, seed), so a resumed run draws the same batches.
    """
    start = (step - 1) * batch_size
    out = []
    for k in range(start, start + batch_size):
        epoch, pos = divmod(k, n)
        order = list(range(n))
        random.Random(seed * 7919 + epoch).shuffle(order)
        out.append(order[pos])
    return out


def as_messages(prompt: Any) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user turn; message lists pass through."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) if isinstance(m, dict) else m.model_dump() for m in prompt]


def sl_batch(rows: list[dict], tokenizer, device, max_tokens: int = SL_MAX_TOKENS) -> dict:
    """Tokenise SFT rows for the SL loss: labels are -100 on the prompt and padding (response-only loss).

    -> dict of input_ids, attention_mask, labels, each [B, L] (right-padded).
    """
    import torch

    encoded = []
    for row in rows:
        prompt_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        full_ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                                 return_dict=False)
        full_ids = list(full_ids)[:max_tokens]
        labels = [-100] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids) :]
        encoded.append((full_ids, labels))
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded], device=device)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in encoded], device=device)
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded], device=device)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def sl_loss(causal_lm, batch: dict):
    """Mean cross-entropy of the response tokens: batch from ``sl_batch`` -> scalar."""
    import torch

    logits = causal_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                             ignore_index=-100)
