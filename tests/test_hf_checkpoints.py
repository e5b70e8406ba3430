"""Hugging Face checkpoint import/export: logit parity with transformers (PyTorch).

Tiny random checkpoints are built in-process (no downloads). Torch weights are
re-drawn with O(1/sqrt(fan_in)) scale, norm scales around 1 and non-zero
biases: with transformers' default 0.02 init every logit is ~0.1 and layout
bugs (a transposed kernel, a wrong RoPE) could hide under a 1e-4 tolerance.
"""

from __future__ import annotations

import json
import warnings

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from advrm_jax.checkpoints import hf  # noqa: E402
from advrm_jax.models.config import ModelConfig  # noqa: E402
from advrm_jax.models.transformer import Transformer  # noqa: E402

VOCAB = 96
ATOL = 1e-4

# name -> (config class name, kwargs). Each is built once per module.
HF_CONFIGS = {
  "llama_gqa": (
    "LlamaConfig",
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=16,  # explicit, != 32 / 4
      max_position_embeddings=128,
      rms_norm_eps=1e-5,
      tie_word_embeddings=False,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
  ),
  "llama3_rope": (
    "LlamaConfig",
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=16,
      max_position_embeddings=128,
      rms_norm_eps=1e-5,
      tie_word_embeddings=False,
      # With head_dim 16 and original length 16 the wavelengths straddle
      # both thresholds, so all three llama3 branches are exercised.
      rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
      },
    ),
  ),
  "qwen2_tied": (
    "Qwen2Config",
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=128,
      rms_norm_eps=1e-6,
      tie_word_embeddings=True,
      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
  ),
  "qwen2_untied": (
    "Qwen2Config",
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=1,
      max_position_embeddings=128,
      tie_word_embeddings=False,
    ),
  ),
  "gpt2": (
    "GPT2Config",
    dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=1),
  ),
}


def _randomise_(model) -> None:
  """Re-draws every torch parameter at a scale where layout bugs show."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if param.ndim >= 2:
        fan_in = param.shape[-1] if "c_" not in name else param.shape[0]  # Conv1D is [in, out]
        if "embed" in name or "wte" in name or "wpe" in name:
          fan_in = 1
        param.copy_(torch.randn(param.shape, generator=gen) / np.sqrt(fan_in))
      elif "norm" in name or "ln_" in name:
        if name.endswith("weight"):
          param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
        else:
          param.copy_(0.2 * torch.randn(param.shape, generator=gen))
      else:  # Biases.
        param.copy_(0.2 * torch.randn(param.shape, generator=gen))


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  """name -> (torch model, single-file dir, sharded dir)."""
  torch.manual_seed(0)
  out = {}
  for name, (config_cls, kwargs) in HF_CONFIGS.items():
    config = getattr(transformers, config_cls)(**kwargs)
    config._attn_implementation = "eager"  # pylint: disable=protected-access
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    _randomise_(model)
    if config.tie_word_embeddings:
      model.tie_weights()
    single = tmp_path_factory.mktemp(f"{name}_single")
    model.save_pretrained(single)
    sharded = tmp_path_factory.mktemp(f"{name}_sharded")
    model.save_pretrained(sharded, max_shard_size="20KB")
    out[name] = (model, single, sharded)
  return out


def _batch(padding: str) -> tuple[np.ndarray, np.ndarray]:
  """Two rows of length 10; the second has 4 pad slots on the given side."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(2, VOCAB, size=(2, 10)).astype(np.int32)
  mask = np.ones((2, 10), np.int32)
  if padding == "right":
    mask[1, 6:] = 0
  else:
    mask[1, :4] = 0
  tokens[mask == 0] = 0
  return tokens, mask


def _torch_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  # The positions our backbone derives from the mask, passed explicitly so
  # transformers does not use 0..T-1 for left-padded rows.
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(tokens).long(),
      attention_mask=torch.from_numpy(mask).long(),
      position_ids=torch.from_numpy(positions).long(),
    )
  return out.logits.float().numpy()


@nnx.jit
def _forward(model, tokens, mask):
  # One compiled program per config instead of op-by-op eager dispatch,
  # which dominates the run time of these tiny models.
  return model(tokens, mask)


def _our_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  return np.asarray(_forward(model, jnp.asarray(tokens), jnp.asarray(mask)).logits)


def _max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  """Max abs difference over real-token positions only (pad rows are junk)."""
  return float(np.max(np.abs(a - b)[mask.astype(bool)]))


