r"""Step time of Bradley-Terry training for reward-model ensembles.

  JAX_PLATFORMS=cpu python benchmarks/ensemble_heads.py
  python benchmarks/ensemble_heads.py --d_model=256 --num_layers=4 --seq_len=256 --batch_size=32

Measures, on one device:

* the shared-backbone step (K scalar heads on one backbone) for K = 1, 2, 4, 8:
  the backbone runs once whatever K, so K = 4 should cost about what K = 1
  does (target: <= 1.15x);
* the independent ensemble (K whole backbones): one jitted step vmapped over
  members versus a Python loop calling a jitted single-member step K times.

Every variant is compiled and run ``--warmup`` times first; then variants are
timed round-robin and the table shows the median of ``--repeats`` steps (each
synchronised with ``block_until_ready``) and the ratio to the shared K = 1
step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.models.config import ModelConfig
from advrm_jax.reward.data import MemberBatches
from advrm_jax.reward.losses import jit_bt_step
from advrm_jax.reward.model import init_reward_model
from advrm_jax.train_state import create_train_state, make_optimizer


def _pairs(num: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  data = {}
  for side in ("chosen", "rejected"):
    lengths = rng.integers(seq_len // 2, seq_len + 1, num)
    mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
    data[f"{side}_tokens"] = rng.integers(1, vocab_size, (num, seq_len)).astype(np.int32) * mask
    data[f"{side}_mask"] = mask
  return data


def _median_step_seconds(variants: list, warmup: int, repeats: int) -> list[float]:
  """Median seconds per step of each variant.

  Variants are timed round-robin (one step of each per repeat) rather than
  one after the other, so a change in machine load (other processes on a
  shared CPU) hits every variant alike instead of skewing the ratios.
  """
  for run_step in variants:
    for _ in range(warmup):
      jax.block_until_ready(run_step())
  times = [[] for _ in variants]
  for _ in range(repeats):
    for run_step, record in zip(variants, times):
      start = time.perf_counter()
      jax.block_until_ready(run_step())
      record.append(time.perf_counter() - start)
  return [statistics.median(record) for record in times]


def _make_stepper(cfg, num_members, kind, mode, data, batch_size, mesh):
  """Returns a no-argument function running one training step on fixed batches."""
  graphdef, params, axes = init_reward_model(cfg, num_members, kind, seed=0)
  optimizer = make_optimizer(learning_rate=1e-4, schedule="constant")
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  step = jit_bt_step(graphdef, optimizer, shardings, mesh, centering_coef=0.01)
  num = data["chosen_tokens"].shape[0]
  batches = MemberBatches(num, batch_size, num_members, mode=mode, per_member_rows=kind == "independent")
  # Host batches prepared once: the benchmark times the device step only.
  placed = [shd.shard_batch(batches.batch(data, i), mesh) for i in range(batches.steps_per_epoch)]
  holder = {"state": state, "i": 0}
  key = jax.random.key(0)

  def run_step():
    batch = placed[holder["i"] % len(placed)]
    holder["i"] += 1
    holder["state"], metrics = step(holder["state"], batch, key)
    return metrics["loss"]

  return run_step


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--d_model", type=int, default=64)
  parser.add_argument("--num_layers", type=int, default=2)
  parser.add_argument("--num_heads", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--vocab_size", type=int, default=512)
  parser.add_argument("--members", type=str, default="1,2,4,8", help="K values of the shared-backbone sweep")
  parser.add_argument("--independent_members", type=int, default=4)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()

  head_dim = args.d_model // args.num_heads
  cfg = ModelConfig(
    arch="llama",
    vocab_size=args.vocab_size,
    d_model=args.d_model,
    num_layers=args.num_layers,
    num_heads=args.num_heads,
    num_kv_heads=args.num_heads,
    head_dim=head_dim,
    d_ff=4 * args.d_model,
    max_seq_len=args.seq_len,
  )
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  data = _pairs(4 * args.batch_size, args.seq_len, args.vocab_size)
  print(
    f"backend {jax.default_backend()}, {cfg.num_layers} layers, d_model {cfg.d_model}, "
    f"{args.batch_size} pairs x {args.seq_len} tokens per step, median of {args.repeats} steps"
  )

  names, variants = [], []
  for k in (int(v) for v in args.members.split(",")):
    names.append(("shared heads (bootstrap weights)", k))
    variants.append(_make_stepper(cfg, k, "shared", "bootstrap", data, args.batch_size, mesh))
  k = args.independent_members
  names.append(("independent, vmapped members", k))
  variants.append(_make_stepper(cfg, k, "independent", "bootstrap", data, args.batch_size, mesh))
  # The loop baseline: K single-member models, each its own jitted step.
  singles = [_make_stepper(cfg, 1, "shared", "same", data, args.batch_size, mesh) for _ in range(k)]
  names.append(("independent, Python loop", k))
  variants.append(lambda: [single() for single in singles])
  seconds = _median_step_seconds(variants, args.warmup, args.repeats)
  rows = [(name, members, s) for (name, members), s in zip(names, seconds)]

  base = next(seconds for name, members, seconds in rows if name.startswith("shared") and members == 1)
  print(f"{'variant':<36} {'K':>3} {'ms/step':>9} {'vs K=1':>7}")
  for name, members, seconds in rows:
    print(f"{name:<36} {members:>3} {seconds * 1e3:>9.2f} {seconds / base:>6.2f}x")


if __name__ == "__main__":
  main()
