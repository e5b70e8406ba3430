"""Ensemble reward models: K scalar heads on one backbone, or K whole models.

Two kinds of ensemble share one module class, ``RewardEnsemble``, and one
scoring API, ``reward_scores(graphdef, params, tokens, mask) -> [K, B]``:

* ``shared``: one ``Transformer`` and K linear heads, a ``[D, K]`` kernel and
  a ``[K]`` bias. The backbone runs once per batch, so K = 4 members cost
  about what one does; members differ only through their heads (and, in
  training, through per-member example weights).
* ``independent``: K backbones whose parameters are stacked along a leading
  ``members`` axis and run with ``nnx.vmap``. Members can start from the same
  pretrained weights (the paper's setting: different head seeds and data
  order) or from different random inits.

Member k's reward is ``hidden_k[last real token] @ kernel[:, k] + bias[k]``:
the same head layout for both kinds, so aggregation, evaluation and the
checkpoint format never branch on the kind.

The score is read at the last real token of each row (the largest index
where ``mask`` is 1), so left- and right-padded batches give the same
rewards, whether or not the sequence ends with EOS. The backbone derives
positions from the mask, which is what makes the two layouts agree exactly.

Parameters are pure dicts (see ``advrm_jax.train_state``); heads carry the
logical axes ``('embed', 'members')`` / ``('members',)`` and the stacked
backbones ``('members', ...)``, which ``advrm_jax.sharding`` maps (``members``
is replicated by default).
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import EMBED, Transformer
from advrm_jax.train_state import split_module

Array = jax.Array
Params = Any

MEMBERS = "members"
ENSEMBLE_KINDS = ("shared", "independent")
AGGREGATES = ("mean", "min", "mean_minus_std", "mean_minus_var", "member")


def last_token_index(mask: Array) -> Array:
  """Index of the last real token of each row.

  Args:
    mask: [..., T] bool/int, 1 on real tokens.

  Returns:
    [...] int32 indices. A row with no real token gives 0 (its score is
    meaningless and must be masked by the caller).
  """
  positions = jnp.arange(mask.shape[-1], dtype=jnp.int32)
  return jnp.max(jnp.where(mask.astype(bool), positions, 0), axis=-1)


def _gather_last(hidden: Array, mask: Array) -> Array:
  """hidden [..., B, T, D], mask [B, T] or [..., B, T] -> [..., B, D]."""
  index = last_token_index(mask)
  index = jnp.broadcast_to(index, hidden.shape[:-2])
  return jnp.take_along_axis(hidden, index[..., None, None], axis=-2)[..., 0, :]


def _stacked_transformer(cfg: ModelConfig, num_members: int, rngs: nnx.Rngs) -> Transformer:
  """K transformers with parameters stacked along a leading ``members`` axis.

  ``split_rngs`` gives each member its own init; ``transform_metadata``
  prepends ``members`` to every parameter's logical axis names so the
  sharding rules see the new axis.
  """

  @nnx.split_rngs(splits=num_members)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: MEMBERS})
  def make(member_rngs):
    return Transformer(cfg, rngs=member_rngs)

  return make(rngs)


def _init_head_kernel(key: Array, d_model: int, num_members: int) -> Array:
  """[D, K] head kernel; column k is member k's head.

  std 1/sqrt(D+1): initial rewards are O(1) whatever the width, so the first
  BT steps neither saturate the sigmoid nor start at exactly zero.
  """
  return jax.random.normal(key, (d_model, num_members), jnp.float32) / math.sqrt(d_model + 1)


class RewardEnsemble(nnx.Module):
  """K reward models scoring a batch at once: ``[B, T] tokens -> [K, B]``.

  Attributes:
    cfg: The backbone config.
    num_members: K.
    kind: "shared" (K heads on one backbone) or "independent" (K stacked
      backbones, each with its own head).
    backbone: A ``Transformer``; for "independent" its parameters have a
      leading [K] axis.
    head_kernel: [D, K] float32, member k's head is column k.
    head_bias: [K] float32.
  """

  def __init__(
    self, cfg: ModelConfig, num_members: int, kind: str = "shared", *, rngs: nnx.Rngs, head_rngs: nnx.Rngs | None = None
  ):
    """Builds the ensemble with random weights.

    Args:
      cfg: Backbone config.
      num_members: Number of members K (>= 1).
      kind: "shared" or "independent".
      rngs: Backbone initialisation (independent members get split keys).
      head_rngs: Head initialisation (defaults to ``rngs``); a separate
        stream so that heads on a pretrained backbone get their own seed.
    """
    if kind not in ENSEMBLE_KINDS:
      raise ValueError(f"rm.ensemble: unknown kind {kind!r}; expected one of {ENSEMBLE_KINDS}")
    if num_members < 1:
      raise ValueError(f"rm.num_members must be >= 1, got {num_members}")
    self.cfg = cfg
    self.num_members = num_members
    self.kind = kind
    if kind == "shared":
      self.backbone = Transformer(cfg, rngs=rngs)
    else:
      self.backbone = _stacked_transformer(cfg, num_members, rngs)
    kernel = _init_head_kernel((head_rngs or rngs).params(), cfg.d_model, num_members)
    # Heads stay float32 even for a bf16 backbone: they are tiny and the
    # reward differences they produce are what the BT loss compares.
    self.head_kernel = nnx.Param(kernel, out_sharding=(EMBED, MEMBERS), eager_sharding=False)
    self.head_bias = nnx.Param(jnp.zeros((num_members,), jnp.float32), out_sharding=(MEMBERS,), eager_sharding=False)

  def last_hidden(self, tokens: Array, mask: Array) -> Array:
    """Final hidden state at each row's last real token.

    Args:
      tokens: [B, T] int32 (every member scores the same rows), or, for the
        independent kind only, [K, B, T] (member k scores ``tokens[k]``).
      mask: same shape as ``tokens``, 1 on real tokens.

    Returns:
      [B, D] for the shared kind, [K, B, D] for the independent kind.
    """
    if self.kind == "shared":
      if tokens.ndim != 2:
        raise ValueError(
          f"a shared-backbone ensemble scores [B, T] tokens, got shape {tokens.shape}; "
          "per-member batches need rm.ensemble='independent'"
        )
      hidden = self.backbone(tokens, mask, compute_logits=False).hidden
      return _gather_last(hidden, mask)
    member_axis = 0 if tokens.ndim == 3 else None
    if tokens.ndim not in (2, 3) or (member_axis == 0 and tokens.shape[0] != self.num_members):
      raise ValueError(f"tokens must be [B, T] or [K={self.num_members}, B, T], got shape {tokens.shape}")

    @nnx.vmap(in_axes=(0, member_axis, member_axis), out_axes=0)
    def member_hidden(backbone, member_tokens, member_mask):
      hidden = backbone(member_tokens, member_mask, compute_logits=False).hidden
      return _gather_last(hidden, member_mask)

    return member_hidden(self.backbone, tokens, mask)

  def __call__(self, tokens: Array, mask: Array) -> Array:
    """Rewards of every member.

    Args:
      tokens: [B, T] int32, or [K, B, T] for per-member inputs (independent
        kind only).
      mask: same shape, 1 on real tokens (any padding side).

    Returns:
      [K, B] float32 rewards.
    """
    return self.heads(self.last_hidden(tokens, mask))

  def heads(self, last: Array) -> Array:
    """[K, B] rewards from ``last_hidden``'s output (the K linear heads)."""
    last = last.astype(jnp.float32)
    kernel = self.head_kernel[...].astype(jnp.float32)
    if last.ndim == 2:  # shared: one hidden state, K heads
      scores = jnp.einsum("bd,dk->kb", last, kernel)
    else:  # independent: member k's hidden state, member k's head
      scores = jnp.einsum("kbd,dk->kb", last, kernel)
    return scores + self.head_bias[...].astype(jnp.float32)[:, None]


