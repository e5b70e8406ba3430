r"""Accelerator benchmark (issue 18): training steps and sampling, ours vs PyTorch, on any JAX backend.

  python benchmarks/accelerator.py --out DIR              # GPU/TPU: SmolLM2-135M and Llama-1B-like shapes
  python benchmarks/accelerator.py --out DIR --tiny       # CPU smoke run (~1-2 min), same code paths

Sections (each in its own try/except: an error is recorded and the run goes on; results are
flushed to DIR/accelerator.json and DIR/accelerator.md after every section; ``--budget_s``
skips the sections left when the time is spent):

* ``matmul_peak``: a bf16 [n, n] @ [n, n] matmul in JAX, the peak every MFU is measured against.
* per shape: ``bt`` (BT step, ours vs plain PyTorch eager with AdamW, same weights), ``sft`` (SFT
  step, same), ``sampler`` (our KV-cache sampler vs transformers ``generate``, greedy, same
  weights), ``rl`` (one GRPO iteration of ours; no peer), with tokens/s or pairs/s, MFU, our
  compiled temporaries and torch's ``max_memory_allocated`` on CUDA.
* ``decode_attention``: one decode step's attention on the head-major KV cache, our hand-written
  kernel vs ``jax.nn.dot_product_attention`` (why decode keeps the hand-written one).
* compile-only, last: ``memory_1b_bt_32x512`` (abstract shapes) Bradley-Terry step of the 1B-like
  shape, 32 pairs x 512 tokens, remat "full", bf16 compute, f32 AdamW: ``memory_analysis()``
  temporaries; ``memory_remat``: temporaries of the BT step by remat policy (d256, 4 vs 8
  layers; the 1B-like step at 32 x 512 without remat).

Both sides run the same weights: ours are exported with ``hf_tensors_from_params`` and loaded into
transformers' ``LlamaForCausalLM``. On GPU both sides store parameters and compute in bf16
(``ModelConfig(param_dtype="bfloat16", dtype="bfloat16")``, torch ``.to(bfloat16)``), as in
issue 18's table; ``--tiny`` (CPU) uses float32. Needs jax, flax, optax, torch and transformers
(not ml_collections or tensorboardX).
"""

from __future__ import annotations

import os

# JAX would otherwise take 75 % of the GPU up front and leave torch nothing.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # pylint: disable=wrong-import-position
import gc  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import pathlib  # pylint: disable=wrong-import-position
import platform  # pylint: disable=wrong-import-position
import statistics  # pylint: disable=wrong-import-position
import sys  # pylint: disable=wrong-import-position
import time  # pylint: disable=wrong-import-position
import traceback  # pylint: disable=wrong-import-position
from typing import Any, Callable  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from advrm_jax.checkpoints.hf import hf_config_from_model_config, hf_tensors_from_params  # pylint: disable=wrong-import-position
from advrm_jax.models import transformer as T  # pylint: disable=wrong-import-position
from advrm_jax.models.config import ModelConfig  # pylint: disable=wrong-import-position
from advrm_jax.models.lm import make_sft_step  # pylint: disable=wrong-import-position
from advrm_jax.reward.losses import make_bt_step  # pylint: disable=wrong-import-position
from advrm_jax.reward.model import RewardEnsemble, init_reward_model  # pylint: disable=wrong-import-position
from advrm_jax.rl.sampler import SamplingConfig, sample_jit  # pylint: disable=wrong-import-position
from advrm_jax.train_state import TrainState, abstract_module, make_optimizer, split_module  # pylint: disable=wrong-import-position
from benchmarks.common import sampling_flops, train_flops  # pylint: disable=wrong-import-position

