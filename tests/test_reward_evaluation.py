"""RM evaluation statistics against hand-computed values."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advrm_jax import sharding as shd
from advrm_jax.models.config import ModelConfig
from advrm_jax.reward import evaluation
from advrm_jax.reward.model import init_reward_model


def test_pairwise_accuracy_counts_ties_as_half():
  chosen = np.array([[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  rejected = np.array([[0.0, 2.0, 4.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
  # Member 0: right, tie, wrong, right -> (1 + 0.5 + 0 + 1) / 4 = 0.625; member 1: all wrong.
  np.testing.assert_allclose(evaluation.pairwise_accuracy(chosen, rejected), [0.625, 0.0])


def test_ece_by_hand():
  probs = np.array([0.15, 0.25, 0.95, 0.85])
  labels = np.array([0, 1, 1, 1])
  # One prediction per bin (1, 2, 9, 8): |0 - .15| + |1 - .25| + |1 - .95| + |1 - .85| = 1.1, / 4.
  assert evaluation.expected_calibration_error(probs, labels, 10) == pytest.approx(0.275)
  # Two in one bin: bin 7 holds 0.7 and 0.75 with labels 1, 0 -> |0.5 - 0.725| = 0.225.
  assert evaluation.expected_calibration_error([0.7, 0.75], [1, 0], 10) == pytest.approx(0.225)
  # p = 1.0 falls in the last bin, not out of range.
  assert evaluation.expected_calibration_error([1.0], [1], 10) == pytest.approx(0.0)


def test_preference_ece_counts_both_orders():
  # c - r = ln 3 -> sigmoid = 3/4. Orders: (0.75, label 1) in bin 7, (0.25, label 0) in bin 2:
  # each bin is off by 0.25, so ECE = 0.25.
  assert evaluation.preference_ece(np.array([math.log(3.0)]), np.array([0.0])) == pytest.approx(0.25)
  # Perfectly calibrated in expectation: p = 0.75 and 3 of 4 pairs ranked right.
  chosen = np.array([math.log(3.0)] * 3 + [0.0])
  rejected = np.array([0.0] * 3 + [math.log(3.0)])
  # Bin 7: three (0.75, 1) and one (0.75, 0) -> |0.75 - 0.75| = 0; bin 2 likewise.
  assert evaluation.preference_ece(chosen, rejected) == pytest.approx(0.0, abs=1e-12)


def test_zscores_row_layout_group_ids_and_reference():
  z = evaluation.zscores(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
  # Row 0: mean 2, population std sqrt(2/3) -> +-1/sqrt(2/3) = +-1.2247449; row 1: std 0 -> z = 0.
  np.testing.assert_allclose(z, [[-1.2247449, 0.0, 1.2247449], [0.0, 0.0, 0.0]], rtol=1e-6)
  # Flat layout with group ids gives the same numbers, also under jit.
  flat = jax.jit(functools.partial(evaluation.zscores, num_groups=2))(
    jnp.array([5.0, 1.0, 5.0, 2.0, 3.0, 5.0]), jnp.array([1, 0, 1, 0, 0, 1])
  )
  np.testing.assert_allclose(flat, [0.0, -1.2247449, 0.0, 0.0, 1.2247449, 0.0], rtol=1e-6, atol=1e-6)
  # Reference statistics: samples 0, 1 (values 1, 3: mean 2, std 1) standardise all three.
  ref = evaluation.zscores(np.array([[1.0, 3.0, 100.0]]), reference_mask=np.array([[1, 1, 0]]))
  np.testing.assert_allclose(ref, [[-1.0, 1.0, 98.0]], rtol=1e-6)
  # ddof=1: values 1, 2, 3 -> sample std 1 -> z = -1, 0, 1.
  np.testing.assert_allclose(evaluation.zscores(np.array([[1.0, 2.0, 3.0]]), ddof=1), [[-1.0, 0.0, 1.0]], rtol=1e-6)


def test_evaluate_scores_by_hand():
  # K=2 members, N=3 pairs.
  chosen = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
  rejected = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
  summary = evaluation.evaluate_scores(chosen, rejected, std_coef=1.0)
  acc = summary["accuracy"]
  # Member 0: right, wrong, right = 2/3; member 1: wrong, right, right = 2/3.
  assert acc["member_0"] == pytest.approx(2 / 3) and acc["member_1"] == pytest.approx(2 / 3)
  # Mean: chosen (1, 1.5, 1) vs rejected (1, 1, 0): tie, right, right = 2.5/3.
  assert acc["mean"] == pytest.approx(2.5 / 3)
  # Min: chosen (0, 0, 1) vs rejected (1, 1, 0): wrong, wrong, right = 1/3.
  assert acc["min"] == pytest.approx(1 / 3)
  # mean - std: chosen std (1, 1.5, 0) -> (0, 0, 1); rejected std 0 -> (1, 1, 0): 1/3.
  assert acc["mean_minus_std"] == pytest.approx(1 / 3)
  assert summary["chosen_reward"]["member_mean"] == pytest.approx([1.0, 4 / 3])
  assert summary["reward_margin"] == pytest.approx((1 - 1 + 1 - 1 + 2 + 1) / 6)
  # Disagreement member 0 - member 1 over the 6 responses: 2, -3, 0, 0, 0, 0.
  assert summary["disagreement"]["mean"] == pytest.approx(-1 / 6)
  assert summary["ensemble_std"]["q50"] == pytest.approx(0.0)
  assert set(summary["ece"]) == {"member_0", "member_1", "mean"}
  metrics = evaluation.headline_metrics(summary)
  assert metrics["test/accuracy_mean"] == pytest.approx(2.5 / 3)


def test_score_rows_pads_the_last_chunk():
  cfg = ModelConfig(vocab_size=16, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=32)
  graphdef, params, _ = init_reward_model(cfg, 2, "shared")
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 16, (5, 6)).astype(np.int32)
  mask = np.ones((5, 6), np.int32)
  scorer = functools.partial(evaluation.make_scorer(graphdef, mesh), params)
  chunked = evaluation.score_rows(scorer, tokens, mask, batch_size=4, mesh=mesh)
  whole = np.asarray(scorer(tokens, mask))
  assert chunked.shape == (2, 5)
  np.testing.assert_allclose(chunked, whole, atol=1e-5)
