"""The faithful Adv-RM method: reward units, the floor/penalty reward, KL per token, dose and control.

Every expected number below is worked out by hand in the test (or its comment), not read from the code.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from advrm_jax.adversarial.objective import (
  adversary_reward,
  member_standardization,
  per_prompt_threshold,
  standardize_members,
)
from advrm_jax.pipelines.advtrain import dosed_training_pairs
from advrm_jax.rl.losses import kl_for_reward

# Two members, reference samples of two prompts x two samples.
#   member 0: 1, 3, 5, 7 -> mean 4, population std sqrt(((9+1+1+9)/4)) = sqrt(5)
#   member 1: 10, 10, 12, 12 -> mean 11, std 1
REFERENCE = np.array([[[1.0, 3.0], [5.0, 7.0]], [[10.0, 10.0], [12.0, 12.0]]])


def test_member_standardization_by_hand():
  loc, scale = member_standardization(REFERENCE)
  np.testing.assert_allclose(loc, [4.0, 11.0], rtol=1e-6)
  np.testing.assert_allclose(scale, [np.sqrt(5.0), 1.0], rtol=1e-6)
  z = standardize_members(np.array([[4.0 + np.sqrt(5.0), 4.0], [9.0, 11.0]]), loc, scale)
  np.testing.assert_allclose(z, [[1.0, 0.0], [-2.0, 0.0]], rtol=1e-6, atol=1e-6)


def test_member_standardization_floors_a_constant_member():
  _, scale = member_standardization(np.array([[2.0, 2.0, 2.0], [0.0, 1.0, 2.0]]), min_std=1e-3)
  np.testing.assert_allclose(scale, [1e-3, np.sqrt(2.0 / 3.0)], rtol=1e-6)


def test_floor_and_penalty_reward_in_z_units_by_hand():
  # Raw scores of three answers, in z units with the reference above:
  #   answer a: m0 = 4 + 2*sqrt5 -> z1 = 2;   m1 = 10 -> z2 = -1  => above tau=-1: 2 - 1*(-1) = 3
  #   answer b: m0 = 4 - 0.5*sqrt5 -> z1 = -0.5; m1 = 13 -> z2 = 2 => above: -0.5 - 2 = -2.5
  #   answer c: m0 = 4 - 2*sqrt5 -> z1 = -2;  m1 = 11 -> z2 = 0  => below the floor: -2 + (-5) = -7
  raw = np.array([[4 + 2 * np.sqrt(5), 4 - 0.5 * np.sqrt(5), 4 - 2 * np.sqrt(5)], [10.0, 13.0, 11.0]])
  loc, scale = member_standardization(REFERENCE)
  z = standardize_members(raw, loc, scale)
  floor = per_prompt_threshold(np.zeros((3, 4)), kind="constant", constant=-1.0)
  np.testing.assert_array_equal(floor, [-1.0, -1.0, -1.0])
  reward, metrics = adversary_reward(z, floor, lam=1.0, penalty=-5.0, target=0)
  np.testing.assert_allclose(reward, [3.0, -2.5, -7.0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["above_threshold"], 2 / 3, rtol=1e-6)
  # z1 - z2 over the batch: (3 - 2.5 - 2) / 3.
  np.testing.assert_allclose(metrics["disagreement_mean"], -0.5, rtol=1e-5)


def test_kl_for_reward_sum_and_per_token_mean():
  token_kl = jnp.array([[0.2, 0.4, 0.6, 9.0], [1.0, 3.0, 5.0, 7.0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
  # sum: masked KL, rows sum to 1.2 and 16; mean: rows sum to 1.2 / 3 = 0.4 and 16 / 4 = 4.
  np.testing.assert_allclose(kl_for_reward(token_kl, mask, "sum").sum(axis=1), [1.2, 16.0], rtol=1e-6)
  np.testing.assert_allclose(kl_for_reward(token_kl, mask, "mean").sum(axis=1), [0.4, 4.0], rtol=1e-6)
  np.testing.assert_allclose(kl_for_reward(token_kl, mask, "mean")[0], [0.2 / 3, 0.4 / 3, 0.2, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="aggregate"):
    kl_for_reward(token_kl, mask, "max")


def test_dose_adds_exactly_num_pairs_and_every_ordinary_pair_once():
  ordinary = [{"prompt": f"p{i}", "chosen": "c", "rejected": f"r{i}"} for i in range(50)]
  kept = [{"prompt": f"q{i}", "chosen": "c", "rejected": f"a{i}", "r1": 1.0} for i in range(7)]
  mixed = dosed_training_pairs(ordinary, kept, 30, seed=3)
  assert len(mixed) == 80
  adversarial = [r for r in mixed if "r1" in r]
  assert len(adversarial) == 30
  # Each of the 7 kept pairs is used 4 or 5 times (30 = 4 * 7 + 2): balanced resampling.
  counts = sorted(sum(r is k for r in adversarial) for k in kept)
  assert counts == [4, 4, 4, 4, 4, 5, 5]
  assert sorted(r["prompt"] for r in mixed if "r1" not in r) == sorted(r["prompt"] for r in ordinary)
  with pytest.raises(ValueError, match="num_pairs"):
    dosed_training_pairs(ordinary, [], 30, seed=3)


def test_calibration_rule_most_passing_seeds_then_rise_then_smaller_exposure():
  from launch.calibrate import choose  # pylint: disable=import-outside-toplevel

  def result(exposure, lr, seed, rise, passes):
    return {
      "exposure": exposure,
      "lr": lr,
      "kl_coef": 0.1,
      "seed": seed,
      "rise": rise,
      "passes": passes,
      "final_gold": 2.0,
    }

  results = (
    # (0.0, 1e-3): 2 of 3 pass, mean rise 0.5.
    [result(0.0, 1e-3, s, r, p) for s, r, p in ((0, 0.6, True), (1, 0.5, True), (2, 0.4, False))]
    # (0.0, 5e-4): 2 of 3 pass, mean rise 0.6: wins the tie on the rise.
    + [result(0.0, 5e-4, s, r, p) for s, r, p in ((0, 0.7, True), (1, 0.6, True), (2, 0.5, False))]
    # (0.05, 5e-4): the same rises and passes as the winner: loses the tie on the exposure.
    + [result(0.05, 5e-4, s, r, p) for s, r, p in ((0, 0.7, True), (1, 0.6, True), (2, 0.5, False))]
    # (0.05, 1e-3): a larger rise but only 1 of 3 passes.
    + [result(0.05, 1e-3, s, r, p) for s, r, p in ((0, 2.0, True), (1, 2.0, False), (2, 2.0, False))]
  )
  choice = choose(results)
  assert (choice["chosen"]["exposure"], choice["chosen"]["lr"]) == (0.0, 5e-4)
  assert choice["chosen"]["passing_seeds"] == 2 and choice["chosen"]["num_seeds"] == 3
  np.testing.assert_allclose(choice["chosen"]["mean_rise"], 0.6)
  assert len(choice["table"]) == 4
