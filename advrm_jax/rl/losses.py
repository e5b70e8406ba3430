"""PPO-family losses, KL estimators and KL control, as pure JAX functions.

All functions are jittable; string options (``mode``, ``estimator``) and
``clip_eps_high is None`` must be static under ``jax.jit``. Tensors follow
the conventions of `advrm_jax.rl.advantages`: [B, T] per-token arrays with a
[B, T] response mask, float32 compute.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from advrm_jax.rl.advantages import masked_mean
from advrm_jax.rl.advantages import masked_var

_F32 = jnp.float32
# Log-ratios are clamped before exp so one wild token cannot overflow to inf
# and turn the whole batch loss into NaN; exp(20) is far outside any clip.
_MAX_LOG_RATIO = 20.0

LOSS_AGG_MODES = ("token_mean", "sequence_mean")
KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def _f32(x: ArrayLike) -> jax.Array:
  return jnp.asarray(x, dtype=_F32)


def aggregate_loss(per_token: ArrayLike, mask: ArrayLike, mode: str = "token_mean") -> jax.Array:
  """Reduces a per-token loss to a scalar.

  Args:
    per_token: [B, T] float.
    mask: [B, T] bool or {0, 1}.
    mode: (static) 'token_mean' averages over every real token in the batch,
      so long sequences weigh more; 'sequence_mean' averages each sequence
      over its tokens, then averages sequences (rows with no tokens are
      left out).

  Returns:
    float32 scalar.
  """
  per_token, mask = _f32(per_token), _f32(mask)
  if mode == "token_mean":
    return masked_mean(per_token, mask)
  if mode == "sequence_mean":
    seq_means = masked_mean(per_token, mask, axis=-1)
    has_tokens = jnp.sum(mask, axis=-1) > 0
    return masked_mean(seq_means, has_tokens)
  raise ValueError(f"unknown mode {mode!r}; expected one of {LOSS_AGG_MODES}")


def ppo_policy_loss(
  logprobs: ArrayLike,
  old_logprobs: ArrayLike,
  advantages: ArrayLike,
  mask: ArrayLike,
  clip_eps: float,
  clip_eps_high: Optional[float] = None,
  mode: str = "token_mean",
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Clipped surrogate policy loss (Schulman et al. 2017).

  loss_t = max(-A_t * r_t, -A_t * clip(r_t, 1 - eps, 1 + eps_high)),
  r_t = exp(logprobs_t - old_logprobs_t).

  Args:
    logprobs: [B, T] float, log pi(a_t | s_t) under the current policy.
    old_logprobs: [B, T] float, same under the rollout policy.
    advantages: [B, T] float.
    mask: [B, T] bool or {0, 1}.
    clip_eps: lower clip range (and upper, if ``clip_eps_high`` is None).
    clip_eps_high: optional separate upper clip range (DAPO clip-higher).
    mode: loss aggregation, see `aggregate_loss`.

  Returns:
    loss: float32 scalar.
    metrics: 'clip_fraction' (share of tokens whose clipped term is
      active, i.e. receive no gradient), 'approx_kl' (KL(old || new)
      estimated with k3 on the rollout tokens), 'ratio_mean'.
  """
  logprobs, old_logprobs = _f32(logprobs), _f32(old_logprobs)
  advantages, mask = _f32(advantages), _f32(mask)
  if clip_eps_high is None:
    clip_eps_high = clip_eps
  log_ratio = jnp.clip(logprobs - old_logprobs, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)
  per_token = jnp.maximum(unclipped, clipped)
  loss = aggregate_loss(per_token, mask, mode)

  # Metrics carry no gradient; they are for logging and early stopping.
  log_ratio = jax.lax.stop_gradient(log_ratio)
  ratio = jax.lax.stop_gradient(ratio)
  metrics = {
    "clip_fraction": masked_mean(jax.lax.stop_gradient(clipped > unclipped), mask),
    # Tokens were sampled from the old policy, so (r - 1) - log r is an
    # unbiased, non-negative estimate of KL(old || new) (Schulman's k3).
    "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
    "ratio_mean": masked_mean(ratio, mask),
  }
  return loss, metrics


