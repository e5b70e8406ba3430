r"""One process of the multi-host check: an RM Bradley-Terry step and an RL iteration on a global mesh.

Run it alone (one process, all its devices) or under ``launch.multihost``
(N processes joined with ``jax.distributed``); both build the same (2, 2, 2)
mesh over the *global* devices and run the same jitted steps, so the numbers
must agree up to float reduction order:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python launch/multihost_worker.py --out=/tmp/one
  python -m launch.multihost --num_processes=2 --devices_per_process=4 -- \
      python launch/multihost_worker.py --out=/tmp/two

Process 0 writes ``OUT/results.json`` (losses, metrics, per-leaf checksums of
the parameters after the steps) and ``OUT/params.npz`` (the parameters
themselves, gathered to every host).

Host data enters the mesh through ``jax.make_array_from_callback``, which
works whether or not every device is addressable from this process (a plain
``device_put`` of a host array does not, in general, span processes). Batches
enter as the stages' do: each process builds only its own rows
(``sharding.process_share``) and ``sharding.place_process_batch`` assembles the
global batch; the RM part checks that it equals the batch one process builds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

# Runnable as a script from anywhere: the repository root on the path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from launch import multihost  # pylint: disable=wrong-import-position

# Join the job before anything else touches the JAX backend.
PROCESS_ID, NUM_PROCESSES = multihost.initialize_from_env()

import jax  # pylint: disable=wrong-import-position,wrong-import-order
import jax.numpy as jnp  # pylint: disable=wrong-import-position,wrong-import-order
import numpy as np  # pylint: disable=wrong-import-position,wrong-import-order
from flax import nnx  # pylint: disable=wrong-import-position,wrong-import-order

from advrm_jax import sharding as shd  # pylint: disable=wrong-import-position
from advrm_jax.models.config import ModelConfig  # pylint: disable=wrong-import-position
from advrm_jax.models.transformer import Transformer  # pylint: disable=wrong-import-position
from advrm_jax.reward.data import MemberBatches  # pylint: disable=wrong-import-position
from advrm_jax.reward.losses import make_bt_step  # pylint: disable=wrong-import-position
from advrm_jax.reward.model import init_reward_model  # pylint: disable=wrong-import-position
from advrm_jax.rl.engine import (
  RLConfig,
  init_policy_params,
  init_rl_state,
  make_iteration,  # pylint: disable=wrong-import-position
  policy_param_axes,
)
from advrm_jax.rl.rewards import FunctionSource  # pylint: disable=wrong-import-position
from advrm_jax.rl.sampler import SamplingConfig  # pylint: disable=wrong-import-position
from advrm_jax.train_state import TrainState, make_optimizer, state_shardings  # pylint: disable=wrong-import-position

RM_CFG = ModelConfig(
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
RL_CFG = ModelConfig(vocab_size=16, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=64)
SAMPLING = SamplingConfig(max_new_tokens=8, temperature=1.0, eos_id=1, pad_id=0)
TARGET = 7


def to_global(tree, shardings):
  """Host arrays -> global arrays; every process passes the same full values."""

  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree, shardings)


def to_host(tree, mesh):
  """Global (possibly sharded) arrays -> numpy on every host, via a replicating jit."""
  gathered = jax.jit(lambda t: t, out_shardings=shd.replicated(mesh))(tree)
  return jax.tree.map(np.asarray, gathered)


def checksums(tree) -> dict[str, dict[str, float]]:
  """Per-leaf sum, sum of |x| and a sum weighted by fixed random numbers (catches permutations)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, x in leaves:
    x = np.asarray(x, np.float64)
    weights = np.random.default_rng(x.size).standard_normal(x.shape)
    out[jax.tree_util.keystr(path)] = {
      "sum": float(x.sum()),
      "abs_sum": float(np.abs(x).sum()),
      "weighted": float((x * weights).sum()),
    }
  return out