SHAPES = {
  "smollm2_135m": ModelConfig(
    vocab_size=49152,
    d_model=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    d_ff=1536,
    max_seq_len=1024,
    rope_theta=100000.0,
    tie_embeddings=True,
  ),
  "llama_1b_like": ModelConfig(
    vocab_size=32000,
    d_model=2048,
    num_layers=16,
    num_heads=32,
    num_kv_heads=8,
    head_dim=64,
    d_ff=8192,
    max_seq_len=1024,
    rope_theta=500000.0,
    tie_embeddings=False,
  ),
}
# --tiny: the same two layouts (tied 3:1 GQA, untied 4:1 GQA) at CPU size.
TINY_SHAPES = {
  "smollm2_135m": SHAPES["smollm2_135m"].replace(
    vocab_size=512, d_model=48, num_layers=2, num_heads=3, num_kv_heads=1, head_dim=16, d_ff=96, max_seq_len=64
  ),
  "llama_1b_like": SHAPES["llama_1b_like"].replace(
    vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=16, d_ff=128, max_seq_len=64
  ),
}
# (section, shape, workload); workloads are (full, tiny) sizes. The 1B-like rows come first: they
# carry the targets (MFU, the 32 x 512 step that ran out of memory).
PLAN = (
  ("bt", "llama_1b_like", dict(pairs=(8, 2), length=(512, 32), remat="none")),
  ("bt", "llama_1b_like", dict(pairs=(32, 4), length=(512, 32), remat="full")),
  ("bt", "smollm2_135m", dict(pairs=(32, 4), length=(512, 32), remat="none")),
  ("sampler", "llama_1b_like", dict(batch=(64, 4), prompt=(64, 8), new=(192, 8))),
  ("sampler", "smollm2_135m", dict(batch=(64, 4), prompt=(64, 8), new=(192, 8))),
  ("sft", "smollm2_135m", dict(batch=(16, 4), length=(512, 32), remat="none")),
  ("sft", "llama_1b_like", dict(batch=(16, 4), length=(512, 32), remat="full")),
  ("rl", "smollm2_135m", dict(prompts=(16, 2), samples=(4, 2), prompt=(64, 8), new=(128, 8))),
)
LR = 1e-5
WARMUP, REPEATS = 1, 3


class Run:
  """Results of one run, written to OUT/accelerator.{json,md} after every section."""

  def __init__(self, out: pathlib.Path, budget_s: float, tiny: bool):
    self.out, self.budget_s, self.tiny = out, budget_s, tiny
    self.start = time.perf_counter()
    self.results: dict[str, Any] = {
      "command": " ".join([sys.executable, *sys.argv]),
      "setup": setup_info(tiny),
      "sections": {},
    }
    out.mkdir(parents=True, exist_ok=True)

  def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
    elapsed = time.perf_counter() - self.start
    if elapsed > self.budget_s:
      self.results["sections"][name] = {"skipped": f"budget: {elapsed:.0f} s of {self.budget_s:.0f} s spent"}
    else:
      print(f"[{elapsed:6.1f} s] {name}", flush=True)
      begin = time.perf_counter()
      try:
        result = fn()
      except Exception as error:  # pylint: disable=broad-except
        result = {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()[-4000:]}
        print(result["error"], flush=True)
      result["section_s"] = round(time.perf_counter() - begin, 1)
      self.results["sections"][name] = result
      release_memory()
    self.results["total_s"] = round(time.perf_counter() - self.start, 1)
    (self.out / "accelerator.json").write_text(json.dumps(self.results, indent=2, default=str))
    (self.out / "accelerator.md").write_text(markdown(self.results))


def setup_info(tiny: bool) -> dict[str, Any]:
  info = {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "num_devices": jax.device_count(),
    "python": platform.python_version(),
    "tiny": tiny,
  }
  for name in ("flax", "optax", "torch", "transformers"):
    try:
      info[name] = __import__(name).__version__
    except Exception as error:  # pylint: disable=broad-except
      info[name] = f"unavailable: {error}"
  try:
    import torch  # pylint: disable=import-outside-toplevel

    info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
  except Exception:  # pylint: disable=broad-except
    pass
  return info


def release_memory() -> None:
  gc.collect()
  try:
    import torch  # pylint: disable=import-outside-toplevel

    if torch.cuda.is_available():
      torch.cuda.empty_cache()
  except Exception:  # pylint: disable=broad-except
    pass


def accelerated() -> bool:
  return jax.default_backend() != "cpu"


def dtype_fields() -> dict[str, str]:
  """bf16 parameters and compute on an accelerator (as the peer), float32 on CPU."""
  name = "bfloat16" if accelerated() else "float32"
  return dict(param_dtype=name, dtype=name)


