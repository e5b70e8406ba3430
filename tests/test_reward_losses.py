"""Bradley-Terry loss and train step: hand-computed values, per-member data, training.

sigma(x) = 1 / (1 + exp(-x)); d/dx[-log sigma(x)] = -(1 - sigma(x)).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advrm_jax import sharding as shd
from advrm_jax.models.config import ModelConfig
from advrm_jax.reward.data import MemberBatches
from advrm_jax.reward.losses import bradley_terry_loss, jit_bt_step, pair_scores
from advrm_jax.reward.model import init_reward_model
from advrm_jax.train_state import create_train_state, make_optimizer
from flax import nnx

CFG = ModelConfig(
  arch="llama",
  vocab_size=24,
  d_model=32,
  num_layers=1,
  num_heads=2,
  num_kv_heads=2,
  head_dim=16,
  d_ff=64,
  max_seq_len=16,
)
SIGMOID_1 = 1.0 / (1.0 + math.exp(-1.0))  # 0.7310586


def test_loss_and_gradient_for_one_pair_by_hand():
  chosen, rejected = jnp.array([[2.0]]), jnp.array([[0.5]])
  margin, coef = 0.5, 0.1

  def loss(c, r):
    return bradley_terry_loss(c, r, margin=margin, centering_coef=coef)[0]

  value, (grad_c, grad_r) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(chosen, rejected)
  # x = c - r - margin = 2 - 0.5 - 0.5 = 1.
  # BT: -log sigma(1) = log(1 + e^-1) = 0.3132617; centering: 0.1 * (2 + 0.5)^2 = 0.625.
  np.testing.assert_allclose(value, math.log(1 + math.exp(-1)) + 0.625, rtol=1e-6)
  np.testing.assert_allclose(value, 0.9382617, rtol=1e-6)
  # dL/dc = -(1 - sigma(1)) + 2 * 0.1 * 2.5 = -0.2689414 + 0.5 = 0.2310586
  # dL/dr = +(1 - sigma(1)) + 2 * 0.1 * 2.5 = 0.2689414 + 0.5 = 0.7689414
  np.testing.assert_allclose(grad_c, [[-(1 - SIGMOID_1) + 0.5]], rtol=1e-6)
  np.testing.assert_allclose(grad_c, [[0.2310586]], rtol=1e-6)
  np.testing.assert_allclose(grad_r, [[0.7689414]], rtol=1e-6)


def test_head_gradient_through_the_model_matches_hand_formula():
  graphdef, params, _ = init_reward_model(CFG, 1, "shared", seed=0)
  batch = {
    "chosen_tokens": jnp.array([[1, 2, 3, 0]]),
    "chosen_mask": jnp.array([[1, 1, 1, 0]]),
    "rejected_tokens": jnp.array([[1, 2, 4, 5]]),
    "rejected_mask": jnp.array([[1, 1, 1, 1]]),
  }

  def loss(p):
    chosen, rejected = pair_scores(graphdef, p, batch)
    return bradley_terry_loss(chosen, rejected)[0]

  grads = jax.jit(jax.grad(loss))(params)
  last_hidden = jax.jit(lambda p, tokens, mask: nnx.merge(graphdef, p).last_hidden(tokens, mask))
  h_chosen = np.asarray(last_hidden(params, batch["chosen_tokens"], batch["chosen_mask"]))[0]
  h_rejected = np.asarray(last_hidden(params, batch["rejected_tokens"], batch["rejected_mask"]))[0]
  w, b = np.asarray(params["head_kernel"])[:, 0], float(params["head_bias"][0])
  chosen = float(h_chosen @ w + b)
  rejected = float(h_rejected @ w + b)
  # L = -log sigma(c - r): dL/dc = -(1 - sigma(c - r)) = -dL/dr, and
  # c = h_c . w + b, so dL/dw = -(1 - sigma) (h_c - h_r), dL/db = 0.
  slope = -(1 - 1 / (1 + math.exp(-(chosen - rejected))))
  np.testing.assert_allclose(
    np.asarray(grads["head_kernel"])[:, 0], slope * (h_chosen - h_rejected), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(grads["head_bias"], [0.0], atol=1e-6)


def test_member_weights_by_hand():
  # K=2 members, B=2 pairs; member 1 gives pair 0 weight 0, pair 1 weight 2.
  chosen = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  rejected = jnp.array([[0.0, 0.0], [0.0, 1.0]])
  weights = jnp.array([[1.0, 1.0], [0.0, 2.0]])
  loss, metrics = jax.jit(bradley_terry_loss)(chosen, rejected, weights)
  # Member 0: (-log sigma(1) - log sigma(0)) / 2 = (0.3132617 + 0.6931472) / 2 = 0.5032044
  # Member 1: only pair 1: -log sigma(-1) = log(1 + e) = 1.3132617
  np.testing.assert_allclose(loss, (0.5032044 + 1.3132617) / 2, rtol=1e-6)
  # Accuracy: member 0 gets pair 0 right, pair 1 is a tie (not right): 0.5; member 1: 0.
  np.testing.assert_allclose(metrics["accuracy_member_0"], 0.5)
  np.testing.assert_allclose(metrics["accuracy_member_1"], 0.0)
  np.testing.assert_allclose(metrics["accuracy"], 0.25)
  # Margins: member 0 mean(1, 0) = 0.5; member 1: pair 1 only: -1.
  np.testing.assert_allclose(metrics["reward_margin"], (0.5 - 1.0) / 2)
  # A member whose weights are all zero contributes 0, not NaN.
  loss, _ = bradley_terry_loss(chosen, rejected, jnp.array([[1.0, 1.0], [0.0, 0.0]]))
  np.testing.assert_allclose(loss, 0.5032044 / 2, rtol=1e-6)


def _toy_pairs(num, seed=0):
  """Chosen rows end with token 3, rejected rows with token 4: learnable in a few steps."""
  rng = np.random.default_rng(seed)

  def rows(last):
    tokens = rng.integers(5, CFG.vocab_size, (num, 8)).astype(np.int32)
    lengths = rng.integers(3, 9, num)
    mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
    tokens[np.arange(num), lengths - 1] = last
    return tokens * mask, mask

  chosen_tokens, chosen_mask = rows(3)
  rejected_tokens, rejected_mask = rows(4)
  return {
    "chosen_tokens": chosen_tokens,
    "chosen_mask": chosen_mask,
    "rejected_tokens": rejected_tokens,
    "rejected_mask": rejected_mask,
  }


@pytest.mark.parametrize("kind,mode", [("shared", "bootstrap"), ("independent", "shuffle")])
def test_training_learns_and_members_differ(kind, mode):
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  num_members = 2
  graphdef, params, axes = init_reward_model(CFG, num_members, kind, seed=0)
  optimizer = make_optimizer(learning_rate=3e-3, schedule="constant")
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  step = jit_bt_step(graphdef, optimizer, shardings, mesh, centering_coef=0.01)
  data = _toy_pairs(64)
  batches = MemberBatches(64, 16, num_members, mode=mode, per_member_rows=kind == "independent", seed=0)
  first = None
  for i in range(30):
    batch = batches.batch(data, i)
    if kind == "independent":
      assert batch["chosen_tokens"].shape == (16, num_members, 8)
    else:
      assert batch["member_weights"].shape == (16, num_members)
    state, metrics = step(state, shd.shard_batch(batch, mesh), jax.random.key(i))
    first = first if first is not None else float(metrics["loss"])
  assert int(state.step) == 30
  assert float(metrics["loss"]) < 0.5 * first
  assert float(metrics["accuracy"]) > 0.9
  for key in (
    "bt_loss",
    "centering_loss",
    "reward_margin",
    "chosen_reward",
    "rejected_reward",
    "grad_norm",
    "ensemble_std",
    "accuracy_member_0",
    "accuracy_member_1",
  ):
    assert np.isfinite(float(metrics[key])), key
  # Members differ after training: different heads (and, independent, backbones).
  kernel = np.asarray(state.params["head_kernel"])
  assert np.abs(kernel[:, 0] - kernel[:, 1]).max() > 1e-3
  if kind == "independent":
    q = np.asarray(state.params["backbone"]["layers"]["q_kernel"])
    assert np.abs(q[0] - q[1]).max() > 1e-3
    # K members, K different rewards for the same answers, from one program compiled once for all 30 steps.
    from advrm_jax.reward.model import reward_scores  # pylint: disable=import-outside-toplevel

    scores = np.asarray(reward_scores(graphdef, state.params, data["chosen_tokens"], data["chosen_mask"]))
    assert scores.shape == (num_members, 64) and np.abs(scores[0] - scores[1]).max() > 1e-3
    assert step._cache_size() == 1  # pylint: disable=protected-access


def test_member_batches_are_a_function_of_the_step():
  shared = MemberBatches(10, 4, 3, mode="bootstrap", seed=1)
  rows, weights = shared.indices(5)
  rows_again, weights_again = MemberBatches(10, 4, 3, mode="bootstrap", seed=1).indices(5)
  np.testing.assert_array_equal(rows, rows_again)
  np.testing.assert_array_equal(weights, weights_again)
  assert weights.shape == (4, 3) and (weights >= 0).all()
  # Bootstrap weights are the counts of each row in the member's resample.
  counts = np.bincount(shared._resamples[2], minlength=10)
  np.testing.assert_array_equal(weights[:, 2], counts[rows])
  own = MemberBatches(10, 4, 3, mode="shuffle", per_member_rows=True, seed=1)
  rows, weights = own.indices(0)
  assert rows.shape == (4, 3) and weights is None
  assert len({tuple(rows[:, k]) for k in range(3)}) == 3  # each member its own order
  # Over one epoch (2 full batches of 4 from 10), each member sees 8 distinct rows.
  seen = np.concatenate([own.indices(0)[0], own.indices(1)[0]])
  assert all(len(set(seen[:, k])) == 8 for k in range(3))
  with pytest.raises(ValueError, match="rm.member_data='shuffle'"):
    MemberBatches(10, 4, 3, mode="shuffle")
  with pytest.raises(ValueError, match="rm.batch_size=12"):
    MemberBatches(10, 12, 3)


@pytest.mark.slow  # ~35 s: compiles the independent step for 1 device and for a (2, 2, 2) mesh.
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")
def test_independent_step_on_a_mesh_matches_one_device():
  data = _toy_pairs(16)
  batches = MemberBatches(16, 8, 2, mode="bootstrap", per_member_rows=True, seed=0)
  graphdef, params, axes = init_reward_model(CFG, 2, "independent", seed=0)
  results = []
  for mesh in (shd.make_mesh((1, 1, 1), jax.devices()[:1]), shd.make_mesh((2, 2, 2))):
    optimizer = make_optimizer(learning_rate=1e-2, schedule="constant")
    state, shardings = create_train_state(params, axes, optimizer, mesh)
    # With centering the head bias has a real gradient; without it the
    # bias gradient is exactly 0 up to rounding, which Adam amplifies into
    # device-layout-dependent noise.
    step = jit_bt_step(graphdef, optimizer, shardings, mesh, centering_coef=0.01)
    losses = []
    for i in range(2):
      state, metrics = step(state, shd.shard_batch(batches.batch(data, i), mesh), jax.random.key(0))
      losses.append(float(metrics["loss"]))
    results.append((losses, jax.device_get(state.params)))
  np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), results[1][1], results[0][1])
