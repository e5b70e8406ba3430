"""Hugging Face checkpoint import and export for the advrm_jax backbone.

Supported architectures (``config.json`` ``architectures[0]``):

* ``LlamaForCausalLM``: RMSNorm, RoPE (default, linear or llama3 scaling),
  grouped-query attention, SwiGLU, tied or untied embeddings.
* ``Qwen2ForCausalLM``: the Llama layout plus q/k/v biases.
* ``GPT2LMHeadModel``: learned positions, LayerNorm, fused ``c_attn`` and
  ``Conv1D`` weights stored as ``[in, out]``.

Weights are read with ``safetensors.numpy`` only. PyTorch ``.bin`` files are
pickles that can run arbitrary code when loaded, so they are refused rather
than silently routed through ``torch.load``.

One table of tensor rules per family (``_tensor_rules``) drives both
directions: every rule names one HF tensor, its HF shape, the backbone
parameters it feeds and the two layout conversions. Import and export can
therefore not drift apart, and the round-trip test checks both at once.

Parameters come back as a nested dict shaped like ``nnx.to_pure_dict`` of the
``Transformer``'s state (``{"embed": ..., "layers": {"q_kernel": ...}}``), so
``nnx.replace_by_pure_dict(state, params)`` followed by ``nnx.merge`` builds
the model; ``model_from_params`` does exactly that without ever running the
random initialiser (the module is built under ``nnx.eval_shape``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from advrm_jax.data.tokenizer import HFTokenizer
from advrm_jax.models.config import DTYPES, ModelConfig
from advrm_jax.models.transformer import Transformer, layer_param_shapes

PathLike = str | os.PathLike[str]
Params = dict[str, Any]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

# HF architecture name -> (model_type, family). "family" selects the tensor
# naming scheme; Qwen2 shares Llama's names and only adds q/k/v biases.
_ARCHITECTURES = {
  "LlamaForCausalLM": ("llama", "llama"),
  "Qwen2ForCausalLM": ("qwen2", "llama"),
  "GPT2LMHeadModel": ("gpt2", "gpt2"),
}
_MODEL_TYPES = {model_type: arch for arch, (model_type, _) in _ARCHITECTURES.items()}

# Prefix of every backbone tensor (everything but the LM head) per family.
# Checkpoints saved from the bare ``LlamaModel`` / ``GPT2Model`` (e.g. the
# original ``gpt2`` repository) omit it; ``params_from_hf_tensors`` adds it.
_PREFIX = {"llama": "model.", "gpt2": "transformer."}

# Tensors that carry no parameters: RoPE ``inv_freq`` buffers of old Llama
# exports and GPT-2's causal-mask buffers. Dropped without a warning.
_IGNORED = (
  re.compile(r".*rotary_emb\.inv_freq$"),
  re.compile(r".*\.attn\.(masked_)?bias$"),
)

# Rope keys each supported rope type needs (besides rope_type/rope_theta).
_ROPE_KEYS = {
  "default": (),
  "linear": ("factor",),
  "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}

# GPT-2 activations that are the tanh approximation our backbone computes.
_GPT2_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


# ---------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------


def _architecture(hf_config: Mapping[str, Any]) -> str:
  """Returns the supported HF architecture name of a config dict."""
  archs = hf_config.get("architectures") or []
  if archs:
    arch = archs[0]
    if arch not in _ARCHITECTURES:
      raise ValueError(f"architectures: unsupported architecture {arch!r}; supported: {sorted(_ARCHITECTURES)}")
    return arch
  # Configs written by hand or by converters sometimes only name the type.
  model_type = hf_config.get("model_type")
  if model_type in _MODEL_TYPES:
    return _MODEL_TYPES[model_type]
  raise ValueError(
    f"architectures: missing, and model_type {model_type!r} is not one of "
    f"{sorted(_MODEL_TYPES)}; supported architectures: {sorted(_ARCHITECTURES)}"
  )


def _rope_from_hf(hf_config: Mapping[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...]]:
  """Reads RoPE settings from either transformers 5 or legacy fields.

  transformers 5 writes ``rope_parameters = {"rope_type", "rope_theta", ...}``;
  older configs have a top-level ``rope_theta`` and an optional
  ``rope_scaling`` dict whose type key is ``rope_type`` or (older still)
  ``type``. A non-empty ``rope_scaling`` takes precedence over
  ``rope_parameters``, mirroring transformers 5's
  ``convert_rope_params_to_dict``; ``rope_theta`` inside the dict takes
  precedence over the top-level one.

  Returns:
    (rope_theta, rope_scaling as sorted (key, value) pairs; empty = plain).
  """
  field = "rope_scaling" if hf_config.get("rope_scaling") else "rope_parameters"
  rope = dict(hf_config.get(field) or {})
  theta = (
    rope.get("rope_theta")
    or hf_config.get("rope_theta")
    or (hf_config.get("rope_parameters") or {}).get("rope_theta")
    or 10000.0
  )
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in _ROPE_KEYS:
    raise ValueError(f"{field}.rope_type: unsupported rope type {rope_type!r}; supported: {sorted(_ROPE_KEYS)}")
  partial = rope.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0))
  if partial not in (None, 1, 1.0):
    raise ValueError(f"{field}.partial_rotary_factor: only full rotary embeddings are supported, got {partial}")
  if rope_type == "default":
    return float(theta), ()
  scaling: dict[str, Any] = {"rope_type": rope_type}
  for key in _ROPE_KEYS[rope_type]:
    value = rope.get(key)
    if value is None and key == "original_max_position_embeddings":
      # transformers falls back to the model's context length.
      value = hf_config.get("max_position_embeddings")
    if value is None:
      raise ValueError(f"{field}.{key}: required for rope_type {rope_type!r}")
    scaling[key] = int(value) if key == "original_max_position_embeddings" else float(value)
  return float(theta), tuple(sorted(scaling.items()))


def _require(hf_config: Mapping[str, Any], key: str) -> Any:
  if hf_config.get(key) is None:
    raise ValueError(f"{key}: missing from the Hugging Face config")
  return hf_config[key]


def _dtype_name(dtype: Any) -> str:
  """'float32' for 'float32', jnp.float32 or np.dtype('float32')."""
  name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f"dtype: unsupported {dtype!r}; expected one of {tuple(DTYPES)}")
  return name


def model_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """Builds a ``ModelConfig`` from a Hugging Face ``config.json`` dict.

  Missing optional keys take transformers' class defaults, so a minimal
  config means the same thing here as in transformers.

  Args:
    hf_config: The parsed ``config.json``.
    **overrides: ``ModelConfig`` fields to set afterwards (e.g. ``dtype``,
      ``param_dtype``, ``max_seq_len``).

  Returns:
    The backbone config.

  Raises:
    ValueError: Unsupported architecture, rope type or architectural option;
      the message names the offending config field.
  """
  arch = _architecture(hf_config)
  model_type, family = _ARCHITECTURES[arch]
  if family == "gpt2":
    d_model = int(_require(hf_config, "n_embd"))
    heads = int(_require(hf_config, "n_head"))
    if d_model % heads:
      raise ValueError(f"n_head: {heads} does not divide n_embd {d_model}")
    act = hf_config.get("activation_function", "gelu_new")
    if act not in _GPT2_TANH_GELUS:
      raise ValueError(
        f"activation_function: {act!r} is not supported; the backbone uses the tanh GELU ({_GPT2_TANH_GELUS})"
      )
    if not hf_config.get("scale_attn_weights", True):
      raise ValueError("scale_attn_weights: False is not supported (attention is always scaled by 1/sqrt(head_dim))")
    if hf_config.get("scale_attn_by_inverse_layer_idx", False):
      raise ValueError("scale_attn_by_inverse_layer_idx: True is not supported")
    if hf_config.get("add_cross_attention", False):
      raise ValueError("add_cross_attention: True is not supported")
    values = dict(
      arch="gpt2",
      vocab_size=int(_require(hf_config, "vocab_size")),
      d_model=d_model,
      num_layers=int(_require(hf_config, "n_layer")),
      num_heads=heads,
      num_kv_heads=heads,
      head_dim=d_model // heads,
      d_ff=int(hf_config.get("n_inner") or 4 * d_model),
      max_seq_len=int(hf_config.get("n_positions", 1024)),
      norm_eps=float(hf_config.get("layer_norm_epsilon", 1e-5)),
      tie_embeddings=bool(hf_config.get("tie_word_embeddings", True)),
      qkv_bias=True,
    )
  else:
    d_model = int(_require(hf_config, "hidden_size"))
    heads = int(_require(hf_config, "num_attention_heads"))
    kv_heads = int(hf_config.get("num_key_value_heads") or heads)
    head_dim = int(hf_config.get("head_dim") or d_model // heads)
    act = hf_config.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"hidden_act: {act!r} is not supported; the backbone uses silu (SwiGLU)")
    if hf_config.get("mlp_bias", False):
      raise ValueError("mlp_bias: True is not supported")
    if model_type == "llama" and hf_config.get("attention_bias", False):
      # Llama's attention_bias also adds an o_proj bias the backbone lacks.
      raise ValueError("attention_bias: True is not supported for llama (o_proj bias)")
    if model_type == "qwen2" and hf_config.get("use_sliding_window", False):
      raise ValueError("use_sliding_window: True is not supported")
    if int(hf_config.get("pretraining_tp", 1) or 1) != 1:
      raise ValueError("pretraining_tp: only 1 is supported")
    rope_theta, rope_scaling = _rope_from_hf(hf_config)
    default_max = 32768 if model_type == "qwen2" else 2048
    # The gpt2 branch's ModelConfig fields, read from the llama/qwen2 config keys (other names and defaults).
    values = dict(
      arch="llama",
      vocab_size=int(_require(hf_config, "vocab_size")),
      d_model=d_model,
      num_layers=int(_require(hf_config, "num_hidden_layers")),
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=head_dim,
      d_ff=int(_require(hf_config, "intermediate_size")),
      max_seq_len=int(hf_config.get("max_position_embeddings", default_max)),
      norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
      rope_theta=rope_theta,
      rope_scaling=rope_scaling,
      tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2",
    )
  for key in ("dtype", "param_dtype"):
    if key in overrides:
      overrides[key] = _dtype_name(overrides[key])
  values.update(overrides)
  return ModelConfig(**values)


def hf_config_from_model_config(cfg: ModelConfig, tokenizer: Any = None) -> dict[str, Any]:
  """The ``config.json`` dict transformers 5 loads for ``cfg``.

  A llama-family config with q/k/v biases is exported as Qwen2 (Llama's
  ``attention_bias`` would also expect an o_proj bias).

  Args:
    cfg: The backbone config.
    tokenizer: Optional tokenizer (``HFTokenizer`` or transformers) whose
      bos/eos/pad ids are recorded.

  Returns:
    A JSON-serialisable dict.
  """
  if cfg.arch == "gpt2":
    if cfg.num_kv_heads != cfg.num_heads or cfg.num_heads * cfg.head_dim != cfg.d_model:
      raise ValueError("GPT-2 export needs num_kv_heads == num_heads and num_heads * head_dim == d_model")
    out: dict[str, Any] = {
      "architectures": ["GPT2LMHeadModel"],
      "model_type": "gpt2",
      "vocab_size": cfg.vocab_size,
      "n_embd": cfg.d_model,
      "n_layer": cfg.num_layers,
      "n_head": cfg.num_heads,
      "n_inner": cfg.d_ff,
      "n_positions": cfg.max_seq_len,
      "layer_norm_epsilon": cfg.norm_eps,
      "activation_function": "gelu_new",
      "scale_attn_weights": True,
      "tie_word_embeddings": cfg.tie_embeddings,
    }
  else:
    qwen2 = cfg.qkv_bias
    rope = {"rope_type": "default", **cfg.rope_scaling_dict, "rope_theta": cfg.rope_theta}
    out = {
      "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
      "model_type": "qwen2" if qwen2 else "llama",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.norm_eps,
      "rope_parameters": rope,
      "tie_word_embeddings": cfg.tie_embeddings,
    }
    if qwen2:
      out.update(use_sliding_window=False, sliding_window=None)
    else:
      out.update(attention_bias=False, mlp_bias=False)
  out["dtype"] = cfg.param_dtype
  # Always written, null without a tokenizer: the transformers class defaults
  # (GPT-2's 50256, Llama's 1/2) would name ids this model may not have.
  hf_tok = getattr(tokenizer, "hf_tokenizer", tokenizer)
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    value = getattr(hf_tok, key, None) if hf_tok is not None else None
    out[key] = None if value is None else int(value)
  return out


# ---------------------------------------------------------------------------
# Tensor layout rules.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rule:
  """One HF tensor and the backbone parameter(s) it holds.

  Attributes:
    hf_name: HF tensor name; per-layer rules contain ``{i}``.
    hf_shape: Expected HF shape.
    ours: Backbone parameter names (layer parameters without the layer axis).
    to_ours: HF array -> tuple of arrays, one per name in ``ours``.
    to_hf: arrays in ``ours`` order -> HF array.
  """

  hf_name: str
  hf_shape: tuple[int, ...]
  ours: tuple[str, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[..., np.ndarray]


def _same(hf_name: str, ours: str, shape: tuple[int, ...]) -> _Rule:
  return _Rule(hf_name, shape, (ours,), lambda w: (w,), lambda x: x)


def _linear(hf_name: str, ours: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> _Rule:
  """torch ``nn.Linear`` weight [out, in] <-> our kernel [*in, *out]."""
  n_in, n_out = math.prod(in_shape), math.prod(out_shape)
  return _Rule(
    hf_name, (n_out, n_in), (ours,), lambda w: (w.T.reshape(*in_shape, *out_shape),), lambda x: x.reshape(n_in, n_out).T
  )


def _conv1d(hf_name: str, ours: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> _Rule:
  """GPT-2 ``Conv1D`` weight [in, out] <-> our kernel [*in, *out]."""
  n_in, n_out = math.prod(in_shape), math.prod(out_shape)
  return _Rule(
    hf_name, (n_in, n_out), (ours,), lambda w: (w.reshape(*in_shape, *out_shape),), lambda x: x.reshape(n_in, n_out)
  )


def _bias(hf_name: str, ours: str, shape: tuple[int, ...]) -> _Rule:
  """Flat bias [prod(shape)] <-> our bias [*shape]."""
  size = math.prod(shape)
  return _Rule(hf_name, (size,), (ours,), lambda b: (b.reshape(shape),), lambda x: x.reshape(size))


def _tensor_rules(cfg: ModelConfig) -> tuple[list[_Rule], list[_Rule]]:
  """(global rules, per-layer rules) for the family of ``cfg``."""
  d, h, kv, hd, f, v = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size)
  if cfg.arch == "gpt2":
    if kv != h:
      raise ValueError(f"num_kv_heads: GPT-2 needs num_kv_heads == num_heads, got {kv} != {h}")
    p = "transformer.h.{i}."
    hh = h * hd
    layer = [
      _same(p + "ln_1.weight", "attn_norm_scale", (d,)),
      _same(p + "ln_1.bias", "attn_norm_bias", (d,)),
      # Fused q|k|v projection, Conv1D layout [D, 3 * H * Dh].
      _Rule(
        p + "attn.c_attn.weight",
        (d, 3 * hh),
        ("q_kernel", "k_kernel", "v_kernel"),
        lambda w: tuple(w.reshape(d, 3, h, hd).transpose(1, 0, 2, 3)),
        lambda q, k, v_: np.stack([q, k, v_], axis=1).reshape(d, 3 * hh),
      ),
      _Rule(
        p + "attn.c_attn.bias",
        (3 * hh,),
        ("q_bias", "k_bias", "v_bias"),
        lambda b: tuple(b.reshape(3, h, hd)),
        lambda q, k, v_: np.stack([q, k, v_]).reshape(3 * hh),
      ),
      _conv1d(p + "attn.c_proj.weight", "o_kernel", (h, hd), (d,)),
      _same(p + "attn.c_proj.bias", "o_bias", (d,)),
      _same(p + "ln_2.weight", "mlp_norm_scale", (d,)),
      _same(p + "ln_2.bias", "mlp_norm_bias", (d,)),
      _conv1d(p + "mlp.c_fc.weight", "fc_kernel", (d,), (f,)),
      _same(p + "mlp.c_fc.bias", "fc_bias", (f,)),
      _conv1d(p + "mlp.c_proj.weight", "proj_kernel", (f,), (d,)),
      _same(p + "mlp.c_proj.bias", "proj_bias", (d,)),
    ]
    glob = [
      _same("transformer.wte.weight", "embed", (v, d)),
      _same("transformer.wpe.weight", "pos_embed", (cfg.max_seq_len, d)),
      _same("transformer.ln_f.weight", "final_norm_scale", (d,)),
      _same("transformer.ln_f.bias", "final_norm_bias", (d,)),
    ]
  else:
    p = "model.layers.{i}."
    layer = [
      _same(p + "input_layernorm.weight", "attn_norm_scale", (d,)),
      _linear(p + "self_attn.q_proj.weight", "q_kernel", (d,), (h, hd)),
      _linear(p + "self_attn.k_proj.weight", "k_kernel", (d,), (kv, hd)),
      _linear(p + "self_attn.v_proj.weight", "v_kernel", (d,), (kv, hd)),
      _linear(p + "self_attn.o_proj.weight", "o_kernel", (h, hd), (d,)),
      _same(p + "post_attention_layernorm.weight", "mlp_norm_scale", (d,)),
      _linear(p + "mlp.gate_proj.weight", "gate_kernel", (d,), (f,)),
      _linear(p + "mlp.up_proj.weight", "up_kernel", (d,), (f,)),
      _linear(p + "mlp.down_proj.weight", "down_kernel", (f,), (d,)),
    ]
    if cfg.qkv_bias:
      layer += [
        _bias(p + "self_attn.q_proj.bias", "q_bias", (h, hd)),
        _bias(p + "self_attn.k_proj.bias", "k_bias", (kv, hd)),
        _bias(p + "self_attn.v_proj.bias", "v_bias", (kv, hd)),
      ]
    glob = [
      _same("model.embed_tokens.weight", "embed", (v, d)),
      _same("model.norm.weight", "final_norm_scale", (d,)),
    ]
  if not cfg.tie_embeddings:
    glob.append(_linear("lm_head.weight", "lm_head", (d,), (v,)))
  return glob, layer


def _numpy_dtype(name: str) -> np.dtype:
  # jnp.bfloat16 is ml_dtypes' numpy bfloat16, so this covers all DTYPES.
  return np.dtype(DTYPES[name])


# ---------------------------------------------------------------------------
# Import.
# ---------------------------------------------------------------------------


def _normalise_names(cfg: ModelConfig, tensors: Mapping[str, Any]) -> dict[str, Any]:
  """Adds the ``model.`` / ``transformer.`` prefix where a checkpoint lacks it."""
  prefix = _PREFIX["gpt2" if cfg.arch == "gpt2" else "llama"]
  out = {}
  for name, value in tensors.items():
    if not name.startswith(prefix) and name != "lm_head.weight" and prefix + name not in tensors:
      name = prefix + name
    out[name] = value
  return out


def params_from_hf_tensors(cfg: ModelConfig, tensors: Mapping[str, np.ndarray]) -> Params:
  """Converts HF-named tensors into the backbone's nested parameter dict.

  Args:
    cfg: Backbone config (``model_config_from_hf`` of the checkpoint).
    tensors: HF tensor name -> array (numpy, or anything ``np.asarray``
      accepts). Names may lack the ``model.``/``transformer.`` prefix.

  Returns:
    ``{"embed": ..., "layers": {name: [L, ...]}, ...}`` of numpy arrays in
    ``cfg.param_dtype``, matching ``nnx.to_pure_dict(nnx.state(model))``.

  Raises:
    ValueError: A tensor is missing or has the wrong shape (the message names
      the tensor and both shapes).
  """
  tensors = _normalise_names(cfg, tensors)
  np_dtype = _numpy_dtype(cfg.param_dtype)
  used: set[str] = set()

  def fetch(rule: _Rule, name: str) -> tuple[np.ndarray, ...]:
    if name not in tensors:
      raise ValueError(
        f"missing tensor {name!r} (expected shape {rule.hf_shape}) in the "
        f"{'GPT-2' if cfg.arch == 'gpt2' else 'Llama/Qwen2'} checkpoint"
      )
    value = np.asarray(tensors[name])
    if tuple(value.shape) != rule.hf_shape:
      raise ValueError(f"tensor {name!r}: expected shape {rule.hf_shape}, found {tuple(value.shape)}")
    used.add(name)
    # Cast per tensor so a bf16 checkpoint loaded as bf16 never holds an f32 copy.
    return tuple(x.astype(np_dtype) for x in rule.to_ours(value))

  glob, layer = _tensor_rules(cfg)
  params: Params = {}
  for rule in glob:
    params.update(zip(rule.ours, fetch(rule, rule.hf_name)))
  per_layer: dict[str, list[np.ndarray]] = {name: [] for rule in layer for name in rule.ours}
  for i in range(cfg.num_layers):
    for rule in layer:
      for name, value in zip(rule.ours, fetch(rule, rule.hf_name.format(i=i))):
        per_layer[name].append(value)
  params["layers"] = {name: np.stack(values) for name, values in per_layer.items()}

  expected = set(layer_param_shapes(cfg))
  if set(params["layers"]) != expected:  # A rule table bug, not a user error.
    raise AssertionError(f"layer rules cover {sorted(params['layers'])}, backbone has {sorted(expected)}")

  leftovers = sorted(
    name
    for name in tensors
    if name not in used
    and not any(p.fullmatch(name) for p in _IGNORED)
    # Tied checkpoints sometimes still store the (identical) head.
    and not (cfg.tie_embeddings and name == "lm_head.weight")
  )
  if leftovers:
    shown = ", ".join(leftovers[:20]) + (f", ... ({len(leftovers)} total)" if len(leftovers) > 20 else "")
    warnings.warn(f"ignoring {len(leftovers)} unused checkpoint tensor(s): {shown}", stacklevel=2)
  return params


def model_from_params(cfg: ModelConfig, params: Params) -> Transformer:
  """Builds a ``Transformer`` holding ``params`` (a pure nested dict).

  The module is created under ``nnx.eval_shape`` so no random initialisation
  runs (that would cost as much as the real weights for a large model); the
  abstract state is then filled with ``nnx.replace_by_pure_dict``.

  Raises:
    ValueError: ``params`` lacks a parameter, has an extra one, or has a
      wrong shape (named).
  """
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  want = {"/".join(map(str, k)): v for k, v in nnx.traversals.flatten_mapping(nnx.to_pure_dict(state)).items()}
  have = {"/".join(map(str, k)): v for k, v in nnx.traversals.flatten_mapping(params).items()}
  if set(want) != set(have):
    raise ValueError(
      f"parameters do not match the backbone: missing {sorted(set(want) - set(have))}, "
      f"unexpected {sorted(set(have) - set(want))}"
    )
  for name, spec in want.items():
    if tuple(have[name].shape) != tuple(spec.shape):
      raise ValueError(f"parameter {name!r}: expected shape {tuple(spec.shape)}, found {tuple(have[name].shape)}")
  device_params = jax.tree.map(lambda x: jnp.asarray(x, cfg.jnp_param_dtype), params)
  nnx.replace_by_pure_dict(state, device_params)
  return nnx.merge(graphdef, state)


def model_from_hf_tensors(
  config_dict: Mapping[str, Any],
  tensors: Mapping[str, np.ndarray],
  dtype: Any = "float32",
  param_dtype: Any = "float32",
  **overrides: Any,
) -> tuple[ModelConfig, Transformer]:
  """Builds (config, model) from an HF config dict and HF-named tensors.

  Shared by ``load_hf_checkpoint`` and the GGUF importer.

  Args:
    config_dict: HF ``config.json`` contents.
    tensors: HF tensor name -> numpy array.
    dtype: Compute dtype (name or dtype).
    param_dtype: Parameter storage dtype (name or dtype).
    **overrides: Further ``ModelConfig`` fields.
  """
  cfg = model_config_from_hf(config_dict, dtype=dtype, param_dtype=param_dtype, **overrides)
  return cfg, model_from_params(cfg, params_from_hf_tensors(cfg, tensors))


def read_hf_tensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads every tensor of a local HF checkpoint directory with safetensors.

  Uses ``model.safetensors.index.json`` when present (sharded checkpoint),
  else ``model.safetensors``.

  Raises:
    ValueError: Only pickle-based ``.bin`` weights exist (named).
    FileNotFoundError: No weights at all, or a shard named in the index is
      missing.
  """
  path = pathlib.Path(path)
  index_file = path / SAFETENSORS_INDEX_FILE
  if index_file.exists():
    weight_map = json.loads(index_file.read_text())["weight_map"]
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = path / shard
      if not shard_path.exists():
        raise FileNotFoundError(f"{shard_path}: shard listed in {SAFETENSORS_INDEX_FILE} is missing")
      tensors.update(safetensors.numpy.load_file(shard_path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f"{SAFETENSORS_INDEX_FILE} lists tensors absent from their shards: {missing[:10]}")
    return tensors
  single = path / SAFETENSORS_FILE
  if single.exists():
    return dict(safetensors.numpy.load_file(single))
  bins = sorted(p.name for p in path.glob("*.bin"))
  if bins:
    raise ValueError(
      f"{path / bins[0]}: refusing to load PyTorch .bin weights (pickle files can run arbitrary "
      f"code); only {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} are read. Convert the "
      "checkpoint to safetensors first (e.g. from_pretrained(...).save_pretrained(..., "
      "safe_serialization=True) in a trusted environment)."
    )
  raise FileNotFoundError(f"{path}: neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX_FILE} found")


def load_hf_checkpoint(
  path: PathLike, dtype: Any = "float32", param_dtype: Any = "float32", **overrides: Any
) -> tuple[ModelConfig, Transformer]:
  """Loads a local Hugging Face checkpoint directory.

  Args:
    path: Directory with ``config.json`` and safetensors weights.
    dtype: Compute dtype of the returned model.
    param_dtype: Storage dtype of its parameters.
    **overrides: Further ``ModelConfig`` fields (e.g. ``max_seq_len``).

  Returns:
    (config, model).
  """
  path = pathlib.Path(path)
  config_file = path / CONFIG_FILE
  if not config_file.exists():
    raise FileNotFoundError(f"{config_file}: no {CONFIG_FILE} in the checkpoint directory")
  hf_config = json.loads(config_file.read_text())
  # Validate the config before reading (possibly many GB of) weights.
  model_config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, **overrides)
  return model_from_hf_tensors(hf_config, read_hf_tensors(path), dtype=dtype, param_dtype=param_dtype, **overrides)


