"""Bradley-Terry training of reward-model ensembles: the loss and the step.

Loss of member k on pair b (chosen reward c, rejected reward r):

  L_kb = -log sigmoid(c_kb - r_kb - margin_b) + centering_coef * (c_kb + r_kb)^2

The centering term (Eisenstein et al. 2023, "Helping or Herding?") pins the
reward scale, which BT leaves free (adding a constant to every reward does
not change the loss), so members stay comparable and aggregates such as
``mean - c*std`` mean the same thing throughout training.

Per-member data: ``member_weights[k, b]`` weighs pair b in member k's loss.
Member k's loss is its weighted mean over pairs, and the total is the mean
over members, so with bootstrap counts as weights each member fits its own
resample. For the independent ensemble, members can instead (or also) see
their own rows: batch arrays then carry a member axis.

Batch layout (a dict of arrays, batch axis first so that the training loop
can split every array over the data-parallel mesh axes the same way):

  chosen_tokens, chosen_mask, rejected_tokens, rejected_mask:
      [B, T] (every member sees the same rows) or
      [B, K, T] (member k sees column k; independent ensemble only)
  member_weights: [B, K] float32, optional (default: all ones)
  margin: [B] (or [B, K] with per-member rows) float32, optional per-pair
      margin, added to the config margin
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.reward.model import reward_scores
from advrm_jax.train_state import TrainState, apply_gradients

Array = jax.Array


def bradley_terry_loss(
  chosen_rewards: Array,
  rejected_rewards: Array,
  member_weights: Array | None = None,
  margin: Array | float = 0.0,
  centering_coef: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
  """Bradley-Terry loss averaged over pairs (weighted) and members.

  Args:
    chosen_rewards: [K, B] rewards of the preferred responses.
    rejected_rewards: [K, B] rewards of the dispreferred responses.
    member_weights: [K, B] non-negative weight of each pair in each member's
      loss (bootstrap counts, 0/1 masks); default all ones.
    margin: scalar or [B]: the chosen reward must beat the rejected one by
      this much before the loss flattens.
    centering_coef: weight of ``(c + r)^2``.

  Returns:
    (loss, metrics): the scalar loss and float32 scalars ``loss``,
    ``bt_loss``, ``centering_loss``, ``accuracy``, ``accuracy_member_<k>``,
    ``reward_margin``, ``chosen_reward``, ``rejected_reward``,
    ``ensemble_std`` (mean over pairs of the members' std of the margin).
  """
  chosen = chosen_rewards.astype(jnp.float32)
  rejected = rejected_rewards.astype(jnp.float32)
  num_members = chosen.shape[0]
  weights = jnp.ones_like(chosen) if member_weights is None else member_weights.astype(jnp.float32)
  # A member whose bootstrap weights are all zero in this batch contributes 0
  # (not NaN) and simply skips the step.
  member_total = jnp.maximum(jnp.sum(weights, axis=1), 1e-9)

  def member_mean(values):  # [K, B] -> [K]
    return jnp.sum(weights * values, axis=1) / member_total

  difference = chosen - rejected
  bt = -jax.nn.log_sigmoid(difference - margin)
  centering = jnp.square(chosen + rejected)
  bt_loss = jnp.mean(member_mean(bt))
  centering_loss = jnp.mean(member_mean(centering))
  loss = bt_loss + centering_coef * centering_loss

  member_accuracy = member_mean((difference > 0).astype(jnp.float32))
  metrics = {
    "loss": loss,
    "bt_loss": bt_loss,
    "centering_loss": centering_loss,
    "accuracy": jnp.mean(member_accuracy),
    "reward_margin": jnp.mean(member_mean(difference)),
    "chosen_reward": jnp.mean(member_mean(chosen)),
    "rejected_reward": jnp.mean(member_mean(rejected)),
    "ensemble_std": jnp.mean(jnp.std(difference, axis=0)),
  }
  for k in range(num_members):
    metrics[f"accuracy_member_{k}"] = member_accuracy[k]
  return loss, metrics


def pair_scores(graphdef: nnx.GraphDef, params: Any, batch: dict[str, Array]) -> tuple[Array, Array]:
  """Chosen and rejected rewards [K, B] of a batch in one backbone pass.

  Chosen and rejected rows are concatenated along the batch axis so the
  backbone (the expensive part) runs once on 2B rows.
  """
  chosen_tokens, rejected_tokens = batch["chosen_tokens"], batch["rejected_tokens"]
  chosen_mask, rejected_mask = batch["chosen_mask"], batch["rejected_mask"]
  if chosen_tokens.ndim == 3:
    # [B, K, T] -> [K, B, T]: member k scores its own rows.
    to_members = lambda x: jnp.swapaxes(x, 0, 1)
    chosen_tokens, rejected_tokens = to_members(chosen_tokens), to_members(rejected_tokens)
    chosen_mask, rejected_mask = to_members(chosen_mask), to_members(rejected_mask)
  batch_axis = chosen_tokens.ndim - 2
  tokens = jnp.concatenate([chosen_tokens, rejected_tokens], axis=batch_axis)
  mask = jnp.concatenate([chosen_mask, rejected_mask], axis=batch_axis)
  scores = reward_scores(graphdef, params, tokens, mask)
  num_pairs = chosen_tokens.shape[batch_axis]
  return scores[:, :num_pairs], scores[:, num_pairs:]


def make_bt_step(
  graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, margin: float = 0.0, centering_coef: float = 0.0
):
  """Pure step ``(state, batch, rng) -> (state, metrics)`` (see module doc for the batch).

  ``rng`` is unused (the backbone has no dropout) but kept so every stage's
  step has the same signature for the training loop.
  """

  def loss_fn(params, batch):
    chosen, rejected = pair_scores(graphdef, params, batch)
    weights = batch.get("member_weights")
    if weights is not None:
      weights = weights.T  # [B, K] -> [K, B]
    pair_margin = margin
    if "margin" in batch:
      pair_margin = margin + (batch["margin"].T if batch["margin"].ndim == 2 else batch["margin"])
    return bradley_terry_loss(chosen, rejected, weights, pair_margin, centering_coef)

  def step(state: TrainState, batch: dict[str, Array], rng: Array):
    del rng
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    return apply_gradients(state, grads, metrics, optimizer)

  return step


def jit_bt_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  state_shardings: TrainState,
  mesh: Mesh,
  margin: float = 0.0,
  centering_coef: float = 0.0,
):
  """The BT step jitted once: explicit shardings, the state donated."""
  return jax.jit(
    make_bt_step(graphdef, optimizer, margin, centering_coef),
    in_shardings=(state_shardings, shd.batch_sharding(mesh), shd.replicated(mesh)),
    out_shardings=(state_shardings, shd.replicated(mesh)),
    donate_argnums=(0,),
  )
