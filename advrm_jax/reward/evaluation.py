"""Reward-model evaluation: accuracy, reward statistics, disagreement, calibration, z-scores.

Scoring runs on device in fixed-size jitted chunks (``score_pairs``); the
statistics are host-side numpy over the resulting ``[K, N]`` arrays
(``evaluate_scores``), so any stage can evaluate scores it computed itself,
e.g. the RL loop or the attack evaluation.

Conventions:

* Pairwise accuracy counts a pair as correct when ``chosen > rejected`` and
  half correct on an exact tie (so a constant RM scores 0.5, not 0).
* std/var across members are population statistics (divide by K).
* Calibration: the RM's probability that the chosen side wins is
  ``sigmoid(c - r)``. Because the data always lists the winner first, every
  pair is counted in both orders, ``(p, 1)`` and ``(1 - p, 0)``; otherwise the
  labels would all be 1 and ECE would only measure mean confidence.
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.reward.model import ensemble_aggregate, ensemble_uncertainty, reward_scores

Array = jax.Array
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ---------------------------------------------------------------------------
# Scoring a dataset.
# ---------------------------------------------------------------------------


def make_scorer(graphdef: nnx.GraphDef, mesh: Mesh, param_shardings: Any = None):
  """A jitted ``(params, tokens [B, T], mask [B, T]) -> [K, B]``.

  Params are an argument, not a closure constant: one compilation serves
  every evaluation during training, and a large model's weights are never
  baked into the executable. Bind them with ``functools.partial`` to get the
  ``(tokens, mask)`` callable ``score_rows`` expects.

  Args:
    graphdef: the ensemble's structure.
    mesh: device mesh; rows are split over its data-parallel axes.
    param_shardings: the params' shardings (e.g. the train state's); None
      lets jit take them from the arrays it is given.
  """
  batch_sharding = shd.batch_sharding(mesh)
  in_shardings = None if param_shardings is None else (param_shardings, batch_sharding, batch_sharding)
  # Scores come back replicated ([K, B] floats, small): every host of a multi-process job can read them,
  # where rows split over data x fsdp would leave each host only its own.
  return jax.jit(
    lambda params, tokens, mask: reward_scores(graphdef, params, tokens, mask),
    in_shardings=in_shardings,
    out_shardings=shd.replicated(mesh),
  )


def score_rows(scorer, tokens: np.ndarray, mask: np.ndarray, batch_size: int, mesh: Mesh) -> np.ndarray:
  """Scores N rows in chunks of ``batch_size`` (the last chunk padded).

  Args:
    scorer: ``(tokens, mask) -> [K, B]``, e.g.
      ``functools.partial(make_scorer(graphdef, mesh), params)``.
    tokens: [N, T] int32 rows; mask: [N, T].
    batch_size: rows per jitted call (one compilation for the whole set);
      must divide over the mesh's data-parallel axes.
    mesh: where chunks are placed.

  Returns:
    [K, N] float32 numpy rewards.
  """
  shd.check_batch_divisible(batch_size, mesh, "rm.eval_batch_size")
  num_rows = tokens.shape[0]
  chunks = []
  for start in range(0, num_rows, batch_size):
    part_tokens = tokens[start : start + batch_size]
    part_mask = mask[start : start + batch_size]
    rows = part_tokens.shape[0]
    if rows < batch_size:
      # Pad rows are one real token long so no row is fully masked.
      pad = batch_size - rows
      part_tokens = np.concatenate([part_tokens, np.zeros((pad, tokens.shape[1]), part_tokens.dtype)])
      part_mask = np.concatenate([part_mask, np.zeros((pad, mask.shape[1]), part_mask.dtype)])
      part_mask[rows:, 0] = 1
    placed = shd.shard_batch({"tokens": part_tokens, "mask": part_mask}, mesh)
    chunks.append(np.asarray(jax.device_get(scorer(placed["tokens"], placed["mask"])))[:, :rows])
  if not chunks:
    raise ValueError("nothing to score: the evaluation set is empty")
  return np.concatenate(chunks, axis=1).astype(np.float32)


def score_pairs(scorer, data: dict[str, np.ndarray], batch_size: int, mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
  """(chosen [K, N], rejected [K, N]) rewards of tokenised pairs (``tokenize_pairs`` output)."""
  chosen = score_rows(scorer, data["chosen_tokens"], data["chosen_mask"], batch_size, mesh)
  rejected = score_rows(scorer, data["rejected_tokens"], data["rejected_mask"], batch_size, mesh)
  return chosen, rejected


# ---------------------------------------------------------------------------
# Statistics.
# ---------------------------------------------------------------------------


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
  """Fraction of pairs ranked right along the last axis; ties count 1/2.

  Args:
    chosen, rejected: [..., N] rewards.

  Returns:
    [...] accuracies.
  """
  chosen, rejected = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
  return np.mean((chosen > rejected) + 0.5 * (chosen == rejected), axis=-1)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 10) -> float:
  """ECE with equal-width bins on [0, 1].

  ``sum_bins (n_bin / N) * |mean(label in bin) - mean(prob in bin)|``; bin i
  holds ``i/num_bins <= p < (i+1)/num_bins`` (the last bin includes 1).

  Args:
    probs: [N] predicted probabilities of the positive outcome.
    labels: [N] 0/1 outcomes.
    num_bins: number of bins.
  """
  probs = np.asarray(probs, np.float64).reshape(-1)
  labels = np.asarray(labels, np.float64).reshape(-1)
  if probs.size == 0:
    raise ValueError("expected_calibration_error: no predictions")
  bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
  ece = 0.0
  for b in range(num_bins):
    in_bin = bins == b
    if in_bin.any():
      ece += in_bin.mean() * abs(labels[in_bin].mean() - probs[in_bin].mean())
  return float(ece)


def preference_ece(chosen: np.ndarray, rejected: np.ndarray, num_bins: int = 10) -> float:
  """ECE of ``sigmoid(chosen - rejected)``, each pair counted in both orders (module doc)."""
  p_chosen = 1.0 / (1.0 + np.exp(-(np.asarray(chosen, np.float64) - np.asarray(rejected, np.float64))))
  probs = np.concatenate([p_chosen, 1.0 - p_chosen])
  labels = np.concatenate([np.ones_like(p_chosen), np.zeros_like(p_chosen)])
  return expected_calibration_error(probs, labels, num_bins)


def _quantiles(values: np.ndarray, quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
  values = np.asarray(values, np.float64).reshape(-1)
  out = {f"q{int(round(q * 100)):02d}": float(np.quantile(values, q)) for q in quantiles}
  out["mean"] = float(values.mean())
  return out


def evaluate_scores(
  chosen: np.ndarray, rejected: np.ndarray, std_coef: float = 1.0, num_bins: int = 10, member: int = 0
) -> dict[str, Any]:
  """Everything reported about an ensemble on a set of pairs.

  Args:
    chosen: [K, N] rewards of the preferred responses.
    rejected: [K, N] rewards of the dispreferred responses.
    std_coef: c of the ``mean - c*std`` aggregate.
    num_bins: ECE bins.
    member: R1 of the disagreement ``R1 - mean(others)``.

  Returns:
    A JSON-ready dict:
      num_pairs, num_members,
      accuracy: {"member_<k>": ..., "mean", "min", "mean_minus_std", "members_mean"},
      chosen_reward / rejected_reward: {"mean", "std", "member_mean": [K], "member_std": [K]},
      reward_margin: mean of chosen - rejected over members and pairs,
      ece: {"member_<k>": ..., "mean" (of the mean aggregate)},
      ensemble_std / disagreement: quantiles and mean over all 2N responses.
  """
  chosen = np.asarray(chosen, np.float64)
  rejected = np.asarray(rejected, np.float64)
  if chosen.ndim != 2 or chosen.shape != rejected.shape:
    raise ValueError(f"chosen {chosen.shape} and rejected {rejected.shape} must both be [K, N]")
  num_members, num_pairs = chosen.shape
  member_accuracy = pairwise_accuracy(chosen, rejected)
  aggregates = {}
  for kind in ("mean", "min", "mean_minus_std"):
    aggregates[kind] = (
      np.asarray(ensemble_aggregate(jnp.asarray(chosen), kind, std_coef)),
      np.asarray(ensemble_aggregate(jnp.asarray(rejected), kind, std_coef)),
    )
  accuracy = {f"member_{k}": float(member_accuracy[k]) for k in range(num_members)}
  accuracy.update({kind: float(pairwise_accuracy(*pair)) for kind, pair in aggregates.items()})
  accuracy["members_mean"] = float(member_accuracy.mean())

  def reward_stats(scores):
    return {
      "mean": float(scores.mean()),
      "std": float(scores.std()),
      "member_mean": scores.mean(axis=1).tolist(),
      "member_std": scores.std(axis=1).tolist(),
    }

  ece = {f"member_{k}": preference_ece(chosen[k], rejected[k], num_bins) for k in range(num_members)}
  ece["mean"] = preference_ece(*aggregates["mean"], num_bins)
  both = np.concatenate([chosen, rejected], axis=1)
  uncertainty = {k: np.asarray(v) for k, v in ensemble_uncertainty(jnp.asarray(both), member).items()}
  return {
    "num_pairs": int(num_pairs),
    "num_members": int(num_members),
    "accuracy": accuracy,
    "chosen_reward": reward_stats(chosen),
    "rejected_reward": reward_stats(rejected),
    "reward_margin": float((chosen - rejected).mean()),
    "ece": ece,
    "ensemble_std": _quantiles(uncertainty["ensemble_std"]),
    "disagreement": _quantiles(uncertainty["disagreement"]),
  }


def headline_metrics(summary: dict[str, Any], prefix: str = "test") -> dict[str, float]:
  """The few scalars of ``evaluate_scores`` worth a curve during training.

  Accuracy of every member and aggregate, ECE of the mean aggregate, the
  mean reward margin and the mean ensemble spread; the full summary goes to
  ``eval_summary.json``.
  """
  out = {f"{prefix}/accuracy_{key}": value for key, value in summary["accuracy"].items()}
  out[f"{prefix}/ece_mean"] = summary["ece"]["mean"]
  out[f"{prefix}/reward_margin"] = summary["reward_margin"]
  out[f"{prefix}/ensemble_std"] = summary["ensemble_std"]["mean"]
  return out


# ---------------------------------------------------------------------------
# Per-prompt z-scores.
# ---------------------------------------------------------------------------


def zscores(
  scores: Array | np.ndarray,
  group_ids: Array | np.ndarray | None = None,
  *,
  num_groups: int | None = None,
  reference_mask: Array | np.ndarray | None = None,
  ddof: int = 0,
  eps: float = 1e-6,
) -> Array:
  """Standardises scores within each prompt.

  Two layouts:

  * ``scores [P, n]`` and no ``group_ids``: row p holds the n samples of
    prompt p.
  * ``scores [N]`` with ``group_ids [N]`` in ``[0, num_groups)``: arbitrary
    grouping (e.g. several samples per prompt in a flat batch).

  ``reference_mask`` (same shape as ``scores``) selects the samples the mean
  and std are computed from, e.g. the reference policy's samples when
  scoring the adversary's against them (the paper's strict attack success:
  ``z_R1(y_adv) > 0`` and ``z_gold(y_adv) < -1.96``); every sample is then
  standardised with its group's reference statistics. Default: all samples.

  Works on numpy and jax arrays and inside jit (pass ``num_groups`` there).

  Args:
    scores: [P, n] or [N] rewards.
    group_ids: [N] int group of each score (flat layout only).
    num_groups: number of groups (default ``max(group_ids) + 1``; required
      under jit).
    reference_mask: which samples define each group's statistics.
    ddof: delta degrees of freedom of the std (0: population, 1: sample).
    eps: floor of the std, so a group of identical scores gives z = 0 for
      its members rather than NaN.

  Returns:
    z-scores, same shape as ``scores``, float32.
  """
  scores = jnp.asarray(scores, jnp.float32)
  weights = jnp.ones_like(scores) if reference_mask is None else jnp.asarray(reference_mask, jnp.float32)
  if group_ids is None:
    if scores.ndim != 2:
      raise ValueError(f"zscores: without group_ids scores must be [P, n], got shape {scores.shape}")
    count = jnp.sum(weights, axis=1, keepdims=True)
    mean = jnp.sum(weights * scores, axis=1, keepdims=True) / jnp.maximum(count, 1.0)
    sq = jnp.sum(weights * jnp.square(scores - mean), axis=1, keepdims=True)
  else:
    group_ids = jnp.asarray(group_ids, jnp.int32)
    if scores.ndim != 1 or group_ids.shape != scores.shape:
      raise ValueError(f"zscores: scores {scores.shape} and group_ids {group_ids.shape} must both be [N]")
    if num_groups is None:
      num_groups = int(jnp.max(group_ids)) + 1
    segment_sum = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=num_groups)
    count_g = segment_sum(weights)
    mean_g = segment_sum(weights * scores) / jnp.maximum(count_g, 1.0)
    mean = mean_g[group_ids]
    sq = segment_sum(weights * jnp.square(scores - mean))[group_ids]
    count = count_g[group_ids]
  std = jnp.sqrt(sq / jnp.maximum(count - ddof, 1.0))
  return (scores - mean) / jnp.maximum(std, eps)
