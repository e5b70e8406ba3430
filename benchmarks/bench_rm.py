"""Reward-model training: our Bradley-Terry step vs TRL's RewardTrainer vs plain PyTorch.

Same backbone weights on all three sides, one scalar head initialised to the
same values (our ``head_kernel`` copied into ``score.weight``), 16 preference
pairs of 64 tokens, no padding, AdamW (b1 0.9, b2 0.95, no weight decay,
constant lr), clipping at 1.0, f32.

TRL is configured as its documentation advises for a CPU: ``bf16=False`` (TRL
1.x turns bf16 autocast on by default, which is many times slower on CPUs
without native bf16 matmuls), ``gradient_checkpointing=False`` (TRL's default
is True, which recomputes the forward; the tiny model needs no memory
saving), ``use_cpu=True``, no logging/saving/reporting inside the timed steps.
TRL's step time is the interval between consecutive ``on_step_end`` callbacks,
so it includes its data collation, as a real training run does.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.train_state import create_train_state
from benchmarks import common
from benchmarks.bench_train import LR, optimizer, torch_adamw


def _reward_package():
  """The reward package's entry points, or None while it has not landed."""
  try:
    from advrm_jax.reward.losses import jit_bt_step  # pylint: disable=import-outside-toplevel
    from advrm_jax.reward.model import init_reward_model  # pylint: disable=import-outside-toplevel
  except Exception:  # pylint: disable=broad-except
    return None
  return init_reward_model, jit_bt_step


def _torch_rm(models: common.Models, head_kernel: np.ndarray):
  """LlamaForSequenceClassification on the exported backbone, our head copied in."""
  torch = common.setup_torch()
  from transformers import AutoModelForSequenceClassification  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  transformers.logging.set_verbosity_error()  # "score.weight newly initialized" is expected
  model = AutoModelForSequenceClassification.from_pretrained(str(models.hf_dir), num_labels=1, dtype=torch.float32)
  model.config.pad_token_id = common.PAD_ID
  with torch.no_grad():
    model.score.weight.copy_(torch.as_tensor(np.asarray(head_kernel).T))
  model.train()
  return model


class _StepTimes:
  """A transformers TrainerCallback recording on_step_end times."""

  def __init__(self):
    from transformers import TrainerCallback  # pylint: disable=import-outside-toplevel

    times = self.times = []

    class Callback(TrainerCallback):
      def on_step_end(self, args, state, control, **kwargs):
        times.append(time.perf_counter())

    self.callback = Callback()

  def deltas(self) -> list[float]:
    out = list(np.diff(self.times))
    self.times.clear()
    return out