def load_hf_tokenizer(path: PathLike) -> Any:
  """Loads the tokenizer of a local checkpoint directory.

  Returns:
    An ``advrm_jax.data.tokenizer.HFTokenizer`` (local files only).
  """
  return HFTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------


def _pure_params(model_or_state: Any) -> Params:
  """Nested dict of numpy arrays from a module, an ``nnx.State`` or a dict."""
  if isinstance(model_or_state, nnx.Module):
    model_or_state = nnx.state(model_or_state, nnx.Param)
  if isinstance(model_or_state, nnx.State):
    model_or_state = nnx.to_pure_dict(model_or_state)
  # Unwrap Variables left in a plain dict; device_get copies to host once.
  pure = jax.tree.map(
    lambda x: x[...] if isinstance(x, nnx.Variable) else x,
    model_or_state,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )
  return jax.tree.map(np.asarray, jax.device_get(pure))


def hf_tensors_from_params(cfg: ModelConfig, model_or_state: Any, dtype: Any = None) -> dict[str, np.ndarray]:
  """Converts backbone parameters to HF-named tensors (inverse of import).

  Args:
    cfg: The backbone config.
    model_or_state: A ``Transformer``, its ``nnx.State`` or the pure dict.
    dtype: Output dtype; default keeps each parameter's dtype.

  Returns:
    HF tensor name -> contiguous numpy array. Tied models get no
    ``lm_head.weight`` (transformers ties it on load).
  """
  params = _pure_params(model_or_state)
  out_dtype = None if dtype is None else _numpy_dtype(_dtype_name(dtype))
  glob, layer = _tensor_rules(cfg)
  tensors: dict[str, np.ndarray] = {}

  def put(name: str, rule: _Rule, arrays: list[np.ndarray]):
    value = rule.to_hf(*arrays)
    if out_dtype is not None:
      value = value.astype(out_dtype)
    tensors[name] = np.ascontiguousarray(value)

  for rule in glob:
    put(rule.hf_name, rule, [params[name] for name in rule.ours])
  for i in range(cfg.num_layers):
    for rule in layer:
      put(rule.hf_name.format(i=i), rule, [params["layers"][name][i] for name in rule.ours])
  return tensors


