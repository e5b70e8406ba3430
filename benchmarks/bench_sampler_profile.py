r"""Where the sampler's decode step spends its time.

  python benchmarks/bench_sampler_profile.py [--size d256] [--batch 16] [--lengths 8,32,79,160]

Prints per-decode-step milliseconds (median over interleaved repeats, each a
jitted ``fori_loop`` of 16 steps, so dispatch overhead is amortised as in the
real sampler) of ``model(token, cache=...)`` for several cache lengths S:

* ``hoisted``: per-layer weights from ``model.unstacked_layers()`` computed
  once outside the loop, as the sampler does;
* ``sliced in loop``: the same step with the per-layer weights sliced inside
  the loop body, i.e. copied at every step (what a scan over stacked layers
  also does: XLA:CPU materialises its dynamic slices);
* ``no cache``: a one-token forward without a cache (the scan over stacked
  layers, no attention over past slots): the floor set by the layer
  matmuls, the weight slicing and per-op overhead.

Then microseconds per decode step of two pieces on their own: the widest
GEMM of a layer (the fused gate|up projection of B rows) and the Gumbel noise
that sampled decoding draws per step (``jax.random.categorical`` over B x V).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from flax import nnx
import jax
import jax.numpy as jnp

from advrm_jax.models import transformer as T
from advrm_jax.train_state import split_module
from benchmarks import common

STEPS = 16


def decode_loop(graphdef, hoist: bool):
  """STEPS decode steps through the package's cached forward."""

  def run(params, cache, token):
    model = nnx.merge(graphdef, params)
    layers = model.unstacked_layers() if hoist else None

    def body(_, carry):
      cache, token = carry
      out = model(token, jnp.ones(token.shape, bool), cache=cache, layers=layers)
      nxt = jnp.argmax(out.logits[:, -1], -1).astype(jnp.int32)[:, None]
      # Keep the write index fixed so every step sees the same cache length.
      return out.cache._replace(index=cache.index), nxt

    return jax.lax.fori_loop(0, STEPS, body, (cache, token))

  return jax.jit(run)


def nocache_loop(graphdef):
  def run(params, token):
    model = nnx.merge(graphdef, params)

    def body(_, token):
      logits = model(token).logits
      return jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None]

    return jax.lax.fori_loop(0, STEPS, body, token)

  return jax.jit(run)


def pieces_us(cfg, batch: int) -> dict[str, float]:
  """Per-step microseconds of the widest layer GEMM and of the sampling noise."""
  rows = jax.random.normal(jax.random.key(0), (batch, cfg.d_model))
  kernel = 0.02 * jax.random.normal(jax.random.key(1), (cfg.d_model, 2 * cfg.d_ff))
  key = jax.random.key(2)

  @jax.jit
  def gemm(rows, kernel):
    # The carry depends on each product, so no step can be skipped or hoisted.
    return jax.lax.fori_loop(0, STEPS, lambda _, x: x + 1e-3 * jnp.mean(x @ kernel), rows)

  @jax.jit
  def gumbel(key):
    def body(i, total):
      return total + jax.random.gumbel(jax.random.fold_in(key, i), (batch, cfg.vocab_size))

    return jax.lax.fori_loop(0, STEPS, body, jnp.zeros((batch, cfg.vocab_size)))

  ms = interleaved_ms({"gemm": lambda: gemm(rows, kernel), "gumbel": lambda: gumbel(key)})
  return {name: 1e3 * value for name, value in ms.items()}


def interleaved_ms(calls: dict, repeats: int = 7) -> dict[str, float]:
  """Median ms per decode step of each call, the calls alternating (``common.interleave``)."""
  samples = common.interleave(
    {name: lambda call=call: common.timed(lambda: jax.block_until_ready(call())) for name, call in calls.items()},
    repeats,
  )
  return {name: 1e3 * common.median(values) / STEPS for name, values in samples.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="d256", choices=list(common.SIZES))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--lengths", default="8,32,79,160")
  args = parser.parse_args()
  cfg = common.SIZES[args.size]
  graphdef, params, _ = split_module(T.Transformer(cfg, rngs=nnx.Rngs(0)))
  token = jnp.ones((args.batch, 1), jnp.int32)
  hoisted, in_loop, nocache = decode_loop(graphdef, True), decode_loop(graphdef, False), nocache_loop(graphdef)
  print(f"{args.size}, batch {args.batch}, ms per decode step")
  print(f"{'cache slots S':>14} {'hoisted':>9} {'sliced in loop':>15} {'no cache':>9}")
  for length in (int(s) for s in args.lengths.split(",")):
    cache = T.init_cache(cfg, args.batch, length)
    cache = cache._replace(mask=jnp.ones((args.batch, length), bool), index=jnp.asarray(length // 2, jnp.int32))
    ms = interleaved_ms(
      {
        "hoisted": lambda c=cache: hoisted(params, c, token),
        "in_loop": lambda c=cache: in_loop(params, c, token),
        "nocache": lambda: nocache(params, token),
      }
    )
    print(f"{length:>14} {ms['hoisted']:>9.2f} {ms['in_loop']:>15.2f} {ms['nocache']:>9.2f}")
  us = pieces_us(cfg, args.batch)
  print(
    f"per step: [{args.batch}, {cfg.d_model}] @ [{cfg.d_model}, {2 * cfg.d_ff}] GEMM {us['gemm']:.0f} us; "
    f"Gumbel noise for [{args.batch}, {cfg.vocab_size}] logits {us['gumbel']:.0f} us"
  )


if __name__ == "__main__":
  main()
