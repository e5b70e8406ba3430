"""Correctness probes on hidden states, their metrics, and probe-driven early exit.

After "Reasoning Models Know When They're Right: Probing Hidden States for
Self-Verification" (Zhang et al. 2025): a small probe (linear, or one hidden
layer) reads the backbone's last-layer hidden state at the token of an
*intermediate answer* and predicts whether that answer is correct. Trained
with class-weighted binary cross-entropy (correct and wrong answers are far
from balanced), it is scored on held-out data with ROC-AUC, expected
calibration error and the Brier score. Early-exit decoding then stops a
response at the first candidate answer whose probe confidence reaches a
threshold, trading tokens for accuracy.

Device side (pure JAX): `init_probe`, `probe_logits`, `class_weights`,
`weighted_bce`, `train_probe`, `early_exit`, `probe_uncertainty`.
Host side (numpy): `roc_auc`, `expected_calibration_error`, `brier_score`,
`reliability_bins`.

Shapes: N probed positions with D-dimensional features; B responses with N
response columns for early exit.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

Array = jax.Array


# ----------------------------------------------------------------------------
# The probe.
# ----------------------------------------------------------------------------


def init_probe(rng: Array, features: ArrayLike, hidden: int = 0) -> dict[str, Array]:
  """Probe parameters; input standardisation statistics come from `features`.

  Args:
    rng: PRNG key.
    features: [N, D] training features (their per-dimension mean and std are
      stored so the probe sees standardised inputs: hidden states of
      different scales then train at one learning rate).
    hidden: 0 for a linear probe, else the width of one hidden (ReLU) layer.

  Returns:
    {"mean" [D], "std" [D], "w_out" [H or D], "b_out" []} plus
    {"w_in" [D, H], "b_in" [H]} when hidden > 0.
  """
  features = jnp.asarray(features, jnp.float32)
  d = features.shape[1]
  params = {
    "mean": jnp.mean(features, axis=0),
    "std": jnp.std(features, axis=0) + 1e-6,
    "b_out": jnp.zeros((), jnp.float32),
  }
  if hidden:
    k1, k2 = jax.random.split(rng)
    params["w_in"] = jax.random.normal(k1, (d, hidden), jnp.float32) * np.sqrt(2.0 / d)
    params["b_in"] = jnp.zeros((hidden,), jnp.float32)
    params["w_out"] = jax.random.normal(k2, (hidden,), jnp.float32) * np.sqrt(1.0 / hidden)
  else:
    params["w_out"] = jnp.zeros((d,), jnp.float32)
  return params


def probe_logits(params: dict[str, Array], features: ArrayLike) -> Array:
  """[N] logits of "the answer is correct" from [N, D] features."""
  x = (jnp.asarray(features, jnp.float32) - params["mean"]) / params["std"]
  if "w_in" in params:
    x = jax.nn.relu(x @ params["w_in"] + params["b_in"])
  return x @ params["w_out"] + params["b_out"]


def class_weights(labels: ArrayLike, mask: ArrayLike | None = None) -> Array:
  """[N] balanced weights: ``n / (2 n_pos)`` on positives, ``n / (2 n_neg)`` on negatives.

  Each class then carries half of the total weight n (the weights sum to n),
  so a probe cannot win by predicting the majority class. A class absent
  from the batch gets weight 0 rows only (its formula is never used).

  Args:
    labels: [N] 0/1.
    mask: optional [N] 0/1 rows that count (others get weight 0), or
      non-negative multiplicities (e.g. bootstrap counts).
  """
  labels = jnp.asarray(labels, jnp.float32)
  mask = jnp.ones_like(labels) if mask is None else jnp.asarray(mask, jnp.float32)
  n = jnp.sum(mask)
  n_pos = jnp.sum(mask * labels)
  n_neg = n - n_pos
  w_pos = n / (2.0 * jnp.maximum(n_pos, 1.0))
  w_neg = n / (2.0 * jnp.maximum(n_neg, 1.0))
  return mask * jnp.where(labels > 0.5, w_pos, w_neg)


def weighted_bce(logits: ArrayLike, labels: ArrayLike, weights: ArrayLike) -> Array:
  """``sum_i w_i * BCE(logit_i, y_i) / sum_i w_i`` with BCE from logits (stable).

  ``BCE(z, y) = softplus(z) - y z = -[y log s(z) + (1 - y) log(1 - s(z))]``.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  bce = jax.nn.softplus(logits) - labels * logits
  return jnp.sum(weights * bce) / jnp.maximum(jnp.sum(weights), 1e-12)


def train_probe(
  rng: Array,
  features: ArrayLike,
  labels: ArrayLike,
  hidden: int = 0,
  num_steps: int = 500,
  learning_rate: float = 1e-2,
  weight_decay: float = 1e-4,
  sample_weights: ArrayLike | None = None,
) -> tuple[dict[str, Array], Array]:
  """Full-batch AdamW on the class-weighted BCE, all steps in one `lax.scan`.

  Args:
    rng: PRNG key (initialisation).
    features: [N, D] hidden states at intermediate answers.
    labels: [N] 1 = the intermediate answer is correct.
    hidden: probe width (0 = linear).
    num_steps: optimisation steps.
    learning_rate, weight_decay: AdamW settings.
    sample_weights: optional [N] multiplicities (e.g. bootstrap counts);
      class weights are computed on the weighted sample.

  Returns:
    (params, losses [num_steps]).
  """
  features = jnp.asarray(features, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  counts = jnp.ones_like(labels) if sample_weights is None else jnp.asarray(sample_weights, jnp.float32)
  params = init_probe(rng, features, hidden)
  # The standardisation statistics are data, not trained parameters.
  stats = {k: params.pop(k) for k in ("mean", "std")}
  weights = class_weights(labels, counts)  # counts act as multiplicities
  params, losses = _fit(params, stats, features, labels, weights, num_steps, float(learning_rate), float(weight_decay))
  return dict(params, **stats), losses


@functools.partial(jax.jit, static_argnames=("num_steps", "learning_rate", "weight_decay"))
def _fit(params, stats, features, labels, weights, num_steps, learning_rate, weight_decay):
  """`num_steps` AdamW steps as one `lax.scan` (compiled once per shape and settings)."""
  optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

  def loss_fn(p):
    return weighted_bce(probe_logits(dict(p, **stats), features), labels, weights)

  def step(carry, _):
    p, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=num_steps)
  return params, losses


