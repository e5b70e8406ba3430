"""A TextFooler-like word-substitution attack for the synthetic world.

TextFooler (Jin et al. 2020) attacks a text model by ranking the words of an
input by importance (how much deleting each one changes the model's score)
and then, in that order, replacing each word with the synonym that moves the
score most, until a budget is spent. The paper uses it as a baseline against
Adv-RM (Table 1: 9.57 % standard / 0 % strict attack success).

The synthetic world has no synonyms, so a word's candidates are the other
words of its *word class* (`synthetic_world.WORD_CLASSES`; by default
adjectives, verbs, objects and style words, which keep a sentence
grammatical; topics can be added). The goal is to raise the target RM's
reward R1 of a reference response; whether gold falls is measured
afterwards with `attack.attack_success_*`.

Two searches (`search=`):

* 'importance' (TextFooler): one pass over the substitutable positions in
  decreasing importance, `importance_j = R1(y without word j) - R1(y)` (a
  word whose deletion raises R1 is holding the score down, so it is replaced
  first); at each position the best same-class candidate is taken if it
  raises R1 over the current response. Stops after `budget` substitutions.
  Cost per response: R1 calls for L deletions + at most L * class size.
* 'greedy': `budget` rounds; each round scores every single substitution
  at every position of the current response and applies the best one if it
  raises R1. Stronger, costs up to L * class size calls per round.

Every call of `score_fn` is batched over all responses being attacked.
Host-side (numpy); `score_fn` may wrap a jitted RM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from advrm_jax.data import synthetic_world as sw

# Meaning-and-grammar-preserving classes: swapping within them keeps a
# sentence well formed (the analogue of TextFooler's synonym constraint).
SUBSTITUTABLE_CLASSES = ("adjective", "verb", "object", "style")
SEARCHES = ("importance", "greedy")

# score_fn(tokens [M, R] int32, mask [M, R] bool, example_ids [M] int)
#   -> [M] float: R1 of each candidate; example_ids says which input response
#   (and so which prompt) each candidate row derives from.
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class PerturbationResult(NamedTuple):
  """Output of `word_substitution_attack` (N responses of width R).

  Attributes:
    tokens: [N, R] int32 perturbed responses (mask unchanged: substitutions
      never change length).
    initial_score: [N] float R1 of the inputs.
    final_score: [N] float R1 of the outputs.
    num_substitutions: [N] int, substitutions made (<= budget).
  """

  tokens: np.ndarray
  initial_score: np.ndarray
  final_score: np.ndarray
  num_substitutions: np.ndarray


def substitution_table(
  classes: Sequence[str] = SUBSTITUTABLE_CLASSES,
) -> dict[int, np.ndarray]:
  """token id -> [C] ids of the other words of its class.

  Args:
    classes: Word classes of `synthetic_world.WORD_CLASSES` whose words may
      be substituted.

  Returns:
    A dict covering every word of those classes.
  """
  known = set(sw.WORD_CLASSES.values())
  unknown = [c for c in classes if c not in known]
  if unknown:
    raise ValueError(f"unknown word classes {unknown}; the synthetic world has {sorted(known)}")
  table = {}
  for cls in classes:
    ids = np.array([sw.WORD_TO_ID[w] for w in sw.VOCAB if sw.WORD_CLASSES[w] == cls], np.int32)
    for i in ids:
      table[int(i)] = ids[ids != i]
  return table


def _delete(tokens: np.ndarray, mask: np.ndarray, pos: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """One row with position `pos` removed, compacted to the left."""
  keep = mask.copy()
  keep[pos] = False
  out = np.full_like(tokens, pad_id)
  out_mask = np.zeros_like(mask)
  kept = tokens[keep]
  out[: kept.size] = kept
  out_mask[: kept.size] = True
  return out, out_mask


def _positions(tokens: np.ndarray, mask: np.ndarray, table: dict[int, np.ndarray], eos_id: int) -> list[int]:
  """Substitutable positions of one row: masked, before the first EOS."""
  out = []
  for j in np.flatnonzero(mask):
    t = int(tokens[j])
    if t == eos_id:
      break
    if t in table and table[t].size:
      out.append(int(j))
  return out


def _best_substitutions(
  tokens: np.ndarray,
  mask: np.ndarray,
  current: np.ndarray,
  positions: list[list[int]],
  table: dict[int, np.ndarray],
  score_fn: ScoreFn,
) -> list[tuple[float, int, int] | None]:
  """For each row, the best (score, position, token) over `positions[i]`.

  One batched `score_fn` call covers every candidate of every row.
  """
  rows, cand_pos, cand_ids = [], [], []
  for i, pos_list in enumerate(positions):
    for j in pos_list:
      for t in table[int(tokens[i, j])]:
        rows.append(i)
        cand_pos.append(j)
        cand_ids.append(int(t))
  if not rows:
    return [None] * len(positions)
  rows_arr = np.asarray(rows)
  batch = tokens[rows_arr].copy()
  batch[np.arange(len(rows)), cand_pos] = cand_ids
  scores = np.asarray(score_fn(batch, mask[rows_arr], rows_arr), np.float64).reshape(-1)
  if scores.shape[0] != len(rows):
    raise ValueError(f"score_fn returned {scores.shape[0]} scores for {len(rows)} rows")
  best: list[tuple[float, int, int] | None] = [None] * len(positions)
  for c, i in enumerate(rows):
    # Strict improvement over the current response; the first (most
    # important position, lowest id) wins ties.
    if scores[c] > current[i] and (best[i] is None or scores[c] > best[i][0]):
      best[i] = (float(scores[c]), cand_pos[c], cand_ids[c])
  return best


def word_substitution_attack(
  response_tokens: np.ndarray,
  response_mask: np.ndarray,
  score_fn: ScoreFn,
  budget: int = 3,
  search: str = "importance",
  classes: Sequence[str] = SUBSTITUTABLE_CLASSES,
  eos_id: int = sw.EOS_ID,
  pad_id: int = sw.PAD_ID,
) -> PerturbationResult:
  """Greedy same-class word substitutions that raise R1.

  Args:
    response_tokens: [N, R] int reference responses (any padding side; EOS
      and everything after it are never changed).
    response_mask: [N, R] bool.
    score_fn: (tokens [M, R], mask [M, R], example_ids [M]) -> [M] R1
      scores; see `ScoreFn`.
    budget: Maximum substitutions per response.
    search: 'importance' (TextFooler) or 'greedy' (see module doc).
    classes: Word classes whose words may be swapped within the class.
    eos_id: End-of-sequence id.
    pad_id: Padding id (for the deleted rows of the importance ranking).

  Returns:
    A `PerturbationResult`.
  """
  if search not in SEARCHES:
    raise ValueError(f"unknown search {search!r}; expected one of {SEARCHES}")
  if budget < 0:
    raise ValueError(f"budget must be >= 0, got {budget}")
  tokens = np.array(response_tokens, np.int32, copy=True)
  mask = np.asarray(response_mask, bool)
  if tokens.ndim != 2 or tokens.shape != mask.shape:
    raise ValueError(f"response_tokens {tokens.shape} and response_mask {mask.shape} must be the same [N, R]")
  num = tokens.shape[0]
  table = substitution_table(classes)
  ids = np.arange(num)
  initial = np.asarray(score_fn(tokens, mask, ids), np.float64).reshape(-1)
  current = initial.copy()
  done = np.zeros(num, np.int64)
  positions = [_positions(tokens[i], mask[i], table, eos_id) for i in range(num)]

  if search == "importance":
    # Rank positions by how much deleting the word raises R1.
    del_rows, del_tokens, del_masks = [], [], []
    for i in range(num):
      for j in positions[i]:
        t, m = _delete(tokens[i], mask[i], j, pad_id)
        del_rows.append(i)
        del_tokens.append(t)
        del_masks.append(m)
    queues: list[list[int]] = [[] for _ in range(num)]
    if del_rows:
      rows_arr = np.asarray(del_rows)
      deleted = np.asarray(score_fn(np.stack(del_tokens), np.stack(del_masks), rows_arr), np.float64).reshape(-1)
      start = 0
      for i in range(num):
        k = len(positions[i])
        importance = deleted[start : start + k] - initial[i]
        # Stable sort: equal importance keeps left-to-right order.
        order = np.argsort(-importance, kind="stable")
        queues[i] = [positions[i][o] for o in order]
        start += k
    while True:
      active = [i for i in range(num) if queues[i] and done[i] < budget]
      if not active:
        break
      step_pos = [[queues[i].pop(0)] if i in active else [] for i in range(num)]
      best = _best_substitutions(tokens, mask, current, step_pos, table, score_fn)
      for i, b in enumerate(best):
        if b is not None:
          current[i], j, t = b
          tokens[i, j] = t
          done[i] += 1
  else:
    active = np.ones(num, bool)
    for _ in range(budget):
      step_pos = [positions[i] if active[i] else [] for i in range(num)]
      best = _best_substitutions(tokens, mask, current, step_pos, table, score_fn)
      for i, b in enumerate(best):
        if b is None:
          active[i] = False  # A local optimum: no single swap helps.
        else:
          current[i], j, t = b
          tokens[i, j] = t
          done[i] += 1
      if not active.any():
        break
  return PerturbationResult(tokens=tokens, initial_score=initial, final_score=current, num_substitutions=done)