def toy_pairs(num: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Chosen rows end with token 3, rejected rows with token 4 (as in tests/test_reward_losses.py)."""
  rng = np.random.default_rng(seed)

  def rows(last):
    tokens = rng.integers(5, RM_CFG.vocab_size, (num, 8)).astype(np.int32)
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


def run_rm(mesh, steps: int = 2):
  """Shared-head ensemble of 2, bootstrap member weights, BT steps on a batch of 8 pairs."""
  graphdef, params, axes = init_reward_model(RM_CFG, 2, "shared", seed=0)
  params = jax.tree.map(np.asarray, params)
  optimizer = make_optimizer(learning_rate=1e-2, schedule="constant")
  shardings = state_shardings(optimizer, params, axes, mesh)
  init = jax.jit(
    lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)),
    in_shardings=(shardings.params,),
    out_shardings=shardings,
  )
  state = init(to_global(params, shardings.params))
  # Centering gives the head bias a real gradient (see test_reward_losses.py:
  # an exactly-zero gradient makes Adam amplify rounding noise).
  step = jax.jit(
    make_bt_step(graphdef, optimizer, centering_coef=0.01),
    in_shardings=(shardings, shd.batch_sharding(mesh), shd.replicated(mesh)),
    out_shardings=(shardings, shd.replicated(mesh)),
    donate_argnums=(0,),
  )
  data = toy_pairs(16)
  batches = MemberBatches(16, 8, 2, mode="bootstrap", seed=0)
  losses, metrics, batches_equal = [], {}, []
  for i in range(steps):
    batch = shd.place_process_batch(batches.batch(data, i, shd.process_share(mesh)), mesh)
    whole = batches.batch(data, i)
    batches_equal.append(all(np.array_equal(x, whole[k]) for k, x in to_host(batch, mesh).items()))
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  result = {"losses": losses, "metrics": {k: float(v) for k, v in metrics.items()}, "batches_equal": batches_equal}
  return result, to_host(state.params, mesh)


def target_count(prompt_tokens, prompt_mask, response_tokens, response_mask):
  del prompt_tokens, prompt_mask
  return jnp.sum((response_tokens == TARGET) & response_mask.astype(bool), axis=1).astype(jnp.float32)


def run_rl(mesh):
  """One PPO iteration (sample, score, GAE, 2 minibatches), as tests/test_rl_engine.py's mesh test."""
  config = RLConfig(algorithm="ppo", num_samples=2, ppo_epochs=1, num_minibatches=2)
  graphdef, params, axes = init_rl_params()
  optimizer = make_optimizer(learning_rate=1e-3, schedule="constant")
  rl_params = init_policy_params(params, RL_CFG.d_model)
  shardings = state_shardings(optimizer, rl_params, policy_param_axes(axes), mesh)
  state = init_rl_state(rl_params, optimizer, config)
  state_sh = type(state)(
    step=shd.replicated(mesh), params=shardings.params, opt_state=shardings.opt_state, kl_coef=shd.replicated(mesh)
  )
  state = to_global(jax.tree.map(np.asarray, state), state_sh)
  ref_sh = shd.tree_shardings(axes, params, mesh)
  iteration = make_iteration(graphdef, optimizer, config, SAMPLING, FunctionSource(target_count))
  step = jax.jit(
    iteration,
    in_shardings=(state_sh, ref_sh, None, shd.batch_sharding(mesh), shd.replicated(mesh)),
    out_shardings=(state_sh, shd.replicated(mesh)),
    donate_argnums=(0,),
  )
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, RL_CFG.vocab_size, (8, 4)).astype(np.int32)
  mask = np.ones((8, 4), np.int32)
  mask[::2, 0] = 0  # some left padding
  prompts = {"tokens": tokens * mask, "mask": mask}
  prompts = shd.place_process_batch(shd.process_share(mesh)(prompts), mesh)
  key = to_global(jax.random.key_data(jax.random.key(3)), shd.replicated(mesh))
  state, out = step(
    state, to_global(jax.tree.map(np.asarray, params), ref_sh), None, prompts, jax.random.wrap_key_data(key)
  )
  out = jax.tree.map(np.asarray, out)
  response_tokens = out.samples["response_tokens"]
  scalars = {k: float(v) for k, v in out.metrics.items() if np.ndim(v) == 0}
  return {"metrics": scalars, "response_tokens": response_tokens.tolist()}, to_host(state.params, mesh)


def init_rl_params():
  module = Transformer(RL_CFG, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(module)
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  return graphdef, params, shd.logical_axes(state)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", required=True, help="directory for results.json and params.npz")
  parser.add_argument("--mesh", default="2,2,2", help="mesh shape (data, fsdp, tensor) over the global devices")
  args = parser.parse_args()
  start = time.time()
  mesh = shd.make_mesh(tuple(int(s) for s in args.mesh.split(",")))
  rm_result, rm_params = run_rm(mesh)
  rm_seconds = time.time() - start
  rl_result, rl_params = run_rl(mesh)
  result = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "local_devices": jax.local_device_count(),
    "global_devices": jax.device_count(),
    "rm": dict(rm_result, checksums=checksums(rm_params)),
    "rl": dict(rl_result, checksums=checksums(rl_params)),
    "seconds": time.time() - start,
    "rm_seconds": rm_seconds,
    "cpu_seconds": time.process_time(),
  }
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    flat = {"rm" + jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(rm_params)[0]}
    flat.update({"rl" + jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(rl_params)[0]})
    np.savez(out / "params.npz", **flat)
    (out / "results.json").write_text(json.dumps(result, indent=1))
  print(f"process {jax.process_index()}/{jax.process_count()}: done in {result['seconds']:.1f}s", flush=True)
  if NUM_PROCESSES > 1:
    # Leave together: a process exiting early can fail the others' shutdown barrier.
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