def reward_scores(graphdef: nnx.GraphDef, params: Params, tokens: Array, mask: Array) -> Array:
  """The one scoring API: rewards of every member, callable inside jit.

  Args:
    graphdef: ``RewardEnsemble`` structure (static; from ``init_reward_model``
      or ``advrm_jax.pipelines.workdir.load_reward_model``).
    params: Its parameters (pure dict).
    tokens: [B, T] int32 prompt+response rows (either padding side); or
      [K, B, T] per-member rows for an independent ensemble.
    mask: [B, T] (or [K, B, T]) 1 on real tokens.

  Returns:
    [K, B] float32 rewards, read at each row's last real token.
  """
  return nnx.merge(graphdef, params)(tokens, mask)


def init_reward_model(
  cfg: ModelConfig,
  num_members: int,
  kind: str = "shared",
  *,
  seed: int = 0,
  head_seed: int | None = None,
  backbone_params: Params | None = None,
) -> tuple[nnx.GraphDef, Params, Any]:
  """Creates an ensemble and returns ``(graphdef, params, logical_axes)``.

  Args:
    cfg: Backbone config.
    num_members: K.
    kind: "shared" or "independent".
    seed: Seed of the random backbone init (ignored for the backbone when
      ``backbone_params`` is given).
    head_seed: Seed of the heads (default ``seed + 1``); each member's head is
      its own column, so members differ from the first step.
    backbone_params: Optional pretrained ``Transformer`` parameters (pure
      dict, e.g. from ``advrm_jax.checkpoints.hf``). Every member of either
      kind starts from them; for "independent" they are copied K times.

  Returns:
    (graphdef, params, axes); params and axes are parallel pure dicts.
  """
  head_seed = seed + 1 if head_seed is None else head_seed
  factory = lambda: RewardEnsemble(cfg, num_members, kind, rngs=nnx.Rngs(seed), head_rngs=nnx.Rngs(head_seed))
  # Structure and logical axes from an abstract module (nothing allocated).
  graphdef, abstract, axes = split_module(nnx.eval_shape(factory))
  if backbone_params is None:
    # One jitted init instead of op-by-op eager initialisation, which
    # compiles a kernel per parameter shape and takes seconds even for a toy.
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(factory())))()
    return graphdef, params, axes
  # Pretrained: fill in the given weights and freshly initialised heads
  # (the random backbone init never runs).
  _check_backbone_shapes(abstract["backbone"], backbone_params, kind, num_members)
  dtype = cfg.jnp_param_dtype
  backbone = jax.tree.map(lambda x: jnp.asarray(x, dtype), backbone_params)
  if kind == "independent":
    backbone = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_members, *x.shape)).copy(), backbone)
  # The same key stream as RewardEnsemble.__init__, so the heads equal a
  # from-scratch model's heads with the same head_seed.
  kernel = _init_head_kernel(nnx.Rngs(head_seed).params(), cfg.d_model, num_members)
  params = {"backbone": backbone, "head_kernel": kernel, "head_bias": jnp.zeros((num_members,), jnp.float32)}
  return graphdef, params, axes