def median_seconds(fn: Callable[[], Any], warmup: int = WARMUP, repeats: int = REPEATS) -> float:
  """Median wall time of ``fn`` (which must block until its work is done) after ``warmup`` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    begin = time.perf_counter()
    fn()
    times.append(time.perf_counter() - begin)
  return statistics.median(times)


def temp_bytes(compiled) -> int | None:
  analysis = compiled.memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)


# ---------------------------------------------------------------------------
# Both sides' models.
# ---------------------------------------------------------------------------


class TorchSide:
  """transformers' LlamaForCausalLM with our weights, on CUDA when there is one."""

  def __init__(self, cfg: ModelConfig, params: Any):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    self.dtype = torch.bfloat16 if accelerated() else torch.float32
    hf_config = dict(hf_config_from_model_config(cfg))
    config = transformers.AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
    with torch.device(self.device):
      model = transformers.AutoModelForCausalLM.from_config(config, dtype=self.dtype)
    tensors = {
      name: torch.from_numpy(np.array(value, np.float32)) for name, value in hf_tensors_from_params(cfg, params).items()
    }
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if not (cfg.tie_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
      raise RuntimeError(f"weights do not map onto transformers: missing {missing}, unexpected {unexpected}")
    self.model = model

  def tensor(self, array: np.ndarray):
    return self.torch.as_tensor(np.asarray(array), dtype=self.torch.long, device=self.device)

  def synchronize(self) -> None:
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def reset_peak(self) -> None:
    if self.device == "cuda":
      self.torch.cuda.reset_peak_memory_stats()

  def peak_bytes(self) -> int | None:
    return int(self.torch.cuda.max_memory_allocated()) if self.device == "cuda" else None

  def adamw(self, parameters):
    return self.torch.optim.AdamW(
      parameters, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=self.device == "cuda"
    )


class Shape:
  """One shape's weights (random init); ``torch_side()`` copies them into a fresh torch model."""

  def __init__(self, name: str, cfg: ModelConfig):
    self.name, self.cfg = name, cfg.replace(**dtype_fields())
    self.graphdef, self.params, _ = split_module(T.Transformer(self.cfg, rngs=nnx.Rngs(0)))

  def torch_side(self) -> TorchSide:
    """A new torch model each time: training sections move its weights."""
    return TorchSide(self.cfg, self.params)


def tokens(rng: np.random.Generator, shape, cfg: ModelConfig) -> np.ndarray:
  return rng.integers(3, cfg.vocab_size, size=shape).astype(np.int32)


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
  return None if not peak else flops / seconds / peak


# ---------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------


def matmul_peak(tiny: bool) -> dict[str, Any]:
  n = 512 if tiny else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  fn = jax.jit(lambda a, b: a @ b)
  seconds = median_seconds(lambda: fn(a, a).block_until_ready(), warmup=2, repeats=10)
  return {"n": n, "dtype": "bfloat16", "seconds": seconds, "flops_per_s": 2.0 * n**3 / seconds}


def bt_step_abstract(cfg: ModelConfig, pairs: int, length: int):
  """(jitted BT step, abstract state, abstract batch, abstract rng): nothing allocated."""
  graphdef, params, _ = abstract_module(lambda: RewardEnsemble(cfg, 1, rngs=nnx.Rngs(0)))
  optimizer = make_optimizer(learning_rate=LR, schedule="constant", weight_decay=0.0)
  state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), params)
  token_shape = jax.ShapeDtypeStruct((pairs, length), jnp.int32)
  batch = dict(
    chosen_tokens=token_shape, chosen_mask=token_shape, rejected_tokens=token_shape, rejected_mask=token_shape
  )
  return jax.jit(make_bt_step(graphdef, optimizer), donate_argnums=(0,)), state, batch, jax.random.key(0)


