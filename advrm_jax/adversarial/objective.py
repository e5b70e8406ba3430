"""The adversary's reward: exploit the target RM where the ensemble disagrees.

Adv-RM (Bukharin et al. 2025, arXiv 2504.06141) trains a policy to find
responses that the target reward model R1 scores highly while the other
reward model(s) R2 do not:

  maximise  R1(x, y) - lam * R2(x, y)   subject to   R1(x, y) > T(x),

with T(x) a per-prompt threshold (the reference policy's reward for that
prompt). The constraint keeps the adversary from "winning" by pushing both
rewards down. The first author's code turns the constraint into a penalty,
and this module implements exactly that formula:

  r = R1 - lam * R2 * 1[R1 > T(x)] + penalty * 1[R1 <= T(x)]

Note what this means below the threshold: the reward is `R1 + penalty`, not
`penalty` alone, so the adversary still gets a gradient towards higher R1
when every sample is below T(x) (with a constant penalty RLOO's leave-one-out
baseline would cancel it and give zero advantage). Above the threshold it is
`R1 - lam * R2`. The threshold test is strict (`R1 == T` is below).

With an ensemble of K members, `scores[target]` is R1 and R2 aggregates the
other K - 1 members ('mean', or the pessimistic 'max' / optimistic 'min').

Standard units. Raw member rewards live on arbitrary, member-specific scales,
so a penalty of -25 and a disagreement R1 - R2 of 0.1 are not comparable.
`member_standardization` measures each member's mean and std on the
reference policy's own samples, and `standardize_members` turns rewards into
z-scores per member. The default experiment then uses one constant floor
`tau` in z units (the analogue of the first author's constant
`reward_anchor: -3`; kind 'constant' of `per_prompt_threshold`) instead of a
per-prompt mean, which put half of all ordinary answers under the penalty
and made "stay above T" ~60x louder than "disagree".

Every function here is pure and jittable; string and integer options
(`target`, `r2_kind`, `kind`, `samples_per_prompt`) must be static under jit.

Shapes: K ensemble members, B scored responses, P prompts, n reference
samples per prompt, k adversary samples per prompt (B = P * k, prompt-major:
rows p*k .. p*k+k-1 belong to prompt p, the layout RLOO expects).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

R2_KINDS = ("mean", "min", "max")
THRESHOLD_KINDS = ("mean", "max", "quantile", "constant")

# The first author's settings.
DEFAULT_LAMBDA = 1.0
DEFAULT_PENALTY = -25.0


def split_target(scores: ArrayLike, target: int = 0, r2_kind: str = "mean") -> tuple[jax.Array, jax.Array]:
  """Splits ensemble scores into the target member R1 and the rest R2.

  Args:
    scores: [K, B] member rewards, K >= 2.
    target: Index of the attacked member (static).
    r2_kind: How the other K - 1 members are aggregated into R2 (static):
      'mean', 'min' or 'max'. With K = 2 all three are the other member.

  Returns:
    (R1 [B], R2 [B]), float32.

  Raises:
    ValueError: on K < 2 (R2 needs another member), a target out of range or
      an unknown `r2_kind`.
  """
  scores = jnp.asarray(scores, jnp.float32)
  if scores.ndim != 2:
    raise ValueError(f"scores must be [K, B], got shape {scores.shape}")
  num_members = scores.shape[0]
  if num_members < 2:
    raise ValueError(f"the adversary's R2 needs at least 2 ensemble members, got K={num_members}")
  if not 0 <= target < num_members:
    raise ValueError(f"target member {target} out of range for K={num_members}")
  if r2_kind not in R2_KINDS:
    raise ValueError(f"unknown r2_kind {r2_kind!r}; expected one of {R2_KINDS}")
  r1 = scores[target]
  # Static index list: no data-dependent shapes under jit.
  others = scores[jnp.asarray([i for i in range(num_members) if i != target])]
  if r2_kind == "mean":
    r2 = jnp.mean(others, axis=0)
  elif r2_kind == "min":
    r2 = jnp.min(others, axis=0)
  else:
    r2 = jnp.max(others, axis=0)
  return r1, r2


def adversary_reward(
  scores: ArrayLike,
  threshold: ArrayLike,
  lam: float = DEFAULT_LAMBDA,
  penalty: float = DEFAULT_PENALTY,
  target: int = 0,
  r2_kind: str = "mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The adversary's sequence-level reward (before any KL term).

  r = R1 - lam * R2 * 1[R1 > T] + penalty * 1[R1 <= T]   (see module doc).

  Args:
    scores: [K, B] ensemble member rewards of the adversary's responses.
    threshold: [B] per-row threshold T(x) (use `broadcast_threshold` to go
      from [P] per-prompt thresholds to prompt-major rows), or a scalar.
    lam: Weight of R2 (may be traced).
    penalty: Added when R1 <= T (negative; may be traced).
    target: Index of the attacked member R1 (static).
    r2_kind: Aggregate of the other members, see `split_target` (static).

  Returns:
    (reward [B] float32, metrics) with scalar float32 metrics:
      above_threshold: fraction of rows with R1 > T.
      r1_mean, r2_mean: mean R1 and R2 over the batch.
      disagreement_mean: mean of R1 - R2 over the batch.
      reward_mean: mean reward.
  """
  r1, r2 = split_target(scores, target, r2_kind)
  threshold = jnp.broadcast_to(jnp.asarray(threshold, jnp.float32), r1.shape)
  above = r1 > threshold
  reward = jnp.where(above, r1 - lam * r2, r1 + penalty)
  metrics = {
    "above_threshold": jnp.mean(above.astype(jnp.float32)),
    "r1_mean": jnp.mean(r1),
    "r2_mean": jnp.mean(r2),
    "disagreement_mean": jnp.mean(r1 - r2),
    "reward_mean": jnp.mean(reward),
  }
  return reward, metrics


