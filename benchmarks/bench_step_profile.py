r"""Where the Bradley-Terry train step spends its time (the MFU target's profile).

  python benchmarks/bench_step_profile.py [--size d512]

Times, round-robin with medians (each piece jitted on its own, same shapes as
``bench_rm``: 16 pairs = 32 sequences x 64 tokens, one shared head):

* ``full step``: the package's ``jit_bt_step`` (forward, backward, clip, AdamW);
* ``loss + grad``: ``value_and_grad`` of the BT loss only;
* ``loss``: the forward only;
* ``optimizer``: clip + AdamW on parameter-shaped gradients;
* ``matmuls only``: forward + backward of the same chain of dense layers
  (q, k, v, o, gate, up, down per layer, same shapes, same weights) with no
  attention, norm, RoPE or softmax: what the step would cost if it were all
  GEMM;
* ``attention only``: forward + backward of the attention core
  (``_attention`` with the causal mask) for all layers;
* ``2048^3 matmul``: the peak probe, for the MFU of each piece.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import optax

from advrm_jax import sharding as shd
from advrm_jax.models import transformer as T
from advrm_jax.reward.losses import bradley_terry_loss, jit_bt_step, pair_scores
from advrm_jax.reward.model import init_reward_model
from advrm_jax.train_state import create_train_state
from benchmarks import common
from benchmarks.bench_train import optimizer


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="d512", choices=list(common.SIZES))
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  cfg = common.SIZES[args.size]
  pairs, length = 16, 64
  rng = np.random.default_rng(3)
  batch = {
    "chosen_tokens": common.random_tokens(rng, (pairs, length), cfg.vocab_size),
    "rejected_tokens": common.random_tokens(rng, (pairs, length), cfg.vocab_size),
  }
  batch["chosen_mask"] = np.ones_like(batch["chosen_tokens"])
  batch["rejected_mask"] = np.ones_like(batch["rejected_tokens"])
  graphdef, params, axes = init_reward_model(cfg, 1, "shared", seed=0)
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = optimizer()
  state, shardings = create_train_state(params, axes, opt, mesh)
  step = jit_bt_step(graphdef, opt, shardings, mesh)
  jbatch = shd.shard_batch(batch, mesh)
  key = jax.random.key(0)
  holder = {"state": state}

  def loss_fn(p, b):
    chosen, rejected = pair_scores(graphdef, p, b)
    return bradley_terry_loss(chosen, rejected)[0]

  loss = jax.jit(loss_fn)
  grad = jax.jit(jax.value_and_grad(loss_fn))
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = opt.init(params)
  opt_step = jax.jit(lambda g, s, p: optax.apply_updates(p, opt.update(g, s, p)[0]))

  # Dense-only chain: the same weight shapes, no attention/norms/RoPE/softmax.
  layers = params["backbone"]["layers"]
  rows = 2 * pairs * length
  x0 = jnp.asarray(rng.standard_normal((rows, cfg.d_model), dtype=np.float32) * 0.1)

  def dense_chain(w, x):
    for i in range(cfg.num_layers):
      q = x @ w["q_kernel"][i].reshape(cfg.d_model, -1)
      k = x @ w["k_kernel"][i].reshape(cfg.d_model, -1)
      v = x @ w["v_kernel"][i].reshape(cfg.d_model, -1)
      x = x + (q + k + v) @ w["o_kernel"][i].reshape(-1, cfg.d_model)
      x = x + ((x @ w["gate_kernel"][i]) * (x @ w["up_kernel"][i])) @ w["down_kernel"][i]
    return jnp.sum(x)

  dense = jax.jit(jax.grad(dense_chain))

  # Attention core only, all layers, causal mask, forward + backward.
  heads = (2 * pairs, length, cfg.num_heads, cfg.head_dim)
  qkv = [jnp.asarray(rng.standard_normal(heads, dtype=np.float32)) for _ in range(3)]
  causal = jnp.tril(jnp.ones((length, length), bool))[None].repeat(2 * pairs, 0)

  def attention_chain(q, k, v):
    total = 0.0
    for _ in range(cfg.num_layers):
      total = total + jnp.sum(T._attention(q, k, v, causal))  # pylint: disable=protected-access
    return total

  attention = jax.jit(jax.grad(attention_chain, argnums=(0, 1, 2)))

  def full():
    holder["state"], metrics = step(holder["state"], jbatch, key)
    return metrics["loss"]

  probe = common.MatmulProbe()
  pieces = {
    "full step": full,
    "loss + grad": lambda: grad(params, jbatch),
    "loss (forward)": lambda: loss(params, jbatch),
    "optimizer (clip + AdamW)": lambda: opt_step(grads, opt_state, params),
    "matmuls only (fwd + bwd)": lambda: dense(layers, x0),
    "attention only (fwd + bwd)": lambda: attention(*qkv),
  }
  flops = {
    "full step": common.train_flops(cfg, 2 * pairs, length, lm_head=False),
    "loss + grad": common.train_flops(cfg, 2 * pairs, length, lm_head=False),
    "loss (forward)": common.forward_flops(cfg, 2 * pairs, length, lm_head=False),
    "matmuls only (fwd + bwd)": 3 * 2 * rows * common.matmul_params(cfg, lm_head=False),
    "attention only (fwd + bwd)": 3
    * 2
    * 2
    * cfg.num_layers
    * 2
    * pairs
    * length
    * length
    * cfg.num_heads
    * cfg.head_dim,
  }
  sides = {name: (lambda fn=fn: common.timed(lambda: jax.block_until_ready(fn()))) for name, fn in pieces.items()}
  sides["2048^3 matmul"] = probe
  samples = common.interleave(sides, args.repeats, warmup=1)
  peak = probe.flops / statistics.median(samples["2048^3 matmul"])
  print(f"{args.size}: BT step on {pairs} pairs x {length} tokens; matmul peak now {peak / 1e9:.1f} GFLOP/s")
  print(f"{'piece':<30} {'ms':>9} {'GFLOP/s':>9} {'% of peak':>10}")
  for name in pieces:
    seconds = statistics.median(samples[name])
    rate = flops.get(name, 0.0) / seconds
    pct = f"{100 * rate / peak:9.1f}%" if name in flops else f"{'-':>10}"
    print(f"{name:<30} {1e3 * seconds:>9.1f} {rate / 1e9 if name in flops else 0:>9.1f} {pct}")


if __name__ == "__main__":
  main()