def _pure(model) -> dict:
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


# ---------------------------------------------------------------------------
# Import parity.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_import_logits_match_transformers(hf_models, name, layout):
  torch_model, single, sharded = hf_models[name]
  path = single if layout == "single" else sharded
  if layout == "sharded":
    assert (path / hf.SAFETENSORS_INDEX_FILE).exists(), "save_pretrained did not shard"
  cfg, model = hf.load_hf_checkpoint(path)
  assert cfg.arch == ("gpt2" if name == "gpt2" else "llama")
  assert cfg.tie_embeddings == torch_model.config.tie_word_embeddings
  for padding in ("right", "left"):
    tokens, mask = _batch(padding)
    diff = _max_diff(_our_logits(model, tokens, mask), _torch_logits(torch_model, tokens, mask), mask)
    print(f"{name} {layout} {padding}: max |logit diff| = {diff:.2e}")
    assert diff <= ATOL, (name, layout, padding, diff)


def test_import_config_fields(hf_models):
  cfg, _ = hf.load_hf_checkpoint(hf_models["llama_gqa"][1])
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 16)
  assert cfg.rope_scaling == () and not cfg.qkv_bias
  cfg, _ = hf.load_hf_checkpoint(hf_models["llama3_rope"][1])
  assert cfg.rope_scaling_dict == {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
  }
  assert cfg.rope_theta == 500000.0
  cfg, _ = hf.load_hf_checkpoint(hf_models["qwen2_tied"][1])
  assert cfg.qkv_bias and cfg.tie_embeddings and cfg.rope_theta == 1e6
  cfg, _ = hf.load_hf_checkpoint(hf_models["gpt2"][1])
  assert (cfg.d_ff, cfg.max_seq_len, cfg.head_dim) == (128, 32, 8)


def test_llama3_scaling_matters(hf_models):
  """Dropping the llama3 scaling changes logits: the parity test has teeth."""
  torch_model, path, _ = hf_models["llama3_rope"]
  cfg, model = hf.load_hf_checkpoint(path)
  plain = hf.model_from_params(cfg.replace(rope_scaling=()), _pure(model))
  tokens, mask = _batch("right")
  ref = _torch_logits(torch_model, tokens, mask)
  assert _max_diff(_our_logits(plain, tokens, mask), ref, mask) > 100 * ATOL


def test_legacy_rope_fields_equal_rope_parameters():
  base = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
  )
  new = hf.model_config_from_hf(
    {
      **base,
      "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
      },
    }
  )
  legacy = hf.model_config_from_hf(
    {
      **base,
      "rope_theta": 5e5,
      "rope_scaling": {
        "type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
      },
    }
  )
  assert new == legacy
  plain_legacy = hf.model_config_from_hf({**base, "rope_theta": 123.0})
  assert plain_legacy.rope_theta == 123.0 and plain_legacy.rope_scaling == ()
  assert plain_legacy.head_dim == 8 and plain_legacy.num_kv_heads == 4


def test_unprefixed_gpt2_names_and_ignored_buffers(hf_models):
  """Checkpoints saved from GPT2Model lack 'transformer.'; buffers are dropped."""
  torch_model, path, _ = hf_models["gpt2"]
  config = json.loads((path / hf.CONFIG_FILE).read_text())
  tensors = safetensors.numpy.load_file(path / hf.SAFETENSORS_FILE)
  bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), bool))  # Old causal-mask buffer.
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Known buffers must not warn.
    _, model = hf.model_from_hf_tensors(config, bare)
  tokens, mask = _batch("left")
  assert _max_diff(_our_logits(model, tokens, mask), _torch_logits(torch_model, tokens, mask), mask) <= ATOL


def test_unknown_leftovers_warn(hf_models):
  path = hf_models["llama_gqa"][1]
  config = json.loads((path / hf.CONFIG_FILE).read_text())
  tensors = dict(safetensors.numpy.load_file(path / hf.SAFETENSORS_FILE))
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
  tensors["model.layers.0.mystery.weight"] = np.ones(3, np.float32)
  with pytest.warns(UserWarning, match=r"model\.layers\.0\.mystery\.weight") as record:
    hf.model_from_hf_tensors(config, tensors)
  assert not any("inv_freq" in str(w.message) for w in record)


