"""Correctness probes: class weights, BCE, ROC-AUC / ECE / Brier and early exit by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advrm_jax.adversarial import filtering
from advrm_jax.evaluation import probes as pr


def test_class_weights_balance_the_classes_by_hand():
  w = pr.class_weights(jnp.array([1, 0, 0, 0]))
  # n = 4, n_pos = 1, n_neg = 3: w_pos = 4 / 2, w_neg = 4 / 6; the weights sum to n.
  np.testing.assert_allclose(w, [2.0, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(w), 4.0, rtol=1e-6)
  # Masked rows get 0 and leave the counts; multiplicities count as repeated rows.
  np.testing.assert_allclose(
    pr.class_weights(jnp.array([1, 0, 0, 0]), jnp.array([1, 1, 0, 1])), [1.5, 0.75, 0.0, 0.75], rtol=1e-6
  )
  np.testing.assert_allclose(pr.class_weights(jnp.array([1, 0]), jnp.array([3, 1])), [3 * 4 / 6, 1 * 4 / 2], rtol=1e-6)


def test_weighted_bce_by_hand():
  logits = jnp.array([0.0, math.log(3.0), 0.0, 0.0])
  labels = jnp.array([1, 0, 0, 0])
  # BCE: ln 2, ln 4 (softplus(ln 3)), ln 2, ln 2; weights 2, 2/3, 2/3, 2/3 (sum 4):
  # (2 ln2 + 2/3 * 2 ln2 + 4/3 ln2) / 4 = 7/6 ln 2.
  loss = pr.weighted_bce(logits, labels, pr.class_weights(labels))
  np.testing.assert_allclose(loss, 7 / 6 * math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(
    pr.weighted_bce(jnp.array([100.0, -100.0]), jnp.array([1, 0]), jnp.ones(2)), 0.0, atol=1e-6
  )


def test_roc_auc_ece_brier_by_hand():
  # The classic example: 3 of the 4 positive-negative pairs are ordered right.
  assert pr.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  assert pr.roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts 1/2
  assert pr.roc_auc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
  assert math.isnan(pr.roc_auc([0.1, 0.2], [1, 1]))
  probs, labels = [0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1]
  # Two bins: {0.1, 0.2} confidence 0.15 vs accuracy 0.5; {0.8, 0.9} 0.85 vs 1.0.
  assert pr.expected_calibration_error(probs, labels, num_bins=2) == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)
  assert pr.expected_calibration_error([1.0, 0.0], [1, 0], num_bins=10) == pytest.approx(0.0)  # 1.0 in last bin
  assert pr.brier_score(probs, labels) == pytest.approx((0.01 + 0.64 + 0.04 + 0.01) / 4)
  m = pr.classification_metrics(probs, labels, num_bins=2)
  assert m["n"] == 4 and m["positive_rate"] == 0.75 and m["accuracy@0.5"] == 0.75


def test_early_exit_with_a_hand_made_probe():
  # Two responses of 10 tokens; candidate answers at columns 3 and 7 (row 0), 4 (row 1).
  candidate = np.zeros((2, 10), bool)
  candidate[0, [3, 7]] = True
  candidate[1, 4] = True
  value = np.full((2, 10), -1)
  value[0, [3, 7]] = [8, 9]
  value[1, 4] = 5
  confidence = np.zeros((2, 10))
  confidence[0, [3, 7]] = [0.6, 0.95]
  confidence[1, 4] = 0.97
  confidence[1, 2] = 0.99  # high, but not a candidate column: ignored
  final, length = np.array([9, 6]), np.array([10, 9])

  out = jax.device_get(pr.early_exit(confidence, candidate, value, final, length, 0.5))
  np.testing.assert_array_equal(out["answer"], [8, 5])
  np.testing.assert_array_equal(out["tokens"], [4, 5])
  out = jax.device_get(pr.early_exit(confidence, candidate, value, final, length, 0.96))
  np.testing.assert_array_equal(out["answer"], [9, 5])  # row 0 never confident: full response
  np.testing.assert_array_equal(out["tokens"], [10, 5])
  np.testing.assert_array_equal(out["exited"], [False, True])
  out = jax.device_get(pr.early_exit(confidence, candidate, value, final, length, 2.0))
  np.testing.assert_array_equal(out["answer"], final)
  np.testing.assert_array_equal(out["tokens"], length)


def test_probe_learns_a_separable_rule_and_feeds_the_filter():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 8)).astype(np.float32) * 3.0 + 1.0
  y = (x[:, 0] - x[:, 3] > 2.0).astype(np.float32)  # imbalanced: ~30% positive
  for hidden in (0, 16):
    params, losses = pr.train_probe(
      jax.random.key(0), x[:300], y[:300], hidden=hidden, num_steps=150, learning_rate=5e-2
    )
    assert float(losses[-1]) < 0.5 * float(losses[0])
    probs = np.asarray(jax.nn.sigmoid(pr.probe_logits(params, x[300:])))
    assert pr.roc_auc(probs, y[300:]) > 0.97, hidden


def test_probe_uncertainty_feeds_the_adv_rm_filter_by_hand():
  u = pr.probe_uncertainty(jnp.array([0.9] * 9 + [0.1]))
  np.testing.assert_allclose(u, [0.1] * 9 + [0.9], rtol=1e-6)
  # mean 0.18, population std 0.24: z = -1/3 (x9) and 3.
  z = filtering.standardize(u)
  np.testing.assert_allclose(z, [-1 / 3] * 9 + [3.0], rtol=1e-5)
  keep = filtering.filter_mask(jnp.ones(10), 0.0, z, z_min=1.96)
  np.testing.assert_array_equal(keep, [False] * 9 + [True])
