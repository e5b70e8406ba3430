"""One sharding story for every stage: RL states split like SFT's and RM's, and meshes agree numerically.

The RL steps are built exactly as the stages build them (``rl_driver.init_seed_states`` /
``jit_seeds_step``; reference and RM weights placed by their logical axes, as ``load_policy`` and
``load_reward_model`` place them on a mesh). On the 8 forced CPU devices:

* on a (2, 2, 2) mesh, each seed's policy, its optimizer moments, the value head and the reward ensemble
  are split over fsdp (their ``embed`` axis) and tensor; on (8, 1, 1) nothing asks for a split;
* (2, 2, 2) gives the numbers of (8, 1, 1) for an RL iteration (rlhf: PPO, two vmapped seeds, an RM
  ensemble mix), an attack step (RLOO against the adversary objective of an independent ensemble) and a
  Bradley-Terry step (the `rm` stage's), each compiled once per mesh.

The online stage's state is checked in tests/test_online.py (same helpers, same mesh).
"""

import jax
import numpy as np
import pytest
from flax import nnx

from advrm_jax import sharding as shd
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.pipelines import rl_driver
from advrm_jax.reward.losses import jit_bt_step
from advrm_jax.reward.model import init_reward_model
from advrm_jax.rl.engine import RLConfig, init_policy_params, make_iteration
from advrm_jax.rl.rewards import AdversarySource, EnsembleMixSource, aggregate_mix
from advrm_jax.rl.sampler import SamplingConfig
from advrm_jax.train_state import create_train_state, make_optimizer, split_module

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")

CFG = ModelConfig(vocab_size=16, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=64)
SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, eos_id=1, pad_id=0)
MESHES = ((8, 1, 1), (2, 2, 2))
STEPS = 2
# Parameters after two Adam steps and step metrics: float32 reduction order differs between the meshes.
ATOL = 1e-5


def _prompts(num=8, length=4):
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, CFG.vocab_size, (num, length)).astype(np.int32)
  mask = np.ones((num, length), np.int32)
  mask[::2, 0] = 0  # some left padding
  return {"tokens": tokens * mask, "mask": mask, "threshold": np.zeros(num, np.float32)}


def _pairs(num=8, length=8):
  rng = np.random.default_rng(1)
  mask = np.ones((num, length), bool)
  mask[::2, -2:] = False
  pair = lambda: (rng.integers(2, CFG.vocab_size, (num, length)) * mask).astype(np.int32)
  return {"chosen_tokens": pair(), "chosen_mask": mask, "rejected_tokens": pair(), "rejected_mask": mask}


def _split(array, axis, mesh_axis="fsdp"):
  """Whether ``array`` is cut in two along ``axis`` by ``mesh_axis`` (spec and per-device shard shape)."""
  spec = tuple(array.sharding.spec) + (None,) * array.ndim
  return mesh_axis in str(spec[axis]) and array.addressable_shards[0].data.shape[axis] == array.shape[axis] // 2


def _rl_run(mesh_shape, kind):
  """STEPS steps of the rlhf (``kind="rlhf"``) or attack RL step on ``mesh_shape``; (state, output, RM params)."""
  mesh = shd.make_mesh(mesh_shape)
  graphdef, params, axes = split_module(Transformer(CFG, rngs=nnx.Rngs(0)))
  ref_params = jax.device_put(params, shd.tree_shardings(axes, params, mesh))
  rm_kind = "shared" if kind == "rlhf" else "independent"
  rm_graphdef, rm_params, rm_axes = init_reward_model(CFG, 2, rm_kind, seed=3)
  rm_params = jax.device_put(rm_params, shd.tree_shardings(rm_axes, rm_params, mesh))
  if kind == "rlhf":
    config, num_seeds = RLConfig(algorithm="ppo", num_samples=2, num_minibatches=2), 2
    source, reward_params = EnsembleMixSource(rm_graphdef), {"rm": rm_params, "mix": aggregate_mix("mean", 2)}
  else:
    config, num_seeds = RLConfig(algorithm="rloo", num_samples=2), 1
    source, reward_params = AdversarySource(rm_graphdef, lam=1.0, penalty=-2.0), rm_params
  optimizer = make_optimizer(learning_rate=1e-3, schedule="constant")
  rl_params = init_policy_params(ref_params, CFG.d_model)
  state, state_shardings = rl_driver.init_seed_states(
    rl_params, rl_driver.policy_state_shardings(CFG, rl_params, optimizer, mesh), optimizer, config, num_seeds
  )
  reward_params, reward_shardings = shd.place(reward_params, mesh)
  step = rl_driver.jit_seeds_step(
    make_iteration(graphdef, optimizer, config, SAMPLING, source),
    num_seeds,
    state_shardings,
    shd.shardings_on(ref_params, mesh),
    reward_shardings,
    mesh,
  )
  for i in range(STEPS):
    state, out = step(state, ref_params, reward_params, shd.shard_batch(_prompts(), mesh), jax.random.key(i))
  assert step._cache_size() == 1  # pylint: disable=protected-access  # compiled once for every step
  return state, jax.device_get(out), reward_params


