"""Advantage estimation and reward shaping for RLHF, as pure JAX functions.

Every function here is side-effect free and jittable. Arguments that decide
shapes or branches (``num_samples``, ``axis``, ``unbiased``, ``shift_mean``,
``normalize_std``, ``kl is None``) must be static under ``jax.jit``.

Conventions:
  B: batch of sequences, T: response length (tokens).
  ``mask`` is [B, T], bool or {0, 1} float, and marks real response tokens.
  Padding may be on either side; the functions never assume a layout, they
  only look at the mask. Everything is computed in float32.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

_F32 = jnp.float32


def _f32(x: ArrayLike) -> jax.Array:
  return jnp.asarray(x, dtype=_F32)


def masked_mean(x: ArrayLike, mask: ArrayLike, axis: Optional[int] = None) -> jax.Array:
  """Mean of ``x`` over entries where ``mask`` is set.

  Args:
    x: any shape, float.
    mask: broadcastable to ``x``, bool or {0, 1} float.
    axis: reduction axis (static); None reduces everything.

  Returns:
    float32 scalar (axis=None) or ``x`` reduced over ``axis``. An empty mask
    gives 0 rather than NaN, so padded-out rows cannot poison a batch mean.
  """
  x, mask = _f32(x), _f32(mask)
  mask = jnp.broadcast_to(mask, x.shape)
  total = jnp.sum(x * mask, axis=axis)
  count = jnp.sum(mask, axis=axis)
  return jnp.where(count > 0, total / jnp.maximum(count, 1e-12), 0.0)


def masked_var(x: ArrayLike, mask: ArrayLike, unbiased: bool = True) -> jax.Array:
  """Variance of ``x`` over all entries where ``mask`` is set.

  Args:
    x: any shape, float.
    mask: broadcastable to ``x``.
    unbiased: apply Bessel's correction n / (n - 1) (static).

  Returns:
    float32 scalar; 0 when fewer than two entries are selected.
  """
  x, mask = _f32(x), _f32(mask)
  mask = jnp.broadcast_to(mask, x.shape)
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  if unbiased:
    n = jnp.sum(mask)
    # With n <= 1 the biased variance is already 0; keep it instead of 0/0.
    var = jnp.where(n > 1, var * n / jnp.maximum(n - 1, 1.0), var)
  return var


def masked_whiten(x: ArrayLike, mask: ArrayLike, shift_mean: bool = True) -> jax.Array:
  """Standardises ``x`` with statistics taken over masked entries only.

  Args:
    x: any shape, float (e.g. advantages [B, T]).
    mask: broadcastable to ``x``.
    shift_mean: if False, the mean is added back, only the scale changes
      (static).

  Returns:
    float32 array shaped like ``x``; unmasked entries are 0.
  """
  x, mask = _f32(x), _f32(mask)
  mask = jnp.broadcast_to(mask, x.shape)
  mean = masked_mean(x, mask)
  var = masked_var(x, mask, unbiased=True)
  out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
  if not shift_mean:
    out = out + mean
  return out * mask


def compute_gae(
  rewards: ArrayLike,
  values: ArrayLike,
  mask: ArrayLike,
  gamma: float,
  lam: float,
) -> Tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation (Schulman et al. 2016) over tokens.

  Unmasked positions are skipped: the recursion carries the next real
  token's value and advantage straight through them. Hence the state after
  the last real token bootstraps with value 0, left padding is ignored, and
  pad rewards/values never leak into real tokens.

  Args:
    rewards: [B, T] float, per-token rewards.
    values: [B, T] float, critic values V(s_t).
    mask: [B, T] bool or {0, 1}, real response tokens.
    gamma: discount factor (may be traced).
    lam: GAE lambda (may be traced).

  Returns:
    advantages: [B, T] float32, 0 at unmasked positions.
    returns: [B, T] float32, advantages + values, 0 at unmasked positions.
  """
  rewards, values, mask = _f32(rewards), _f32(values), _f32(mask)
  gamma, lam = _f32(gamma), _f32(lam)
  rewards = rewards * mask
  values = values * mask

  def step(carry, xs):
    next_value, next_adv = carry
    r_t, v_t, m_t = xs
    delta = r_t + gamma * next_value - v_t
    adv = delta + gamma * lam * next_adv
    # m_t is {0, 1}: a pad keeps the carry untouched and emits 0.
    new_carry = (m_t * v_t + (1.0 - m_t) * next_value, m_t * adv + (1.0 - m_t) * next_adv)
    return new_carry, adv * m_t

  batch = rewards.shape[0]
  init = (jnp.zeros((batch,), _F32), jnp.zeros((batch,), _F32))
  # Scan over time: transpose to [T, B] so each step is a vector op.
  _, adv_tb = jax.lax.scan(step, init, (rewards.T, values.T, mask.T), reverse=True)
  advantages = adv_tb.T
  returns = (advantages + values) * mask
  return advantages, returns


