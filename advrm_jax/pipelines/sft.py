"""Supervised fine-tuning (the reference policy): next-token loss on responses."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import optax
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.models.lm import lm_loss
from advrm_jax.train_state import TrainState


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation):
  """Pure step ``(state, batch) -> (state, metrics)``.

  batch: tokens [B,T], mask [B,T], loss_mask [B,T] (1 on response tokens).
  """
  def step(state: TrainState, batch: dict[str, jax.Array]):
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
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, shd.replicated(mesh)),
      donate_argnums=(0,))