def memory_1b(tiny: bool) -> dict[str, Any]:
  """Compile-only temporaries of the 1B-like BT step at 32 x 512 (the step that ran out of memory)."""
  del tiny  # compile-only: the real shape on every backend
  cfg = SHAPES["llama_1b_like"].replace(dtype="bfloat16", remat="full")
  step, state, batch, rng = bt_step_abstract(cfg, 32, 512)
  begin = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  analysis = compiled.memory_analysis()
  return {
    "config": "d2048, 16 layers, GQA 32/8, vocab 32000, ffn 8192; 32 pairs x 512; remat full; bf16 compute; "
    "f32 parameters and AdamW state",
    "compile_s": time.perf_counter() - begin,
    "temp_bytes": None if analysis is None else int(analysis.temp_size_in_bytes),
    "argument_bytes": None if analysis is None else int(analysis.argument_size_in_bytes),
  }


def memory_remat() -> dict[str, Any]:
  """Compile-only BT-step temporaries by remat policy: d256 at 4 and 8 layers (8 pairs x 1,024), and
  the 1B-like step at 32 x 512 without remat."""
  d256 = ModelConfig(vocab_size=512, d_model=256, num_heads=4, num_kv_heads=4, head_dim=64, d_ff=1024, max_seq_len=1024)
  out: dict[str, Any] = {}
  for remat in ("none", "dots", "full"):
    for layers in (4, 8):
      step, state, batch, rng = bt_step_abstract(d256.replace(num_layers=layers, remat=remat), 8, 1024)
      out[f"d256_{layers}_layers_{remat}_temp_bytes"] = temp_bytes(step.lower(state, batch, rng).compile())
    out[f"d256_{remat}_growth_4_to_8_layers"] = (
      out[f"d256_8_layers_{remat}_temp_bytes"] / out[f"d256_4_layers_{remat}_temp_bytes"]
    )
  step, state, batch, rng = bt_step_abstract(SHAPES["llama_1b_like"].replace(dtype="bfloat16"), 32, 512)
  out["1b_like_32x512_none_bf16_temp_bytes"] = temp_bytes(step.lower(state, batch, rng).compile())
  return out


def time_ours(
  out: dict[str, Any], cfg: ModelConfig, make: Callable, count: int, unit: str, flops: float, peak: float | None
) -> float:
  """Compiles and times our step (state donated) into ``out``; returns its median seconds.

  ``make(cfg) -> (step, state, args)``. When cuDNN attention fails (to compile or to run), the
  error is recorded and the step is measured again with XLA's attention.
  """
  try:
    return _time_ours(out, cfg, make, count, unit, flops, peak)
  except Exception as error:  # pylint: disable=broad-except
    if out["attention"] != "cudnn":
      raise
    out["cudnn_error"] = f"{type(error).__name__}: {error}"[:2000]
    out["attention"] = "xla (cudnn failed)"
    release_memory()
    return _time_ours(out, cfg.replace(attention="xla"), make, count, unit, flops, peak)


def _time_ours(out, cfg, make, count, unit, flops, peak) -> float:
  step, state, args = make(cfg)
  begin = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, *args).compile()
  out["ours_compile_s"] = time.perf_counter() - begin
  out["ours_temp_bytes"] = temp_bytes(compiled)
  holder = {"state": state}

  def ours():
    holder["state"], metrics = compiled(holder["state"], *args)
    jax.block_until_ready(holder["state"])
    return float(metrics["loss"])

  out["ours_first_loss"] = ours()
  seconds = median_seconds(ours)
  out.update({"ours_s": seconds, f"ours_{unit}_per_s": count / seconds, "ours_mfu": mfu(flops, seconds, peak)})
  return seconds


def time_torch(
  out: dict[str, Any],
  side: TorchSide,
  loss_fn: Callable,
  parameters: list,
  count: int,
  unit: str,
  flops: float,
  peak: float | None,
  ours_seconds: float,
) -> None:
  """Times a plain PyTorch eager step (``loss_fn()``, backward, clip 1.0, AdamW) into ``out``."""
  torch = side.torch
  optimizer = side.adamw(parameters)

  def theirs():
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    side.synchronize()
    return loss.item()

  side.reset_peak()
  out["torch_first_loss"] = theirs()
  seconds = median_seconds(theirs)
  out.update(
    {
      "torch_s": seconds,
      f"torch_{unit}_per_s": count / seconds,
      "torch_mfu": mfu(flops, seconds, peak),
      "torch_max_memory_allocated": side.peak_bytes(),
      "ratio_ours_over_torch": seconds / ours_seconds,
    }
  )


