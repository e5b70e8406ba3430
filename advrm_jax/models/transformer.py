"""Decoder-only transformer backbone (Llama family and GPT-2) in Flax NNX.

Layer parameters are stacked along a leading ``layers`` axis and the forward
pass is a ``jax.lax.scan`` over layers, so compile time stays flat in depth,
except for one-token decode steps, which loop over layers in Python on
per-layer weights and cache buffers (``Transformer.unstacked_layers``). The
KV cache is a plain pytree, so jitted steps stay pure functions of
``(params, cache)``.

Padding is described by ``input_mask`` (1 on real tokens). Positions default
to ``cumsum(input_mask) - 1`` so left- and right-padded batches see the same
positions for the same real tokens, and attention never looks at pad slots.

Every parameter carries logical axis names (``out_sharding`` metadata) that
``advrm_jax.sharding`` maps to mesh axes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp

from advrm_jax.models.config import ModelConfig

Array = jax.Array

# Logical axis names used by parameters and activations.
LAYERS, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB, NORM = (
  "layers",
  "embed",
  "heads",
  "kv_heads",
  "head_dim",
  "mlp",
  "vocab",
  "norm",
)


class KVCache(NamedTuple):
  """Key/value cache for all layers.

  keys, values: one [B, Hkv, S, Dh] array per layer (head-major, so attention
  reads each head's slots contiguously with no transpose; one buffer per
  layer, so a decode step writes and reads it in place where slicing a
  stacked [L, ...] cache copies the layer's slice); mask: [B, S] bool, True where
  a slot holds a real token; index: [] int32, the next slot to write (shared
  by all rows, which is why the sampler left-aligns prompts to a common end).
  """

  keys: tuple[Array, ...]
  values: tuple[Array, ...]
  mask: Array
  index: Array


class ModelOutput(NamedTuple):
  """What ``Transformer.__call__`` returns.

  Attributes:
    logits: [B, T, V] float32, or None when called with compute_logits=False.
    hidden: [B, T, D] final hidden states after the last norm.
    cache: the updated KV cache when one was passed in, else None.
  """

  logits: Array | None  # [B, T, V] float32 (None when compute_logits=False)
  hidden: Array  # [B, T, D] final hidden state after the last norm
  cache: KVCache | None


def _param(key, shape, names, dtype, init="normal", std=0.02):
  if init == "normal":
    value = std * jax.random.normal(key, shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  # eager_sharding=False: logical names are resolved to mesh axes later by
  # advrm_jax.sharding, never by flax at construction time.
  return nnx.Param(value.astype(dtype), out_sharding=names, eager_sharding=False)


def layer_param_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...], str]]:
  """Per-layer parameter shapes, logical axes and initialiser (no layer axis)."""
  d, h, kv, hd, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff
  shapes = {
    "attn_norm_scale": ((d,), (NORM,), "ones"),
    "q_kernel": ((d, h, hd), (EMBED, HEADS, HEAD_DIM), "normal"),
    "k_kernel": ((d, kv, hd), (EMBED, KV_HEADS, HEAD_DIM), "normal"),
    "v_kernel": ((d, kv, hd), (EMBED, KV_HEADS, HEAD_DIM), "normal"),
    "o_kernel": ((h, hd, d), (HEADS, HEAD_DIM, EMBED), "normal"),
    "mlp_norm_scale": ((d,), (NORM,), "ones"),
  }
  if cfg.arch == "gpt2" or cfg.qkv_bias:
    shapes.update(
      {
        "q_bias": ((h, hd), (HEADS, HEAD_DIM), "zeros"),
        "k_bias": ((kv, hd), (KV_HEADS, HEAD_DIM), "zeros"),
        "v_bias": ((kv, hd), (KV_HEADS, HEAD_DIM), "zeros"),
      }
    )
  if cfg.arch == "llama":
    shapes.update(
      {
        "gate_kernel": ((d, f), (EMBED, MLP), "normal"),
        "up_kernel": ((d, f), (EMBED, MLP), "normal"),
        "down_kernel": ((f, d), (MLP, EMBED), "normal"),
      }
    )
  else:
    shapes.update(
      {
        "attn_norm_bias": ((d,), (NORM,), "zeros"),
        "mlp_norm_bias": ((d,), (NORM,), "zeros"),
        "o_bias": ((d,), (EMBED,), "zeros"),
        "fc_kernel": ((d, f), (EMBED, MLP), "normal"),
        "fc_bias": ((f,), (MLP,), "zeros"),
        "proj_kernel": ((f, d), (MLP, EMBED), "normal"),
        "proj_bias": ((d,), (EMBED,), "zeros"),
      }
    )
  return shapes


class DecoderLayers(nnx.Module):
  """All decoder layers' parameters, each stacked along a leading layer axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    for name, (shape, names, init) in layer_param_shapes(cfg).items():
      setattr(self, name, _param(rngs.params(), (cfg.num_layers, *shape), (LAYERS, *names), cfg.jnp_param_dtype, init))

  def arrays(self) -> dict[str, Array]:
    """The stacked per-layer parameters as plain arrays ([L, ...] each), by name."""
    return {name: value[...] for name, value in vars(self).items() if isinstance(value, nnx.Param)}


class Transformer(nnx.Module):
  """Decoder-only transformer returning logits and final hidden states."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = cfg.jnp_param_dtype
    self.embed = _param(rngs.params(), (cfg.vocab_size, cfg.d_model), (VOCAB, EMBED), pdt)
    if cfg.arch == "gpt2":
      self.pos_embed = _param(rngs.params(), (cfg.max_seq_len, cfg.d_model), (None, EMBED), pdt, std=0.01)
    self.layers = DecoderLayers(cfg, rngs=rngs)
    self.final_norm_scale = _param(None, (cfg.d_model,), (NORM,), pdt, "ones")
    if cfg.arch == "gpt2":
      self.final_norm_bias = _param(None, (cfg.d_model,), (NORM,), pdt, "zeros")
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs.params(), (cfg.d_model, cfg.vocab_size), (EMBED, VOCAB), pdt)

  def init_cache(self, batch_size: int, max_len: int) -> KVCache:
    """An empty KV cache for ``batch_size`` rows of up to ``max_len`` positions."""
    return init_cache(self.cfg, batch_size, max_len)

  def _layer_arrays(self, cached: bool) -> dict[str, Array]:
    """The stacked [L, ...] layer params, projections fused as ``cfg.fused_projections`` says."""
    params = self.layers.arrays()
    mode = self.cfg.fused_projections
    if mode == "all" or (mode == "cached" and cached):
      params = fuse_projections(params)
    return params

  def unstacked_layers(self) -> tuple[dict[str, Array], ...]:
    """One dict of parameters per layer, for one-token decode steps.

    A scan over stacked layers reads each layer's weights (and a stacked
    cache's layer) through dynamic slices, which XLA:CPU materialises as
    copies: a one-token decode step, bound by memory traffic, would copy
    every weight of the model at every step. A decode step therefore loops
    over layers in Python on separate per-layer arrays and per-layer cache
    buffers. On CPU the sampler calls this once, before its decode loop, so
    the slicing happens once per call and the loop body reads the weights in
    place: d256 decode steps 1.2-1.45x faster than with the slices inside
    the loop (``python benchmarks/bench_sampler_profile.py``), SmolLM2-shaped
    ones 1.2x. The price is compile time, which grows with depth for the
    decode step (30 layers: ~11-14 s instead of ~2-3 s for the sampler);
    benchmarks/RESULTS.md, "Sampling".
    """
    params = self._layer_arrays(cached=True)
    return tuple({name: value[i] for name, value in params.items()} for i in range(self.cfg.num_layers))

  def __call__(
    self,
    tokens: Array,
    input_mask: Array | None = None,
    positions: Array | None = None,
    cache: KVCache | None = None,
    compute_logits: bool = True,
    layers: tuple[dict[str, Array], ...] | None = None,
  ) -> ModelOutput:
    """Runs the model.

    Args:
      tokens: [B, T] int32 token ids.
      input_mask: [B, T] bool/int, 1 on real tokens (default: all real).
      positions: [B, T] int32 positions (default: derived from the masks).
      cache: a KVCache to extend; the T tokens are written at slots
        ``cache.index .. cache.index + T - 1``.
      compute_logits: skip the LM head (reward and value models only need
        hidden states).
      layers: for one-token calls with a cache (decode steps),
        ``self.unstacked_layers()`` computed once outside the caller's decode
        loop (default: sliced here, which inside a loop body XLA:CPU turns
        into a copy of every layer's weights at every step). Unused otherwise.
    """
    cfg = self.cfg
    dtype = cfg.jnp_dtype
    batch, length = tokens.shape
    if input_mask is None:
      input_mask = jnp.ones((batch, length), bool)
    input_mask = input_mask.astype(bool)
    running = jnp.cumsum(input_mask.astype(jnp.int32), axis=1) - 1

    if cache is None:
      if positions is None:
        positions = jnp.maximum(running, 0)
      causal = jnp.tril(jnp.ones((length, length), bool))
      attn_mask = causal[None] & input_mask[:, None, :]
    else:
      if positions is None:
        seen = jnp.sum(cache.mask, axis=1, dtype=jnp.int32)
        positions = jnp.maximum(seen[:, None] + running, 0)
      slot_mask = jax.lax.dynamic_update_slice(cache.mask, input_mask, (0, cache.index))
      slots = jnp.arange(cache.mask.shape[1])
      query_slots = cache.index + jnp.arange(length)
      attn_mask = (slots[None, None, :] <= query_slots[None, :, None]) & slot_mask[:, None, :]

    x = jnp.take(self.embed[...], tokens, axis=0).astype(dtype)
    if cfg.arch == "gpt2":
      x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(dtype)
      rope = None
    else:
      rope = rope_cos_sin(cfg, positions)

    if cache is not None and length == 1:
      # A decode step: a Python loop over per-layer weights and cache buffers,
      # all read in place (see unstacked_layers).
      if layers is None:
        layers = self.unstacked_layers()
      keys, values = list(cache.keys), list(cache.values)
      for i, params in enumerate(layers):
        x, (keys[i], values[i]) = _decoder_layer(cfg, params, x, attn_mask, rope, (keys[i], values[i]), cache.index)
      new_cache = KVCache(tuple(keys), tuple(values), slot_mask, cache.index + length)
    elif cache is not None:
      # A prefill: a scan over the stacked layers (compile time flat in depth),
      # with the cache stacked for the scan and split again after it (a copy
      # each way, once per prefill).
      def cached_layer_step(h, xs):
        params, keys, values = xs
        return _decoder_layer(cfg, params, h, attn_mask, rope, (keys, values), cache.index)

      x, (keys, values) = jax.lax.scan(
        cached_layer_step, x, (self._layer_arrays(cached=True), jnp.stack(cache.keys), jnp.stack(cache.values))
      )
      new_cache = KVCache(tuple(keys), tuple(values), slot_mask, cache.index + length)
    else:
      attention = resolve_attention(cfg, length)

      def layer_step(h, params):
        h, _ = _decoder_layer(cfg, params, h, attn_mask, rope, attention=attention)
        return h, None

      if cfg.remat != "none":
        # prevent_cse=False: inside a scan, CSE cannot undo the recomputation (jax.checkpoint docs).
        layer_step = jax.checkpoint(layer_step, prevent_cse=False, policy=REMAT_POLICIES[cfg.remat])
      x, _ = jax.lax.scan(layer_step, x, self._layer_arrays(cached=False))
      new_cache = None

    if cfg.arch == "gpt2":
      hidden = _layer_norm(x, self.final_norm_scale[...], self.final_norm_bias[...], cfg.norm_eps)
    else:
      hidden = _rms_norm(x, self.final_norm_scale[...], cfg.norm_eps)

    logits = None
    if compute_logits:
      logits = jnp.einsum("btd,dv->btv", hidden, self.head_kernel(), preferred_element_type=jnp.float32)
    return ModelOutput(logits, hidden, new_cache)

  def head_kernel(self) -> Array:
    """The LM head as a [D, V] matrix in the compute dtype (the embedding's transpose when tied)."""
    if self.cfg.tie_embeddings:
      return self.embed[...].astype(self.cfg.jnp_dtype).T
    return self.lm_head[...].astype(self.cfg.jnp_dtype)


# What jax.checkpoint keeps of each layer of the training forward's scan (``ModelConfig.remat``).
# "dots": the outputs of the 2-D weight GEMMs (no batch dimension); the attention einsums have batch
# dimensions, so their [B, H, T, S] scores and probabilities are recomputed, not stored per layer.
# "full": nothing but the layer's input, so a step's temporaries grow with one layer's activations.
REMAT_POLICIES = {
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "full": jax.checkpoint_policies.nothing_saveable,
}


def _on_cuda() -> bool:
  """True when the default backend is an NVIDIA GPU (cuDNN's flash attention exists there only)."""
  if jax.default_backend() != "gpu":
    return False
  client = getattr(jax.devices()[0], "client", None)
  return "cuda" in str(getattr(client, "platform_version", "")).lower()


def resolve_attention(cfg: ModelConfig, length: int) -> str:
  """The attention kernel of a training forward on ``length`` tokens: "xla" or "cudnn".

  Decided in Python at trace time, from the backend and static shapes, never from traced values.
  "auto" picks cuDNN flash attention on an NVIDIA GPU when it can run the shapes: compute dtype
  bf16/f16, head_dim a multiple of 8 and at most 128, an even length (cuDNN's condition for a
  training step with a mask); otherwise XLA's attention. A TPU Pallas/splash kernel would be one
  more value here.
  """
  if cfg.attention == "xla":
    return "xla"
  cudnn_ok = cfg.dtype in ("bfloat16", "float16") and cfg.head_dim % 8 == 0 and cfg.head_dim <= 128
  if cfg.attention == "cudnn":
    if not cudnn_ok:
      raise ValueError(
        f"model.attention='cudnn' needs model.dtype bfloat16 or float16 and a head_dim that is a "
        f"multiple of 8 and <= 128 (got dtype={cfg.dtype!r}, head_dim={cfg.head_dim})"
      )
    return "cudnn"
  return "cudnn" if cudnn_ok and length % 2 == 0 and _on_cuda() else "xla"


def fuse_projections(params: dict[str, Array]) -> dict[str, Array]:
  """Stacked layer params with q|k|v (and their biases) and gate|up concatenated on the output axis.

  Parameters stay separate (checkpoints, logical axes and shardings name
  each one). The cached forward (prefill and the sampler's one-token decode
  steps, where per-op overhead dominates) multiplies by the concatenation:
  two fewer GEMMs per layer and step: 3-16% less sampling time at d256 in
  six runs (at d512 the difference is within the +-5% noise); the sampler
  concatenates once per call, before its decode loop (``unstacked_layers``).
  Training keeps separate GEMMs: there the concatenation and the split of
  its gradient cost about what they save (loss + grad 0.99-1.17x the
  separate time). ``python benchmarks/bench_fused_projections.py [--size]``,
  2026-11-27.
  """
  params = dict(params)
  layers, d_model = params["attn_norm_scale"].shape
  params["qkv_kernel"] = jnp.concatenate(
    [params.pop(f"{n}_kernel").reshape(layers, d_model, -1) for n in "qkv"], axis=-1
  )
  if "q_bias" in params:
    params["qkv_bias"] = jnp.concatenate([params.pop(f"{n}_bias").reshape(layers, -1) for n in "qkv"], axis=-1)
  if "gate_kernel" in params:
    params["gate_up_kernel"] = jnp.concatenate([params.pop("gate_kernel"), params.pop("up_kernel")], axis=-1)
  return params


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int) -> KVCache:
  """An empty KV cache for ``cfg``: per layer, keys/values zeros of [B, KV heads, max_len, head_dim]."""
  shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
  return KVCache(
    keys=tuple(jnp.zeros(shape, cfg.jnp_dtype) for _ in range(cfg.num_layers)),
    values=tuple(jnp.zeros(shape, cfg.jnp_dtype) for _ in range(cfg.num_layers)),
    mask=jnp.zeros((batch_size, max_len), bool),
    index=jnp.zeros((), jnp.int32),
  )


def _rms_norm(x, scale, eps):
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def _layer_norm(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> Array:
  """Inverse frequencies, including the linear and Llama-3 scaling variants."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  scaling = cfg.rope_scaling_dict
  rope_type = scaling.get("rope_type", "default")
  if rope_type == "linear":
    inv_freq = inv_freq / scaling["factor"]
  elif rope_type == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = jnp.where(is_medium, smoothed, scaled)
  return inv_freq


def rope_cos_sin(cfg: ModelConfig, positions: Array) -> tuple[Array, Array]:
  """cos/sin tables [B, T, Dh] in the half-split (rotate_half) layout HF uses."""
  freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def _apply_rope(x, cos, sin):
  # x: [B, T, H, Dh]; cos/sin: [B, T, Dh]
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)


def _attention(q, k, v, mask, head_major: bool = False):
  """Grouped-query attention written out, for forwards with a KV cache (prefill and decode).

  q: [B,T,H,Dh]; k,v: [B,S,Hkv,Dh], or [B,Hkv,S,Dh] when ``head_major``
  (the KV-cache layout); mask [B,T,S]. ``jax.nn.dot_product_attention``
  wants [B,S,Hkv,Dh] keys, which the head-major cache would have to be
  transposed into at every decode step.
  """
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[1] if head_major else k.shape[2]
  kv_spec = "bksd" if head_major else "bskd"
  q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
  scores = jnp.einsum(f"btkgd,{kv_spec}->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(head_dim)
  # A finite floor instead of -inf: fully masked rows (pad queries) give a
  # harmless uniform average rather than NaN that would poison gradients.
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum(f"bkgts,{kv_spec}->btkgd", probs, v, preferred_element_type=jnp.float32)
  return out.reshape(batch, length, heads, head_dim).astype(v.dtype)


def _dot_product_attention(q, k, v, mask, implementation: str):
  """Grouped-query attention of a training forward through ``jax.nn.dot_product_attention``.

  q: [B,T,H,Dh]; k,v: [B,T,Hkv,Dh]; mask [B,T,T] (causal and padding). The
  mask goes in whole: left-padded rows (RL, the sampler's prompts) cannot be
  described by sequence lengths. ``is_causal`` lets cuDNN skip the blocks
  above the diagonal (XLA's kernel has the same entries masked already). Fully
  masked rows (pad queries) get a finite floor, hence a uniform average, not NaN.
  """
  return jax.nn.dot_product_attention(
    q, k, v, mask=mask[:, None], is_causal=implementation == "cudnn", implementation=implementation
  )


def _decoder_layer(
  cfg: ModelConfig,
  p: dict[str, Array],
  x: Array,
  attn_mask: Array,
  rope,
  kv=None,
  cache_index=None,
  attention: str = "xla",
):
  dtype = x.dtype
  p = {name: value.astype(dtype) for name, value in p.items()}
  gpt2 = cfg.arch == "gpt2"
  if gpt2:
    h = _layer_norm(x, p["attn_norm_scale"], p["attn_norm_bias"], cfg.norm_eps)
  else:
    h = _rms_norm(x, p["attn_norm_scale"], cfg.norm_eps)
  # Projections as 2-D GEMMs on [B*T, D] rows (see the MLP below for why).
  batch, length, d_model = h.shape
  rows = h.reshape(-1, d_model)

  heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  if "qkv_kernel" in p:
    qkv = rows @ p["qkv_kernel"]
    if "qkv_bias" in p:
      qkv = qkv + p["qkv_bias"]
    q, k, v = jnp.split(qkv, [heads * head_dim, (heads + kv_heads) * head_dim], axis=-1)
  else:
    q, k, v = (rows @ p[f"{n}_kernel"].reshape(d_model, -1) for n in "qkv")
    if "q_bias" in p:
      q, k, v = (x + p[f"{n}_bias"].reshape(-1) for x, n in zip((q, k, v), "qkv"))
  q = q.reshape(batch, length, heads, head_dim)
  k, v = (x.reshape(batch, length, kv_heads, head_dim) for x in (k, v))
  if rope is not None:
    cos, sin = rope
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
  if kv is not None:
    # kv: this layer's [B, Hkv, S, Dh] key and value caches.
    cache_k, cache_v = kv
    zero = jnp.zeros((), jnp.int32)
    start = (zero, zero, cache_index, zero)
    cache_k = jax.lax.dynamic_update_slice(cache_k, jnp.swapaxes(k, 1, 2).astype(cache_k.dtype), start)
    cache_v = jax.lax.dynamic_update_slice(cache_v, jnp.swapaxes(v, 1, 2).astype(cache_v.dtype), start)
    new_kv = (cache_k, cache_v)
    attn = _attention(q, cache_k.astype(dtype), cache_v.astype(dtype), attn_mask, head_major=True)
  else:
    new_kv = None
    attn = _dot_product_attention(q, k, v, attn_mask, attention)
  out = (attn.reshape(batch * length, -1) @ p["o_kernel"].reshape(-1, d_model)).reshape(batch, length, d_model)
  if gpt2:
    out = out + p["o_bias"]
  x = x + out

  # The MLP runs on [B*T, D] rows: XLA:CPU differentiates a [B, T, D] @ [D, F]
  # product (weight gradient contracting over both B and T, with the
  # activation fused in) about 2x slower than the same 2-D GEMMs
  # (benchmarks/RESULTS.md, "Training steps").
  rows = x.reshape(-1, x.shape[-1])
  if gpt2:
    h = _layer_norm(rows, p["mlp_norm_scale"], p["mlp_norm_bias"], cfg.norm_eps)
    h = jax.nn.gelu(h @ p["fc_kernel"] + p["fc_bias"], approximate=True)
    rows = rows + h @ p["proj_kernel"] + p["proj_bias"]
  else:
    h = _rms_norm(rows, p["mlp_norm_scale"], cfg.norm_eps)
    if "gate_up_kernel" in p:
      gate, up = jnp.split(h @ p["gate_up_kernel"], 2, axis=-1)
    else:
      gate, up = h @ p["gate_kernel"], h @ p["up_kernel"]
    h = jax.nn.silu(gate) * up
    rows = rows + h @ p["down_kernel"]
  return rows.reshape(x.shape), new_kv