def _grouped(scores: ArrayLike, num_samples: int) -> jax.Array:
  """Reshapes [P * k] scores to [P, k] after static shape checks."""
  scores = _f32(scores)
  if scores.ndim != 1:
    raise ValueError(f"scores must be 1-D [B], got shape {scores.shape}")
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2, got {num_samples}")
  if scores.shape[0] % num_samples:
    raise ValueError(f"batch {scores.shape[0]} is not a multiple of num_samples {num_samples}")
  return scores.reshape(-1, num_samples)


def compute_rloo_advantages(scores: ArrayLike, num_samples: int) -> jax.Array:
  """REINFORCE leave-one-out advantages (Ahmadian et al. 2024).

  Args:
    scores: [B] float, B = P * k, rows p*k .. p*k+k-1 share prompt p.
    num_samples: k >= 2 (static).

  Returns:
    [B] float32: score minus the mean score of the other k - 1 samples of
    the same prompt.
  """
  grouped = _grouped(scores, num_samples)
  total = jnp.sum(grouped, axis=1, keepdims=True)
  baseline = (total - grouped) / (num_samples - 1)
  return (grouped - baseline).reshape(-1)


def compute_grpo_advantages(
  scores: ArrayLike,
  num_samples: int,
  eps: float = 1e-6,
  normalize_std: bool = True,
) -> jax.Array:
  """GRPO group-relative advantages (Shao et al. 2024).

  Args:
    scores: [B] float, same prompt-major layout as `compute_rloo_advantages`.
    num_samples: k >= 2 (static).
    eps: added to the group std so constant groups give 0, not NaN.
    normalize_std: divide by the group std (static); False gives the
      Dr. GRPO style mean-only baseline.

  Returns:
    [B] float32: (score - group mean) / (group std + eps), std with ddof=1.
  """
  grouped = _grouped(scores, num_samples)
  centred = grouped - jnp.mean(grouped, axis=1, keepdims=True)
  if normalize_std:
    std = jnp.std(grouped, axis=1, keepdims=True, ddof=1)
    centred = centred / (std + eps)
  return centred.reshape(-1)


def place_scores_on_last_token(scores: ArrayLike, mask: ArrayLike) -> jax.Array:
  """Puts each sequence-level score on its last real response token.

  Args:
    scores: [B] float.
    mask: [B, T] bool or {0, 1}; left or right padding both work.

  Returns:
    [B, T] float32, zero everywhere except the last masked position of each
    row. Rows with an empty mask are all zero.
  """
  scores, mask = _f32(scores), _f32(mask)
  positions = jnp.arange(mask.shape[1])
  last = jnp.max(jnp.where(mask > 0, positions, -1), axis=1)
  # one_hot(-1) is all zeros, which is exactly what an empty row needs.
  onehot = jax.nn.one_hot(last, mask.shape[1], dtype=_F32)
  return onehot * scores[:, None]


def per_token_rewards(
  scores: ArrayLike,
  mask: ArrayLike,
  kl: Optional[ArrayLike] = None,
  kl_coef: float = 0.0,
) -> jax.Array:
  """Per-token RLHF reward: final score minus a per-token KL penalty.

  r_t = score * [t is last real token] - kl_coef * kl_t, on masked tokens.

  Args:
    scores: [B] float, reward-model scores.
    mask: [B, T] bool or {0, 1}.
    kl: [B, T] float per-token KL estimate (see `losses.kl_penalty`), or
      None for no penalty (static).
    kl_coef: KL coefficient beta (may be traced).

  Returns:
    [B, T] float32, 0 at unmasked positions.
  """
  rewards = place_scores_on_last_token(scores, mask)
  if kl is not None:
    rewards = rewards - _f32(kl_coef) * _f32(kl) * _f32(mask)
  return rewards
