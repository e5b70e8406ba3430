"""EMPO: semantic-entropy rewards from unlabelled prompts (Zhang et al. 2025).

"Right Question is Already Half the Answer: Fully Unsupervised LLM Reasoning
Incentivization". For each unlabelled prompt q the policy samples G
responses; responses are clustered by meaning, and each response is rewarded
by its cluster's share ``p(c|q) = |c| / n`` (or ``log p(c|q)``): the policy is
pushed towards its own most consistent answer, which minimises the semantic
entropy ``H(q) = -sum_c p(c|q) log p(c|q)``. Prompts whose entropy lies
outside ``[entropy_min, entropy_max]`` are dropped from the loss (too
uncertain: the majority is likely wrong; zero entropy: nothing to learn).
Advantages are GRPO's group-normalised ones.

Everything here is pure JAX over token arrays, so :class:`SemanticEntropySource`
is an ordinary reward source (``advrm_jax.rl.rewards``) that runs inside the
one jitted RL iteration of ``advrm_jax.rl.engine``.

Clustering
----------
Meaning is decided by a pluggable pair ``key_fn`` / ``equivalent``:

* ``key_fn(response_tokens [B, N], response_mask [B, N]) -> (keys [B, ...],
  valid [B] bool)`` extracts what is compared (for the reasoning task the
  final answer, ``reasoning_world.final_answer_key``); ``valid`` False means
  "no answer".
* ``equivalent(key_a, key_b) -> bool`` decides whether two keys mean the same
  (default :func:`exact_match`; e.g. :func:`within_one` for a tolerance).

Clusters are built greedily as in Kuhn et al.'s semantic entropy: responses
are visited in order and join the first earlier cluster whose
*representative* (first member) is equivalent, else open a new cluster. For
a transitive relation (exact match) this is exactly "same key"; for a
non-transitive one it is still well defined and order-deterministic.

"No answer" (``no_answer``):

* ``"exclude"`` (default): responses without an answer belong to no
  cluster, are left out of ``n`` and of the entropy, and are rewarded as an
  empty cluster (share 0; ``log`` floored at ``log(1 / (2G))``, below any real
  cluster's ``log(1 / G)``). Excluding them is the safe default: if they
  formed a cluster, a policy whose samples all fail to answer would be one
  unanimous cluster with share 1 -- the maximum reward -- so EMPO would
  reward collapsing into never answering.
* ``"cluster"``: all answerless responses form one cluster of their own
  (counted in ``n`` and the entropy like any other cluster).

Dropping prompts without changing the engine
--------------------------------------------
The engine has no per-row loss mask. A dropped prompt's G scores are all set
to 0, so its GRPO advantages are exactly 0 (``(s - mean) / (std + eps)`` of a
constant group) and its responses contribute no policy gradient -- the same
effect as masking them out of the policy loss. This needs
``rl.whiten_advantages=False`` (batch whitening would shift the zeros) and
``rl.kl_in_reward=False`` (a KL folded into the reward would make the group
non-constant; in the loss it still regularises every row, as in GRPO);
:func:`check_rl_config` enforces both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from advrm_jax.rl.rewards import Rollout

Array = jax.Array

REWARD_KINDS = ("prob", "log_prob")
NO_ANSWER_MODES = ("exclude", "cluster")


def exact_match(a: Array, b: Array) -> Array:
  """Default equivalence: keys are equal (elementwise, broadcasting)."""
  return a == b


def within_one(a: Array, b: Array) -> Array:
  """Example of a tolerant equivalence: numeric keys at most 1 apart."""
  return jnp.abs(a - b) <= 1


def _pairwise(equivalent: Callable[[Array, Array], Array], keys: Array) -> Array:
  """[P, G, G] equivalence of every pair of keys within a group ([P, G, ...] keys)."""
  a = jnp.expand_dims(keys, 2)  # [P, G, 1, ...]
  b = jnp.expand_dims(keys, 1)  # [P, 1, G, ...]
  same = equivalent(a, b)
  # Keys with trailing dims (e.g. token spans) are equivalent when all parts are.
  return jnp.all(same.reshape(same.shape[:3] + (-1,)), axis=-1)


@functools.partial(jax.jit, static_argnames=("equivalent", "no_answer"))
def greedy_clusters(
  keys: Array, valid: Array, equivalent: Callable[[Array, Array], Array] = exact_match, no_answer: str = "exclude"
) -> tuple[Array, Array]:
  """Greedy semantic clustering of each group's responses.

  Args:
    keys: [P, G, ...] extracted keys (e.g. final answers).
    valid: [P, G] bool, the response has an answer.
    equivalent: pairwise equivalence of keys.
    no_answer: "exclude" or "cluster" (see the module docstring) (static).

  Returns:
    (ids [P, G] int32: the index within the group of the cluster's first
    member; -1 for excluded responses, counted [P, G] bool: the response
    belongs to a cluster and counts in n).
  """
  if no_answer not in NO_ANSWER_MODES:
    raise ValueError(f"no_answer: unknown {no_answer!r}; expected one of {NO_ANSWER_MODES}")
  valid = jnp.asarray(valid).astype(bool)
  same = _pairwise(equivalent, jnp.asarray(keys)) & valid[:, :, None] & valid[:, None, :]
  if no_answer == "cluster":
    counted = jnp.ones_like(valid)
    same = same | (~valid[:, :, None] & ~valid[:, None, :])
  else:
    counted = valid
  num = valid.shape[1]
  order = jnp.arange(num)

  def one_group(same_g, counted_g):
    def visit(is_rep, i):
      match = same_g[i] & is_rep & (order < i)
      has = jnp.any(match)
      cid = jnp.where(has, jnp.argmax(match), i)
      is_rep = is_rep.at[i].set(~has & counted_g[i])
      return is_rep, jnp.where(counted_g[i], cid, -1)

    _, ids = jax.lax.scan(visit, jnp.zeros((num,), bool), order)
    return ids.astype(jnp.int32)

  return jax.vmap(one_group)(same, counted), counted


def cluster_shares(ids: Array, counted: Array) -> Array:
  """[P, G] p(c|q) of each response's cluster among the counted responses (0 if uncounted)."""
  counted = jnp.asarray(counted).astype(bool)
  member = (ids[:, :, None] == ids[:, None, :]) & counted[:, None, :]
  size = jnp.sum(member, axis=2).astype(jnp.float32)
  n = jnp.sum(counted, axis=1, keepdims=True).astype(jnp.float32)
  return jnp.where(counted, size / jnp.maximum(n, 1.0), 0.0)


