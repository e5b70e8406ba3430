"""Model configuration shared by every backbone in advrm_jax.

One dataclass describes both families the backbone implements:

* ``llama``: RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP,
  optional q/k/v biases (Qwen2), tied or untied embeddings.
* ``gpt2``: learned positions, LayerNorm with bias, GELU (tanh) MLP, biases
  everywhere, tied embeddings.

The checkpoint importers (``advrm_jax.checkpoints``) build a ``ModelConfig``
from a Hugging Face config; tests and the synthetic world build small ones
directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from advrm_jax.config_node import from_node

ARCHITECTURES = ("llama", "gpt2")
ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Attention kernels (``transformer.resolve_attention``): "auto" picks cuDNN flash attention on GPU
# where the shapes and dtype allow it, else XLA's; "xla" and "cudnn" force one.
ATTENTION = ("auto", "xla", "cudnn")
# What the backward pass of a training forward keeps of each layer (``transformer.REMAT_POLICIES``):
# "none" everything, "dots" the weight GEMMs' outputs (attention and elementwise ops are recomputed),
# "full" only the layer's input (the whole layer is recomputed).
REMAT = ("none", "dots", "full")
# Where the forward multiplies by fused q|k|v and gate|up kernels (read at trace time): "cached" (prefill and
# decode with a KV cache, where per-op overhead dominates), "all" or "none" (benchmarks/bench_fused_projections.py).
# The parameters are the same in every mode; the logits agree to float rounding.
FUSED_PROJECTIONS = ("cached", "all", "none")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only transformer.

  Frozen (hashable) so it can be a static argument of jitted functions.
  """

  arch: str = "llama"
  vocab_size: int = 512
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 16
  d_ff: int = 128
  max_seq_len: int = 512
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Rope scaling as (key, value) pairs so the dataclass stays hashable, e.g.
  # (("rope_type", "llama3"), ("factor", 8.0), ...). Empty means plain RoPE.
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  tie_embeddings: bool = True
  qkv_bias: bool = False
  # Names of dtypes, not dtype objects, so configs serialise to JSON.
  # Training in bf16 with f32 master weights is param_dtype="float32", dtype="bfloat16": each layer
  # casts its weights to the compute dtype, so gradients and optimizer state stay f32.
  param_dtype: str = "float32"
  dtype: str = "float32"
  attention: str = "auto"
  remat: str = "none"
  fused_projections: str = "cached"

  def __post_init__(self):
    if self.arch not in ARCHITECTURES:
      raise ValueError(f"model.arch: unsupported architecture {self.arch!r}; expected one of {ARCHITECTURES}")
    for key in ("param_dtype", "dtype"):
      if getattr(self, key) not in DTYPES:
        raise ValueError(f"model.{key}: unsupported dtype {getattr(self, key)!r}; expected one of {tuple(DTYPES)}")
    for key, allowed in (("attention", ATTENTION), ("remat", REMAT), ("fused_projections", FUSED_PROJECTIONS)):
      if getattr(self, key) not in allowed:
        raise ValueError(f"model.{key}: unsupported value {getattr(self, key)!r}; expected one of {allowed}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads ({self.num_kv_heads})"
      )
    rope = dict(self.rope_scaling)
    if rope and rope.get("rope_type", "default") not in ROPE_TYPES:
      raise ValueError(
        f"model.rope_scaling.rope_type: unsupported {rope.get('rope_type')!r}; expected one of {ROPE_TYPES}"
      )

  @property
  def jnp_dtype(self):
    """The compute dtype as a jnp dtype."""
    return DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    """The parameter storage dtype as a jnp dtype."""
    return DTYPES[self.param_dtype]

  @property
  def rope_scaling_dict(self) -> dict[str, Any]:
    """``rope_scaling`` as a dict (empty for plain RoPE)."""
    return dict(self.rope_scaling)

  def replace(self, **changes) -> "ModelConfig":
    """A copy with the given fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (``rope_scaling`` as a dict); ``from_dict`` reads it back.

    ``fused_projections`` is written only when it is not the default "cached": model_config.json and
    rm_meta.json of a default run stay byte for byte what they were before the field existed, so older
    work dirs resume and compare equal (``rm.init_from`` checks the saved backbone against this dict),
    while a chosen mode still reaches the stages that rebuild the policy from model_config.json.
    """
    out = dataclasses.asdict(self)
    out["rope_scaling"] = dict(self.rope_scaling)
    if out["fused_projections"] == FUSED_PROJECTIONS[0]:
      del out["fused_projections"]
    return out

  @classmethod
  def from_dict(cls, values: dict[str, Any], where: str = "config.model") -> "ModelConfig":
    """Builds a config from a plain mapping (an ml_collections node, a saved model_config.json).

    Unknown keys are an error naming the key's path ``where``.<key> (``config_node.from_node``), so a typo
    in a config file does not silently fall back to a default.
    """
    values = dict(values)
    rope = values.get("rope_scaling") or {}
    if isinstance(rope, dict) or hasattr(rope, "items"):
      values["rope_scaling"] = tuple(sorted(dict(rope).items()))
    return from_node(cls, values, where)
