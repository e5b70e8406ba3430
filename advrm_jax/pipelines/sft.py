"""Supervised fine-tuning (the reference policy): next-token loss on responses."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging
from flax import nnx
import jax
import numpy as np
import optax
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.checkpoints.orbax_io import load_params, save_params
from advrm_jax.data.batching import epoch_batches
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.lm import lm_loss
from advrm_jax.models.transformer import Transformer
from advrm_jax.pipelines.loop import LoopConfig, train_loop
from advrm_jax.train_state import TrainState, abstract_module, create_train_state, make_optimizer, split_module


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation):
  """Pure step ``(state, batch) -> (state, metrics)``.

  batch: tokens [B,T], mask [B,T], loss_mask [B,T] (1 on response tokens).
  """
  def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array | None = None):
    del rng  # deterministic objective
    grad_fn = jax.value_and_grad(lm_loss, argnums=1, has_aux=True)
    (_, metrics), grads = grad_fn(graphdef, state.params, batch["tokens"], batch["mask"], batch["loss_mask"])
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    return TrainState(state.step + 1, params, opt_state), metrics
  return step


def jit_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                 state_shardings: TrainState, mesh: Mesh):
  """The step jitted once with explicit shardings and the state donated."""
  batch_sharding = shd.batch_sharding(mesh)
  return jax.jit(
      make_sft_step(graphdef, optimizer),
      in_shardings=(state_shardings, batch_sharding, shd.replicated(mesh)),
      out_shardings=(state_shardings, shd.replicated(mesh)),
      donate_argnums=(0,))


# ----------------------------------------------------------------------------
# The `sft` stage: train the reference policy on the synthetic world's
# mixed-quality corpus and hand it over as an orbax checkpoint + model config.
# ----------------------------------------------------------------------------


def synthetic_sft_arrays(num_examples: int, seed: int, max_len: int,
                         max_prompt_len: int | None = None) -> dict[str, np.ndarray]:
  """[BOS] prompt response [EOS], right-padded; loss on response and EOS only.

  With ``max_prompt_len`` (config key world.max_prompt_len), a prompt that
  does not fit is an error: cutting it would silently train on prompts the
  policy never sees in RL (where the same limit is an error too).
  """
  from advrm_jax.data import synthetic_world as world  # pylint: disable=import-outside-toplevel

  corpus = world.make_sft_corpus(num_examples, seed)
  tokens = np.zeros((num_examples, max_len), np.int32)
  mask = np.zeros((num_examples, max_len), np.int32)
  loss_mask = np.zeros((num_examples, max_len), np.int32)
  for i, example in enumerate(corpus):
    prompt = [world.BOS_ID] + world.TOKENIZER.encode(example["prompt"])
    if max_prompt_len is not None and len(prompt) > max_prompt_len:
      raise ValueError(f"world.max_prompt_len={max_prompt_len} cannot fit SFT prompt {i} "
                       f"({len(prompt)} tokens with BOS)")
    response = world.TOKENIZER.encode(example["response"]) + [world.EOS_ID]
    sequence = (prompt + response)[:max_len]  # over-long rambles lose their tail (and EOS)
    tokens[i, :len(sequence)] = sequence
    mask[i, :len(sequence)] = 1
    loss_mask[i, len(prompt):len(sequence)] = 1
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def model_config_from(config) -> ModelConfig:
  """The policy backbone's ModelConfig from ``config.model`` (from scratch)."""
  values = dict(config.model)
  values.pop("source", None)
  return ModelConfig.from_dict(values)


def save_model_config(directory: pathlib.Path, model_config: ModelConfig) -> None:
  """Writes ``model_config.json`` (what ``load_policy`` rebuilds the policy from)."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "model_config.json").write_text(json.dumps(model_config.to_dict(), indent=2))


def load_policy(stage_dir: str | pathlib.Path) -> tuple[ModelConfig, nnx.GraphDef, Any]:
  """(model config, graphdef, params) of a finished sft stage, on the default device."""
  stage_dir = pathlib.Path(stage_dir)
  config_path = stage_dir / "model_config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: run the `sft` stage first")
  model_config = ModelConfig.from_dict(json.loads(config_path.read_text()))
  graphdef, params, _ = abstract_module(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
  return model_config, graphdef, load_params(stage_dir / "params", params)


def run(config, workdir: pathlib.Path) -> None:
  """Stage `sft`: writes WORKDIR/sft/{checkpoints, model_config.json, metrics}."""
  stage_dir = pathlib.Path(workdir) / "sft"
  if (stage_dir / "DONE").exists():
    logging.info("sft: %s/DONE exists, skipping", stage_dir)
    return
  sft = config.sft
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  shd.check_batch_divisible(sft.batch_size, mesh, "sft.batch_size")
  model_config = model_config_from(config)
  from advrm_jax.data import synthetic_world as world  # pylint: disable=import-outside-toplevel
  if model_config.vocab_size != world.VOCAB_SIZE:
    raise ValueError(f"model.vocab_size={model_config.vocab_size} must equal the synthetic world's vocabulary "
                     f"size {world.VOCAB_SIZE}")
  max_len = config.world.max_prompt_len + config.world.max_response_len
  if max_len > model_config.max_seq_len:
    raise ValueError(f"world.max_prompt_len + world.max_response_len = {max_len} exceeds "
                     f"model.max_seq_len = {model_config.max_seq_len}")
  data = synthetic_sft_arrays(sft.num_examples, config.seed, max_len, config.world.max_prompt_len)
  graphdef, params, axes = split_module(Transformer(model_config, rngs=nnx.Rngs(config.seed)))
  optimizer = make_optimizer(sft.optimizer, total_steps=sft.num_steps)
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  step_fn = jit_sft_step(graphdef, optimizer, shardings, mesh)
  num_examples = data["tokens"].shape[0]
  batches_per_epoch = num_examples // sft.batch_size

  def get_batch(step: int) -> dict[str, np.ndarray]:
    epoch, index = divmod(step, batches_per_epoch)
    rows = epoch_batches(num_examples, sft.batch_size, config.seed, epoch)[index]
    return {k: v[rows] for k, v in data.items()}

  save_model_config(stage_dir, model_config)
  loop = LoopConfig(num_steps=sft.num_steps, log_every=sft.log_every,
                    checkpoint_every=sft.checkpoint_every, seed=config.seed)
  state = train_loop("sft", stage_dir, state, step_fn, get_batch, loop, mesh)
  save_params(stage_dir / "params", state.params)
  (stage_dir / "DONE").write_text("ok\n")