def ppo_value_loss(
  values: ArrayLike,
  old_values: ArrayLike,
  returns: ArrayLike,
  mask: ArrayLike,
  clip_eps: float,
  mode: str = "token_mean",
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Clipped value loss: 0.5 * max((v - R)^2, (v_clip - R)^2).

  v_clip = old_values + clip(values - old_values, -clip_eps, clip_eps).

  Args:
    values: [B, T] float, current critic values.
    old_values: [B, T] float, critic values at rollout time.
    returns: [B, T] float, GAE returns (targets).
    mask: [B, T] bool or {0, 1}.
    clip_eps: value clip range, in the units of the values.
    mode: loss aggregation, see `aggregate_loss`.

  Returns:
    loss: float32 scalar.
    metrics: 'value_clip_fraction' (share of tokens where the clipped
      error is the larger one), 'value_mse' (unclipped mean squared error).
  """
  values, old_values = _f32(values), _f32(old_values)
  returns, mask = _f32(returns), _f32(mask)
  values_clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  err_unclipped = jnp.square(values - returns)
  err_clipped = jnp.square(values_clipped - returns)
  per_token = 0.5 * jnp.maximum(err_unclipped, err_clipped)
  loss = aggregate_loss(per_token, mask, mode)
  metrics = {
    "value_clip_fraction": masked_mean(jax.lax.stop_gradient(err_clipped > err_unclipped), mask),
    "value_mse": masked_mean(jax.lax.stop_gradient(err_unclipped), mask),
  }
  return loss, metrics


def per_token_entropy(logits: ArrayLike) -> jax.Array:
  """Entropy of the softmax over the last axis.

  Args:
    logits: [..., V] float, any dtype (upcast to float32).

  Returns:
    [...] float32 entropies in nats. Tokens with -inf logits (masked
    vocabulary) contribute 0, not NaN.
  """
  logits = _f32(logits)
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  # 0 * -inf is NaN; the zero-probability entries contribute 0 by definition.
  return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)


def entropy_from_logits(logits: ArrayLike, mask: ArrayLike, mode: str = "token_mean") -> jax.Array:
  """Masked mean token entropy.

  Args:
    logits: [B, T, V] float.
    mask: [B, T] bool or {0, 1}.
    mode: aggregation, see `aggregate_loss`.

  Returns:
    float32 scalar, nats.
  """
  return aggregate_loss(per_token_entropy(logits), mask, mode)


def kl_penalty(logprobs: ArrayLike, ref_logprobs: ArrayLike, estimator: str = "k1") -> jax.Array:
  """Per-token estimate of KL(pi || ref) from tokens sampled from pi.

  Estimators (Schulman, "Approximating KL divergence", 2020), with
  d = logprobs - ref_logprobs:
    'k1': d (unbiased, can be negative).
    'k2': 0.5 * d^2 (biased, low variance, >= 0).
    'k3': exp(-d) - 1 + d = (r - 1) - log r, r = ref/pi (unbiased, >= 0).
    'abs': |d|.

  Args:
    logprobs: [B, T] float, policy log-probs of the sampled tokens.
    ref_logprobs: [B, T] float, reference-model log-probs of the same tokens.
    estimator: one of KL_ESTIMATORS (static).

  Returns:
    [B, T] float32. Not masked; multiply by the mask (or pass it through
    `per_token_rewards`) before reducing.
  """
  d = _f32(logprobs) - _f32(ref_logprobs)
  if estimator == "k1":
    return d
  if estimator == "k2":
    return 0.5 * jnp.square(d)
  if estimator == "k3":
    neg_d = jnp.clip(-d, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return jnp.exp(neg_d) - 1.0 - neg_d
  if estimator == "abs":
    return jnp.abs(d)
  raise ValueError(f"unknown estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def kl_for_reward(token_kl: ArrayLike, response_mask: ArrayLike, aggregate: str = "sum") -> jax.Array:
  """The per-token KL that enters the reward, for a sequence-level aggregate.

  'sum': the masked per-token KL as it is (summed over a response it is the
  sequence KL in nats). 'mean': each token's KL divided by its response's
  length, so the sum over a response is the per-token *mean* KL (the Adv-RM
  authors' form: a long answer pays no more KL than a short one).

  Args:
    token_kl: [B, T] per-token KL (`kl_penalty`), already masked or not.
    response_mask: [B, T] 1 on response tokens.
    aggregate: 'sum' or 'mean' (static).

  Returns:
    [B, T] float32, zero off the mask.
  """
  mask = _f32(response_mask)
  token_kl = _f32(token_kl) * mask
  if aggregate == "sum":
    return token_kl
  if aggregate == "mean":
    return token_kl / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
  raise ValueError(f"unknown KL aggregate {aggregate!r}; expected sum or mean")


def adaptive_kl_init(init_kl_coef: float) -> jax.Array:
  """Initial KL coefficient for the adaptive controller: float32 scalar."""
  return _f32(init_kl_coef)


def adaptive_kl_update(
  coef: ArrayLike,
  current_kl: ArrayLike,
  n_steps: ArrayLike,
  target: float,
  horizon: float,
) -> jax.Array:
  """One step of the Ziegler et al. (2019) proportional KL controller.

  e = clip(current_kl / target - 1, -0.2, 0.2);
  coef <- coef * (1 + e * n_steps / horizon).

  Args:
    coef: scalar, current KL coefficient beta.
    current_kl: scalar, measured KL(pi || ref) of the last batch.
    n_steps: scalar, number of samples (or steps) since the last update.
    target: target KL.
    horizon: horizon over which the error is corrected.

  Returns:
    float32 scalar, the new coefficient (grows when KL is above target).
  """
  coef, current_kl = _f32(coef), _f32(current_kl)
  error = jnp.clip(current_kl / target - 1.0, -0.2, 0.2)
  return coef * (1.0 + error * _f32(n_steps) / horizon)


def missing_eos_penalty(scores: ArrayLike, has_eos: ArrayLike, penalty: float) -> jax.Array:
  """Subtracts ``penalty`` from scores of sequences that never emitted EOS.

  Args:
    scores: [B] float.
    has_eos: [B] bool, True when the sequence ended with EOS.
    penalty: non-negative amount to subtract from truncated sequences.

  Returns:
    [B] float32.
  """
  truncated = jnp.logical_not(jnp.asarray(has_eos, dtype=bool))
  return _f32(scores) - _f32(penalty) * truncated.astype(_F32)


def explained_variance(values: ArrayLike, returns: ArrayLike, mask: ArrayLike) -> jax.Array:
  """1 - Var[returns - values] / Var[returns] over masked tokens.

  Args:
    values: [B, T] float, critic predictions.
    returns: [B, T] float, targets.
    mask: [B, T] bool or {0, 1}.

  Returns:
    float32 scalar: 1 is a perfect critic, 0 no better than a constant,
    negative worse. Defined as 0 when returns have zero variance, so the
    metric never becomes NaN.
  """
  values, returns, mask = _f32(values), _f32(returns), _f32(mask)
  var_returns = masked_var(returns, mask, unbiased=False)
  var_residual = masked_var(returns - values, mask, unbiased=False)
  safe = jnp.where(var_returns > 0, var_returns, 1.0)
  return jnp.where(var_returns > 0, 1.0 - var_residual / safe, 0.0)
