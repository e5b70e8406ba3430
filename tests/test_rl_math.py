"""Unit tests for advrm_jax.rl.advantages and advrm_jax.rl.losses.

Expected values are worked out independently of the code under test: either
literal numbers with the arithmetic in a comment, or a plain Python / numpy
reference. Every function is called through jax.jit.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advrm_jax.rl import advantages as adv
from advrm_jax.rl import losses

ATOL = 1e-5


def _close(actual, expected, atol=ATOL):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=atol)


# --------------------------------------------------------------------------
# Masked statistics.


def test_masked_mean_var_whiten():
  x = jnp.array([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 0]], dtype=bool)
  mean = jax.jit(adv.masked_mean)(x, mask)
  # (1 + 2 + 3 + 4) / 4
  _close(mean, 2.5)
  row_mean = jax.jit(adv.masked_mean, static_argnames="axis")(x, mask, axis=1)
  _close(row_mean, [1.5, 3.5])
  var_fn = jax.jit(adv.masked_var, static_argnames="unbiased")
  # squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; /3 unbiased, /4 biased
  _close(var_fn(x, mask), 5.0 / 3.0)
  _close(var_fn(x, mask, unbiased=False), 1.25)

  whiten = jax.jit(adv.masked_whiten, static_argnames="shift_mean")
  std = math.sqrt(5.0 / 3.0 + 1e-8)
  expected = np.array([[-1.5, -0.5, 0.0], [0.5, 1.5, 0.0]]) / std
  _close(whiten(x, mask), expected)  # pads come out as exactly 0
  expected_keep_mean = (expected + 2.5) * np.asarray(mask)
  _close(whiten(x, mask, shift_mean=False), expected_keep_mean)


def test_masked_mean_empty_mask_is_zero():
  x = jnp.ones((2, 3))
  mask = jnp.zeros((2, 3))
  _close(jax.jit(adv.masked_mean)(x, mask), 0.0)
  _close(jax.jit(adv.masked_var)(x, mask), 0.0)


# --------------------------------------------------------------------------
# GAE.


def _gae_reference(rewards, values, mask, gamma, lam):
  """Plain-Python GAE: compact each row to its real tokens, bootstrap 0."""
  rewards, values, mask = (np.asarray(a, np.float64) for a in (rewards, values, mask))
  advantages = np.zeros_like(rewards)
  returns = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    idx = [t for t in range(rewards.shape[1]) if mask[b, t] > 0]
    next_value, next_adv = 0.0, 0.0
    for t in reversed(idx):
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      next_adv = delta + gamma * lam * next_adv
      next_value = values[b, t]
      advantages[b, t] = next_adv
      returns[b, t] = next_adv + values[b, t]
  return advantages, returns


# Row 0 is right-padded, row 1 left-padded; pads hold junk that must not leak.
GAE_REWARDS = np.array([[0.0, 0.0, 1.0, 5.0], [7.0, -0.1, 0.0, 2.0]], np.float32)
GAE_VALUES = np.array([[0.5, 0.6, 0.7, 9.0], [3.0, 1.0, 0.5, -0.5]], np.float32)
GAE_MASK = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], np.float32)


def test_gae_hand_computed_gamma_lambda_one():
  advantages, returns = jax.jit(adv.compute_gae)(GAE_REWARDS, GAE_VALUES, GAE_MASK, 1.0, 1.0)
  # gamma = lam = 1: returns are undiscounted reward-to-go, A = G - V.
  # Row 0: G = [1, 1, 1]; A = [1 - .5, 1 - .6, 1 - .7] = [.5, .4, .3].
  # Row 1: G = [-.1 + 0 + 2, 0 + 2, 2] = [1.9, 2, 2];
  #        A = [1.9 - 1, 2 - .5, 2 + .5] = [.9, 1.5, 2.5].
  _close(advantages, [[0.5, 0.4, 0.3, 0.0], [0.0, 0.9, 1.5, 2.5]])
  _close(returns, [[1.0, 1.0, 1.0, 0.0], [0.0, 1.9, 2.0, 2.0]])


def test_gae_matches_python_loop_with_discount():
  gamma, lam = 0.9, 0.8
  advantages, returns = jax.jit(adv.compute_gae)(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma, lam)
  ref_adv, ref_ret = _gae_reference(GAE_REWARDS, GAE_VALUES, GAE_MASK, gamma, lam)
  _close(advantages, ref_adv)
  _close(returns, ref_ret)
  # Spot check one entry by hand, row 0 last token: 1 + 0.9*0 - 0.7 = 0.3;
  # middle token: delta = 0 + 0.9*0.7 - 0.6 = 0.03, A = 0.03 + 0.72*0.3.
  _close(advantages[0, 2], 0.3)
  _close(advantages[0, 1], 0.03 + 0.72 * 0.3)


def test_gae_random_masks_match_reference():
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(5, 7)).astype(np.float32)
  values = rng.normal(size=(5, 7)).astype(np.float32)
  mask = (rng.random((5, 7)) < 0.6).astype(np.float32)
  mask[0] = 0.0  # an empty row
  mask[1] = 1.0  # a full row
  advantages, returns = jax.jit(adv.compute_gae)(rewards, values, mask, 0.99, 0.95)
  ref_adv, ref_ret = _gae_reference(rewards, values, mask, 0.99, 0.95)
  _close(advantages, ref_adv, atol=1e-4)
  _close(returns, ref_ret, atol=1e-4)


# --------------------------------------------------------------------------
# RLOO / GRPO.


def test_rloo_k4():
  scores = jnp.array([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
  out = jax.jit(adv.compute_rloo_advantages, static_argnums=1)(scores, 4)
  # Prompt 0: sum 12, baselines (12 - x) / 3 = [11/3, 10/3, 3, 2]
  #   -> [1 - 11/3, 2 - 10/3, 3 - 3, 6 - 2] = [-8/3, -4/3, 0, 4].
  # Prompt 1: sum 4, baselines [4/3, 4/3, 4/3, 0] -> [-4/3, -4/3, -4/3, 4].
  _close(out, [-8 / 3, -4 / 3, 0.0, 4.0, -4 / 3, -4 / 3, -4 / 3, 4.0])


def test_rloo_rejects_bad_layout():
  with pytest.raises(ValueError):
    adv.compute_rloo_advantages(jnp.zeros(6), 4)
  with pytest.raises(ValueError):
    adv.compute_rloo_advantages(jnp.zeros(4), 1)


def test_grpo():
  scores = jnp.array([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
  fn = jax.jit(adv.compute_grpo_advantages, static_argnames=("num_samples", "normalize_std"))
  out = fn(scores, num_samples=4)
  # Group 0: mean 3, deviations [-2, -1, 0, 3], sample var (4+1+0+9)/3 = 14/3.
  std = math.sqrt(14.0 / 3.0)
  # Group 1 is constant: deviations 0, std 0 -> 0 / eps = 0, not NaN.
  _close(out, [-2 / (std + 1e-6), -1 / (std + 1e-6), 0.0, 3 / (std + 1e-6), 0.0, 0.0, 0.0, 0.0])
  out_no_std = fn(scores, num_samples=4, normalize_std=False)
  _close(out_no_std, [-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0])


# --------------------------------------------------------------------------
# Score placement and per-token rewards.


def test_place_scores_left_and_right_padding():
  scores = jnp.array([1.5, -2.0, 3.0, 7.0])
  mask = jnp.array(
    [
      [1, 1, 1, 0, 0],  # right-padded: last real at t=2
      [0, 0, 1, 1, 1],  # left-padded: last real at t=4
      [0, 0, 0, 0, 0],  # empty: gets nothing
      [1, 1, 1, 1, 1],
    ],  # full: t=4
    dtype=bool,
  )
  out = jax.jit(adv.place_scores_on_last_token)(scores, mask)
  expected = np.zeros((4, 5), np.float32)
  expected[0, 2] = 1.5
  expected[1, 4] = -2.0
  expected[3, 4] = 7.0
  _close(out, expected)


def test_per_token_rewards_with_kl():
  scores = jnp.array([2.0, 1.0])
  mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]], jnp.float32)
  kl = jnp.array([[0.1, 0.2, 0.3, 9.0], [9.0, -0.1, 0.0, 0.5]])
  fn = jax.jit(adv.per_token_rewards)
  out = fn(scores, mask, kl, 0.5)
  # r = score at last token - 0.5 * kl on real tokens; pads (kl 9.0) drop out.
  # Row 0: [-.05, -.1, 2 - .15, 0]; row 1: [0, .05, 0, 1 - .25].
  _close(out, [[-0.05, -0.1, 1.85, 0.0], [0.0, 0.05, 0.0, 0.75]])
  no_kl = jax.jit(adv.per_token_rewards)(scores, mask)
  _close(no_kl, [[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------
# PPO policy loss.

_POLICY_LOSS = jax.jit(losses.ppo_policy_loss, static_argnames=("clip_eps", "clip_eps_high", "mode"))


# (ratio, advantage, expected loss, clipped?) with clip_eps = 0.2.
# loss = -min(r * A, clip(r, .8, 1.2) * A).
POLICY_CASES = [
  (1.1, 1.0, -1.1, False),  # inside the range: unclipped
  (1.1, -1.0, 1.1, False),
  (1.5, 1.0, -1.2, True),  # above, A > 0: min(1.5, 1.2) = 1.2, clipped
  (1.5, -1.0, 1.5, False),  # above, A < 0: min(-1.5, -1.2) = -1.5
  (0.5, 1.0, -0.5, False),  # below, A > 0: min(0.5, 0.8) = 0.5
  (0.5, -1.0, 0.8, True),  # below, A < 0: min(-0.5, -0.8) = -0.8, clipped
]


@pytest.mark.parametrize("ratio,advantage,expected,is_clipped", POLICY_CASES)
def test_policy_loss_single_token(ratio, advantage, expected, is_clipped):
  old = jnp.full((1, 1), -1.0)
  new = old + math.log(ratio)
  a = jnp.full((1, 1), advantage)
  mask = jnp.ones((1, 1))
  loss, metrics = _POLICY_LOSS(new, old, a, mask, clip_eps=0.2)
  _close(loss, expected)
  _close(metrics["clip_fraction"], float(is_clipped))
  # A clipped token gets no gradient; an unclipped one gets -A * r.
  grad = jax.grad(lambda lp: _POLICY_LOSS(lp, old, a, mask, clip_eps=0.2)[0])(new)
  _close(grad, [[0.0 if is_clipped else -advantage * ratio]])


def test_policy_loss_batch_mask_and_metrics():
  ratios = np.array([c[0] for c in POLICY_CASES] + [3.0])
  advs = np.array([c[1] for c in POLICY_CASES] + [100.0])
  old = np.full((1, 7), -2.0, np.float32)
  new = (old + np.log(ratios)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1, 1, 0]], np.float32)  # last token is a pad
  loss, metrics = _POLICY_LOSS(new, old, advs[None].astype(np.float32), mask, clip_eps=0.2)
  # (-1.1 + 1.1 - 1.2 + 1.5 - 0.5 + 0.8) / 6 = 0.6 / 6
  _close(loss, 0.1)
  _close(metrics["clip_fraction"], 2 / 6)
  r = ratios[:6]
  _close(metrics["approx_kl"], np.mean((r - 1) - np.log(r)))
  _close(metrics["ratio_mean"], np.mean(r))


def test_policy_loss_clip_higher():
  old = jnp.zeros((1, 1))
  new = old + math.log(1.25)
  a = jnp.ones((1, 1))
  mask = jnp.ones((1, 1))
  sym, _ = _POLICY_LOSS(new, old, a, mask, clip_eps=0.2)
  high, m = _POLICY_LOSS(new, old, a, mask, clip_eps=0.2, clip_eps_high=0.28)
  _close(sym, -1.2)  # 1.25 clipped to 1.2
  _close(high, -1.25)  # 1.25 < 1.28: unclipped
  _close(m["clip_fraction"], 0.0)


# --------------------------------------------------------------------------
# Value loss.


def test_value_loss_clipped():
  fn = jax.jit(losses.ppo_value_loss, static_argnames=("clip_eps", "mode"))
  old = jnp.array([[1.0, 1.0, 1.0, 1.0, 1.0]])
  values = jnp.array([[1.1, 1.5, 0.5, 3.0, 50.0]])
  returns = jnp.array([[2.0, 2.0, 0.0, 2.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 1, 0]], jnp.float32)
  loss, metrics = fn(values, old, returns, mask, clip_eps=0.2)
  # t0: inside: (1.1 - 2)^2 = .81 both -> .405
  # t1: v=1.5 -> clip 1.2: max(.25, .64) = .64 -> .32 (clipped term wins)
  # t2: v=.5 -> clip .8, R=0: max(.25, .64) = .64 -> .32 (clipped term wins)
  # t3: v=3 -> clip 1.2, R=2: max(1, .64) = 1 -> .5 (unclipped wins)
  # mean = (.405 + .32 + .32 + .5) / 4 = .38625; pad (v=50) ignored.
  _close(loss, 0.38625)
  _close(metrics["value_clip_fraction"], 0.5)
  _close(metrics["value_mse"], (0.81 + 0.25 + 0.25 + 1.0) / 4)


# --------------------------------------------------------------------------
# Entropy.


def test_entropy_uniform_and_known():
  vocab = 7
  fn = jax.jit(losses.entropy_from_logits)
  logits = jnp.full((2, 3, vocab), 0.3).at[1, 2].set(jnp.arange(vocab, dtype=jnp.float32) * 10.0)
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])  # the peaked token is padding
  _close(fn(logits, mask), math.log(vocab))

  # Large-magnitude logits: uniform over the two 1e4 entries -> log 2.
  big = jnp.array([[[1e4, 1e4, -1e4]]], jnp.bfloat16)
  _close(fn(big, jnp.ones((1, 1))), math.log(2.0))

  # p = [.5, .25, .25, 0]: H = .5 ln 2 + 2 * .25 ln 4 = 1.5 ln 2; the -inf
  # entry must contribute 0, not NaN.
  known = jnp.log(jnp.array([[[0.5, 0.25, 0.25, 0.0]]]))
  _close(fn(known, jnp.ones((1, 1))), 1.5 * math.log(2.0))
  grad = jax.grad(lambda l: fn(l, jnp.ones((1, 1))))(known)
  assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------
# KL estimators.


def test_kl_estimators_pointwise():
  fn = jax.jit(losses.kl_penalty, static_argnames="estimator")
  logp = jnp.array([-1.0, -2.0])
  ref = jnp.array([-2.0, -1.0])
  _close(fn(logp, ref, estimator="k1"), [1.0, -1.0])
  _close(fn(logp, ref, estimator="k2"), [0.5, 0.5])
  # k3 = exp(ref - logp) - 1 - (ref - logp): e^-1 - 1 + 1, e^1 - 1 - 1
  _close(fn(logp, ref, estimator="k3"), [math.exp(-1), math.e - 2])
  _close(fn(logp, ref, estimator="abs"), [1.0, 1.0])
  with pytest.raises(ValueError):
    losses.kl_penalty(logp, ref, "k4")


def test_kl_estimators_unbiased_against_exact_kl():
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.2, 0.5, 0.3])
  # KL(p || q) = .5 ln 2.5 + .3 ln .6 + .2 ln(2/3) ~= 0.2238
  exact = float(np.sum(p * np.log(p / q)))
  n = 200_000

  @jax.jit
  def estimates(key):
    tokens = jax.random.categorical(key, jnp.log(p), shape=(1, n))
    logp = jnp.log(jnp.asarray(p, jnp.float32))[tokens]
    ref = jnp.log(jnp.asarray(q, jnp.float32))[tokens]
    return (losses.kl_penalty(logp, ref, "k1"), losses.kl_penalty(logp, ref, "k3"))

  k1, k3 = (np.asarray(a, np.float64) for a in estimates(jax.random.key(0)))
  for est in (k1, k3):
    stderr = est.std() / math.sqrt(n)
    assert abs(est.mean() - exact) < 5 * stderr, (est.mean(), exact, stderr)
  assert np.all(k3 >= 0.0)
  # k3 is the low-variance one for nearby distributions.
  assert k3.std() < k1.std()


# --------------------------------------------------------------------------
# Adaptive KL coefficient (RLConfig.adaptive_kl_target).


def test_adaptive_kl_update():
  coef = losses.adaptive_kl_init(0.2)
  update = jax.jit(lambda coef, kl, n: losses.adaptive_kl_update(coef, kl, n, 6.0, 10000.0))
  # KL 12 -> error 12/6 - 1 = 1, clipped to .2: 0.2 * (1 + .2 * 256 / 1e4).
  _close(update(coef, 12.0, 256), 0.2 * 1.00512)
  # KL 3 -> error -.5, clipped to -.2: coefficient shrinks.
  _close(update(coef, 3.0, 256), 0.2 * 0.99488)
  # KL 6.6 -> error .1 (inside the clip): 0.2 * (1 + .1 * .0256).
  _close(update(coef, 6.6, 256), 0.2 * 1.00256)
  # On target: unchanged.
  _close(update(coef, 6.0, 256), 0.2)


# --------------------------------------------------------------------------
# Misc.


def test_missing_eos_penalty():
  out = jax.jit(losses.missing_eos_penalty)(jnp.array([1.0, 2.0, 3.0]), jnp.array([True, False, True]), 1.5)
  _close(out, [1.0, 0.5, 3.0])


def test_negative_missing_eos_penalty_is_a_config_error():
  # Subtracting a negative penalty would reward responses that never end.
  from advrm_jax.rl.engine import RLConfig

  with pytest.raises(ValueError, match="rl.missing_eos_penalty"):
    RLConfig(missing_eos_penalty=-2.0)


def test_aggregate_loss_modes():
  fn = jax.jit(losses.aggregate_loss, static_argnames="mode")
  per_token = jnp.array([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0], [99.0, 99.0, 99.0, 99.0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
  # token_mean: (1 + 2 + 3 + 4) / 4.
  _close(fn(per_token, mask, mode="token_mean"), 2.5)
  # sequence_mean: (mean(1,2,3) + 4) / 2; the empty row is left out.
  _close(fn(per_token, mask, mode="sequence_mean"), 3.0)
  with pytest.raises(ValueError):
    losses.aggregate_loss(per_token, mask, "sum")


def test_explained_variance():
  fn = jax.jit(losses.explained_variance)
  returns = jnp.array([[1.0, 2.0, 3.0, 4.0, 50.0]])
  mask = jnp.array([[1, 1, 1, 1, 0]])
  # Residual [0, 0, 0, 1]: var = .25 - .0625 = .1875; Var[R] = 1.25.
  # 1 - .1875 / 1.25 = .85.
  values = jnp.array([[1.0, 2.0, 3.0, 3.0, -7.0]])
  _close(fn(values, returns, mask), 0.85)
  _close(fn(returns, returns, mask), 1.0)
  _close(fn(jnp.zeros_like(returns), returns, mask), 0.0)
  _close(fn(values, jnp.ones_like(returns), mask), 0.0)  # constant returns