def _parse_size(size: int | str) -> int:
  """Bytes from an int or a string like '5GB', '500MB', '2GiB'."""
  if isinstance(size, int):
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", size.upper())
  if not match:
    raise ValueError(f"max_shard_size: cannot parse {size!r}")
  number, unit = float(match.group(1)), match.group(2) or "B"
  base = 1024 if "I" in unit else 1000
  return int(number * base ** "BKMGT".index(unit[0]))


def save_hf_checkpoint(
  model: Any,
  cfg: ModelConfig,
  path: PathLike,
  tokenizer: Any = None,
  max_shard_size: int | str | None = None,
  dtype: Any = None,
) -> None:
  """Writes a Hugging Face checkpoint directory that transformers 5 loads.

  Args:
    model: A ``Transformer`` (or its state / pure parameter dict).
    cfg: Its config.
    path: Output directory (created if needed).
    tokenizer: Optional ``HFTokenizer`` or transformers tokenizer, saved with
      ``save_pretrained`` and recorded in the config's token ids.
    max_shard_size: Bytes (or '2GB'-style string). When the weights exceed
      it, they are split into ``model-0000k-of-0000n.safetensors`` shards plus
      ``model.safetensors.index.json``; a single tensor larger than the limit
      gets a shard of its own.
    dtype: Dtype to store the weights in; default keeps the parameters'.
  """
  tensors = hf_tensors_from_params(cfg, model, dtype=dtype)
  hf_config = hf_config_from_model_config(cfg, tokenizer)
  if dtype is not None:
    hf_config["dtype"] = _dtype_name(dtype)
  write_hf_directory(path, hf_config, tensors, tokenizer=tokenizer, max_shard_size=max_shard_size)