def test_bf16_close_to_f32(hf_models):
  """bf16 compute (and bf16 params) stays close to f32.

  Loose tolerance: bf16 has an 8-bit mantissa (~0.4% relative error per op);
  over two layers the logits (|logit| up to ~10 here) are allowed 5% of the
  logit range.
  """
  _, path, _ = hf_models["llama_gqa"]
  _, model32 = hf.load_hf_checkpoint(path)
  tokens, mask = _batch("left")
  ref = _our_logits(model32, tokens, mask)
  scale = float(np.max(np.abs(ref[mask.astype(bool)])))
  for param_dtype in ("float32", "bfloat16"):
    cfg, model = hf.load_hf_checkpoint(path, dtype="bfloat16", param_dtype=param_dtype)
    assert model.embed[...].dtype == jnp.dtype(param_dtype)
    out = _forward(model, jnp.asarray(tokens), jnp.asarray(mask))
    assert out.hidden.dtype == jnp.bfloat16 and cfg.dtype == "bfloat16"
    logits = np.asarray(out.logits, np.float32)
    assert np.all(np.isfinite(logits))
    diff = _max_diff(logits, ref, mask)
    print(f"bf16 compute, {param_dtype} params: max diff {diff:.3f} (max |logit| {scale:.2f})")
    assert diff <= 0.05 * scale, (param_dtype, diff, scale)


# ---------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------


def _random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
  """Our model with O(1) random parameters (the default init is too small)."""
  rng = np.random.default_rng(seed)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))

  def draw(path, spec):
    name = str(path[-1].key)
    if "norm_scale" in name:
      return (1.0 + 0.2 * rng.standard_normal(spec.shape)).astype(np.float32)
    if "bias" in name:
      return (0.2 * rng.standard_normal(spec.shape)).astype(np.float32)
    fan_in = {
      "embed": 1,
      "pos_embed": 1,
      "down_kernel": cfg.d_ff,
      "proj_kernel": cfg.d_ff,
      "o_kernel": cfg.num_heads * cfg.head_dim,
    }.get(name, cfg.d_model)
    return (rng.standard_normal(spec.shape) / np.sqrt(fan_in)).astype(np.float32)

  return hf.model_from_params(cfg, jax.tree_util.tree_map_with_path(draw, shapes))


EXPORT_CONFIGS = {
  "llama_gqa": ModelConfig(
    arch="llama",
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    d_ff=64,
    max_seq_len=64,
    tie_embeddings=False,
  ),
  "llama3_rope": ModelConfig(
    arch="llama",
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    d_ff=64,
    max_seq_len=64,
    rope_theta=5e5,
    tie_embeddings=True,
    rope_scaling=(
      ("factor", 8.0),
      ("high_freq_factor", 4.0),
      ("low_freq_factor", 1.0),
      ("original_max_position_embeddings", 16),
      ("rope_type", "llama3"),
    ),
  ),
  "qwen2": ModelConfig(
    arch="llama",
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    d_ff=64,
    max_seq_len=64,
    qkv_bias=True,
    norm_eps=1e-6,
    rope_theta=1e6,
    tie_embeddings=True,
  ),
  "gpt2": ModelConfig(
    arch="gpt2",
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    head_dim=8,
    d_ff=128,
    max_seq_len=32,
    qkv_bias=True,
  ),
}


@pytest.mark.parametrize("name", sorted(EXPORT_CONFIGS))
def test_export_loads_in_transformers(tmp_path, name):
  cfg = EXPORT_CONFIGS[name]
  model = _random_model(cfg)
  # Shard the GPT-2 export to cover the index writer too.
  max_shard = "20KB" if name == "gpt2" else None
  hf.save_hf_checkpoint(model, cfg, tmp_path, max_shard_size=max_shard)
  if max_shard:
    index = json.loads((tmp_path / hf.SAFETENSORS_INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, dtype=torch.float32, attn_implementation="eager"
  ).eval()
  expected_arch = {"gpt2": "GPT2LMHeadModel", "qwen2": "Qwen2ForCausalLM"}.get(name, "LlamaForCausalLM")
  assert type(torch_model).__name__ == expected_arch
  for padding in ("right", "left"):
    tokens, mask = _batch(padding)
    diff = _max_diff(_our_logits(model, tokens, mask), _torch_logits(torch_model, tokens, mask), mask)
    print(f"export {name} {padding}: max |logit diff| = {diff:.2e}")
    assert diff <= ATOL, (name, padding, diff)
  # Round trip through our own loader is exact.
  cfg2, model2 = hf.load_hf_checkpoint(tmp_path)
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, _pure(model2), _pure(model))


