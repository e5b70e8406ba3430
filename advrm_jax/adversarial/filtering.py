"""Uncertainty filter, on-device replay buffer and adversarial pairs.

Adv-RM keeps an adversarial sample (x, y_adv) when the target RM likes it
(`R1 > T(x)`) *and* the ensemble is unusually unsure about it
(`z(U) > 1.96`, U the disagreement `R1 - R2` or the ensemble std, z
standardised over the batch or a reference population). Kept samples become
the *rejected* side of new preference pairs whose *chosen* side is an
ordinary (reference-policy) response to the same prompt (Bukharin et al. 2025, arXiv 2504.06141).

Device side (pure, jittable): `uncertainty`, `standardize`, `filter_mask`,
and `AdversarialBuffer` with `init_buffer` / `buffer_add` / `buffer_sample`,
a fixed-size ring buffer of filtered samples for the online mode (one jitted
iteration = adversary update + RM update on fresh adversarial pairs).

Host side: `build_adversarial_pairs` (text preference records) and
`mix_pairs` (ordinary and adversarial pairs at a set ratio).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from advrm_jax.adversarial import objective

UNCERTAINTY_KINDS = ("r1_minus_r2", "std")
DEFAULT_Z_MIN = 1.96


# ----------------------------------------------------------------------------
# Uncertainty and the filter.
# ----------------------------------------------------------------------------


def uncertainty(scores: ArrayLike, kind: str = "r1_minus_r2", target: int = 0, r2_kind: str = "mean") -> jax.Array:
  """Ensemble uncertainty of each response.

  Args:
    scores: [K, B] member rewards.
    kind: 'r1_minus_r2' (the paper's U = R1 - R2; signed, large when the
      target member likes a response the others do not) or 'std' (population
      std over the K members; unsigned) (static).
    target: R1's member index for 'r1_minus_r2' (static).
    r2_kind: R2's aggregate for 'r1_minus_r2', see
      `objective.split_target` (static).

  Returns:
    [B] float32.
  """
  if kind == "r1_minus_r2":
    r1, r2 = objective.split_target(scores, target, r2_kind)
    return r1 - r2
  if kind == "std":
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim != 2:
      raise ValueError(f"scores must be [K, B], got shape {scores.shape}")
    return jnp.std(scores, axis=0)
  raise ValueError(f"unknown uncertainty kind {kind!r}; expected one of {UNCERTAINTY_KINDS}")


def standardize(
  u: ArrayLike,
  reference: (ArrayLike | tuple[ArrayLike, ArrayLike] | None) = None,
  mask: ArrayLike | None = None,
  eps: float = 1e-6,
) -> jax.Array:
  """z-scores of `u`: (u - mean) / max(std, eps), population std (ddof=0).

  Args:
    u: [B] uncertainties.
    reference: Where mean and std come from. None: `u` itself (the batch,
      restricted to `mask`). An array [M]: a reference population, e.g. the
      uncertainties of reference-policy responses, so z says how unusual a
      sample is relative to ordinary responses rather than to the other
      adversarial samples. A pair (mean, std): precomputed statistics
      (e.g. running statistics kept in the online mode's state).
    mask: [B] bool, rows of `u` that enter the batch statistics (only with
      reference=None; e.g. skip padding rows). Every row is standardised.
    eps: Floor on the std, so a constant population gives finite z.

  Returns:
    [B] float32 z-scores.
  """
  u = jnp.asarray(u, jnp.float32)
  if isinstance(reference, tuple):
    mean = jnp.asarray(reference[0], jnp.float32)
    std = jnp.asarray(reference[1], jnp.float32)
  else:
    population = u if reference is None else jnp.asarray(reference, jnp.float32)
    if reference is None and mask is not None:
      weights = jnp.asarray(mask, jnp.float32)
    else:
      weights = jnp.ones_like(population)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    mean = jnp.sum(weights * population) / count
    std = jnp.sqrt(jnp.sum(weights * jnp.square(population - mean)) / count)
  return (u - mean) / jnp.maximum(std, eps)


def filter_mask(r1: ArrayLike, threshold: ArrayLike, z_u: ArrayLike, z_min: float = DEFAULT_Z_MIN) -> jax.Array:
  """Adv-RM's keep rule: `R1 > T(x)` and `z(U) > z_min` (both strict).

  Args:
    r1: [B] target-member rewards.
    threshold: [B] (or scalar) thresholds T(x).
    z_u: [B] standardised uncertainty (`standardize(uncertainty(...))`).
    z_min: z cut-off; 1.96 is one-sided p < 0.025 under a normal population.

  Returns:
    [B] bool keep mask.
  """
  r1 = jnp.asarray(r1, jnp.float32)
  return (r1 > jnp.asarray(threshold, jnp.float32)) & (jnp.asarray(z_u, jnp.float32) > z_min)


# ----------------------------------------------------------------------------
# On-device replay buffer.
# ----------------------------------------------------------------------------

# Fields of one buffered item, in the order of `AdversarialBuffer`.
ITEM_FIELDS = (
  "prompt_tokens",
  "prompt_mask",
  "adversarial_tokens",
  "adversarial_mask",
  "reference_tokens",
  "reference_mask",
)


class AdversarialBuffer(NamedTuple):
  """A fixed-capacity ring buffer of filtered adversarial samples (a pytree).

  N = capacity, P / R / Q = prompt / adversarial / reference response width.
  Rows are written ring-style: the i-th kept item overall goes to slot
  i % N, so once full the oldest items are overwritten first.

  Attributes:
    prompt_tokens: [N, P] int32.
    prompt_mask: [N, P] bool.
    adversarial_tokens: [N, R] int32 (the rejected side).
    adversarial_mask: [N, R] bool.
    reference_tokens: [N, Q] int32 (the chosen side).
    reference_mask: [N, Q] bool.
    valid: [N] bool, slot holds an item.
    inserted_at: [N] int32, the global insertion index of each slot's item
      (-1 when empty); larger is fresher.
    count: [] int32, number of items ever inserted (the insertion counter).
  """

  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  adversarial_tokens: jax.Array
  adversarial_mask: jax.Array
  reference_tokens: jax.Array
  reference_mask: jax.Array
  valid: jax.Array
  inserted_at: jax.Array
  count: jax.Array

  @property
  def capacity(self) -> int:
    """N, the number of slots."""
    return self.valid.shape[0]


def init_buffer(
  capacity: int, prompt_len: int, response_len: int, reference_len: int | None = None, pad_id: int = 0
) -> AdversarialBuffer:
  """An empty buffer.

  Args:
    capacity: N, number of slots.
    prompt_len: P, prompt width.
    response_len: R, adversarial response width.
    reference_len: Q, reference response width (default R).
    pad_id: Token id of empty slots.

  Returns:
    An `AdversarialBuffer` with every slot invalid and count 0.
  """
  if capacity < 1:
    raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
  reference_len = response_len if reference_len is None else reference_len
  tokens = lambda width: jnp.full((capacity, width), pad_id, jnp.int32)
  masks = lambda width: jnp.zeros((capacity, width), bool)
  return AdversarialBuffer(
    prompt_tokens=tokens(prompt_len),
    prompt_mask=masks(prompt_len),
    adversarial_tokens=tokens(response_len),
    adversarial_mask=masks(response_len),
    reference_tokens=tokens(reference_len),
    reference_mask=masks(reference_len),
    valid=jnp.zeros((capacity,), bool),
    inserted_at=jnp.full((capacity,), -1, jnp.int32),
    count=jnp.zeros((), jnp.int32),
  )


def buffer_add(buffer: AdversarialBuffer, items: Mapping[str, ArrayLike], keep_mask: ArrayLike) -> AdversarialBuffer:
  """Writes the kept rows of `items` into the ring (pure, jittable).

  The j-th kept row (in row order) goes to slot `(count + j) % N`: the
  destination comes from a cumsum of `keep_mask`, and rows that are not
  kept get the out-of-range slot N, which the scatter drops
  (`mode='drop'`), so shapes never depend on how many rows are kept. If a
  single call keeps more than N rows, only the last N kept rows are written
  (each slot exactly once; a scatter with duplicate indices would have an
  unspecified winner), but `count` still advances by all of them.

  Args:
    buffer: The current buffer.
    items: `ITEM_FIELDS` -> [B, width] arrays, widths as the buffer's.
    keep_mask: [B] bool, rows to insert (e.g. `filter_mask`).

  Returns:
    The updated buffer.
  """
  missing = [f for f in ITEM_FIELDS if f not in items]
  if missing:
    raise ValueError(f"buffer_add: items lack fields {missing}; expected {ITEM_FIELDS}")
  keep = jnp.asarray(keep_mask, bool)
  capacity = buffer.capacity
  rank = jnp.cumsum(keep.astype(jnp.int32)) - 1  # j for the j-th kept row.
  num_kept = jnp.sum(keep.astype(jnp.int32))
  write = keep & (rank >= num_kept - capacity)
  slot = jnp.where(write, (buffer.count + rank) % capacity, capacity)

  updates = {}
  for field in ITEM_FIELDS:
    old = getattr(buffer, field)
    new = jnp.asarray(items[field]).astype(old.dtype)
    if new.ndim != 2 or new.shape[1] != old.shape[1] or (new.shape[0] != keep.shape[0]):
      raise ValueError(
        f"buffer_add: items[{field!r}] has shape {new.shape}; expected [{keep.shape[0]}, {old.shape[1]}]"
      )
    updates[field] = old.at[slot].set(new, mode="drop")
  updates["valid"] = buffer.valid.at[slot].set(True, mode="drop")
  updates["inserted_at"] = buffer.inserted_at.at[slot].set(buffer.count + rank, mode="drop")
  updates["count"] = buffer.count + num_kept
  return buffer._replace(**updates)


def buffer_size(buffer: AdversarialBuffer) -> jax.Array:
  """Number of valid slots, [] int32."""
  return jnp.sum(buffer.valid.astype(jnp.int32))


def buffer_sample(
  buffer: AdversarialBuffer,
  rng: jax.Array,
  n: int,
  replace: bool = True,
) -> tuple[dict[str, jax.Array], jax.Array]:
  """Draws `n` rows uniformly from the valid slots (pure, jittable).

  Args:
    buffer: The buffer.
    rng: PRNG key.
    n: Rows to draw (static).
    replace: With replacement (static). Without replacement (Gumbel top-k
      over valid slots) requires n <= capacity; when fewer than n slots are
      valid, the surplus draws land on invalid slots and are flagged False.

  Returns:
    (items: `ITEM_FIELDS` -> [n, width] arrays, valid [n] bool). Rows with
    valid False (empty buffer, or too few items without replacement) hold
    padding and must be masked out of any loss.
  """
  logits = jnp.where(buffer.valid, 0.0, -jnp.inf)
  if replace:
    idx = jax.random.categorical(rng, logits, shape=(n,))
  else:
    if n > buffer.capacity:
      raise ValueError(f"cannot draw {n} rows without replacement from a buffer of capacity {buffer.capacity}")
    noisy = logits + jax.random.gumbel(rng, logits.shape)
    # Invalid slots are -inf and sort last; tie-break them by index.
    noisy = jnp.where(buffer.valid, noisy, -1e30 - jnp.arange(buffer.capacity, dtype=jnp.float32))
    _, idx = jax.lax.top_k(noisy, n)
  # An all -inf categorical can return any index; `valid` flags it.
  idx = jnp.clip(idx, 0, buffer.capacity - 1)
  items = {f: getattr(buffer, f)[idx] for f in ITEM_FIELDS}
  return items, buffer.valid[idx]


# ----------------------------------------------------------------------------
# Host side: preference records.
# ----------------------------------------------------------------------------


def build_adversarial_pairs(
  prompts: Sequence[str],
  adversarial_responses: Sequence[str],
  reference_responses: Sequence[str],
  extra: Mapping[str, Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
  """Preference records with the adversarial response as the rejected side.

  Args:
    prompts: [N] prompt texts.
    adversarial_responses: [N] filtered adversarial responses (rejected).
    reference_responses: [N] ordinary responses to the same prompts, e.g.
      reference-policy samples (chosen).
    extra: Optional column name -> [N] values copied into each record (e.g.
      "r1", "uncertainty", "rejected_gold" for analysis).

  Returns:
    [{"prompt", "chosen", "rejected", **extra}]. A pair whose two responses
    are identical (no preference) or with an empty side (the preference
    reader rejects those) is dropped; the numbers dropped are logged as a
    warning, never skipped silently.
  """
  n = len(prompts)
  if not len(adversarial_responses) == len(reference_responses) == n:
    raise ValueError(
      f"{n} prompts, {len(adversarial_responses)} adversarial "
      f"and {len(reference_responses)} reference responses: "
      "lengths must match"
    )
  extra = dict(extra or {})
  for name, column in extra.items():
    if len(column) != n:
      raise ValueError(f"extra column {name!r} has {len(column)} values, expected {n}")
    if name in ("prompt", "chosen", "rejected"):
      raise ValueError(f"extra column {name!r} would overwrite a record field")
  records, identical, empty = [], 0, 0
  for i in range(n):
    chosen, rejected = reference_responses[i], adversarial_responses[i]
    if not chosen or not rejected:
      empty += 1
      continue
    if chosen == rejected:
      identical += 1
      continue
    record = {"prompt": prompts[i], "chosen": chosen, "rejected": rejected}
    for name, column in extra.items():
      value = column[i]
      record[name] = value.item() if isinstance(value, np.generic) else value
    records.append(record)
  if identical or empty:
    logging.warning(
      "build_adversarial_pairs: dropped %d of %d pairs with identical responses and %d with an empty response",
      identical,
      n,
      empty,
    )
  return records


def _draw(records: Sequence[Any], num: int, rng: np.random.Generator) -> list[Any]:
  """`num` records: without replacement while possible, then cycling through
  fresh permutations (each record is used once before any is reused)."""
  if num == 0:
    return []
  if not records:
    raise ValueError(f"cannot draw {num} pairs from an empty list")
  out: list[Any] = []
  while len(out) < num:
    order = rng.permutation(len(records))[: num - len(out)]
    out.extend(records[i] for i in order)
  return out


def mix_pairs(
  ordinary: Sequence[Mapping[str, Any]],
  adversarial: Sequence[Mapping[str, Any]],
  adversarial_fraction: float,
  seed: int,
  total: int | None = None,
) -> list[Mapping[str, Any]]:
  """A shuffled training set with a set fraction of adversarial pairs.

  Args:
    ordinary: Ordinary preference records.
    adversarial: Adversarial preference records (`build_adversarial_pairs`).
    adversarial_fraction: f in [0, 1], the adversarial share of the result.
    seed: Seed of the draw and the shuffle.
    total: Size of the result. Default: every ordinary pair is used once and
      round(f / (1 - f) * len(ordinary)) adversarial pairs are added (with
      f = 1: every adversarial pair once).

  Returns:
    round(f * total) adversarial and the rest ordinary records, shuffled.
    A side with fewer records than needed is upsampled (each record used
    once before any repeats), so the ratio holds exactly.
  """
  f = float(adversarial_fraction)
  if not 0.0 <= f <= 1.0:
    raise ValueError(f"adversarial_fraction must be in [0, 1], got {f}")
  if total is None:
    if f == 1.0:
      num_adv, num_ord = len(adversarial), 0
    else:
      num_ord = len(ordinary)
      num_adv = int(round(f / (1.0 - f) * num_ord))
  else:
    if total < 0:
      raise ValueError(f"total must be >= 0, got {total}")
    num_adv = int(round(f * total))
    num_ord = total - num_adv
  rng = np.random.default_rng(seed)
  mixed = _draw(ordinary, num_ord, rng) + _draw(adversarial, num_adv, rng)
  return [mixed[i] for i in rng.permutation(len(mixed))]
