r"""Where the sampler's decode step spends its time, and what a cache-layout fix buys.

  python benchmarks/bench_sampler_profile.py [--size d256] [--batch 16]

Prints per-decode-step milliseconds (median, inside a jitted ``fori_loop`` of
16 steps, so dispatch overhead is amortised as in the real sampler) for:

1. ``model(token, cache=...)`` as the sampler calls it, for several cache
   lengths S: the cost grows with S far faster than the attention FLOPs do;
2. the same forward for one token *without* a cache: the floor set by the
   layer matmuls and per-op overhead;
3. a prototype decode step (written here; the package adopted its cache layout) with the cache
   stored head-major ``[L, B, Hkv, S, Dh]``, carried whole through an
   unrolled layer loop and updated with one in-place ``dynamic_update_slice``
   per layer, so no per-step copy or transpose of the cache is needed.

The prototype reuses the package's own numerics (``_rms_norm``,
``rope_cos_sin``, ``_apply_rope``) and is checked against the package's
logits before timing.
"""

from __future__ import annotations

import argparse
import math
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
from advrm_jax.train_state import split_module
from benchmarks import common

STEPS = 16


def _median_ms(fn, *args, repeats: int = 7) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times) / STEPS


def current_step_loop(graphdef, cfg, batch):
  """STEPS decode steps through the package's cached forward."""
  def run(params, cache, token):
    model = nnx.merge(graphdef, params)

    def body(_, carry):
      cache, token = carry
      out = model(token, jnp.ones(token.shape, bool), cache=cache)
      nxt = jnp.argmax(out.logits[:, -1], -1).astype(jnp.int32)[:, None]
      # Keep the write index fixed so every step sees the same cache length.
      return out.cache._replace(index=cache.index), nxt
    return jax.lax.fori_loop(0, STEPS, body, (cache, token))
  del cfg, batch
  return jax.jit(run)


def nocache_step_loop(graphdef):
  def run(params, token):
    model = nnx.merge(graphdef, params)

    def body(_, token):
      logits = model(token).logits
      return jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None]
    return jax.lax.fori_loop(0, STEPS, body, token)
  return jax.jit(run)


def prototype_forward(cfg, params, keys, values, mask, index, token):
  """One cached decode step with a head-major cache updated in place.

  keys/values: [L, B, Hkv, S, Dh]; mask: [B, S] bool; token: [B, 1].
  Returns (logits [B, V], keys, values, mask).
  """
  batch = token.shape[0]
  mask = jax.lax.dynamic_update_slice(mask, jnp.ones((batch, 1), bool), (0, index))
  positions = (jnp.sum(mask, axis=1, dtype=jnp.int32) - 1)[:, None]
  cos, sin = T.rope_cos_sin(cfg, positions)
  x = jnp.take(params["embed"], token, axis=0)
  groups = cfg.num_heads // cfg.num_kv_heads
  for i in range(cfg.num_layers):   # unrolled: static layer slices, in-place updates
    p = {name: value[i] for name, value in params["layers"].items()}
    h = T._rms_norm(x, p["attn_norm_scale"], cfg.norm_eps)  # pylint: disable=protected-access
    q = T._apply_rope(jnp.einsum("btd,dhk->bthk", h, p["q_kernel"]), cos, sin)  # pylint: disable=protected-access
    k = T._apply_rope(jnp.einsum("btd,dhk->bthk", h, p["k_kernel"]), cos, sin)  # pylint: disable=protected-access
    v = jnp.einsum("btd,dhk->bthk", h, p["v_kernel"])
    keys = jax.lax.dynamic_update_slice(keys, jnp.swapaxes(k, 1, 2)[None], (i, 0, 0, index, 0))
    values = jax.lax.dynamic_update_slice(values, jnp.swapaxes(v, 1, 2)[None], (i, 0, 0, index, 0))
    qg = q[:, 0].reshape(batch, cfg.num_kv_heads, groups, cfg.head_dim)
    scores = jnp.einsum("bkgd,bksd->bkgs", qg, keys[i]) / math.sqrt(cfg.head_dim)
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    attn = jnp.einsum("bkgs,bksd->bkgd", probs, values[i]).reshape(batch, 1, cfg.num_heads, cfg.head_dim)
    x = x + jnp.einsum("bthk,hkd->btd", attn, p["o_kernel"])
    h = T._rms_norm(x, p["mlp_norm_scale"], cfg.norm_eps)  # pylint: disable=protected-access
    x = x + (jax.nn.silu(h @ p["gate_kernel"]) * (h @ p["up_kernel"])) @ p["down_kernel"]
  hidden = T._rms_norm(x, params["final_norm_scale"], cfg.norm_eps)  # pylint: disable=protected-access
  return (hidden @ params["lm_head"])[:, 0], keys, values, mask


def prototype_step_loop(cfg):
  def run(params, keys, values, mask, index, token):
    def body(_, carry):
      keys, values, mask, token = carry
      logits, keys, values, new_mask = prototype_forward(cfg, params, keys, values, mask, index, token)
      del new_mask  # keep the cache length fixed, as in current_step_loop
      return keys, values, mask, jnp.argmax(logits, -1).astype(jnp.int32)[:, None]
    return jax.lax.fori_loop(0, STEPS, body, (keys, values, mask, token))
  return jax.jit(run, donate_argnums=(1, 2))


def check_prototype(cfg, graphdef, params, batch):
  """The prototype's logits equal the package's cached forward."""
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(common.random_tokens(rng, (batch, 8), cfg.vocab_size))
  model = nnx.merge(graphdef, params)
  cache = T.init_cache(cfg, batch, 16)
  cache = model(prompt, cache=cache, compute_logits=False).cache
  token = prompt[:, -1:]
  ref = model(token, cache=cache).logits[:, -1]
  logits, *_ = prototype_forward(cfg, params, cache.keys, cache.values, cache.mask, cache.index, token)
  return float(jnp.max(jnp.abs(logits - ref)))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="d256", choices=list(common.SIZES))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--lengths", default="8,32,79,160")
  args = parser.parse_args()
  cfg = common.SIZES[args.size]
  graphdef, params, _ = split_module(T.Transformer(cfg, rngs=nnx.Rngs(0)))
  batch = args.batch
  print(f"{args.size}, batch {batch}: prototype max |logit diff| vs package = "
        f"{check_prototype(cfg, graphdef, params, batch):.2e}")
  token = jnp.ones((batch, 1), jnp.int32)
  print(f"1-token forward without cache: {_median_ms(nocache_step_loop(graphdef), params, token):.2f} ms/step")
  current = current_step_loop(graphdef, cfg, batch)
  proto = prototype_step_loop(cfg)
  print(f"{'cache slots S':>14} {'package ms/step':>16} {'prototype ms/step':>18}")
  for length in (int(s) for s in args.lengths.split(",")):
    cache = T.init_cache(cfg, batch, length)
    cache = cache._replace(mask=jnp.ones((batch, length), bool), index=jnp.asarray(length // 2, jnp.int32))
    ms_current = _median_ms(current, params, cache, token)
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)

    def proto_call(length=length, shape=shape):
      # Fresh donated buffers per call (the loop updates them in place).
      return proto(params, jnp.zeros(shape), jnp.zeros(shape), jnp.ones((batch, length), bool),
                   jnp.asarray(length // 2, jnp.int32), token)
    ms_proto = _median_ms(proto_call)
    print(f"{length:>14} {ms_current:>16.2f} {ms_proto:>18.2f}")


if __name__ == "__main__":
  main()