def member_standardization(reference_scores: ArrayLike, min_std: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Each member's mean and std over the reference policy's samples.

  Args:
    reference_scores: [K, ...] member rewards of reference-policy samples
      (e.g. [K, P, n]); every axis after the first is pooled.
    min_std: Floor of the std (a constant member would divide by zero).

  Returns:
    (loc [K], scale [K]) float32; ``(scores - loc) / scale`` are z-scores.
  """
  reference_scores = jnp.asarray(reference_scores, jnp.float32)
  if reference_scores.ndim < 2:
    raise ValueError(f"reference_scores must be [K, ...], got shape {reference_scores.shape}")
  flat = reference_scores.reshape(reference_scores.shape[0], -1)
  return jnp.mean(flat, axis=1), jnp.maximum(jnp.std(flat, axis=1), min_std)


def standardize_members(scores: ArrayLike, loc: ArrayLike, scale: ArrayLike) -> jax.Array:
  """[K, ...] member rewards in each member's reference z units."""
  scores = jnp.asarray(scores, jnp.float32)
  shape = (-1,) + (1,) * (scores.ndim - 1)
  return (scores - jnp.reshape(jnp.asarray(loc, jnp.float32), shape)) / jnp.reshape(
    jnp.asarray(scale, jnp.float32), shape
  )


def per_prompt_threshold(
  reference_scores: ArrayLike, kind: str = "mean", q: float = 0.5, constant: float = 0.0
) -> jax.Array:
  """T(x): the reference policy's R1 reward for each prompt, or one constant floor.

  Args:
    reference_scores: [P, n] target-member (R1) rewards of n reference-policy
      samples per prompt.
    kind: 'mean' (the reference's expected reward), 'max' (the best of its n
      samples: a harder bar), 'quantile', or 'constant' (``constant`` for
      every prompt: the first author's fixed anchor) (static).
    q: Quantile in [0, 1] for kind='quantile' (linear interpolation).
    constant: The floor of kind='constant'.

  Returns:
    [P] float32 thresholds.
  """
  reference_scores = jnp.asarray(reference_scores, jnp.float32)
  if reference_scores.ndim != 2:
    raise ValueError(f"reference_scores must be [P, n], got shape {reference_scores.shape}")
  if kind == "mean":
    return jnp.mean(reference_scores, axis=1)
  if kind == "max":
    return jnp.max(reference_scores, axis=1)
  if kind == "constant":
    return jnp.full(reference_scores.shape[:1], constant, jnp.float32)
  if kind == "quantile":
    if not 0.0 <= q <= 1.0:
      raise ValueError(f"quantile q must be in [0, 1], got {q}")
    return jnp.quantile(reference_scores, q, axis=1)
  raise ValueError(f"unknown threshold kind {kind!r}; expected one of {THRESHOLD_KINDS}")


def broadcast_threshold(threshold: ArrayLike, samples_per_prompt: int) -> jax.Array:
  """Repeats per-prompt thresholds for k prompt-major samples per prompt.

  Args:
    threshold: [P] per-prompt thresholds.
    samples_per_prompt: k (static).

  Returns:
    [P * k] float32: row p*k + j holds threshold[p].
  """
  threshold = jnp.asarray(threshold, jnp.float32)
  if threshold.ndim != 1:
    raise ValueError(f"threshold must be [P], got shape {threshold.shape}")
  if samples_per_prompt < 1:
    raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
  return jnp.repeat(threshold, samples_per_prompt, total_repeat_length=threshold.shape[0] * samples_per_prompt)