def probe_uncertainty(confidence: ArrayLike) -> Array:
  """[B] uncertainty ``1 - p(correct)`` per response, shaped like
  ``adversarial.filtering.uncertainty`` (feed it to ``standardize`` /
  ``filter_mask``)."""
  return 1.0 - jnp.asarray(confidence, jnp.float32)


# ----------------------------------------------------------------------------
# Early exit.
# ----------------------------------------------------------------------------


def early_exit(
  confidence: ArrayLike,
  candidate: ArrayLike,
  candidate_value: ArrayLike,
  final_value: ArrayLike,
  length: ArrayLike,
  threshold: float,
) -> dict[str, Array]:
  """Stops each response at its first candidate answer with confidence >= threshold.

  Decoding is autoregressive, so stopping at column t leaves columns 0..t
  exactly as in the full response: applying the rule to fully decoded
  responses gives the early-exit decoder's answers and token counts.

  Args:
    confidence: [B, N] probe p(correct) at each response column (any value
      where `candidate` is False).
    candidate: [B, N] bool, the column holds a candidate final answer.
    candidate_value: [B, N] int, the answer at candidate columns.
    final_value: [B] int, the full response's final answer (-1: none).
    length: [B] int, tokens of the full response.
    threshold: exit when confidence >= threshold (> 1 never exits).

  Returns:
    {"answer" [B] int32, "tokens" [B] int32 (tokens generated: through the
    exit column, else the full length), "exited" [B] bool}.
  """
  confidence = jnp.asarray(confidence, jnp.float32)
  candidate = jnp.asarray(candidate).astype(bool)
  hit = candidate & (confidence >= threshold)
  first = jnp.argmax(hit, axis=1)
  exited = jnp.any(hit, axis=1)
  value = jnp.take_along_axis(jnp.asarray(candidate_value, jnp.int32), first[:, None], axis=1)[:, 0]
  answer = jnp.where(exited, value, jnp.asarray(final_value, jnp.int32))
  tokens = jnp.where(exited, first + 1, jnp.asarray(length, jnp.int32))
  return {"answer": answer.astype(jnp.int32), "tokens": tokens.astype(jnp.int32), "exited": exited}


# ----------------------------------------------------------------------------
# Metrics (host side).
# ----------------------------------------------------------------------------


def _check(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels, np.float64).reshape(-1)
  if scores.shape != labels.shape:
    raise ValueError(f"{scores.size} scores but {labels.size} labels")
  if scores.size == 0:
    raise ValueError("no predictions")
  return scores, labels


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

  Mann-Whitney form with average ranks: ``(R_pos - n_pos (n_pos + 1) / 2) /
  (n_pos n_neg)``. NaN when one class is absent.
  """
  scores, labels = _check(scores, labels)
  pos = labels > 0.5
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(scores.size, np.float64)
  sorted_scores = scores[order]
  i = 0
  while i < scores.size:  # average ranks over ties (1-based)
    j = i
    while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
      j += 1
    ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
    i = j + 1
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reliability_bins(probs: ArrayLike, labels: ArrayLike, num_bins: int = 10) -> dict[str, np.ndarray]:
  """Equal-width bins on [0, 1]: bin b holds ``b/num_bins <= p < (b+1)/num_bins`` (the last includes 1).

  Returns {"count", "confidence" (mean p), "accuracy" (mean label)}, each
  [num_bins] (NaN for empty bins).
  """
  probs, labels = _check(probs, labels)
  bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
  count = np.bincount(bins, minlength=num_bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    conf = np.bincount(bins, probs, num_bins) / count
    acc = np.bincount(bins, labels, num_bins) / count
  return {"count": count, "confidence": conf, "accuracy": acc}


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, num_bins: int = 10) -> float:
  """ECE = ``sum_b (n_b / N) |mean(label in b) - mean(p in b)|`` over `reliability_bins`.

  The same binning as ``advrm_jax.reward.evaluation.expected_calibration_error``.
  """
  bins = reliability_bins(probs, labels, num_bins)
  filled = bins["count"] > 0
  weights = bins["count"][filled] / bins["count"].sum()
  return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
  """Mean squared error of the probabilities, ``mean((p - y)^2)``."""
  probs, labels = _check(probs, labels)
  return float(np.mean((probs - labels) ** 2))


def classification_metrics(probs: ArrayLike, labels: ArrayLike, num_bins: int = 10) -> dict[str, Any]:
  """{"n", "positive_rate", "roc_auc", "ece", "brier", "accuracy@0.5"} of probabilities vs 0/1 labels."""
  probs, labels = _check(probs, labels)
  return {
    "n": int(probs.size),
    "positive_rate": float(labels.mean()),
    "roc_auc": roc_auc(probs, labels),
    "ece": expected_calibration_error(probs, labels, num_bins),
    "brier": brier_score(probs, labels),
    "accuracy@0.5": float(np.mean((probs >= 0.5) == (labels > 0.5))),
  }
