"""The pure pieces of PPO for language models: log-probs, KL estimators, rewards, GAE, the clipped losses.

Every function takes and returns tensors; shapes are in the docstrings, with B the batch and T the
number of response tokens. ``mask`` is 1.0 on real response tokens and 0.0 on padding after the end.
The KL controllers follow Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences".
torch is imported inside each function so that importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass


def logprobs_from_logits(logits, tokens, temperature: float = 1.0):
    """Log-probability of each chosen token.

    logits [B, T, V] (position t predicts ``tokens[:, t]``), tokens [B, T] -> [B, T] (float32).
    Logits are divided by the sampling temperature, so the result is the log-prob under the
    distribution the tokens were sampled from.
    """
    import torch

    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits, temperature: float = 1.0):
    """Entropy of the next-token distribution at each position: logits [B, T, V] -> [B, T]."""
    import torch

    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def masked_sum(x, mask, dim=None):
    """Sum of ``x`` where ``mask`` is 1: x, mask [B, T] -> scalar, or [B] with dim=1."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x, mask, dim=None):
    """Mean of ``x`` over the positions where ``mask`` is 1: [B, T] -> scalar (or [B] with dim=1)."""
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x, mask, unbiased: bool = True):
    """Variance of ``x`` over the masked positions: [B, T] -> scalar."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
    """Normalise ``x`` to unit variance (and zero mean) over the masked positions: [B, T] -> [B, T].

    Padding positions come back as 0.
    """
    import torch

    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_k1(logp, ref_logp):
    """Per-token KL estimate k1 = log pi(y) - log pi_ref(y), for tokens sampled from pi: [B, T] -> [B, T].

    Unbiased for KL(pi || pi_ref) in expectation; can be negative on a single token.
    """
    return logp - ref_logp


def kl_k3(logp, ref_logp):
    """Per-token KL estimate k3 = (r - 1) - log r with r = pi_ref(y) / pi(y): [B, T] -> [B, T].

    Unbiased like k1, never negative, lower variance (Schulman, "Approximating KL divergence", 2020).
    """
    import torch

    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def per_token_rewards(scores, logp, ref_logp, mask, kl_coef: float):
    """The RL reward: -kl_coef * k1 on every response token, plus the reward-model score on the last one.

    scores [B] (one scalar per response), logp / ref_logp / mask [B, T] -> (rewards [B, T], kl [B, T]),
    where ``kl`` is the masked per-token k1. Rows whose mask is all 0 get no score.
    """
    import torch

    kl = kl_k1(logp, ref_logp) * mask
    rewards = -kl_coef * kl
    lengths = mask.sum(1).long()
    last = (lengths - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    bonus = scores.to(rewards.dtype) * (lengths > 0).to(rewards.dtype)
    rewards = rewards.index_put((rows, last), bonus, accumulate=True)
    return rewards, kl


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    rewards, values, mask [B, T] -> (advantages [B, T], returns [B, T]); padding positions are 0.
    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where V and A
    past the last real token are 0 (the episode ends there).
    """
    import torch

    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(logp, old_logp, advantages, mask, clip_range: float = 0.2):
    """PPO's clipped surrogate objective, as a loss to minimise.

    logp (with grad), old_logp, advantages, mask [B, T] -> (loss scalar, clip fraction scalar).
    ratio = pi/pi_old; the loss is mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))): once the
    ratio leaves the band in the direction the advantage favours, that token gives no gradient.
    The clip fraction is the share of tokens where the clipped term was the one used.
    """
    import torch

    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(values, old_values, returns, mask, clip_range_value: float = 0.2):
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (V_clipped - R)^2)), V_clipped kept near old V.

    values (with grad), old_values, returns, mask [B, T] -> (loss scalar, clip fraction scalar).
    """
    import torch

    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clipfrac


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to do: the coefficient stays fixed."""

    def state(self) -> dict:
        return {"value": self.value}


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move beta so the observed KL tracks ``target``, within ``horizon`` samples.

    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon): above target the penalty
    grows, below it shrinks.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}