def _check_backbone_shapes(abstract: Params, given: Params, kind: str, num_members: int) -> None:
  """Names the first pretrained parameter whose path or shape does not fit."""
  flat_abstract = dict(nnx.traversals.flatten_mapping(abstract))
  flat_given = dict(nnx.traversals.flatten_mapping(given))
  missing = sorted("/".join(k) for k in set(flat_abstract) - set(flat_given))
  extra = sorted("/".join(k) for k in set(flat_given) - set(flat_abstract))
  if missing or extra:
    raise ValueError(
      f"pretrained backbone parameters do not match the model config: missing {missing[:5]}, unexpected {extra[:5]}"
    )
  for key, spec in flat_abstract.items():
    want = tuple(spec.shape[1:]) if kind == "independent" else tuple(spec.shape)
    if tuple(flat_given[key].shape) != want:
      raise ValueError(
        f"pretrained backbone parameter {'/'.join(key)!r}: shape {tuple(flat_given[key].shape)}, "
        f"the model config expects {want}"
      )


# ---------------------------------------------------------------------------
# Aggregation and uncertainty over the member axis.
# ---------------------------------------------------------------------------


def ensemble_aggregate(scores: Array, kind: str = "mean", coef: float = 1.0, member: int = 0) -> Array:
  """Reduces member rewards [K, B] to one reward per row [B].

  Args:
    scores: [K, B] rewards.
    kind: "mean"; "min" (worst case, ``min_k R_k``); "mean_minus_std"
      (``mean - coef * std``); "mean_minus_var" (``mean - coef * var``, the
      uncertainty-weighted objective of Coste et al.); "member" (one member,
      ``scores[member]``, e.g. the paper's R1). std/var are population
      statistics over members (divide by K), 0 for K = 1.
    coef: Penalty weight of the std/var aggregates.
    member: Which member "member" returns.

  Returns:
    [B] rewards, float32.
  """
  scores = scores.astype(jnp.float32)
  if kind == "mean":
    return jnp.mean(scores, axis=0)
  if kind == "min":
    return jnp.min(scores, axis=0)
  if kind == "mean_minus_std":
    return jnp.mean(scores, axis=0) - coef * jnp.std(scores, axis=0)
  if kind == "mean_minus_var":
    return jnp.mean(scores, axis=0) - coef * jnp.var(scores, axis=0)
  if kind == "member":
    if not 0 <= member < scores.shape[0]:
      raise ValueError(f"ensemble member {member} out of range for K={scores.shape[0]}")
    return scores[member]
  raise ValueError(f"unknown ensemble aggregate {kind!r}; expected one of {AGGREGATES}")


def ensemble_uncertainty(scores: Array, member: int = 0) -> dict[str, Array]:
  """Disagreement between members for each row.

  Args:
    scores: [K, B] rewards.
    member: The member playing R1 in the paper's ``U = R1 - R2``.

  Returns:
    {"ensemble_std": [B] population std over members,
     "disagreement": [B] ``R1 - R2`` with R1 = ``scores[member]`` and R2 the
     mean of the other members (0 when K = 1)}.
  """
  scores = scores.astype(jnp.float32)
  num_members = scores.shape[0]
  if not 0 <= member < num_members:
    raise ValueError(f"ensemble member {member} out of range for K={num_members}")
  r1 = scores[member]
  if num_members == 1:
    r2 = r1
  else:
    r2 = (jnp.sum(scores, axis=0) - r1) / (num_members - 1)
  return {"ensemble_std": jnp.std(scores, axis=0), "disagreement": r1 - r2}
