"""RL: one full GRPO iteration, ours (``make_iteration``) versus TRL's GRPOTrainer.

Equal work on both sides: 4 prompts x 4 samples = 16 samples of 16 prompt +
64 new tokens (no early stop: our sampler has no EOS id, TRL gets
``min_new_tokens=64``), temperature 1, a reward computed from the token ids
(fraction of even ids), group-normalised advantages, a k3 KL penalty to the
frozen reference (beta 0.04, in the loss, so both compute reference
log-probs), token-mean clipped loss, one optimizer update per iteration
(``num_iterations=1``, one minibatch), AdamW, f32.

Differences that remain (and favour TRL): with ``num_iterations=1`` TRL reuses
the current log-probs as the "old" ones, while our iteration always runs a
separate no-grad forward for them; TRL's reward is a Python function on ids,
ours a jitted function.

TRL runs as its documentation advises for a CPU: ``bf16=False``,
``gradient_checkpointing=False``, ``use_cpu=True``, no vLLM, no logging of
completions. Its step time is the interval between consecutive
``on_step_end`` callbacks (generation + scoring + update).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax.rl.engine import RLConfig, init_policy_params, init_rl_state, make_iteration
from advrm_jax.rl.rewards import FunctionSource
from advrm_jax.rl.sampler import SamplingConfig
from advrm_jax.train_state import make_optimizer
from benchmarks import common
from benchmarks.bench_rm import _StepTimes

LR = 1e-6
BETA = 0.04


def even_fraction(prompt_tokens, prompt_mask, response_tokens, response_mask):
  """Our reward: the fraction of even token ids in the response."""
  del prompt_tokens, prompt_mask
  m = response_mask.astype(jnp.float32)
  return jnp.sum((response_tokens % 2 == 0) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def even_fraction_trl(prompts, completions, completion_ids, **kwargs):
  """TRL's reward: the same quantity from the completion ids."""
  del prompts, completions, kwargs
  return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def run(
  models: common.Models,
  repeats: int,
  warmup: int,
  steps_per_round: int = 2,
  num_prompts: int = 4,
  num_samples: int = 4,
  prompt_len: int = 16,
  new_tokens: int = 64,
  with_trl: bool = True,
) -> dict[str, Any]:
  rng = np.random.default_rng(5)
  prompts = common.random_tokens(rng, (num_prompts, prompt_len), models.cfg.vocab_size)
  batch = num_prompts * num_samples
  out: dict[str, Any] = {"samples_per_iteration": batch, "prompt_len": prompt_len, "new_tokens": new_tokens}

  config = RLConfig(
    algorithm="grpo",
    num_samples=num_samples,
    ppo_epochs=1,
    num_minibatches=1,
    kl_coef=BETA,
    kl_estimator="k3",
    kl_in_reward=False,
    whiten_advantages=False,
    loss_mode="token_mean",
  )
  sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, eos_id=None, pad_id=common.PAD_ID)
  opt = make_optimizer(
    None, learning_rate=LR, schedule="constant", weight_decay=0.0, grad_clip=1.0, b1=0.9, b2=0.95, eps=1e-8
  )
  iteration = jax.jit(
    make_iteration(models.graphdef, opt, config, sampling, FunctionSource(even_fraction)), donate_argnums=(0,)
  )
  state = init_rl_state(init_policy_params(models.params, models.cfg.d_model), opt, config)
  jprompts = {"tokens": jnp.asarray(prompts), "mask": jnp.ones(prompts.shape, bool)}
  key = jax.random.key(0)
  compile_s, compiled = common.compile_seconds(iteration, state, models.params, None, jprompts, key)
  out["compile_s"] = compile_s
  holder = {"state": state, "step": 0}

  def ours():
    times = []
    for _ in range(steps_per_round):

      def one():
        holder["step"] += 1
        holder["state"], out = compiled(
          holder["state"], models.params, None, jprompts, jax.random.fold_in(key, holder["step"])
        )
        jax.block_until_ready(out.metrics["loss"])
        holder["length"] = float(out.metrics["response_length"])

      times.append(common.timed(one))
    return times

  sides = {"ours": ours}
  if with_trl:
    try:
      sides["trl_grpo"], out["trl_sanity"] = _trl_side(models, prompts, num_samples, new_tokens, steps_per_round)
    except Exception as e:  # pylint: disable=broad-except
      out["trl_grpo"] = f"could not run: {type(e).__name__}: {e}"

  samples = common.interleave(sides, repeats, warmup)
  for name, values in samples.items():
    seconds = common.median(values)
    out[f"{name}_s"] = seconds
    out[f"{name}_samples_per_s"] = batch / seconds
  if "trl_grpo_s" in out:
    out["ratio"] = out["trl_grpo_s"] / out["ours_s"]
  out["ours_response_length"] = holder.get("length")
  out["raw"] = {k: common.spread(v) for k, v in samples.items()}
  return out


def _trl_side(models, prompts, num_samples, new_tokens, steps_per_round):
  torch = common.setup_torch()
  from datasets import Dataset  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel
  from trl import GRPOConfig, GRPOTrainer  # pylint: disable=import-outside-toplevel

  steps = steps_per_round + 1  # n + 1 step ends give n intervals
  texts = [common.ids_to_text(p) for p in prompts]
  data = Dataset.from_dict({"prompt": texts * steps})
  args = GRPOConfig(
    output_dir=os.fspath(common.workdir()),
    per_device_train_batch_size=len(texts) * num_samples,
    num_generations=num_samples,
    max_completion_length=new_tokens,
    generation_kwargs={"min_new_tokens": new_tokens},
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    beta=BETA,
    num_iterations=1,
    loss_type="dapo",
    scale_rewards="group",
    learning_rate=LR,
    lr_scheduler_type="constant",
    warmup_steps=0,
    adam_beta1=0.9,
    adam_beta2=0.95,
    adam_epsilon=1e-8,
    weight_decay=0.0,
    max_grad_norm=1.0,
    max_steps=steps,
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
    log_completions=False,
    shuffle_dataset=False,
  )
  model = AutoModelForCausalLM.from_pretrained(str(models.hf_dir), dtype=torch.float32)
  model.generation_config.eos_token_id = None
  recorder = _StepTimes()
  trainer = GRPOTrainer(
    model=model,
    reward_funcs=[even_fraction_trl],
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
    "beta": args.beta,
    "ref_model": trainer.ref_model is not None,
    "dtype": str(next(model.parameters()).dtype),
    "torch_threads": torch.get_num_threads(),
  }
  return side, sanity