def run(
  models: common.Models,
  repeats: int,
  warmup: int,
  steps_per_round: int = 3,
  pairs: int = 16,
  length: int = 64,
  with_trl: bool = True,
) -> dict[str, Any]:
  torch = common.setup_torch()
  rng = np.random.default_rng(3)
  chosen = common.random_tokens(rng, (pairs, length), models.cfg.vocab_size)
  rejected = common.random_tokens(rng, (pairs, length), models.cfg.vocab_size)
  flops = common.train_flops(models.cfg, 2 * pairs, length, lm_head=False)
  out: dict[str, Any] = {"pairs": pairs, "length": length, "model_flops_per_step": flops}
  sides = {}

  package = _reward_package()
  head_kernel = np.random.default_rng(4).normal(size=(models.cfg.d_model, 1)) / np.sqrt(models.cfg.d_model + 1)
  if package is not None:
    init_reward_model, jit_bt_step = package
    graphdef, params, axes = init_reward_model(
      models.cfg,
      1,
      "shared",
      # A copy: the step donates its state, which must not free the shared weights.
      backbone_params=jax.tree.map(lambda x: jnp.array(x, copy=True), models.params),
    )
    head_kernel = np.asarray(params["head_kernel"])
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    opt = optimizer()
    state, shardings = create_train_state(params, axes, opt, mesh)
    step_fn = jit_bt_step(graphdef, opt, shardings, mesh)
    ones = np.ones_like(chosen)
    batch = shd.shard_batch(
      {"chosen_tokens": chosen, "chosen_mask": ones, "rejected_tokens": rejected, "rejected_mask": ones}, mesh
    )
    key = jax.random.key(0)
    compile_s, compiled = common.compile_seconds(step_fn, state, batch, key)
    out["compile_s"] = compile_s
    holder = {"state": state}

    def ours():
      times = []
      for _ in range(steps_per_round):

        def one():
          holder["state"], metrics = compiled(holder["state"], batch, key)
          jax.block_until_ready(metrics["loss"])

        times.append(common.timed(one))
      return times

    holder["state"], metrics = compiled(holder["state"], batch, key)
    out["first_loss_ours"] = float(metrics["loss"])
    sides["ours"] = ours
  else:
    out["ours"] = "pending: advrm_jax.reward (init_reward_model, jit_bt_step) has not landed"

  # Plain PyTorch BT loop.
  model = _torch_rm(models, head_kernel)
  topt = torch_adamw(torch, model.parameters())
  tokens = torch.as_tensor(np.concatenate([chosen, rejected]), dtype=torch.long)
  tmask = torch.ones_like(tokens)

  def torch_step():
    rewards = model(input_ids=tokens, attention_mask=tmask, use_cache=False).logits[:, 0]
    loss = -torch.nn.functional.logsigmoid(rewards[:pairs] - rewards[pairs:]).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    topt.step()
    topt.zero_grad(set_to_none=True)
    return float(loss)

  out["first_loss_torch"] = torch_step()
  if "first_loss_ours" in out:
    assert abs(out["first_loss_ours"] - out["first_loss_torch"]) < 1e-3, out
  sides["torch"] = lambda: [common.timed(torch_step) for _ in range(steps_per_round)]

  if with_trl:
    trl_side, trl_sanity = _trl_side(models, head_kernel, chosen, rejected, steps_per_round)
    sides["trl"] = trl_side
    out["trl_sanity"] = trl_sanity

  probe = common.MatmulProbe()
  sides["matmul_probe"] = probe
  samples = common.interleave(sides, repeats, warmup)
  out["peak_interleaved_flops_per_s"] = probe.flops / common.median(samples.pop("matmul_probe"))
  for name, values in samples.items():
    seconds = common.median(values)
    out[f"{name}_s"] = seconds
    out[f"{name}_pairs_per_s"] = pairs / seconds
    out[f"{name}_flops_per_s"] = flops / seconds
  if "ours_s" in out:
    for name in ("torch", "trl"):
      if f"{name}_s" in out:
        out[f"ratio_vs_{name}"] = out[f"{name}_s"] / out["ours_s"]
  out["raw"] = {k: common.spread(v) for k, v in samples.items()}
  out["sanity"] = {"torch_threads": torch.get_num_threads(), "torch_training_mode": model.training}
  return out


def _trl_side(models, head_kernel, chosen, rejected, steps_per_round):
  """A RewardTrainer whose ``train()`` runs ``steps_per_round + 1`` steps per call."""
  torch = common.setup_torch()
  from datasets import Dataset  # pylint: disable=import-outside-toplevel
  from trl import RewardConfig, RewardTrainer  # pylint: disable=import-outside-toplevel

  pairs = chosen.shape[0]
  steps = steps_per_round + 1  # n + 1 step ends give n intervals
  data = Dataset.from_dict(
    {
      "chosen_ids": [list(map(int, r)) for r in np.tile(chosen, (steps, 1))],
      "rejected_ids": [list(map(int, r)) for r in np.tile(rejected, (steps, 1))],
    }
  )
  args = RewardConfig(
    output_dir=os.fspath(common.workdir()),
    per_device_train_batch_size=pairs,
    max_steps=steps,
    learning_rate=LR,
    lr_scheduler_type="constant",
    warmup_steps=0,
    adam_beta1=0.9,
    adam_beta2=0.95,
    adam_epsilon=1e-8,
    weight_decay=0.0,
    max_grad_norm=1.0,
    bf16=False,
    fp16=False,
    gradient_checkpointing=False,
    use_cpu=True,
    report_to="none",
    save_strategy="no",
    logging_steps=10**6,
    disable_tqdm=True,
    dataloader_num_workers=0,
    seed=0,
    max_length=None,
  )
  model = _torch_rm(models, head_kernel)
  recorder = _StepTimes()
  trainer = RewardTrainer(
    model=model,
    args=args,
    train_dataset=data,
    processing_class=common.make_tokenizer(models.cfg.vocab_size),
    callbacks=[recorder.callback],
  )

  def side():
    trainer.train()
    return recorder.deltas()

  sanity = {
    "bf16": args.bf16,
    "gradient_checkpointing": args.gradient_checkpointing,
    "mixed_precision": str(trainer.accelerator.mixed_precision),
    "dtype": str(next(model.parameters()).dtype),
    "torch_threads": torch.get_num_threads(),
  }
  return side, sanity
