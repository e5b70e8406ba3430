"""Shared pieces of the side-by-side benchmarks: models, timing, FLOPs, machine.

Every comparison builds *our* tiny Llama first, exports it with
``advrm_jax.checkpoints.hf.save_hf_checkpoint`` and loads that directory with
transformers, so both sides run bit-for-bit the same weights (checked by a
logit-parity assertion, :func:`check_logit_parity`).

Timing rules (the machine is a shared 2-core CPU, so single timings are
noise):

* both sides run in one process, one after the other, never concurrently;
* repeats are *interleaved* (ours, peer, ours, peer, ...) so that a burst of
  load from another tenant hits both sides alike;
* the first ``warmup`` repeats of each side are dropped (compilation, torch's
  first-call allocations, oneDNN primitive caches);
* the reported figure is the median over the remaining repeats, and ratios
  are ratios of medians measured in the same run.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

# Make `import advrm_jax` work when run from a checkout without installing.
REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from advrm_jax.checkpoints.hf import save_hf_checkpoint  # pylint: disable=wrong-import-position
from advrm_jax.models.config import ModelConfig  # pylint: disable=wrong-import-position
from advrm_jax.models.transformer import Transformer  # pylint: disable=wrong-import-position
from advrm_jax.train_state import split_module  # pylint: disable=wrong-import-position

TORCH_THREADS = 2

# The tiny Llama family of issues 2 and 6. head_dim 64 like real Llamas; the
# MLP width is ~8/3 d rounded to a multiple of 64, as Llama does; untied
# embeddings (Llama's default), so the LM head is a separate matrix.
SIZES: dict[str, ModelConfig] = {
  "d256": ModelConfig(
    arch="llama",
    vocab_size=512,
    d_model=256,
    num_layers=4,
    num_heads=4,
    num_kv_heads=4,
    head_dim=64,
    d_ff=704,
    max_seq_len=512,
    tie_embeddings=False,
  ),
  "d512": ModelConfig(
    arch="llama",
    vocab_size=512,
    d_model=512,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    head_dim=64,
    d_ff=1408,
    max_seq_len=512,
    tie_embeddings=False,
  ),
}

# Token ids 0..2 are pad / bos / eos in the word-level tokenizer built for
# TRL; data never contains them, so no sequence stops or pads by accident.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_DATA_ID = 3


@dataclasses.dataclass
class Models:
  """One size's weights on both sides."""

  name: str
  cfg: ModelConfig
  graphdef: nnx.GraphDef
  params: Any  # pure dict of jax arrays
  axes: Any  # logical axis names, parallel to params
  hf_dir: pathlib.Path  # the exported checkpoint transformers loads


def setup_torch():
  """Imports torch with the thread count fixed; returns the module."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(TORCH_THREADS)
  torch.manual_seed(0)
  return torch


def build_models(name: str, workdir: pathlib.Path, seed: int = 0) -> Models:
  """Our random-init Transformer and the same weights as an HF directory."""
  cfg = SIZES[name]
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, params, axes = split_module(model)
  hf_dir = workdir / f"hf_{name}"
  save_hf_checkpoint(model, cfg, hf_dir)
  # Word-level tokenizer next to the weights (TRL needs a processing_class).
  make_tokenizer(cfg.vocab_size).save_pretrained(os.fspath(hf_dir))
  return Models(name, cfg, graphdef, params, axes, hf_dir)


def make_tokenizer(vocab_size: int):
  """A word-level tokenizer whose token i is the word ``t<i>``.

  TRL's trainers work on text; with this tokenizer the text "t5 t17" is
  exactly the ids [5, 17], so both sides see the same token ids.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel

  vocab = {f"t{i}": i for i in range(vocab_size)}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t1"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
  return PreTrainedTokenizerFast(
    tokenizer_object=tok, pad_token=f"t{PAD_ID}", bos_token=f"t{BOS_ID}", eos_token=f"t{EOS_ID}", unk_token="t1"
  )


def ids_to_text(ids) -> str:
  return " ".join(f"t{int(i)}" for i in ids)


def torch_causal_lm(models: Models):
  """transformers' LlamaForCausalLM on the exported weights, f32, eval mode."""
  torch = setup_torch()
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  model = AutoModelForCausalLM.from_pretrained(os.fspath(models.hf_dir), dtype=torch.float32)
  model.eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = PAD_ID
  return model


def check_logit_parity(models: Models, torch_model, tokens: np.ndarray, tol: float = 1e-3) -> float:
  """Max |logit difference| of the two sides on ``tokens``; raises above tol."""
  torch = setup_torch()
  ours = nnx.merge(models.graphdef, models.params)(jax.numpy.asarray(tokens)).logits
  with torch.inference_mode():
    theirs = torch_model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  diff = float(np.max(np.abs(np.asarray(ours) - theirs)))
  if diff > tol:
    raise AssertionError(f"{models.name}: logits differ by {diff} > {tol}: the sides do not run the same model")
  return diff