def _bt_run(mesh_shape):
  mesh = shd.make_mesh(mesh_shape)
  graphdef, params, axes = init_reward_model(CFG, 2, "shared", seed=5)
  optimizer = make_optimizer(learning_rate=1e-2, schedule="constant")
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  # With centering the head bias has a gradient; without, BT's is exactly 0 up to float noise, which Adam's
  # normalised update turns into +-lr steps of a sign that depends on the reduction order.
  step = jit_bt_step(graphdef, optimizer, shardings, mesh, centering_coef=0.01)
  for i in range(STEPS):
    state, metrics = step(state, shd.shard_batch(_pairs(), mesh), jax.random.key(i))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  return state, jax.device_get(metrics)


def _max_abs_diff(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _assert_same_numbers(name, one, two):
  (state_a, metrics_a), (state_b, metrics_b) = one, two
  param_diff = _max_abs_diff(state_a.params, state_b.params)
  metric_diff = _max_abs_diff(metrics_a, metrics_b)
  print(f"{name}: (8,1,1) vs (2,2,2) max abs difference: params {param_diff:.2e}, metrics {metric_diff:.2e}")
  assert param_diff < ATOL and metric_diff < ATOL, (name, param_diff, metric_diff)


@pytest.mark.parametrize("kind", ["rlhf", "attack"])
def test_rl_step_is_split_over_fsdp_and_matches_across_meshes(kind):
  (state_a, out_a, _), (state_b, out_b, rm_b) = (_rl_run(shape, kind) for shape in MESHES)

  # (2, 2, 2): every seed's policy is cut over fsdp (embed) and tensor (heads); the seed axis is whole.
  q = state_b.params["policy"]["layers"]["q_kernel"]  # [S, L, D, H, Dh]
  assert q.shape[0] == (2 if kind == "rlhf" else 1)
  assert tuple(q.sharding.spec)[:4] == (None, None, "fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (q.shape[0], 1, CFG.d_model // 2, 1, CFG.head_dim)
  assert _split(state_b.params["policy"]["embed"], 2)  # [S, V, D]
  assert _split(state_b.params["value_head"]["kernel"], 1)  # [S, D]
  assert state_b.opt_state[1][0].mu["policy"]["layers"]["q_kernel"].sharding == q.sharding
  # The reward ensemble the step read is split too (shared backbone [L, D, ...], stacked [K, L, D, ...]).
  rm_q = (rm_b["rm"] if kind == "rlhf" else rm_b)["backbone"]["layers"]["q_kernel"]
  assert _split(rm_q, 1 if kind == "rlhf" else 2)
  # (8, 1, 1) asks for no parameter split.
  assert state_a.params["policy"]["layers"]["q_kernel"].sharding.is_fully_replicated

  np.testing.assert_array_equal(out_a.samples["response_tokens"], out_b.samples["response_tokens"])  # same samples
  _assert_same_numbers(kind, (state_a, out_a.metrics), (state_b, out_b.metrics))


def test_bt_step_matches_across_meshes():
  one, two = (_bt_run(shape) for shape in MESHES)
  assert _split(two[0].params["backbone"]["layers"]["q_kernel"], 1)
  _assert_same_numbers("bt", one, two)
