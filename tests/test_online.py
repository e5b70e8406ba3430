"""Online Adv-RM: the composed adversary + ensemble iteration, and the `online` stage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from advrm_jax import sharding as shd
from advrm_jax.adversarial import online
from advrm_jax.pipelines import online as online_stage
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.reward.model import init_reward_model
from advrm_jax.rl.engine import RLConfig
from advrm_jax.rl.sampler import SamplingConfig
from advrm_jax.train_state import make_optimizer, split_module

CFG = ModelConfig(vocab_size=16, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=64)
SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, eos_id=1, pad_id=0)
NUM_PROMPTS, PROMPT_LEN, NUM_REF, PAIRS, PAIR_LEN = 4, 4, 3, 4, 9


def _batch(step):
  rng = np.random.default_rng(step)
  tokens = rng.integers(2, CFG.vocab_size, (NUM_PROMPTS, PROMPT_LEN)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[::2, 0] = 0
  ref = rng.integers(2, CFG.vocab_size, (NUM_PROMPTS, NUM_REF, SAMPLING.max_new_tokens)).astype(np.int32)
  ref_mask = np.ones_like(ref)
  ref_mask[:, :, -2:] = 0
  pair = lambda: rng.integers(2, CFG.vocab_size, (PAIRS, PAIR_LEN)).astype(np.int32)
  pair_mask = np.ones((PAIRS, PAIR_LEN), bool)
  pair_mask[:, -1] = False
  return {
    "prompt_tokens": tokens * mask,
    "prompt_mask": mask,
    "reference_tokens": ref * ref_mask,
    "reference_mask": ref_mask,
    "chosen_tokens": pair(),
    "chosen_mask": pair_mask,
    "rejected_tokens": pair(),
    "rejected_mask": pair_mask,
  }


def _setup(z_min):
  """The online state and step as the `online` stage builds them, on a (2, 2, 2) mesh of the 8 forced devices."""
  mesh = shd.make_mesh((2, 2, 2))
  rl_config = RLConfig(algorithm="rloo", num_samples=2, kl_coef=0.05)
  graphdef, policy_params, policy_axes = split_module(Transformer(CFG, rngs=nnx.Rngs(0)))
  rm_graphdef, rm_params, rm_axes = init_reward_model(CFG, 2, "independent", seed=3)
  # Placed as load_policy / load_reward_model place them on a mesh: split by their logical axes.
  policy_params = jax.device_put(policy_params, shd.tree_shardings(policy_axes, policy_params, mesh))
  rm_params = jax.device_put(rm_params, shd.tree_shardings(rm_axes, rm_params, mesh))
  policy_opt = make_optimizer(learning_rate=1e-2, schedule="constant", grad_clip=1.0)
  rm_opt = make_optimizer(learning_rate=1e-2, schedule="constant", grad_clip=1.0)
  state, shardings = online_stage.init_sharded_state(
    CFG, policy_params, rm_params, policy_opt, rm_opt, rl_config, 16, PROMPT_LEN, SAMPLING, mesh
  )
  # z_min far below any z: every sample above its threshold is kept, so the
  # buffer path is exercised deterministically on random models.
  config = online.OnlineConfig(z_min=z_min, rm_updates=2, adversarial_pairs=3)
  step = online.jit_online_iteration(
    online.make_online_iteration(graphdef, rm_graphdef, policy_opt, rm_opt, rl_config, SAMPLING, config),
    shardings,
    shd.shardings_on(policy_params, mesh),
    mesh,
  )
  return state, policy_params, rm_params, step


def _split_on_fsdp(array, axis):
  """``array`` is split in two along ``axis`` by the fsdp mesh axis."""
  spec = tuple(array.sharding.spec) + (None,) * array.ndim
  return "fsdp" in str(spec[axis]) and array.addressable_shards[0].data.shape[axis] == array.shape[axis] // 2


def test_online_iteration_compiles_once_and_updates_everything():
  state, ref_params, rm_params, step = _setup(z_min=-1e9)
  adversary_before = jax.tree.map(np.asarray, state.adversary.params["policy"])
  rm_before = jax.tree.map(np.asarray, rm_params)
  history = []
  for i in range(3):
    state, out = step(state, ref_params, jax.tree.map(jnp.asarray, _batch(i)), jax.random.key(i))
    history.append({k: float(v) for k, v in out.metrics.items()})
  assert step._cache_size() == 1  # one compilation across iterations
  # Adversary, its optimizer moments and the ensemble stay split over fsdp (embed axis) after the steps.
  adversary_q = state.adversary.params["policy"]["layers"]["q_kernel"]  # [L, D, H, Dh]
  assert _split_on_fsdp(adversary_q, 1) and "tensor" in str(adversary_q.sharding.spec)
  assert state.adversary.opt_state[1][0].mu["policy"]["layers"]["q_kernel"].sharding == adversary_q.sharding
  assert _split_on_fsdp(state.adversary.params["value_head"]["kernel"], 0)
  rm_q = state.rm.params["backbone"]["layers"]["q_kernel"]  # [K, L, D, H, Dh]
  assert _split_on_fsdp(rm_q, 2)
  assert state.rm.opt_state[1][0].mu["backbone"]["layers"]["q_kernel"].sharding == rm_q.sharding
  assert int(state.step) == 3 and int(state.rm.step) == 3 * 2
  kept = sum(h["filter/kept"] for h in history)
  assert kept > 0
  # Every kept sample went into the ring (capacity 16), and valid slots hold real responses.
  assert int(state.buffer.count) == kept
  assert int(np.sum(state.buffer.valid)) == min(kept, 16)
  valid = np.asarray(state.buffer.valid)
  assert np.all(np.asarray(state.buffer.adversarial_mask)[valid].any(axis=1))
  assert np.all(np.asarray(state.buffer.reference_mask)[valid].any(axis=1))
  # Once the buffer holds items, BT steps draw real adversarial pairs.
  assert history[-1]["rm/adversarial_valid"] == 1.0
  changed = lambda a, b: any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(adversary_before, state.adversary.params["policy"])
  assert changed(rm_before, state.rm.params)
  assert all(np.isfinite(h["loss"]) for h in history)


@pytest.mark.slow
def test_online_stage_end_to_end(tmp_path):
  """sft -> prefs -> rm -> online on a shrunk `:small` config; the RM loads and the summary is complete."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines import run_stages  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines.workdir import load_reward_model  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "synthetic.py"
  spec = importlib.util.spec_from_file_location("synthetic_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("small")
  # Shrink further: this test checks plumbing, not learning.
  config.sft.num_steps = config.rm.num_steps = 4
  config.prefs.num_prompts = 128
  config.attack.num_steps = config.online.num_steps = 2
  config.stages = ("sft", "prefs", "rm", "online")
  run_stages(config, tmp_path)
  summary = json.loads((tmp_path / "online" / "summary.json").read_text())
  for key in ("standard", "strict", "standard_mean", "strict_mean"):
    assert key in summary["attack"]
  assert 0.0 <= summary["attack"]["standard_mean"] <= 100.0
  assert set(summary["in_distribution_accuracy"]) == {"online", "conventional"}
  assert 0.0 <= summary["in_distribution_accuracy"]["online"]["mean"] <= 1.0
  assert summary["compute"]["online"]["adversary_samples"] == 2 * 8 * 4
  assert summary["compute"]["online"]["rm_steps"] == 2 * config.online.rm_updates
  _, params, meta = load_reward_model(tmp_path / "online" / "rm")
  assert meta["step"] == 2 * config.online.rm_updates and meta["num_members"] == config.rm.num_members
  assert (tmp_path / "online" / "DONE").exists()