def random_tokens(rng: np.random.Generator, shape, vocab_size: int) -> np.ndarray:
  return rng.integers(FIRST_DATA_ID, vocab_size, size=shape).astype(np.int32)


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
  """Seconds of one call; ``fn`` must block until its work is done."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleave(
  sides: dict[str, Callable[[], list[float] | float]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
  """Runs each side ``warmup + repeats`` times, alternating sides each round.

  Args:
    sides: name -> callable doing one unit of work and returning the
      seconds it took (a float) or several per-step times (a list; e.g. a
      trainer run of a few steps).
    repeats: kept rounds.
    warmup: dropped rounds.

  Returns:
    name -> the kept samples (seconds).
  """
  samples: dict[str, list[float]] = {name: [] for name in sides}
  for round_index in range(warmup + repeats):
    for name, fn in sides.items():
      value = fn()
      if round_index >= warmup:
        samples[name].extend(value if isinstance(value, list) else [value])
  return samples


class MatmulProbe:
  """A large f32 matmul in JAX, timed as one more side of :func:`interleave`.

  MFU needs the machine's peak *at the moment the step was timed*: on a
  shared CPU the peak measured at the start of a run can be several times
  the one available ten minutes later. Interleaving this probe with the
  model steps gives both under the same load.
  """

  def __init__(self, n: int = 2048):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(n)
    self.a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    self.b = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    self.flops = 2.0 * n**3
    self.fn = jax.jit(jnp.matmul)

  def __call__(self) -> float:
    return timed(lambda: jax.block_until_ready(self.fn(self.a, self.b)))


def median(values: list[float]) -> float:
  return float(statistics.median(values))


def spread(values: list[float]) -> str:
  """Compact 'min..max' string of raw samples for the JSON."""
  return f"{min(values):.4g}..{max(values):.4g} (n={len(values)})"


def compile_seconds(jitted, *args, **kwargs):
  """(seconds to lower + compile, the compiled executable) for a jitted fn."""
  start = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  return time.perf_counter() - start, compiled


# ---------------------------------------------------------------------------
# FLOPs (PaLM appendix B convention: matmul FLOPs of the model, attention
# counted over the attended context, nothing for norms/softmax/optimizer).
# ---------------------------------------------------------------------------


def matmul_params(cfg: ModelConfig, lm_head: bool = True) -> int:
  """Parameters that take part in a matmul per token (no embedding lookup)."""
  d, h, kv, hd, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff
  per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f
  return cfg.num_layers * per_layer + (d * cfg.vocab_size if lm_head else 0)


def forward_flops(cfg: ModelConfig, batch: int, length: int, lm_head: bool = True) -> float:
  """Forward FLOPs of full sequences (causal: average context length/2)."""
  attention = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * (length + 1) / 2
  return batch * length * (2 * matmul_params(cfg, lm_head) + attention)


def train_flops(cfg: ModelConfig, batch: int, length: int, lm_head: bool = True) -> float:
  """Forward + backward = 3x forward."""
  return 3 * forward_flops(cfg, batch, length, lm_head)


def sampling_flops(cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int) -> float:
  """Prefill of the prompt plus one cached forward per new token."""
  prefill = forward_flops(cfg, batch, prompt_len, lm_head=False)
  per_layer_attn = 2 * 2 * cfg.num_heads * cfg.head_dim
  decode = 0.0
  for t in range(new_tokens):
    context = prompt_len + t
    decode += batch * (2 * matmul_params(cfg) + cfg.num_layers * per_layer_attn * context)
  return prefill + decode


# ---------------------------------------------------------------------------
# Machine and versions.
# ---------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
  cpu = "unknown"
  flags: list[str] = []
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name") and cpu == "unknown":
        cpu = line.split(":", 1)[1].strip()
      if line.startswith("flags") and not flags:
        have = set(line.split(":", 1)[1].split())
        flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
  except OSError:
    pass
  try:
    load = os.getloadavg()
  except OSError:
    load = (float("nan"),) * 3
  return {
    "cpu": cpu,
    "cpu_flags": flags,
    "cores": os.cpu_count(),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "load_average_at_start": [round(x, 2) for x in load],
  }


def versions() -> dict[str, str]:
  out = {}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "trl", "accelerate", "datasets"):
    try:
      module = __import__(name)
      out[name] = getattr(module, "__version__", "?")
    except ImportError:
      out[name] = "not installed"
  try:
    out["advrm_jax_commit"] = subprocess.run(
      ["git", "-C", os.fspath(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
  except OSError:
    out["advrm_jax_commit"] = "?"
  return out


def workdir() -> pathlib.Path:
  return pathlib.Path(tempfile.mkdtemp(prefix="advrm_bench_"))
