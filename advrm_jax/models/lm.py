"""Language-model quantities shared by SFT, RL and evaluation."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

Array = jax.Array


def token_logprobs_from_logits(logits: Array, targets: Array, temperature: float = 1.0) -> Array:
  """log p(target) per position. logits [B,T,V] f32, targets [B,T] -> [B,T]."""
  logits = logits.astype(jnp.float32) / temperature
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - logz


def next_token_logprobs(graphdef: nnx.GraphDef, params: Any, tokens: Array, mask: Array,
                        temperature: float = 1.0) -> tuple[Array, Array]:
  """Log-probs of tokens[:, 1:] given their prefixes.

  Returns (logprobs [B, T-1], logits [B, T-1, V]); position t scores token
  t+1, so a response mask for tokens must be shifted the same way.
  """
  model = nnx.merge(graphdef, params)
  out = model(tokens, mask)
  logits = out.logits[:, :-1]
  return token_logprobs_from_logits(logits, tokens[:, 1:], temperature), logits


def lm_loss(graphdef: nnx.GraphDef, params: Any, tokens: Array, mask: Array,
            loss_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """Mean next-token cross-entropy over target positions.

  Args:
    tokens, mask: [B, T] sequences and their real-token mask.
    loss_mask: [B, T] which tokens are targets (e.g. response only for SFT);
      defaults to every real token after the first.
  """
  logprobs, _ = next_token_logprobs(graphdef, params, tokens, mask)
  target_mask = (mask if loss_mask is None else loss_mask)[:, 1:].astype(jnp.float32)
  target_mask = target_mask * mask[:, :-1]  # a target needs a real prefix token
  count = jnp.maximum(target_mask.sum(), 1.0)
  loss = -(logprobs * target_mask).sum() / count
  return loss, {"loss": loss, "tokens": target_mask.sum()}
