"""Training step: our jitted SFT step versus a plain PyTorch loop.

Both sides: the same weights, batch 16 x 80 tokens (prompt 16 + response 64),
next-token cross-entropy on the response tokens, AdamW (b1 0.9, b2 0.95,
eps 1e-8, no weight decay, constant lr), global-norm clipping at 1.0, f32.
Throughput counts every token of the batch (B x T per step).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.models.lm import jit_sft_step
from advrm_jax.train_state import create_train_state, make_optimizer
from benchmarks import common

LR = 1e-4


def optimizer():
  return make_optimizer(
    None, learning_rate=LR, schedule="constant", weight_decay=0.0, grad_clip=1.0, b1=0.9, b2=0.95, eps=1e-8
  )


def torch_adamw(torch, parameters):
  # foreach=True: the multi-tensor implementation, the fastest on CPU for
  # many small tensors (fused=True has no CPU kernel for every op mix).
  return torch.optim.AdamW(parameters, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, foreach=True)


def run(
  models: common.Models,
  repeats: int,
  warmup: int,
  steps_per_round: int = 3,
  batch: int = 16,
  prompt_len: int = 16,
  response_len: int = 64,
) -> dict[str, Any]:
  torch = common.setup_torch()
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  length = prompt_len + response_len
  rng = np.random.default_rng(2)
  tokens = common.random_tokens(rng, (batch, length), models.cfg.vocab_size)
  mask = np.ones_like(tokens)
  loss_mask = np.zeros_like(tokens)
  loss_mask[:, prompt_len:] = 1

  # Ours: the production path (sharded train state on a 1-device mesh,
  # jitted once with explicit shardings, state donated).
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = optimizer()
  params = jax.tree.map(lambda x: jnp.array(x, copy=True), models.params)
  state, shardings = create_train_state(params, models.axes, opt, mesh)
  step_fn = jit_sft_step(models.graphdef, opt, shardings, mesh)
  jbatch = shd.shard_batch({"tokens": tokens, "mask": mask, "loss_mask": loss_mask}, mesh)
  key = jax.random.key(0)
  compile_s, compiled = common.compile_seconds(step_fn, state, jbatch, key)
  holder = {"state": state}

  def ours():
    times = []
    for _ in range(steps_per_round):

      def one():
        holder["state"], metrics = compiled(holder["state"], jbatch, key)
        jax.block_until_ready(metrics["loss"])

      times.append(common.timed(one))
    return times

  # Peer: transformers' LlamaForCausalLM + torch.optim.AdamW.
  model = AutoModelForCausalLM.from_pretrained(str(models.hf_dir), dtype=torch.float32)
  model.train()
  topt = torch_adamw(torch, model.parameters())
  ttokens = torch.as_tensor(tokens, dtype=torch.long)
  tmask = torch.as_tensor(mask, dtype=torch.long)
  labels = ttokens.clone()
  labels[torch.as_tensor(loss_mask) == 0] = -100

  def torch_step():
    loss = model(input_ids=ttokens, attention_mask=tmask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    topt.step()
    topt.zero_grad(set_to_none=True)
    return float(loss)

  # Sanity: same first loss on both sides (same weights, same objective).
  first_torch_loss = torch_step()
  holder["state"], metrics = compiled(holder["state"], jbatch, key)
  first_ours_loss = float(metrics["loss"])
  assert abs(first_torch_loss - first_ours_loss) < 1e-3, (first_torch_loss, first_ours_loss)

  def peer():
    return [common.timed(torch_step) for _ in range(steps_per_round)]

  probe = common.MatmulProbe()
  samples = common.interleave({"ours": ours, "torch": peer, "matmul_probe": probe}, repeats, warmup)
  peak = probe.flops / common.median(samples.pop("matmul_probe"))
  t_ours, t_peer = common.median(samples["ours"]), common.median(samples["torch"])
  tokens_per_step = batch * length
  flops = common.train_flops(models.cfg, batch, length)
  return {
    "batch": batch,
    "length": length,
    "ours_tokens_per_s": tokens_per_step / t_ours,
    "torch_tokens_per_s": tokens_per_step / t_peer,
    "ours_s": t_ours,
    "torch_s": t_peer,
    "ratio": t_peer / t_ours,
    "model_flops_per_step": flops,
    "ours_flops_per_s": flops / t_ours,
    "torch_flops_per_s": flops / t_peer,
    "compile_s": compile_s,
    "peak_interleaved_flops_per_s": peak,
    "raw": {k: common.spread(v) for k, v in samples.items()},
    "sanity": {
      "first_loss_ours": first_ours_loss,
      "first_loss_torch": first_torch_loss,
      "torch_threads": torch.get_num_threads(),
      "torch_autocast": torch.is_autocast_enabled("cpu"),
      "torch_training_mode": model.training,
    },
  }
