"""Tokenisation into fixed-shape arrays, deterministic batching and splits.

Layout of a tokenised preference pair (one row per side):

  [BOS?] prompt tokens | response tokens | EOS      then padding

The real tokens are contiguous; padding goes after them (padding_side="right")
or before them ("left", what a decoder needs to generate from the end of a
row). Every row has the same width L = max_prompt_len + max_response_len + 1
(the +1 is the EOS), so a jitted step sees one shape for the whole run.

Prompt and response are encoded separately and concatenated, so
`prompt_lengths` is exact: it is where the response starts in the real
tokens, which the reward and policy losses need. (A BPE merge across the
boundary is therefore never formed; generation sees the same split, as it
continues from the prompt's last token.)
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from typing import Literal

import numpy as np

from advrm_jax.data import preferences
from advrm_jax.data.preferences import DataError, PreferencePair, PromptRecord
from advrm_jax.data.tokenizer import Prompt, Tokenizer, format_prompt

PaddingSide = Literal["left", "right"]
OnOverlength = Literal["error", "truncate", "skip"]

# Integer dtype for ids, masks and lengths: what the models index with.
_INT = np.int32


def _model_prompt(record: PreferencePair | PromptRecord | Prompt, use_chat_template: bool) -> Prompt:
  """Chooses the prompt form to render for the model."""
  if isinstance(record, (PreferencePair, PromptRecord)):
    if use_chat_template and record.prompt_messages is not None:
      # An HH transcript: let the chat template render its turns rather than
      # wrapping the whole transcript in one user message.
      return record.prompt_messages
    return record.prompt
  return record


def _location(record, index: int) -> tuple[str | None, int | None, str]:
  """(source, line, description) for an error about `record`."""
  source = getattr(record, "source", None)
  line = getattr(record, "line", None)
  if source is None and line is None:
    return None, None, f"example {index}"
  return source, line, preferences.format_location(source, line)


def _encode_prompt(tokenizer: Tokenizer, record, use_chat_template: bool, add_bos: bool) -> list[int]:
  text = format_prompt(tokenizer, _model_prompt(record, use_chat_template), use_chat_template)
  ids = tokenizer.encode(text)
  if add_bos and tokenizer.bos_id is not None:
    ids = [tokenizer.bos_id] + ids
  return ids


def _fit_prompt(ids: list[int], max_len: int, on_overlength: OnOverlength, record, index: int) -> list[int] | None:
  """Applies the over-length policy to prompt ids (None means skip)."""
  if len(ids) <= max_len:
    return ids
  if on_overlength == "truncate":
    # Keep the end: the last turn and the assistant header decide what the
    # response answers; the start of a long dialogue matters least.
    return ids[len(ids) - max_len :]
  if on_overlength == "skip":
    return None
  source, line, where = _location(record, index)
  raise DataError(
    source,
    line,
    preferences.PROMPT_TOO_LONG,
    f"prompt of {where} is {len(ids)} tokens, more than "
    f"max_prompt_len={max_len} (use on_overlength='truncate' or "
    "'skip', or raise the limit)",
  )


def _place(row_tokens: np.ndarray, row_mask: np.ndarray, ids: list[int], padding_side: PaddingSide) -> None:
  """Writes real ids into a pre-padded row and sets their mask."""
  width = row_tokens.shape[0]
  start = 0 if padding_side == "right" else width - len(ids)
  row_tokens[start : start + len(ids)] = ids
  row_mask[start : start + len(ids)] = 1


def _check_args(padding_side: str, on_overlength: str, *limits: int) -> None:
  if padding_side not in ("left", "right"):
    raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
  if on_overlength not in ("error", "truncate", "skip"):
    raise ValueError(f"on_overlength must be 'error', 'truncate' or 'skip', got {on_overlength!r}")
  for limit in limits:
    if limit < 1:
      raise ValueError(f"length limits must be >= 1, got {limit}")


def tokenize_pairs(
  pairs: Sequence[PreferencePair],
  tokenizer: Tokenizer,
  max_prompt_len: int,
  max_response_len: int,
  padding_side: PaddingSide = "right",
  use_chat_template: bool = False,
  on_overlength: OnOverlength = "error",
  add_bos: bool = False,
) -> dict[str, np.ndarray]:
  """Tokenises preference pairs into fixed-shape arrays.

  Each side is prompt + response + EOS, padded with `tokenizer.pad_id` to
  L = max_prompt_len + max_response_len + 1.

  Args:
    pairs: The pairs.
    tokenizer: Any `Tokenizer`.
    max_prompt_len: Most prompt tokens (BOS included) per row.
    max_response_len: Most response tokens per row, EOS not counted.
    padding_side: "right" (for training) or "left" (real tokens end at the
      last column).
    use_chat_template: Render prompts with the tokenizer's chat template (HH
      prompts via their parsed messages). Leading whitespace of responses is
      then dropped: it separates "Assistant:" from the reply in transcript
      text, while a template's assistant header already ends the prompt.
    on_overlength: "error" raises a DataError naming the pair's file and
      line; "truncate" keeps the last max_prompt_len prompt tokens and the
      first max_response_len response tokens (a cut response gets no EOS, so
      it never looks finished); "skip" drops the pair.
    add_bos: Prepend `tokenizer.bos_id` (if it has one) to the prompt, for
      models trained with BOS (Llama) when no chat template supplies it.

  Returns:
    A dict of numpy int32 arrays, N = pairs kept:
      chosen_tokens [N, L], chosen_mask [N, L] (1 on real tokens),
      rejected_tokens [N, L], rejected_mask [N, L],
      prompt_lengths [N] (prompt tokens, shared by both sides),
      chosen_lengths [N], rejected_lengths [N] (real tokens per row),
      example_indices [N] (index into `pairs` of each row; tells which pairs
      were kept when on_overlength="skip").

  Raises:
    DataError: On an over-length pair with on_overlength="error".
  """
  _check_args(padding_side, on_overlength, max_prompt_len, max_response_len)
  width = max_prompt_len + max_response_len + 1
  kept = []  # (index, prompt_ids, chosen_ids, rejected_ids)
  for index, pair in enumerate(pairs):
    prompt_ids = _fit_prompt(
      _encode_prompt(tokenizer, pair, use_chat_template, add_bos), max_prompt_len, on_overlength, pair, index
    )
    if prompt_ids is None:
      continue
    sides = []
    for side, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
      if use_chat_template:
        response = response.lstrip()
      ids = tokenizer.encode(response)
      if len(ids) <= max_response_len:
        sides.append(ids + [tokenizer.eos_id])
      elif on_overlength == "truncate":
        sides.append(ids[:max_response_len])
      elif on_overlength == "skip":
        break
      else:
        source, line, where = _location(pair, index)
        raise DataError(
          source,
          line,
          preferences.RESPONSE_TOO_LONG,
          f"{side} response of {where} is {len(ids)} tokens, "
          f"more than max_response_len={max_response_len} (use "
          "on_overlength='truncate' or 'skip', or raise the "
          "limit)",
        )
    if len(sides) == 2:
      kept.append((index, prompt_ids, sides[0], sides[1]))

  n = len(kept)
  out = {
    "chosen_tokens": np.full((n, width), tokenizer.pad_id, _INT),
    "chosen_mask": np.zeros((n, width), _INT),
    "rejected_tokens": np.full((n, width), tokenizer.pad_id, _INT),
    "rejected_mask": np.zeros((n, width), _INT),
    "prompt_lengths": np.zeros((n,), _INT),
    "chosen_lengths": np.zeros((n,), _INT),
    "rejected_lengths": np.zeros((n,), _INT),
    "example_indices": np.zeros((n,), _INT),
  }
  for row, (index, prompt_ids, chosen_ids, rejected_ids) in enumerate(kept):
    for side, response_ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
      ids = prompt_ids + response_ids
      _place(out[f"{side}_tokens"][row], out[f"{side}_mask"][row], ids, padding_side)
      out[f"{side}_lengths"][row] = len(ids)
    out["prompt_lengths"][row] = len(prompt_ids)
    out["example_indices"][row] = index
  return out


# tokenize_pairs' options, by design: one `data` node configures both (duplicates pairs the signatures).
def tokenize_prompts(
  prompts: Sequence[PromptRecord | PreferencePair | Prompt],
  tokenizer: Tokenizer,
  max_prompt_len: int,
  padding_side: PaddingSide = "left",
  use_chat_template: bool = False,
  on_overlength: OnOverlength = "error",
  add_bos: bool = False,
) -> dict[str, np.ndarray]:
  """Tokenises prompts for generation into [N, max_prompt_len] arrays.

  Left padding is the default so every prompt ends at the last column and
  the sampler appends at the same position for the whole batch.

  Args:
    prompts: PromptRecords, PreferencePairs (their prompts are used), or raw
      prompts (strings or message lists; errors then name the index).
    tokenizer: Any `Tokenizer`.
    max_prompt_len: Row width.
    padding_side: "left" or "right".
    use_chat_template: As for `tokenize_pairs`.
    on_overlength: "error", "truncate" (keep the last tokens) or "skip".
    add_bos: As for `tokenize_pairs`.

  Returns:
    A dict of int32 arrays: tokens [N, max_prompt_len], mask [N,
    max_prompt_len], lengths [N], example_indices [N].

  Raises:
    DataError: On an over-length prompt with on_overlength="error".
  """
  _check_args(padding_side, on_overlength, max_prompt_len)
  kept = []
  for index, record in enumerate(prompts):
    ids = _fit_prompt(
      _encode_prompt(tokenizer, record, use_chat_template, add_bos), max_prompt_len, on_overlength, record, index
    )
    if ids is not None:
      kept.append((index, ids))
  n = len(kept)
  tokens = np.full((n, max_prompt_len), tokenizer.pad_id, _INT)
  mask = np.zeros((n, max_prompt_len), _INT)
  lengths = np.zeros((n,), _INT)
  indices = np.zeros((n,), _INT)
  for row, (index, ids) in enumerate(kept):
    _place(tokens[row], mask[row], ids, padding_side)
    lengths[row] = len(ids)
    indices[row] = index
  return {"tokens": tokens, "mask": mask, "lengths": lengths, "example_indices": indices}


def _rng(seed: int, *stream: int) -> np.random.Generator:
  # SeedSequence mixes all entropy words, so (seed, epoch) pairs give
  # independent streams and nothing else (no global state, no call history)
  # affects the result: a resumed run regenerates the same order.
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *map(int, stream)])))


def epoch_batches(
  num_examples: int, batch_size: int, seed: int, epoch: int, drop_remainder: bool = True
) -> list[np.ndarray]:
  """The batches of one epoch as arrays of example indices.

  The order is a permutation that depends only on (seed, epoch), so a run
  resumed at step s of epoch e can rebuild the list and continue from batch
  s - e * num_batches.

  Args:
    num_examples: Dataset size.
    batch_size: Examples per batch.
    seed: Non-negative integer seed of the run.
    epoch: Epoch number (0-based).
    drop_remainder: Drop the last partial batch (keeps shapes static under
      jit). If False it is returned, shorter.

  Returns:
    A list of int64 index arrays, each of length batch_size (except
    possibly the last when drop_remainder=False).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
  order = _rng(seed, 0, epoch).permutation(num_examples)
  stop = num_examples // batch_size * batch_size if drop_remainder else num_examples
  return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def bootstrap_indices(num_examples: int, num_members: int, seed: int) -> np.ndarray:
  """Bootstrap resamples for ensemble members.

  Member k draws num_examples indices with replacement from its own stream
  (seed, k), so adding members leaves the earlier members' data unchanged.

  Args:
    num_examples: Dataset size.
    num_members: Ensemble size K.
    seed: Non-negative integer seed.

  Returns:
    An int64 array [K, num_examples] of indices into the dataset.
  """
  if num_examples < 1 or num_members < 1:
    raise ValueError(f"num_examples and num_members must be >= 1, got {num_examples}, {num_members}")
  # Stream tag 1 keeps these draws apart from epoch_batches' (tag 0).
  return np.stack([_rng(seed, 1, member).integers(0, num_examples, size=num_examples) for member in range(num_members)])


