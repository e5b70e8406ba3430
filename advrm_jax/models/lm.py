"""Language-model quantities shared by SFT, RL and evaluation."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.train_state import TrainState, apply_gradients

Array = jax.Array


def token_logprobs_from_logits(logits: Array, targets: Array, temperature: float = 1.0) -> Array:
  """log p(target) per position. logits [B,T,V] f32, targets [B,T] -> [B,T]."""
  logits = logits.astype(jnp.float32) / temperature
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - logz


# From this vocabulary size on, lm_loss computes logits a chunk of positions at a time: a
# [B, T, V] float32 tensor (and its gradient) would otherwise dominate an SFT step's memory
# (SmolLM2: 16 x 512 x 49,152 x 4 bytes = 1.5 GiB each way).
CHUNKED_LOSS_MIN_VOCAB = 8192
# Positions per chunk: [B, 128, V] float32 logits live at a time, forward and backward.
LOSS_CHUNK = 128


def chunked_token_logprobs(hidden: Array, head: Array, targets: Array, chunk: int, temperature: float = 1.0) -> Array:
  """log p(target) per position from hidden states, ``chunk`` positions at a time.

  hidden [B, T, D] and head [D, V] in the compute dtype, targets [B, T] ->
  [B, T] float32. A scan over chunks of positions; each chunk's logits are
  rematerialised in the backward pass (jax.checkpoint), so neither pass holds
  more than one [B, chunk, V] block of logits. Same numbers as
  ``token_logprobs_from_logits`` on the full logits.
  """
  batch, length, width = hidden.shape
  num_chunks = -(-length // chunk)
  pad = num_chunks * chunk - length
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, num_chunks, chunk, width)
  targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(batch, num_chunks, chunk)

  @jax.checkpoint
  def chunk_logprobs(_, xs):
    h, t = xs
    logits = jnp.einsum("btd,dv->btv", h, head, preferred_element_type=jnp.float32)
    return None, token_logprobs_from_logits(logits, t, temperature)

  _, logprobs = jax.lax.scan(chunk_logprobs, None, (jnp.swapaxes(hidden, 0, 1), jnp.swapaxes(targets, 0, 1)))
  return jnp.swapaxes(logprobs, 0, 1).reshape(batch, num_chunks * chunk)[:, :length]


def next_token_logprobs(
  graphdef: nnx.GraphDef, params: Any, tokens: Array, mask: Array, temperature: float = 1.0, chunk: int | None = None
) -> Array:
  """Log-probs [B, T-1] of tokens[:, 1:] given their prefixes.

  Position t scores token t+1, so a response mask for tokens must be shifted
  the same way. ``chunk``: positions per block of logits
  (``chunked_token_logprobs``); default ``LOSS_CHUNK`` when the vocabulary
  has at least ``CHUNKED_LOSS_MIN_VOCAB`` entries, else 0 (all logits at once).
  """
  model = nnx.merge(graphdef, params)
  if chunk is None:
    chunk = LOSS_CHUNK if model.cfg.vocab_size >= CHUNKED_LOSS_MIN_VOCAB else 0
  targets = tokens[:, 1:]
  if not chunk:
    logits = model(tokens, mask).logits[:, :-1]
    return token_logprobs_from_logits(logits, targets, temperature)
  hidden = model(tokens, mask, compute_logits=False).hidden[:, :-1]
  return chunked_token_logprobs(hidden, model.head_kernel(), targets, chunk, temperature)


def lm_loss(
  graphdef: nnx.GraphDef,
  params: Any,
  tokens: Array,
  mask: Array,
  loss_mask: Array | None = None,
  chunk: int | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Mean next-token cross-entropy over target positions.

  Args:
    tokens, mask: [B, T] sequences and their real-token mask.
    loss_mask: [B, T] which tokens are targets (e.g. response only for SFT);
      defaults to every real token after the first.
    chunk: positions per block of logits (``next_token_logprobs``).
  """
  logprobs = next_token_logprobs(graphdef, params, tokens, mask, chunk=chunk)
  target_mask = (mask if loss_mask is None else loss_mask)[:, 1:].astype(jnp.float32)
  target_mask = target_mask * mask[:, :-1]  # a target needs a real prefix token
  count = jnp.maximum(target_mask.sum(), 1.0)
  loss = -(logprobs * target_mask).sum() / count
  return loss, {"loss": loss, "tokens": target_mask.sum()}


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation):
  """Pure step ``(state, batch) -> (state, metrics)``.

  batch: tokens [B,T], mask [B,T], loss_mask [B,T] (1 on response tokens).
  """

  def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array | None = None):
    del rng  # deterministic objective
    grad_fn = jax.value_and_grad(lm_loss, argnums=1, has_aux=True)
    (_, metrics), grads = grad_fn(graphdef, state.params, batch["tokens"], batch["mask"], batch["loss_mask"])
    return apply_gradients(state, grads, metrics, optimizer)

  return step


def jit_sft_step(
  graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, state_shardings: TrainState, mesh: Mesh
):
  """The step jitted once with explicit shardings and the state donated."""
  batch_sharding = shd.batch_sharding(mesh)
  return jax.jit(
    make_sft_step(graphdef, optimizer),
    in_shardings=(state_shardings, batch_sharding, shd.replicated(mesh)),
    out_shardings=(state_shardings, shd.replicated(mesh)),
    donate_argnums=(0,),
  )