def bt(shape: Shape, pairs: int, length: int, remat: str, peak: float | None) -> dict[str, Any]:
  cfg = shape.cfg.replace(remat=remat)
  rng = np.random.default_rng(0)
  chosen, rejected = tokens(rng, (pairs, length), cfg), tokens(rng, (pairs, length), cfg)
  ones = np.ones((pairs, length), np.int32)
  flops = train_flops(cfg, 2 * pairs, length, lm_head=False)
  out: dict[str, Any] = {
    "pairs": pairs,
    "length": length,
    "remat": remat,
    "dtype": cfg.dtype,
    "attention": T.resolve_attention(cfg, length),
    "model_flops_per_step": flops,
  }
  heads = []

  def make(cfg):
    # A copy of the shared weights: the step donates its state.
    graphdef, params, _ = init_reward_model(cfg, 1, seed=0, backbone_params=jax.tree.map(jnp.copy, shape.params))
    heads.append(np.asarray(params["head_kernel"], np.float32))  # [D, 1]: the torch side starts from it too
    optimizer = make_optimizer(learning_rate=LR, schedule="constant", weight_decay=0.0)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    batch = {
      name: jnp.asarray(value)
      for name, value in dict(
        chosen_tokens=chosen, chosen_mask=ones, rejected_tokens=rejected, rejected_mask=ones
      ).items()
    }
    return make_bt_step(graphdef, optimizer), state, (batch, jax.random.key(0))

  seconds = time_ours(out, cfg, make, pairs, "pairs", flops, peak)
  release_memory()

  side = shape.torch_side()
  torch = side.torch
  model = side.model.model  # the LlamaModel backbone
  score = torch.nn.Linear(cfg.d_model, 1, device=side.device, dtype=side.dtype)
  with torch.no_grad():
    score.weight.copy_(torch.as_tensor(heads[-1].T))
    score.bias.zero_()
  rows = side.tensor(np.concatenate([chosen, rejected]))
  mask = torch.ones_like(rows)

  def loss_fn():
    rewards = score(model(input_ids=rows, attention_mask=mask).last_hidden_state[:, -1]).float()[:, 0]
    return -torch.nn.functional.logsigmoid(rewards[:pairs] - rewards[pairs:]).mean()

  time_torch(
    out, side, loss_fn, list(model.parameters()) + list(score.parameters()), pairs, "pairs", flops, peak, seconds
  )
  return out


def sft(shape: Shape, batch: int, length: int, remat: str, peak: float | None) -> dict[str, Any]:
  cfg = shape.cfg.replace(remat=remat)
  rows = tokens(np.random.default_rng(1), (batch, length), cfg)
  ones = np.ones((batch, length), np.int32)
  flops = train_flops(cfg, batch, length)
  out: dict[str, Any] = {
    "batch": batch,
    "length": length,
    "remat": remat,
    "dtype": cfg.dtype,
    "attention": T.resolve_attention(cfg, length),
    "model_flops_per_step": flops,
  }

  def make(cfg):
    graphdef, _, _ = abstract_module(lambda: T.Transformer(cfg, rngs=nnx.Rngs(0)))  # remat is in the graphdef
    params = jax.tree.map(jnp.copy, shape.params)  # the same weights; the step donates its state
    optimizer = make_optimizer(learning_rate=LR, schedule="constant", weight_decay=0.0)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    data = {"tokens": jnp.asarray(rows), "mask": jnp.asarray(ones), "loss_mask": jnp.asarray(ones)}
    return make_sft_step(graphdef, optimizer), state, (data, None)

  seconds = time_ours(out, cfg, make, batch * length, "tokens", flops, peak)
  release_memory()

  side = shape.torch_side()
  torch = side.torch
  trows = side.tensor(rows)
  mask = torch.ones_like(trows)

  def loss_fn():
    logits = side.model(input_ids=trows, attention_mask=mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), trows[:, 1:].reshape(-1))

  time_torch(out, side, loss_fn, list(side.model.parameters()), batch * length, "tokens", flops, peak, seconds)
  return out


