"""Sampling: our jitted KV-cache sampler versus transformers ``generate``.

Same weights (exported checkpoint), batch 16, prompt 16, 64 new tokens, no
EOS (every row generates exactly 64 tokens on both sides), greedy and
temperature-1 sampling without top-k/top-p. The peer runs in eval mode under
``torch.inference_mode()`` with ``use_cache=True`` (transformers' default
DynamicCache) and 2 torch threads.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax.rl.sampler import SamplingConfig, sample_jit
from benchmarks import common


def run(
  models: common.Models,
  torch_model,
  repeats: int,
  warmup: int,
  batch: int = 16,
  prompt_len: int = 16,
  new_tokens: int = 64,
) -> dict[str, Any]:
  torch = common.setup_torch()
  rng = np.random.default_rng(1)
  prompts = common.random_tokens(rng, (batch, prompt_len), models.cfg.vocab_size)
  mask = np.ones_like(prompts, dtype=bool)
  jprompts, jmask = jnp.asarray(prompts), jnp.asarray(mask)
  tprompts = torch.as_tensor(prompts, dtype=torch.long)
  tmask = torch.ones_like(tprompts)
  key = jax.random.key(0)
  flops = common.sampling_flops(models.cfg, batch, prompt_len, new_tokens)
  out: dict[str, Any] = {
    "batch": batch,
    "prompt_len": prompt_len,
    "new_tokens": new_tokens,
    "model_flops_per_call": flops,
  }

  for mode, temperature in (("greedy", 0.0), ("sample", 1.0)):
    config = SamplingConfig(
      max_new_tokens=new_tokens, temperature=temperature, top_k=0, top_p=1.0, eos_id=None, pad_id=common.PAD_ID
    )
    compile_s, compiled = common.compile_seconds(
      sample_jit, models.graphdef, models.params, jprompts, jmask, key, config=config
    )

    def ours(compiled=compiled):
      return common.timed(lambda: jax.block_until_ready(compiled(models.params, jprompts, jmask, key).tokens))

    def generate(temperature=temperature):
      with torch.inference_mode():
        kwargs = dict(
          do_sample=temperature > 0,
          max_new_tokens=new_tokens,
          min_new_tokens=new_tokens,
          use_cache=True,
          eos_token_id=None,
          pad_token_id=common.PAD_ID,
        )
        if temperature > 0:  # plain softmax sampling: no top-k (transformers' default is 50)
          kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        return torch_model.generate(input_ids=tprompts, attention_mask=tmask, **kwargs)

    # Sanity: both sides produce the full length; greedy tokens agree.
    ours_tokens = np.asarray(compiled(models.params, jprompts, jmask, key).tokens)
    theirs = generate()
    assert theirs.shape == (batch, prompt_len + new_tokens), theirs.shape
    agreement = None
    if mode == "greedy":
      agreement = float(np.mean(ours_tokens == theirs[:, prompt_len:].numpy()))

    probe = common.MatmulProbe()
    samples = common.interleave(
      {"ours": ours, "generate": lambda: common.timed(generate), "matmul_probe": probe}, repeats, warmup
    )
    peak = probe.flops / common.median(samples.pop("matmul_probe"))
    t_ours, t_peer = common.median(samples["ours"]), common.median(samples["generate"])
    new = batch * new_tokens
    out[mode] = {
      "ours_tokens_per_s": new / t_ours,
      "generate_tokens_per_s": new / t_peer,
      "ours_s": t_ours,
      "generate_s": t_peer,
      "ratio": t_peer / t_ours,
      "ours_flops_per_s": flops / t_ours,
      "generate_flops_per_s": flops / t_peer,
      "compile_s": compile_s,
      "greedy_token_agreement": agreement,
      "peak_interleaved_flops_per_s": peak,
      "raw": {k: common.spread(v) for k, v in samples.items()},
    }
  out["sanity"] = {
    "torch_threads": torch.get_num_threads(),
    "torch_training_mode": torch_model.training,
    "torch_dtype": str(next(torch_model.parameters()).dtype),
    "generation_cache": "DynamicCache (use_cache=True)",
  }
  return out
