"""Uncertainty signals for Adv-RM's filter beyond ensemble disagreement.

The filter keeps an adversary sample the target member likes (R1 > T(x)) when
an uncertainty U says "this may be bad". The paper's U is ensemble
disagreement (``filtering.uncertainty``); this module adds two signals from
the same research line, each a [B] array shaped like it, so
``filtering.standardize`` and ``filtering.filter_mask`` take any of them:

* **semantic** (EMPO's semantic entropy, Zhang et al. 2025): the adversary's
  G samples for one prompt at one step are clustered by meaning; a
  response's surprisal ``-log p(c|q)`` ("semantic_surprisal") or its
  prompt's entropy ``H(q)`` ("semantic_entropy") is the signal. Meaning is a
  gold-free canonical key of the text: ``synthetic_world.meaning_key`` in the
  synthetic world, normalised text (``text_meaning_key``) for real text.
* **probe** ("Reasoning Models Know When They're Right", Zhang et al. 2025):
  a probe on the RM's last hidden states predicts whether the target member's
  verdict on a pair is right. It is trained on the held-out preference pairs,
  whose labels are the only way gold reaches the RM side; at filter time the
  pair is (sample, the reference sample the ensemble likes best) and the
  signal is ``1 - p(verdict right)``.

No signal reads gold. ``compare`` measures afterwards, with gold, which one
finds the samples that are truly worse than the reference policy's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from advrm_jax.evaluation import probes
from advrm_jax.rl import empo

ENSEMBLE_KINDS = ("r1_minus_r2", "std")
SEMANTIC_KINDS = {"semantic_surprisal": "response", "semantic_entropy": "prompt"}
KINDS = ENSEMBLE_KINDS + tuple(SEMANTIC_KINDS) + ("probe",)


# ----------------------------------------------------------------------------
# Semantic signals.
# ----------------------------------------------------------------------------


def text_meaning_key(text: str) -> str:
  """Meaning key of real text: lower case, punctuation dropped, whitespace collapsed.

  Deliberately strict (exact match after normalisation): without a judge
  model, two answers count as one meaning only when they say the same words.
  """
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def group_size_check(num_samples: int, **columns: np.ndarray) -> None:
  """Raises unless the rows come in consecutive groups of ``num_samples`` sharing every column.

  The RL iteration samples G responses per prompt prompt-major, so the
  attack's collected rows are such groups; a semantic signal needs them.
  """
  for name, values in columns.items():
    values = np.asarray(values)
    if values.size % num_samples:
      raise ValueError(f"{values.size} rows are not groups of {num_samples} (column {name})")
    grouped = values.reshape(-1, num_samples)
    if not np.all(grouped == grouped[:, :1]):
      raise ValueError(
        f"rows are not consecutive groups of {num_samples} with one {name} each: the semantic "
        "signals need the attack's prompt-major groups (attack.rl.num_samples per prompt)"
      )


def semantic(
  texts: Sequence[str], num_samples: int, kind: str, key_fn: Callable[[str], str] = text_meaning_key
) -> np.ndarray:
  """[B] semantic surprisal or entropy of prompt-major rows, G = ``num_samples`` per prompt.

  Args:
    texts: B response texts, consecutive groups of G for one prompt.
    num_samples: G.
    kind: "semantic_surprisal" or "semantic_entropy".
    key_fn: text -> meaning key; equal keys are one meaning. An empty
      response has no answer (the "exclude" mode of ``empo``).
  """
  if kind not in SEMANTIC_KINDS:
    raise ValueError(f"semantic signal: unknown {kind!r}; expected one of {tuple(SEMANTIC_KINDS)}")
  keys = [key_fn(t) for t in texts]
  ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
  valid = np.array([bool(t.strip()) and bool(k) for t, k in zip(texts, keys)])
  u = empo.semantic_uncertainty(np.array([ids[k] for k in keys], np.int32), valid, num_samples, SEMANTIC_KINDS[kind])
  return np.asarray(u, np.float32)


# ----------------------------------------------------------------------------
# The verdict probe.
# ----------------------------------------------------------------------------


def verdict_features(hidden_a: np.ndarray, hidden_b: np.ndarray, r1_a: np.ndarray, r1_b: np.ndarray) -> np.ndarray:
  """[N, D] features of pairs, oriented by the target member's verdict: h(preferred) - h(other).

  Orienting makes the feature's projection on the target head the verdict's
  margin, so even a linear probe can learn "small margin, likely wrong".
  """
  a_wins = (np.asarray(r1_a) >= np.asarray(r1_b))[:, None]
  diff = np.asarray(hidden_a, np.float32) - np.asarray(hidden_b, np.float32)
  return np.where(a_wins, diff, -diff)


def train_verdict_probe(
  rng: jax.Array,
  hidden_chosen: np.ndarray,
  hidden_rejected: np.ndarray,
  r1_chosen: np.ndarray,
  r1_rejected: np.ndarray,
  hidden: int = 0,
  num_steps: int = 500,
  learning_rate: float = 1e-2,
  weight_decay: float = 1e-2,
  holdout_fraction: float = 0.25,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """A probe predicting whether the target member's verdict on a labelled pair is right.

  Args:
    rng: PRNG key (split and initialisation).
    hidden_chosen, hidden_rejected: [N, D] the RM's last hidden states of the
      labelled pairs' two sides.
    r1_chosen, r1_rejected: [N] the target member's rewards of them.
    hidden, num_steps, learning_rate, weight_decay: as ``probes.train_probe``.
    holdout_fraction: pairs kept out of training to report the probe's own
      ROC-AUC, ECE and Brier score; the returned probe is refit on all pairs.

  Returns:
    (probe params, {"num_pairs", "verdict_accuracy", "holdout": metrics}).
  """
  x = verdict_features(hidden_chosen, hidden_rejected, r1_chosen, r1_rejected)
  right = (np.asarray(r1_chosen) > np.asarray(r1_rejected)).astype(np.float32)
  if right.size < 8 or right.min() == right.max():
    raise ValueError(
      f"verdict probe: {right.size} pairs with {int(right.sum())} right verdicts; it needs both "
      "right and wrong verdicts among at least 8 held-out pairs (prefs/preferences_test.jsonl)"
    )
  split_key, fit_key = jax.random.split(rng)
  order = np.asarray(jax.random.permutation(split_key, right.size))
  num_holdout = max(int(round(holdout_fraction * right.size)), 1)
  held, train = order[:num_holdout], order[num_holdout:]
  kwargs = dict(hidden=hidden, num_steps=num_steps, learning_rate=learning_rate, weight_decay=weight_decay)
  params, _ = probes.train_probe(fit_key, x[train], right[train], **kwargs)
  held_probs = np.asarray(jax.nn.sigmoid(probes.probe_logits(params, x[held])))
  info = {
    "num_pairs": int(right.size),
    "verdict_accuracy": float(right.mean()),
    "holdout": probes.classification_metrics(held_probs, right[held]),
  }
  params, _ = probes.train_probe(fit_key, x, right, **kwargs)
  return params, info


def verdict_uncertainty(
  params: Mapping[str, Any], hidden: np.ndarray, hidden_ref: np.ndarray, r1: np.ndarray, r1_ref: np.ndarray
) -> np.ndarray:
  """[B] ``1 - p(the target member's verdict on (response, reference) is right)``."""
  x = verdict_features(hidden, hidden_ref, r1, r1_ref)
  confidence = jax.nn.sigmoid(probes.probe_logits(dict(params), x))
  return np.asarray(probes.probe_uncertainty(confidence), np.float32)


# ----------------------------------------------------------------------------
# Which signal finds the bad samples? (gold, for the report only)
# ----------------------------------------------------------------------------


def compare(signals: Mapping[str, np.ndarray], liked: np.ndarray, bad: np.ndarray, budget: int) -> dict[str, Any]:
  """Each signal's power to find truly bad samples among those the target member likes.

  Args:
    signals: name -> [B] uncertainty (higher = more suspect).
    liked: [B] bool, R1 > T(x): the samples the filter chooses among.
    bad: [B] bool, gold below the reference policy's mean for the prompt.
    budget: how many samples each signal keeps for "precision" (the number
      the configured filter kept), so signals are compared at equal size
      whatever their scale.

  Returns:
    {"num_liked", "base_rate" (bad among liked), "budget", "signals": {name:
    {"auc_bad": ROC-AUC of the signal for bad among liked (0.5 = chance),
    "precision": bad among its ``budget`` most uncertain liked samples}}}.
  """
  liked, bad = np.asarray(liked, bool), np.asarray(bad, bool)
  out: dict[str, Any] = {
    "num_liked": int(liked.sum()),
    "budget": int(budget),
    "base_rate": float(bad[liked].mean()) if liked.any() else None,
    "signals": {},
  }
  rows = np.flatnonzero(liked)
  for name, u in signals.items():
    u = np.asarray(u, np.float64)[rows]
    both = rows.size and 0 < bad[rows].sum() < rows.size
    out["signals"][name] = {
      "auc_bad": probes.roc_auc(u, bad[rows]) if both else None,
      "precision": precision_at(u, bad[rows], budget),
    }
  return out


def precision_at(u: np.ndarray, bad: np.ndarray, budget: int) -> float | None:
  """Fraction bad among the ``budget`` highest ``u``, ties at the cut shared out evenly.

  A coarse signal (semantic surprisal over 4 samples takes a few values) ties
  many rows at the cut; the expectation over random tie-breaking keeps the
  figure independent of row order.
  """
  u, bad = np.asarray(u, np.float64), np.asarray(bad, np.float64)
  budget = min(int(budget), u.size)
  if budget <= 0:
    return None
  cut = np.sort(u)[::-1][budget - 1]
  above, tied = u > cut, u == cut
  share = (budget - above.sum()) / tied.sum()
  return float((bad[above].sum() + share * bad[tied].sum()) / budget)
