"""Hand-computed tests of the adversary's objective, filter and buffer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advrm_jax.adversarial import filtering
from advrm_jax.adversarial import objective

# K = 3 members, B = 3 responses. Member 0 is R1.
SCORES = np.array([[2.0, 0.5, 3.0], [1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], np.float32)
# R1 = [2, 0.5, 3]; R2 (mean of members 1, 2) = [0.5, 1.0, 0.0].
THRESHOLD = np.array([1.0, 1.0, 3.0], np.float32)


# ----------------------------------------------------------------------------
# Objective.
# ----------------------------------------------------------------------------


def test_split_target_aggregates():
  r1, r2 = objective.split_target(SCORES)
  np.testing.assert_allclose(r1, [2.0, 0.5, 3.0])
  np.testing.assert_allclose(r2, [0.5, 1.0, 0.0])
  _, r2_min = objective.split_target(SCORES, r2_kind="min")
  np.testing.assert_allclose(r2_min, [0.0, 0.0, -1.0])
  _, r2_max = objective.split_target(SCORES, r2_kind="max")
  np.testing.assert_allclose(r2_max, [1.0, 2.0, 1.0])
  r1, r2 = objective.split_target(SCORES, target=1)
  np.testing.assert_allclose(r1, [1.0, 0.0, -1.0])
  np.testing.assert_allclose(r2, [1.0, 1.25, 2.0])


def test_adversary_reward_both_branches():
  reward, metrics = objective.adversary_reward(SCORES, THRESHOLD)
  # Row 0: R1 = 2 > 1, so R1 - R2 = 2 - 0.5.
  # Row 1: R1 = 0.5 <= 1, so R1 + penalty = 0.5 - 25 (the author's formula
  #   keeps R1 below the threshold; it is not the bare penalty).
  # Row 2: R1 = 3 == T = 3 is not above (strict), so 3 - 25.
  np.testing.assert_allclose(reward, [1.5, -24.5, -22.0])
  np.testing.assert_allclose(metrics["above_threshold"], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["r1_mean"], 5.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["r2_mean"], 0.5, rtol=1e-6)
  # R1 - R2 = [1.5, -0.5, 3].
  np.testing.assert_allclose(metrics["disagreement_mean"], 4 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["reward_mean"], (1.5 - 24.5 - 22) / 3, rtol=1e-6)


def test_adversary_reward_lambda_penalty_and_kinds():
  reward, _ = objective.adversary_reward(SCORES, THRESHOLD, lam=2.0, penalty=-10.0)
  np.testing.assert_allclose(reward, [2.0 - 2 * 0.5, 0.5 - 10, 3.0 - 10])
  reward, _ = objective.adversary_reward(SCORES, THRESHOLD, r2_kind="min")
  np.testing.assert_allclose(reward[0], 2.0 - 0.0)
  reward, _ = objective.adversary_reward(SCORES, THRESHOLD, r2_kind="max")
  np.testing.assert_allclose(reward[0], 2.0 - 1.0)
  # Target member 1: R1 = [1, 0, -1], R2 = [1, 1.25, 2]; scalar T = 0.
  reward, _ = objective.adversary_reward(SCORES, 0.0, target=1)
  np.testing.assert_allclose(reward, [0.0, 0.0 - 25, -1.0 - 25])


def test_adversary_reward_under_jit():
  fn = jax.jit(objective.adversary_reward, static_argnames=("target", "r2_kind"))
  reward, metrics = fn(SCORES, THRESHOLD, 1.0, -25.0, target=0, r2_kind="mean")
  np.testing.assert_allclose(reward, [1.5, -24.5, -22.0])
  assert metrics["above_threshold"].shape == ()


def test_adversary_reward_errors():
  with pytest.raises(ValueError, match="at least 2"):
    objective.adversary_reward(SCORES[:1], THRESHOLD)
  with pytest.raises(ValueError, match="out of range"):
    objective.adversary_reward(SCORES, THRESHOLD, target=3)
  with pytest.raises(ValueError, match="r2_kind"):
    objective.adversary_reward(SCORES, THRESHOLD, r2_kind="median")


def test_per_prompt_threshold():
  ref = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]])
  np.testing.assert_allclose(objective.per_prompt_threshold(ref), [3.0, 2.0])
  np.testing.assert_allclose(objective.per_prompt_threshold(ref, "max"), [6.0, 4.0])
  np.testing.assert_allclose(objective.per_prompt_threshold(ref, "quantile", q=0.5), [2.5, 2.0])
  # Linear interpolation at position 0.25 * 3 = 0.75 of the sorted row.
  np.testing.assert_allclose(objective.per_prompt_threshold(ref, "quantile", q=0.25), [1.75, 0.0])
  with pytest.raises(ValueError, match="threshold kind"):
    objective.per_prompt_threshold(ref, "median")
  with pytest.raises(ValueError, match=r"\[P, n\]"):
    objective.per_prompt_threshold(ref[0])


def test_broadcast_threshold_is_prompt_major():
  t = objective.broadcast_threshold(jnp.array([3.0, 2.0]), 2)
  np.testing.assert_allclose(t, [3.0, 3.0, 2.0, 2.0])
  jitted = jax.jit(objective.broadcast_threshold, static_argnums=1)
  np.testing.assert_allclose(jitted(jnp.array([1.0, 5.0, 7.0]), 3), [1, 1, 1, 5, 5, 5, 7, 7, 7])


# ----------------------------------------------------------------------------
# Uncertainty, z-scores, filter.
# ----------------------------------------------------------------------------


def test_uncertainty_kinds():
  np.testing.assert_allclose(filtering.uncertainty(SCORES), [1.5, -0.5, 3.0])
  # Column 0 = [2, 1, 0]: population std sqrt(2/3).
  std = filtering.uncertainty(SCORES, kind="std")
  np.testing.assert_allclose(std[0], np.sqrt(2 / 3), rtol=1e-6)
  with pytest.raises(ValueError, match="uncertainty kind"):
    filtering.uncertainty(SCORES, kind="var")


def test_standardize_batch_reference_and_stats():
  u = jnp.array([1.0, 2.0, 3.0, 4.0])
  # Mean 2.5, population std sqrt(1.25).
  s = np.sqrt(1.25)
  np.testing.assert_allclose(filtering.standardize(u), [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=1e-6)
  # Reference population [0, 2]: mean 1, std 1.
  np.testing.assert_allclose(filtering.standardize(u, reference=jnp.array([0.0, 2.0])), [0.0, 1.0, 2.0, 3.0])
  np.testing.assert_allclose(filtering.standardize(u, reference=(1.0, 0.5)), [0.0, 2.0, 4.0, 6.0])
  # The masked-out row does not enter the statistics (mean 2, std 1) but is
  # standardised too.
  np.testing.assert_allclose(
    filtering.standardize(jnp.array([1.0, 3.0, 100.0]), mask=jnp.array([True, True, False])), [-1.0, 1.0, 98.0]
  )
  # A constant population gives 0, not NaN.
  np.testing.assert_allclose(filtering.standardize(jnp.ones(3)), [0, 0, 0])


def test_filter_mask_is_strict_on_both_tests():
  keep = filtering.filter_mask(
    r1=jnp.array([2.0, 2.0, 0.5, 3.0]), threshold=jnp.array([1.0, 1.0, 1.0, 3.0]), z_u=jnp.array([2.0, 1.96, 5.0, 5.0])
  )
  np.testing.assert_array_equal(keep, [True, False, False, False])


def test_filter_pipeline_under_jit():
  @jax.jit
  def keep_fn(scores, threshold, reference_u):
    r1, _ = objective.split_target(scores)
    z = filtering.standardize(filtering.uncertainty(scores), reference=reference_u)
    return filtering.filter_mask(r1, threshold, z)

  # U = [1.5, -0.5, 3]; reference population [0, 1]: mean 0.5, std 0.5, so
  # z = [2, -2, 5]; R1 > T for rows 0 and 2 only if T = [1, 1, 1].
  keep = keep_fn(SCORES, jnp.array([1.0, 1.0, 1.0]), jnp.array([0.0, 1.0]))
  np.testing.assert_array_equal(keep, [True, False, True])


# ----------------------------------------------------------------------------
# Replay buffer.
# ----------------------------------------------------------------------------


def _items(batch: int, base: int) -> dict:
  """Rows whose tokens encode (base, row): prompt = base + row, etc."""
  rows = np.arange(batch)[:, None]
  return {
    "prompt_tokens": np.broadcast_to(base + rows, (batch, 2)).astype(np.int32),
    "prompt_mask": np.ones((batch, 2), bool),
    "adversarial_tokens": np.broadcast_to(base + 100 + rows, (batch, 3)).astype(np.int32),
    "adversarial_mask": np.tile([True, True, False], (batch, 1)),
    "reference_tokens": np.broadcast_to(base + 200 + rows, (batch, 3)).astype(np.int32),
    "reference_mask": np.ones((batch, 3), bool),
  }


def test_buffer_add_ring_wraparound_and_keep_mask():
  add = jax.jit(filtering.buffer_add)
  buf = filtering.init_buffer(capacity=4, prompt_len=2, response_len=3)
  assert buf.capacity == 4

  # Rows 0 and 2 kept -> slots 0 and 1.
  buf = add(buf, _items(3, base=10), jnp.array([True, False, True]))
  np.testing.assert_array_equal(buf.valid, [True, True, False, False])
  np.testing.assert_array_equal(buf.prompt_tokens[:, 0], [10, 12, 0, 0])
  np.testing.assert_array_equal(buf.inserted_at, [0, 1, -1, -1])
  assert int(buf.count) == 2
  assert int(filtering.buffer_size(buf)) == 2

  # Three more: slots 2, 3 and (wrapping) 0; slot 0's oldest item goes.
  buf = add(buf, _items(3, base=20), jnp.array([True, True, True]))
  np.testing.assert_array_equal(buf.valid, [True] * 4)
  np.testing.assert_array_equal(buf.prompt_tokens[:, 0], [22, 12, 20, 21])
  np.testing.assert_array_equal(buf.adversarial_tokens[:, 0], [122, 112, 120, 121])
  np.testing.assert_array_equal(buf.reference_tokens[:, 0], [222, 212, 220, 221])
  np.testing.assert_array_equal(buf.inserted_at, [4, 1, 2, 3])
  np.testing.assert_array_equal(buf.adversarial_mask[0], [True, True, False])
  assert int(buf.count) == 5

  # Nothing kept: nothing changes but the (same) counter.
  same = add(buf, _items(3, base=90), jnp.zeros(3, bool))
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(buf)):
    np.testing.assert_array_equal(a, b)

  # Six kept at once into 4 slots: only the last four (rows 2..5, ranks
  # 2..5) are written, to slots (5 + 2) % 4 = 3, 0, 1, 2; count += 6.
  buf = add(buf, _items(6, base=30), jnp.ones(6, bool))
  np.testing.assert_array_equal(buf.prompt_tokens[:, 0], [33, 34, 35, 32])
  np.testing.assert_array_equal(buf.inserted_at, [8, 9, 10, 7])
  assert int(buf.count) == 11


def test_buffer_add_checks_fields_and_shapes():
  buf = filtering.init_buffer(4, 2, 3)
  items = _items(2, 0)
  with pytest.raises(ValueError, match="lack fields"):
    filtering.buffer_add(buf, {"prompt_tokens": items["prompt_tokens"]}, jnp.ones(2, bool))
  items["adversarial_tokens"] = np.zeros((2, 5), np.int32)
  with pytest.raises(ValueError, match="adversarial_tokens"):
    filtering.buffer_add(buf, items, jnp.ones(2, bool))


def test_buffer_sample_only_valid_rows():
  buf = filtering.init_buffer(capacity=8, prompt_len=2, response_len=3)
  buf = filtering.buffer_add(buf, _items(3, base=10), jnp.array([True, False, True]))
  sample = jax.jit(filtering.buffer_sample, static_argnames=("n", "replace"))

  items, valid = sample(buf, jax.random.key(0), n=64)
  assert items["prompt_tokens"].shape == (64, 2)
  assert bool(jnp.all(valid))
  drawn = set(np.asarray(items["prompt_tokens"][:, 0]).tolist())
  assert drawn == {10, 12}  # Both valid rows, nothing else (64 draws).
  # Rows stay whole: the adversarial side belongs to the same item.
  np.testing.assert_array_equal(items["adversarial_tokens"][:, 0], items["prompt_tokens"][:, 0] + 100)

  # Without replacement: 2 valid rows for 3 draws -> one flagged invalid.
  items, valid = sample(buf, jax.random.key(1), n=3, replace=False)
  assert int(jnp.sum(valid)) == 2
  kept = np.asarray(items["prompt_tokens"][:, 0])[np.asarray(valid)]
  assert sorted(kept.tolist()) == [10, 12]

  # An empty buffer flags everything invalid.
  empty = filtering.init_buffer(4, 2, 3)
  _, valid = sample(empty, jax.random.key(2), n=5)
  assert not bool(jnp.any(valid))


# ----------------------------------------------------------------------------
# Host-side pairs.
# ----------------------------------------------------------------------------


def test_build_adversarial_pairs(caplog):
  records = filtering.build_adversarial_pairs(
    prompts=["p1", "p2", "p3", "p4"],
    adversarial_responses=["bad", "same", "", "worse"],
    reference_responses=["good", "same", "fine", "ok"],
    extra={"r1": np.array([1.5, 2.0, 3.0, 4.0], np.float32)},
  )
  assert records == [
    {"prompt": "p1", "chosen": "good", "rejected": "bad", "r1": 1.5},
    {"prompt": "p4", "chosen": "ok", "rejected": "worse", "r1": 4.0},
  ]
  assert isinstance(records[0]["r1"], float)
  assert "dropped 1 of 4 pairs with identical" in caplog.text
  with pytest.raises(ValueError, match="lengths must match"):
    filtering.build_adversarial_pairs(["p"], ["a", "b"], ["c"])


def test_mix_pairs_ratio_and_upsampling():
  ordinary = [{"id": f"o{i}"} for i in range(6)]
  adversarial = [{"id": f"a{i}"} for i in range(2)]

  mixed = filtering.mix_pairs(ordinary, adversarial, 0.25, seed=0)
  # All 6 ordinary + round(0.25 / 0.75 * 6) = 2 adversarial.
  ids = sorted(r["id"] for r in mixed)
  assert ids == sorted([f"o{i}" for i in range(6)] + ["a0", "a1"])

  mixed = filtering.mix_pairs(ordinary, adversarial, 0.5, seed=0, total=10)
  ids = [r["id"] for r in mixed]
  assert sum(i.startswith("a") for i in ids) == 5
  # Upsampled evenly: each adversarial pair used 2 or 3 times.
  assert sorted([ids.count("a0"), ids.count("a1")]) == [2, 3]
  assert filtering.mix_pairs(ordinary, adversarial, 0.5, seed=0, total=10) == mixed  # Deterministic.
  assert filtering.mix_pairs(ordinary, adversarial, 0.0, seed=1) != []
  assert all(r["id"].startswith("o") for r in filtering.mix_pairs(ordinary, adversarial, 0.0, seed=1))
  assert sorted(r["id"] for r in filtering.mix_pairs(ordinary, adversarial, 1.0, seed=1)) == ["a0", "a1"]
  with pytest.raises(ValueError, match="adversarial_fraction"):
    filtering.mix_pairs(ordinary, adversarial, 1.5, seed=0)
  with pytest.raises(ValueError, match="empty"):
    filtering.mix_pairs(ordinary, [], 0.5, seed=0)