def sampler(shape: Shape, batch: int, prompt: int, new: int, peak: float | None) -> dict[str, Any]:
  cfg = shape.cfg
  rng = np.random.default_rng(2)
  prompts = tokens(rng, (batch, prompt), cfg)
  mask = np.ones_like(prompts, dtype=bool)
  config = SamplingConfig(max_new_tokens=new, temperature=0.0, top_k=0, top_p=1.0, eos_id=None, pad_id=0)
  jprompts, jmask, key = jnp.asarray(prompts), jnp.asarray(mask), jax.random.key(0)
  flops = sampling_flops(cfg, batch, prompt, new)
  out: dict[str, Any] = {
    "batch": batch,
    "prompt": prompt,
    "new": new,
    "dtype": cfg.dtype,
    "mode": "greedy",
    "model_flops_per_call": flops,
  }
  begin = time.perf_counter()
  compiled = sample_jit.lower(shape.graphdef, shape.params, jprompts, jmask, key, config=config).compile()
  out["ours_compile_s"] = time.perf_counter() - begin
  out["ours_temp_bytes"] = temp_bytes(compiled)
  ours_tokens = np.asarray(compiled(shape.params, jprompts, jmask, key).tokens)
  seconds = median_seconds(lambda: compiled(shape.params, jprompts, jmask, key).tokens.block_until_ready())
  out.update(ours_s=seconds, ours_tokens_per_s=batch * new / seconds, ours_mfu=mfu(flops, seconds, peak))

  side = shape.torch_side()
  torch = side.torch
  tprompts = side.tensor(prompts)
  tmask = torch.ones_like(tprompts)

  def generate():
    with torch.inference_mode():
      result = side.model.generate(
        input_ids=tprompts,
        attention_mask=tmask,
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
      )
    side.synchronize()
    return result

  side.reset_peak()
  theirs = generate()[:, prompt:].cpu().numpy()
  seconds_t = median_seconds(generate, warmup=0, repeats=2)
  out.update(
    generate_s=seconds_t,
    generate_tokens_per_s=batch * new / seconds_t,
    generate_max_memory_allocated=side.peak_bytes(),
    ratio_ours_over_generate=seconds_t / seconds,
    # bf16 rounding differs between the kernels, so greedy paths may part after a while.
    greedy_first_token_agreement=float(np.mean(ours_tokens[:, 0] == theirs[:, 0])),
    greedy_token_agreement=float(np.mean(ours_tokens == theirs)),
  )
  return out


