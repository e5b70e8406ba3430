"""The SFT driver: next-token training of a policy from scratch, shared by `sft` and the reasoning world's `empo`."""

from __future__ import annotations

from typing import Any

from etils import epath
from flax import nnx
import numpy as np

from advrm_jax.checkpoints.orbax_io import save_params
from advrm_jax.data.batching import step_rows
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.lm import jit_sft_step
from advrm_jax.models.transformer import Transformer
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.loop import LoopConfig, train_loop, without_samples
from advrm_jax.train_state import create_train_state, make_optimizer, split_module


def train_sft(
  name: str,
  out_dir: epath.Path,
  node: Any,
  model_config: ModelConfig,
  data: dict[str, np.ndarray],
  seed: int,
  mesh: Any,
  where: str = "config.sft",
) -> None:
  """Trains a policy on ``data`` and hands it over in ``out_dir`` (what ``workdir.load_policy`` reads).

  Args:
    name: run name (progress lines, plots).
    out_dir: model_config.json, params/, checkpoints, metrics and DONE go here.
    node: the config node: ``optimizer``, ``num_steps``, ``batch_size``,
      ``log_every``, ``checkpoint_every``.
    model_config: the policy's backbone.
    data: tokens [N, T], mask [N, T], loss_mask [N, T] (1 on response tokens).
    seed: initialisation and batch order.
    mesh: where the train state lives (the batch size is checked by the caller).
    where: the node's path in the config (errors name its keys by it).
  """
  graphdef, params, axes = split_module(Transformer(model_config, rngs=nnx.Rngs(seed)))
  optimizer = make_optimizer(node.optimizer, f"{where}.optimizer", total_steps=node.num_steps)
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  step_fn = without_samples(jit_sft_step(graphdef, optimizer, shardings, mesh))
  num_examples = data["tokens"].shape[0]

  def get_batch(step: int, share) -> dict[str, np.ndarray]:
    rows = share(step_rows(num_examples, node.batch_size, seed, step))
    return {k: v[rows] for k, v in data.items()}

  wd.save_model_config(out_dir, model_config)
  loop = LoopConfig(
    num_steps=node.num_steps, log_every=node.log_every, checkpoint_every=node.checkpoint_every, seed=seed
  )
  state = train_loop(name, out_dir, state, step_fn, get_batch, loop, mesh)
  save_params(out_dir / "params", state.params)
  wd.mark_done(out_dir)