def test_export_with_tokenizer_and_bf16(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"<unk>": 0, "<eos>": 1, "hello": 2, "world": 3}
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
  # Llama, not Qwen2: transformers 5 loads any tokenizer next to a qwen2
  # config as Qwen2Tokenizer (save_hf_checkpoint warns about that).
  with pytest.warns(UserWarning, match="Qwen2Tokenizer"):
    hf.save_hf_checkpoint(
      _random_model(EXPORT_CONFIGS["qwen2"]), EXPORT_CONFIGS["qwen2"], tmp_path / "qwen2", tokenizer=tok
    )
  cfg = EXPORT_CONFIGS["llama_gqa"]
  model = _random_model(cfg)
  hf.save_hf_checkpoint(model, cfg, tmp_path, tokenizer=tok, dtype="bfloat16")
  config = json.loads((tmp_path / hf.CONFIG_FILE).read_text())
  assert config["eos_token_id"] == 1 and config["dtype"] == "bfloat16"
  loaded = hf.load_hf_tokenizer(tmp_path)
  assert loaded.eos_id == 1 and loaded.encode("hello world") == [2, 3]
  cfg2, model2 = hf.load_hf_checkpoint(tmp_path, param_dtype="bfloat16")
  assert model2.embed[...].dtype == jnp.bfloat16
  want = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), _pure(model))
  jax.tree.map(np.testing.assert_array_equal, _pure(model2), want)


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


@pytest.fixture()
def llama_files(hf_models):
  path = hf_models["llama_gqa"][1]
  return (
    json.loads((path / hf.CONFIG_FILE).read_text()),
    dict(safetensors.numpy.load_file(path / hf.SAFETENSORS_FILE)),
  )


def test_missing_tensor_error(llama_files):
  config, tensors = llama_files
  del tensors["model.layers.1.mlp.up_proj.weight"]
  with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
    hf.model_from_hf_tensors(config, tensors)
  del tensors["lm_head.weight"]  # Untied: the head is required.
  with pytest.raises(ValueError, match=r"'lm_head\.weight'"):
    hf.model_from_hf_tensors(config, tensors)


def test_wrong_shape_error(llama_files):
  config, tensors = llama_files
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((64, 32), np.float32)
  with pytest.raises(
    ValueError,
    match=r"'model\.layers\.0\.self_attn\.k_proj\.weight'.*"
    r"expected shape \(32, 32\), found \(64, 32\)",
  ):
    hf.model_from_hf_tensors(config, tensors)


@pytest.mark.parametrize(
  "change, field",
  [
    ({"architectures": ["MistralForCausalLM"]}, "architectures"),
    ({"architectures": None, "model_type": "t5"}, "architectures"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, r"rope_parameters\.rope_type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_scaling\.rope_type"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, r"rope_parameters\.low_freq_factor"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
  ],
)
def test_unsupported_config_errors(llama_files, change, field):
  config, _ = llama_files
  with pytest.raises(ValueError, match=field):
    hf.model_config_from_hf({**config, **change})


def test_bin_only_directory_refused(tmp_path, llama_files):
  config, _ = llama_files
  (tmp_path / hf.CONFIG_FILE).write_text(json.dumps(config))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(ValueError, match=r"pytorch_model\.bin.*refusing"):
    hf.load_hf_checkpoint(tmp_path)
  (tmp_path / "pytorch_model.bin").unlink()
  with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
    hf.load_hf_checkpoint(tmp_path)


def test_state_and_dict_inputs_export_identically(hf_models):
  cfg, model = hf.load_hf_checkpoint(hf_models["qwen2_untied"][1])
  from_model = hf.hf_tensors_from_params(cfg, model)
  from_state = hf.hf_tensors_from_params(cfg, nnx.split(model)[1])
  from_dict = hf.hf_tensors_from_params(cfg, _pure(model))
  original = safetensors.numpy.load_file(hf_models["qwen2_untied"][1] / hf.SAFETENSORS_FILE)
  assert set(from_model) == set(original)
  for name, value in original.items():
    np.testing.assert_array_equal(from_model[name], value, err_msg=name)
    np.testing.assert_array_equal(from_state[name], value, err_msg=name)
    np.testing.assert_array_equal(from_dict[name], value, err_msg=name)