def semantic_entropy(ids: Array, counted: Array) -> Array:
  """[P] H(q) = -sum_c p(c|q) log p(c|q) over the counted responses (0 if none).

  Each cluster c has |c| members with share p_c, so
  ``-sum_c p_c log p_c = -(1/n) sum_{i counted} log p_{c(i)}``.
  """
  counted = jnp.asarray(counted).astype(bool)
  shares = cluster_shares(ids, counted)
  n = jnp.maximum(jnp.sum(counted, axis=1).astype(jnp.float32), 1.0)
  # "+ 0.0" turns the -0.0 of a unanimous group into 0.0.
  return -jnp.sum(jnp.where(counted, jnp.log(jnp.where(counted, shares, 1.0)), 0.0), axis=1) / n + 0.0


def entropy_keep_mask(
  entropy: Array, num_counted: Array, entropy_min: float = 0.0, entropy_max: float = math.inf
) -> Array:
  """[P] bool: prompts kept in the loss, ``entropy_min <= H <= entropy_max`` and >= 1 counted response."""
  return (entropy >= entropy_min) & (entropy <= entropy_max) & (num_counted >= 1)


@functools.partial(jax.jit, static_argnames=("num_samples", "reward", "no_answer", "equivalent"))
def empo_scores(
  keys: Array,
  valid: Array,
  num_samples: int,
  reward: str = "prob",
  no_answer: str = "exclude",
  entropy_min: float = 0.0,
  entropy_max: float = math.inf,
  equivalent: Callable[[Array, Array], Array] = exact_match,
) -> tuple[Array, dict[str, Array]]:
  """EMPO sequence rewards for prompt-major rows.

  Args:
    keys: [B, ...] keys, B = P * G, rows p*G .. p*G+G-1 share prompt p.
    valid: [B] bool, the response has an answer.
    num_samples: G (static).
    reward: "prob" (p(c|q)) or "log_prob" (log p(c|q)) (static).
    no_answer: "exclude" or "cluster" (static).
    entropy_min, entropy_max: kept prompts have H in [min, max].
    equivalent: pairwise key equivalence.

  Returns:
    (scores [B] float32, with every row of a dropped prompt set to 0; info:
    "shares" [B], "entropy" [P], "keep" [P] bool, "ids" [P, G],
    "counted" [P, G]).
  """
  if reward not in REWARD_KINDS:
    raise ValueError(f"reward: unknown {reward!r}; expected one of {REWARD_KINDS}")
  keys = jnp.asarray(keys)
  batch = keys.shape[0]
  if batch % num_samples:
    raise ValueError(f"batch {batch} is not a multiple of num_samples {num_samples}")
  grouped_keys = keys.reshape((batch // num_samples, num_samples) + keys.shape[1:])
  grouped_valid = jnp.asarray(valid).astype(bool).reshape(-1, num_samples)
  ids, counted = greedy_clusters(grouped_keys, grouped_valid, equivalent, no_answer)
  shares = cluster_shares(ids, counted)
  entropy = semantic_entropy(ids, counted)
  keep = entropy_keep_mask(entropy, jnp.sum(counted, axis=1), entropy_min, entropy_max)
  if reward == "prob":
    scores = shares
  else:
    floor = math.log(1.0 / (2 * num_samples))
    scores = jnp.where(counted, jnp.log(jnp.maximum(shares, 1e-12)), floor)
  # A constant (zero) group has exactly zero GRPO advantage: no policy gradient.
  scores = jnp.where(keep[:, None], scores, 0.0)
  info = {"shares": shares.reshape(-1), "entropy": entropy, "keep": keep, "ids": ids, "counted": counted}
  return scores.reshape(-1).astype(jnp.float32), info


@dataclasses.dataclass(frozen=True)
class SemanticEntropySource:
  """EMPO's label-free reward as a reward source (frozen: a static jit argument).

  ``key_fn`` and ``equivalent`` must be hashable (module-level functions are).
  ``num_samples`` must equal ``rl.num_samples`` (rows are prompt-major).
  """

  num_samples: int
  key_fn: Callable[[Array, Array], tuple[Array, Array]]
  equivalent: Callable[[Array, Array], Array] = exact_match
  reward: str = "prob"
  no_answer: str = "exclude"
  entropy_min: float = 0.0
  entropy_max: float = math.inf

  def __post_init__(self):
    if self.reward not in REWARD_KINDS:
      raise ValueError(f"semantic.reward: unknown {self.reward!r}; expected one of {REWARD_KINDS}")
    if self.no_answer not in NO_ANSWER_MODES:
      raise ValueError(f"semantic.no_answer: unknown {self.no_answer!r}; expected one of {NO_ANSWER_MODES}")
    if self.num_samples < 2:
      raise ValueError(f"semantic.num_samples must be >= 2, got {self.num_samples}")
    if self.entropy_min > self.entropy_max:
      raise ValueError(f"semantic.entropy_min={self.entropy_min} > entropy_max={self.entropy_max}")

  def __call__(self, reward_params: Any, rollout: Rollout) -> tuple[Array, dict[str, Array]]:
    del reward_params  # label-free: no parameters, no gold
    keys, valid = self.key_fn(rollout.response_tokens, rollout.response_mask)
    scores, info = empo_scores(
      keys, valid, self.num_samples, self.reward, self.no_answer, self.entropy_min, self.entropy_max, self.equivalent
    )
    counted = info["counted"]
    num_clusters = jnp.sum((info["ids"] == jnp.arange(self.num_samples)[None]) & counted, axis=1)
    metrics = {
      "empo/semantic_entropy": jnp.mean(info["entropy"]),
      "empo/kept_fraction": jnp.mean(info["keep"].astype(jnp.float32)),
      "empo/no_answer_fraction": 1.0 - jnp.mean(jnp.asarray(valid).astype(jnp.float32)),
      "empo/num_clusters": jnp.mean(num_clusters.astype(jnp.float32)),
      "empo/majority_share": jnp.mean(jnp.max(info["shares"].reshape(-1, self.num_samples), axis=1)),
    }
    return scores, metrics


def check_rl_config(rl_config: Any, source: SemanticEntropySource, where: str = "empo.rl") -> None:
  """Raises if the RL config would not drop filtered prompts exactly (module docstring)."""
  if rl_config.algorithm != "grpo":
    raise ValueError(f"{where}.algorithm must be 'grpo' for EMPO, got {rl_config.algorithm!r}")
  if rl_config.num_samples != source.num_samples:
    raise ValueError(
      f"{where}.num_samples={rl_config.num_samples} must equal the semantic source's num_samples={source.num_samples}"
    )
  if rl_config.whiten_advantages:
    raise ValueError(
      f"{where}.whiten_advantages must be False: batch whitening would give dropped "
      "(zero-advantage) prompts a non-zero advantage"
    )
  if rl_config.kl_in_reward and rl_config.kl_coef:
    raise ValueError(
      f"{where}.kl_in_reward must be False (KL in the loss): a KL folded into the "
      "reward would give dropped prompts a non-zero advantage"
    )


# ----------------------------------------------------------------------------
# Tie-in: semantic entropy as an uncertainty signal for Adv-RM's filter.
# ----------------------------------------------------------------------------


# empo_scores' arguments by design: the same clusters of the same keys, read as an uncertainty instead of a reward.
@functools.partial(jax.jit, static_argnames=("num_samples", "kind", "no_answer", "equivalent"))
def semantic_uncertainty(
  keys: Array,
  valid: Array,
  num_samples: int,
  kind: str = "response",
  no_answer: str = "exclude",
  equivalent: Callable[[Array, Array], Array] = exact_match,
) -> Array:
  """[B] uncertainty per response, shaped like ``adversarial.filtering.uncertainty``.

  Feed it to ``filtering.standardize`` and ``filtering.filter_mask`` exactly
  like the ensemble disagreement.

  Args:
    keys: [B, ...] keys of prompt-major rows (G per prompt).
    valid: [B] bool.
    num_samples: G (static).
    kind: "prompt": the prompt's semantic entropy H(q), the same for its G
      rows; "response": the response's surprisal ``-log p(c|q)`` (a response
      in a minority cluster is more suspect; an answerless one, with the
      "exclude" mode, gets ``log(2G)``, above any clustered response).
    no_answer, equivalent: as in :func:`empo_scores`.
  """
  keys = jnp.asarray(keys)
  grouped_keys = keys.reshape((-1, num_samples) + keys.shape[1:])
  ids, counted = greedy_clusters(grouped_keys, jnp.asarray(valid).reshape(-1, num_samples), equivalent, no_answer)
  if kind == "prompt":
    return jnp.repeat(semantic_entropy(ids, counted), num_samples)
  if kind == "response":
    shares = cluster_shares(ids, counted)
    return jnp.where(counted, -jnp.log(jnp.maximum(shares, 1e-12)), math.log(2 * num_samples)).reshape(-1)
  raise ValueError(f"semantic_uncertainty kind: unknown {kind!r}; expected 'prompt' or 'response'")
