"""Data for reward-model training: pair sources, tokenizers and per-member batches.

* ``synthetic_preference_pairs``: the synthetic world's preference data, two
  generator responses per prompt labelled by Bradley-Terry on the exact gold
  reward (``advrm_jax.data.synthetic_world``).
* ``ByteTokenizer``: a dependency-free UTF-8 byte tokenizer, so a small
  from-scratch RM can train on any text (e.g. the HH-RLHF slice) on a
  machine with no tokenizer files.
* ``MemberBatches``: the batch of every training step as a function of the
  step alone (so a resumed run reproduces the uninterrupted one), with each
  ensemble member seeing the same data, its own bootstrap resample, or its
  own order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from advrm_jax.data import synthetic_world as world
from advrm_jax.data.batching import bootstrap_indices, epoch_batches
from advrm_jax.data.preferences import PreferencePair

MEMBER_DATA_MODES = ("same", "bootstrap", "shuffle")


class ByteTokenizer:
  """UTF-8 bytes as token ids (``Tokenizer`` protocol), plus pad/EOS/BOS.

  Ids 0-255 are bytes; 256 is padding, 257 EOS, 258 BOS. Every string
  encodes (no unknown tokens) and decoding is exact up to invalid UTF-8 in a
  cut sequence, which is replaced.
  """

  vocab_size: int = 259
  pad_id: int = 256
  eos_id: int = 257
  bos_id: int | None = 258
  chat_template: str | None = None

  def encode(self, text: str) -> list[int]:
    """The UTF-8 bytes of ``text``; no special tokens."""
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    """Bytes back to text; padding dropped, EOS/BOS shown as markers."""
    out, pending = [], bytearray()
    for i in (int(i) for i in ids):
      if i < 256:
        pending.append(i)
        continue
      out.append(pending.decode("utf-8", errors="replace"))
      pending = bytearray()
      if i == self.eos_id:
        out.append("<eos>")
      elif i == self.bos_id:
        out.append("<bos>")
    out.append(pending.decode("utf-8", errors="replace"))
    return "".join(out)

  def __repr__(self) -> str:
    return "ByteTokenizer(vocab_size=259, pad_id=256, eos_id=257, bos_id=258)"


def synthetic_preference_pairs(
  num_pairs: int,
  seed: int,
  beta: float = 2.0,
  quality_mix: Mapping[str, float] | None = None,
  split: str = "preference",
) -> list[PreferencePair]:
  """Preference pairs of the synthetic world, labelled on gold.

  For each of ``num_pairs`` prompts, two responses are drawn from the
  world's generator (quality class per response from ``quality_mix``), and
  the chosen side is drawn with ``P(a wins) = sigmoid(beta * (gold_a -
  gold_b))``, so the data carry realistic label noise. Pairs with identical
  responses are dropped (logged by the world), so slightly fewer than
  ``num_pairs`` may come back. Deterministic in (num_pairs, seed, beta, mix).

  Args:
    num_pairs: prompts to draw.
    seed: seed of prompts, responses and labels.
    beta: Bradley-Terry inverse temperature on gold.
    quality_mix: generator class weights (default: the world's mix).
    split: the world's prompt stream ("preference" keeps RM prompts apart
      from SFT and RL prompts).

  Returns:
    PreferencePairs with ``source="synthetic"`` and ``id`` = prompt index.
  """
  if num_pairs < 1:
    raise ValueError(f"data.synthetic.num_pairs must be >= 1, got {num_pairs}")
  mix = dict(world.DEFAULT_QUALITY_MIX if quality_mix is None else quality_mix)
  names = list(mix)
  probs = np.asarray([mix[n] for n in names], np.float64)
  if (probs < 0).any() or probs.sum() <= 0:
    raise ValueError(f"data.synthetic.quality_mix {mix}: weights must be >= 0 with a positive sum")
  probs = probs / probs.sum()
  prompts = world.make_prompts(num_pairs, seed, split=split)
  rng = np.random.default_rng([int(seed), 17])
  responses = []
  for prompt in prompts:
    classes = rng.choice(len(names), size=2, p=probs)
    responses.append([world.sample_response(rng, prompt, names[int(c)]) for c in classes])
  label_rng = np.random.default_rng([int(seed), 18])
  records = world.make_preference_records(
    prompts, [r[0] for r in responses], [r[1] for r in responses], beta=beta, rng=label_rng, include_gold=False
  )
  return [
    PreferencePair(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"], id=str(i), source="synthetic")
    for i, r in enumerate(records)
  ]


@dataclasses.dataclass(frozen=True)
class MemberBatches:
  """Which pairs each ensemble member trains on at each step.

  Attributes:
    num_examples: N, training pairs.
    batch_size: B, pairs per step (per member).
    num_members: K.
    mode: "same" (every member sees the same batches), "bootstrap" (member k
      fits its own resample of the N pairs, drawn with replacement), or
      "shuffle" (member k sees all pairs in its own order).
    per_member_rows: give each member its own rows (``[B, K]`` indices) in
      "bootstrap" and "shuffle" modes; only an independent ensemble can use
      them. Otherwise all members share the rows and bootstrap is expressed
      through example weights (the count of each row in the member's
      resample). "same" always uses shared rows.
    seed: data seed.
  """

  num_examples: int
  batch_size: int
  num_members: int
  mode: str = "bootstrap"
  per_member_rows: bool = False
  seed: int = 0

  def __post_init__(self):
    if self.mode not in MEMBER_DATA_MODES:
      raise ValueError(f"rm.member_data: unknown mode {self.mode!r}; expected one of {MEMBER_DATA_MODES}")
    if self.mode == "shuffle" and not self.per_member_rows:
      raise ValueError(
        "rm.member_data='shuffle' gives every member its own row order, which needs "
        "rm.ensemble='independent' (a shared backbone sees one batch for all heads); "
        "use 'bootstrap' or 'same' with a shared backbone"
      )
    if self.batch_size > self.num_examples:
      raise ValueError(f"rm.batch_size={self.batch_size} is larger than the {self.num_examples} training pairs")
    # [K, N] resamples and their per-row counts, computed once: batches are
    # built every step. bootstrap_indices keeps member k's draw independent
    # of K, so adding members leaves the earlier ones' data unchanged.
    resamples = bootstrap_indices(self.num_examples, self.num_members, self.seed)
    counts = np.stack([np.bincount(r, minlength=self.num_examples) for r in resamples]).astype(np.float32)
    object.__setattr__(self, "_resamples", resamples)
    object.__setattr__(self, "_counts", counts)

  @property
  def steps_per_epoch(self) -> int:
    """Full batches per pass over the training pairs."""
    return self.num_examples // self.batch_size

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows and weights of one step.

    Returns:
      (rows, weights): rows is [B] (shared rows) or [B, K] (per-member rows)
      int64 indices into the training pairs; weights is [B, K] float32
      (bootstrap counts of shared rows) or None (all ones).
    """
    epoch, position = divmod(step, self.steps_per_epoch)
    shared_rows = epoch_batches(self.num_examples, self.batch_size, self.seed, epoch)[position]
    if self.mode == "same":
      # Shared rows even for an independent ensemble: it scores one [B, T]
      # batch with every member, no need to copy it K times.
      return shared_rows, None
    if not self.per_member_rows:  # bootstrap on shared rows: weights = counts
      return shared_rows, self._counts[:, shared_rows].T.copy()
    window = slice(position * self.batch_size, (position + 1) * self.batch_size)
    columns = []
    for member in range(self.num_members):
      # Member k's order of epoch e comes from its own stream (the same for
      # any K); bootstrap walks the member's resample in that order.
      order = np.random.default_rng([int(self.seed), 3, member, epoch]).permutation(self.num_examples)
      member_rows = order[window]
      if self.mode == "bootstrap":
        member_rows = self._resamples[member][member_rows]
      columns.append(member_rows)
    return np.stack(columns, axis=1), None

  def batch(
    self, data: Mapping[str, np.ndarray], step: int, share: Callable[[Any], Any] = lambda rows: rows
  ) -> dict[str, np.ndarray]:
    """The host batch of ``step`` (``advrm_jax.reward.losses`` layout); with ``share`` (train_loop's), only
    this process's rows of it."""
    rows, weights = share(self.indices(step))
    batch = {
      key: np.asarray(data[key])[rows] for key in ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask")
    }
    if "margin" in data:  # [B], or [B, K] with per-member rows
      batch["margin"] = np.asarray(data["margin"], np.float32)[rows]
    if weights is not None:
      batch["member_weights"] = weights
    return batch


def tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
  """A JSON description of a tokenizer a later stage can rebuild it from."""
  return {
    "class": type(tokenizer).__name__,
    "vocab_size": int(tokenizer.vocab_size),
    "pad_id": int(tokenizer.pad_id),
    "eos_id": int(tokenizer.eos_id),
    "bos_id": None if tokenizer.bos_id is None else int(tokenizer.bos_id),
  }