def even_fraction(prompt_tokens, prompt_mask, response_tokens, response_mask):
  """A reward from token ids alone (fraction of even ids in the response): RL with no reward model."""
  del prompt_tokens, prompt_mask
  weights = response_mask.astype(jnp.float32)
  return jnp.sum((response_tokens % 2 == 0) * weights, axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


def rl(shape: Shape, prompts: int, samples: int, prompt: int, new: int, peak: float | None) -> dict[str, Any]:
  from advrm_jax.rl.engine import RLConfig, init_policy_params, init_rl_state, make_iteration  # pylint: disable=import-outside-toplevel
  from advrm_jax.rl.rewards import FunctionSource  # pylint: disable=import-outside-toplevel

  del peak
  cfg = shape.cfg
  config = RLConfig(algorithm="grpo", num_samples=samples, kl_coef=0.04, kl_estimator="k3", kl_in_reward=False)
  sampling = SamplingConfig(max_new_tokens=new, temperature=1.0, eos_id=None, pad_id=0)
  optimizer = make_optimizer(learning_rate=LR, schedule="constant", weight_decay=0.0)
  iteration = jax.jit(
    make_iteration(shape.graphdef, optimizer, config, sampling, FunctionSource(even_fraction)), donate_argnums=(0,)
  )
  policy = jax.tree.map(jnp.copy, shape.params)
  state = init_rl_state(init_policy_params(policy, cfg.d_model), optimizer, config)
  rows = tokens(np.random.default_rng(3), (prompts, prompt), cfg)
  batch = {"tokens": jnp.asarray(rows), "mask": jnp.ones(rows.shape, bool)}
  key = jax.random.key(0)
  begin = time.perf_counter()
  compiled = iteration.lower(state, shape.params, None, batch, key).compile()
  out: dict[str, Any] = {
    "prompts": prompts,
    "samples": samples,
    "prompt": prompt,
    "new": new,
    "dtype": cfg.dtype,
    "ours_compile_s": time.perf_counter() - begin,
    "ours_temp_bytes": temp_bytes(compiled),
  }
  holder = {"state": state}

  def ours():
    holder["state"], metrics = compiled(holder["state"], shape.params, None, batch, key)
    jax.block_until_ready(metrics)

  seconds = median_seconds(ours)
  out.update(ours_s=seconds, ours_samples_per_s=prompts * samples / seconds)
  return out


def decode_attention(tiny: bool) -> dict[str, Any]:
  """One decode step's attention on a [B, Hkv, S, Dh] cache: hand-written vs dot_product_attention."""
  del tiny  # the SmolLM2-135M decode shape (batch 64, 256 slots, GQA 9/3, head_dim 64) on every backend
  batch, slots, kv_heads, group, head_dim = 64, 256, 3, 3, 64
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(size=(batch, 1, kv_heads * group, head_dim)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(batch, kv_heads, slots, head_dim)), jnp.float32)
  v = 0.5 * k
  mask = jnp.asarray(rng.random((batch, 1, slots)) < 0.9)
  hand = jax.jit(lambda q, k, v, m: T._attention(q, k, v, m, head_major=True))  # pylint: disable=protected-access
  library = jax.jit(
    lambda q, k, v, m: jax.nn.dot_product_attention(
      q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask=m[:, None], implementation="xla"
    )
  )
  difference = float(jnp.max(jnp.abs(hand(q, k, v, mask) - library(q, k, v, mask))))
  timing = {}
  for name, fn in (("hand_written", hand), ("dot_product_attention", library)):
    timing[name] = (
      median_seconds(lambda fn=fn: [fn(q, k, v, mask) for _ in range(20)][-1].block_until_ready(), warmup=1, repeats=5)
      / 20
    )
  return {
    "batch": batch,
    "slots": slots,
    "kv_heads": kv_heads,
    "group": group,
    "head_dim": head_dim,
    "max_abs_difference": difference,
    **{f"{n}_s": s for n, s in timing.items()},
    "dot_product_attention_over_hand_written": timing["dot_product_attention"] / timing["hand_written"],
  }


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def _fmt(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
  return str(value)


def markdown(results: dict[str, Any]) -> str:
  setup = results["setup"]
  lines = [
    f"# benchmarks/accelerator.py on {setup.get('device')} ({setup.get('backend')})",
    "",
    f"`{results['command']}`; total {results.get('total_s')} s",
    "",
    "Versions: " + ", ".join(f"{k} {setup.get(k)}" for k in ("jax", "flax", "optax", "torch", "transformers")),
    f"; torch device: {setup.get('torch_device')}",
    "",
  ]
  peak = results["sections"].get("matmul_peak", {}).get("flops_per_s")
  if peak:
    lines += [f"bf16 matmul peak measured in this run: {peak / 1e12:.1f} TFLOP/s", ""]
  lines += [
    "| section | ours | peer | ratio (peer time / ours) | ours MFU | peer MFU | ours temp GiB | peer max alloc GiB |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  gib = lambda b: None if b is None else b / 2**30
  for name, r in results["sections"].items():
    if "error" in r or "skipped" in r:
      lines.append(f"| {name} | {'error: ' + r['error'][:120] if 'error' in r else r['skipped']} |  |  |  |  |  |  |")
      continue
    if name.startswith("bt/"):
      row = (
        f"{_fmt(r['ours_pairs_per_s'])} pairs/s",
        f"{_fmt(r['torch_pairs_per_s'])} pairs/s",
        r["ratio_ours_over_torch"],
        r["ours_mfu"],
        r["torch_mfu"],
        gib(r["ours_temp_bytes"]),
        gib(r["torch_max_memory_allocated"]),
      )
    elif name.startswith("sft/"):
      row = (
        f"{_fmt(r['ours_tokens_per_s'])} tok/s",
        f"{_fmt(r['torch_tokens_per_s'])} tok/s",
        r["ratio_ours_over_torch"],
        r["ours_mfu"],
        r["torch_mfu"],
        gib(r["ours_temp_bytes"]),
        gib(r["torch_max_memory_allocated"]),
      )
    elif name.startswith("sampler/"):
      row = (
        f"{_fmt(r['ours_tokens_per_s'])} tok/s",
        f"{_fmt(r['generate_tokens_per_s'])} tok/s (generate)",
        r["ratio_ours_over_generate"],
        r["ours_mfu"],
        None,
        gib(r["ours_temp_bytes"]),
        gib(r["generate_max_memory_allocated"]),
      )
    elif name.startswith("rl/"):
      row = (f"{_fmt(r['ours_samples_per_s'])} samples/s", "-", None, None, None, gib(r["ours_temp_bytes"]), None)
    elif name == "memory_1b_bt_32x512":
      row = ("compile only", "-", None, None, None, gib(r["temp_bytes"]), None)
    elif name == "memory_remat":
      growth = ", ".join(f"{p} {r[f'd256_{p}_growth_4_to_8_layers']:.2f}x" for p in ("none", "dots", "full"))
      row = (
        f"compile only: d256 temporaries 4 -> 8 layers {growth}; 1B-like 32 x 512 without remat "
        f"{gib(r['1b_like_32x512_none_bf16_temp_bytes']):.1f} GiB",
        "-",
        None,
        None,
        None,
        None,
        None,
      )
    elif name == "decode_attention":
      row = (
        f"hand-written {_fmt(r['hand_written_s'] * 1e6)} us",
        f"dot_product_attention {_fmt(r['dot_product_attention_s'] * 1e6)} us",
        r["dot_product_attention_over_hand_written"],
        None,
        None,
        None,
        None,
      )
    else:
      continue
    lines.append(f"| {name} | " + " | ".join(_fmt(x) for x in row) + " |")
  lines += ["", "Workloads and every raw figure: accelerator.json next to this file.", ""]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="directory for accelerator.json and accelerator.md")
  parser.add_argument("--tiny", action="store_true", help="CPU-sized shapes and workloads")
  parser.add_argument(
    "--budget_s", type=float, default=330.0, help="skip the sections that would start after this many seconds"
  )
  parser.add_argument("--only", default="", help="comma-separated section prefixes, e.g. bt,sampler")
  args = parser.parse_args(argv)
  run = Run(pathlib.Path(args.out), args.budget_s, args.tiny)
  wanted = lambda name: not args.only or any(name.startswith(p) for p in args.only.split(","))
  size = 1 if args.tiny else 0
  if wanted("matmul_peak"):
    run.section("matmul_peak", lambda: matmul_peak(args.tiny))
  peak = run.results["sections"].get("matmul_peak", {}).get("flops_per_s")
  shapes: dict[str, Shape] = {}
  for section, shape_name, workload in PLAN:
    sizes = {k: (v[size] if isinstance(v, tuple) else v) for k, v in workload.items()}
    name = f"{section}/{shape_name}/" + "_".join(f"{k}{v}" for k, v in sizes.items())
    if not wanted(section):
      continue
    if shape_name not in shapes:
      shapes.clear()  # one shape's weights on the device at a time
      release_memory()
      cfg = (TINY_SHAPES if args.tiny else SHAPES)[shape_name]
      try:
        shapes[shape_name] = Shape(shape_name, cfg)
      except Exception as error:  # pylint: disable=broad-except
        run.section(name, lambda error=error: (_ for _ in ()).throw(error))
        continue
    fn = {"bt": bt, "sft": sft, "sampler": sampler, "rl": rl}[section]
    run.section(name, lambda fn=fn, sizes=sizes, shape=shapes[shape_name]: fn(shape, peak=peak, **sizes))
  shapes.clear()
  if wanted("decode_attention"):
    run.section("decode_attention", lambda: decode_attention(args.tiny))
  # Compile-only sections last: on an accelerator the bt section already reports the 1B-like
  # 32 x 512 step's temporaries; on CPU these are the only memory figures at real sizes.
  if wanted("memory_1b"):
    run.section("memory_1b_bt_32x512", lambda: memory_1b(args.tiny))
  if wanted("memory_remat"):
    run.section("memory_remat", memory_remat)
  print((run.out / "accelerator.md").read_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
