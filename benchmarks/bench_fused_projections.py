r"""Fused q|k|v and gate|up projections: where do they pay? (``ModelConfig.fused_projections``)

  python benchmarks/bench_fused_projections.py [--size d256] [--repeats 7]

Times, round-robin with medians after one warm-up round, each mode jitted on
its own with the same weights: the sampler (B16, P16, N64, greedy) and the
loss + gradient of a forward over 32 x 64 tokens, for the modes "none"
(separate GEMMs), "cached" (the default: fused only with a KV cache, i.e.
prefill and decode) and "all". Greedy tokens and the loss are checked equal
across modes before timing. Prints each time and its ratio to "none".
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax.models import transformer as T
from advrm_jax.rl.sampler import SamplingConfig, sample
from advrm_jax.train_state import split_module
from benchmarks import common

MODES = ("none", "cached", "all")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="d256", choices=sorted(common.SIZES))
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  cfg = common.SIZES[args.size]
  # One set of parameters; each mode is a graph of its own (the mode is a static field of the config).
  graphdefs = {
    mode: split_module(T.Transformer(cfg.replace(fused_projections=mode), rngs=nnx.Rngs(0)))[0] for mode in MODES
  }
  _, params, _ = split_module(T.Transformer(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  prompts = jnp.asarray(rng.integers(common.FIRST_DATA_ID, cfg.vocab_size, (16, 16)), jnp.int32)
  prompt_mask = jnp.ones((16, 16), bool)
  sampling = SamplingConfig(max_new_tokens=64, temperature=0.0, eos_id=1, pad_id=0)
  tokens = jnp.asarray(rng.integers(common.FIRST_DATA_ID, cfg.vocab_size, (32, 64)), jnp.int32)
  key = jax.random.PRNGKey(0)

  def make(graphdef):
    def sample_fn(p):
      return sample(graphdef, p, prompts, prompt_mask, key, sampling).tokens

    def loss_grad_fn(p):
      def loss(p):
        return jnp.mean(nnx.merge(graphdef, p)(tokens, compute_logits=True).logits[:, -1] ** 2)

      return jax.value_and_grad(loss)(p)

    return {"sample": jax.jit(sample_fn), "loss + grad": jax.jit(loss_grad_fn)}

  fns = {mode: make(graphdefs[mode]) for mode in MODES}
  reference = None
  for mode in MODES:
    out = (np.asarray(fns[mode]["sample"](params)), float(fns[mode]["loss + grad"](params)[0]))
    if reference is None:
      reference = out
    elif not (np.array_equal(out[0], reference[0]) and abs(out[1] - reference[1]) <= 1e-5 * abs(reference[1])):
      raise SystemExit(
        f"mode {mode!r} changes the results: tokens equal {np.mean(out[0] == reference[0]):.3f}, "
        f"loss {out[1]} vs {reference[1]}"
      )
  times = {(mode, what): [] for mode in MODES for what in ("sample", "loss + grad")}
  for _ in range(args.repeats + 1):
    for mode in MODES:
      for what, fn in fns[mode].items():
        start = time.perf_counter()
        jax.block_until_ready(fn(params))
        times[(mode, what)].append(time.perf_counter() - start)
  print(f"{args.size}: medians of {args.repeats} rounds (first dropped), ratio to 'none'")
  for what in ("sample", "loss + grad"):
    base = statistics.median(times[("none", what)][1:])
    for mode in MODES:
      t = statistics.median(times[(mode, what)][1:])
      print(f"  {what:12s} {mode:7s} {1e3 * t:8.1f} ms  {t / base:.3f}")


if __name__ == "__main__":
  main()