def write_hf_directory(
  path: PathLike,
  hf_config: Mapping[str, Any],
  tensors: Mapping[str, np.ndarray],
  tokenizer: Any = None,
  max_shard_size: int | str | None = None,
) -> None:
  """Writes ``config.json``, the safetensors weights and the tokenizer files.

  The writer behind ``save_hf_checkpoint`` and the reward-model export
  (``advrm_jax.checkpoints.hf_reward``).

  Args:
    path: Output directory (created if needed).
    hf_config: The ``config.json`` dict.
    tensors: HF tensor name -> contiguous numpy array, written as they are.
    tokenizer: Optional ``HFTokenizer`` or transformers tokenizer, saved with
      ``save_pretrained``.
    max_shard_size: As in ``save_hf_checkpoint``.
  """
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  if tokenizer is not None:
    hf_tok = getattr(tokenizer, "hf_tokenizer", tokenizer)
    hf_tok.save_pretrained(os.fspath(path))
    if hf_config["model_type"] == "qwen2" and "Qwen2" not in type(hf_tok).__name__:
      # transformers 5's AutoTokenizer ignores the saved tokenizer_class for
      # model_type qwen2 and rebuilds a Qwen2Tokenizer from vocab/merges.
      warnings.warn(
        f"{type(hf_tok).__name__} saved next to a qwen2 config: transformers 5 "
        "AutoTokenizer will load it as Qwen2Tokenizer, which may not reproduce it",
        stacklevel=2,
      )
  # Weights of an earlier save would shadow or mix with the new ones (the
  # index is read in preference to model.safetensors).
  for stale in [path / SAFETENSORS_FILE, path / SAFETENSORS_INDEX_FILE, *path.glob("model-*-of-*.safetensors")]:
    stale.unlink(missing_ok=True)
  # transformers checks this metadata to know the layout is PyTorch's.
  metadata = {"format": "pt"}
  total = sum(t.nbytes for t in tensors.values())
  limit = None if max_shard_size is None else _parse_size(max_shard_size)
  if limit is None or total <= limit:
    safetensors.numpy.save_file(tensors, path / SAFETENSORS_FILE, metadata=metadata)
    return
  # Greedy packing in name order, as transformers does.
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > limit:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  weight_map = {}
  for k, shard in enumerate(shards, start=1):
    filename = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
    safetensors.numpy.save_file(shard, path / filename, metadata=metadata)
    weight_map.update(dict.fromkeys(shard, filename))
  index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
  (path / SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