def prompt_key(prompt: Prompt) -> str:
  """A hashable identity for a prompt (text, or canonical JSON of messages)."""
  if isinstance(prompt, str):
    return prompt
  return json.dumps([dict(m) for m in prompt], sort_keys=True, ensure_ascii=False)


def train_test_split(
  pairs: Sequence[PreferencePair], test_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
  """Splits pairs so that no prompt appears on both sides.

  Pairs sharing a prompt would otherwise leak: an RM can score a held-out
  pair well just by having seen the other responses to its prompt. Prompts
  are shuffled with `seed` and moved to the test side until it holds at
  least round(test_fraction * len(pairs)) pairs; the test side can therefore
  be slightly larger than asked when prompts have several pairs.

  Args:
    pairs: The pairs.
    test_fraction: Fraction of pairs to hold out, in [0, 1].
    seed: Non-negative integer seed.

  Returns:
    (train, test), each in the input order.
  """
  if not 0.0 <= test_fraction <= 1.0:
    raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for index, pair in enumerate(pairs):
    groups[prompt_key(pair.prompt)].append(index)
  keys = list(groups)  # First-seen order, so the split is reproducible.
  target = round(test_fraction * len(pairs))
  test_indices: set[int] = set()
  for group in _rng(seed, 2).permutation(len(keys)):
    if len(test_indices) >= target:
      break
    test_indices.update(groups[keys[group]])
  train = [p for i, p in enumerate(pairs) if i not in test_indices]
  test = [p for i, p in enumerate(pairs) if i in test_indices]
  return train, test


def step_rows(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The example indices of global step ``step`` of a run that cycles epochs of ``epoch_batches``.

  Depends only on (seed, step), so a resumed run replays the same batches.
  """
  epoch, index = divmod(step, num_examples // batch_size)
  return epoch_batches(num_examples, batch_size, seed, epoch)[index]
