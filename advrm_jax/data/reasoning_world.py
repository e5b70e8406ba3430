"""A synthetic reasoning task with exact answers: multi-step arithmetic in words.

EMPO (semantic-entropy rewards) and the correctness probes need a task whose
responses have an extractable, checkable final answer and intermediate
answers at known token positions. This module is that task, in the style of
`synthetic_world.py`: a tiny word vocabulary, a tokenizer, generators, and
exact JAX functions over token ids.

Text format
-----------
A prompt is a start value and 1-3 operations; a response works through the
operations, one "now X ." step each, may *check* (redo the whole computation,
possibly fixing a slip) and ends with the final answer::

  prompt:   start with three . add two . double it . minus four .
  response: now five . now ten . now six . answer six .
  response: now five . now nine . now five . check . now five . now ten .
            now six . answer six .

Numbers are the single words "zero" .. "twenty"; every true intermediate
value stays in [0, 20] (operations are drawn among the valid ones: "add N"
and "minus N" with N in 1..5, "double it" when the value is <= 10).

Answers
-------
* Final answer (`final_answer`): the number token right after the *first*
  "answer" token of the response body (the masked tokens before the first
  EOS). No "answer" token, or a non-number after it, is "no answer" (-1).
* Intermediate answers (`intermediate_answers`): every number token right
  after a "now" token in the body. Each has a token position (its response
  column), an attempt index (number of "check" tokens before it) and a step
  index (number of "now" tokens since the last "check", minus one). Its label
  is *correct* iff the step index is < the number of operations and the value
  equals the true value after that many operations. The intermediate answer
  of an attempt's last step (step == num_ops - 1) is that attempt's
  *candidate final answer* (early-exit decoding stops on one of those).

SFT corpus
----------
`make_sft_corpus` writes solutions with a known mix of mistakes so the SFT
policy is imperfect: attempt a (0-based) makes one *slip* (one step's value
off by +-1 or +-2, later steps computed correctly from the wrong value) with
probability `slip_probs[a]`; after an attempt the solution checks again with
probability `check_after_slip` if the attempt slipped and `check_after_correct`
otherwise (at most `max_attempts` attempts), and answers with its last
attempt's value. Because checking follows slips far more often than correct
attempts, a model trained on the corpus benefits from representing "this
step looks wrong" in its hidden state -- what the probes read. Slips spread
over several wrong values, so the correct answer is each prompt's most likely
answer under the corpus: the regime where EMPO's majority-cluster reward
raises accuracy without labels.

Splits
------
Prompts are assigned to the "sft", "rl" and "test" splits by a stable hash of
their text (`prompt_split`), so the three sets never share a prompt.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax.data.tokenizer import WordDecoding

Array = jax.Array

# ----------------------------------------------------------------------------
# Vocabulary.
# ----------------------------------------------------------------------------

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK)
NUMBER_WORDS = (
  "zero",
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
  "ten",
  "eleven",
  "twelve",
  "thirteen",
  "fourteen",
  "fifteen",
  "sixteen",
  "seventeen",
  "eighteen",
  "nineteen",
  "twenty",
)
MAX_VALUE = len(NUMBER_WORDS) - 1
WORDS = ("start", "with", "add", "minus", "double", "it", "now", "check", "answer")
VOCAB: tuple[str, ...] = SPECIAL_TOKENS + (".",) + WORDS + NUMBER_WORDS
WORD_TO_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)
PAD_ID, EOS_ID, BOS_ID, UNK_ID = (WORD_TO_ID[t] for t in SPECIAL_TOKENS)
PERIOD_ID = WORD_TO_ID["."]
(START_ID, WITH_ID, ADD_ID, MINUS_ID, DOUBLE_ID, IT_ID, NOW_ID, CHECK_ID, ANSWER_ID) = (WORD_TO_ID[w] for w in WORDS)
ZERO_ID = WORD_TO_ID["zero"]
assert PAD_ID == 0 and EOS_ID == 1 and BOS_ID == 2, "special ids as in synthetic_world"

# id -> integer value for number words, -1 for every other token.
NUMBER_VALUE = np.full((VOCAB_SIZE,), -1, np.int32)
NUMBER_VALUE[ZERO_ID : ZERO_ID + len(NUMBER_WORDS)] = np.arange(len(NUMBER_WORDS))

MAX_OPS = 3
OPERAND_RANGE = (1, 5)
# BOS + "start with X ." + MAX_OPS x 3 tokens.
MAX_PROMPT_TOKENS = 1 + 4 + 3 * MAX_OPS


def number_id(value: int) -> int:
  """Token id of the number word for ``value`` (ValueError outside [0, MAX_VALUE])."""
  if not 0 <= value <= MAX_VALUE:
    raise ValueError(f"value {value} outside [0, {MAX_VALUE}]")
  return ZERO_ID + int(value)


# ----------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"<[a-z]+>|[a-z]+|\S")


class ReasoningTokenizer(WordDecoding):
  """Word-level tokenizer of the reasoning task (`Tokenizer` protocol).

  `encode` lower-cases and splits into words and single punctuation marks
  (never adds BOS/EOS); an unknown word raises ValueError naming it.
  """

  # The Tokenizer protocol's members from this world's vocabulary (synthetic_world.WordTokenizer sets its own).
  vocab: tuple[str, ...] = VOCAB
  vocab_size: int = VOCAB_SIZE
  pad_id: int = PAD_ID
  eos_id: int = EOS_ID
  bos_id: int | None = BOS_ID
  unk_id: int = UNK_ID
  chat_template: str | None = None

  def encode(self, text: str) -> list[int]:
    """Ids of the words of ``text`` (lower-cased; no BOS/EOS); an unknown word is a ValueError."""
    ids = []
    for pos, word in enumerate(_TOKEN_RE.findall(text.lower())):
      if word not in WORD_TO_ID:
        raise ValueError(
          f"word {word!r} (token {pos} of {text!r}) is not in the reasoning task's {VOCAB_SIZE}-word vocabulary"
        )
      ids.append(WORD_TO_ID[word])
    return ids


TOKENIZER = ReasoningTokenizer()

# ----------------------------------------------------------------------------
# Problems, prompts and solutions (host side).
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """start, ops [(kind, operand)], values[i] = value after op i (len = len(ops))."""

  start: int
  ops: tuple[tuple[str, int], ...]

  @property
  def values(self) -> tuple[int, ...]:
    """The running value after each operation."""
    out, value = [], self.start
    for kind, operand in self.ops:
      value = apply_op(value, kind, operand)
      out.append(value)
    return tuple(out)

  @property
  def answer(self) -> int:
    """The final value: the exact answer."""
    return self.values[-1]

  @property
  def prompt(self) -> str:
    """The problem as prompt text, e.g. ``start with three . add two . double it .``."""
    parts = [f"start with {NUMBER_WORDS[self.start]} ."]
    for kind, operand in self.ops:
      parts.append("double it ." if kind == "double" else f"{kind} {NUMBER_WORDS[operand]} .")
    return " ".join(parts)


def apply_op(value: int, kind: str, operand: int) -> int:
  """One operation: "add", "minus" or "double" (ValueError for others)."""
  if kind == "add":
    return value + operand
  if kind == "minus":
    return value - operand
  if kind == "double":
    return 2 * value
  raise ValueError(f"unknown operation {kind!r}")


def _valid_ops(value: int) -> list[tuple[str, int]]:
  lo, hi = OPERAND_RANGE
  ops = [("add", n) for n in range(lo, hi + 1) if value + n <= MAX_VALUE]
  ops += [("minus", n) for n in range(lo, hi + 1) if value - n >= 0]
  if 0 < value <= MAX_VALUE // 2:
    # Weighted like one add/minus family so doubling is not drowned out.
    ops += [("double", 0)] * (hi - lo + 1)
  return ops


def random_problem(rng: np.random.Generator, num_ops: tuple[int, int] = (2, MAX_OPS)) -> Problem:
  """A problem with num_ops[0]..num_ops[1] operations, all values in [0, 20]."""
  n = int(rng.integers(num_ops[0], num_ops[1] + 1))
  if not 1 <= n <= MAX_OPS:
    raise ValueError(f"num_ops must lie in [1, {MAX_OPS}], got {num_ops}")
  start = int(rng.integers(0, MAX_VALUE + 1))
  ops, value = [], start
  for _ in range(n):
    choices = _valid_ops(value)
    kind, operand = choices[int(rng.integers(len(choices)))]
    ops.append((kind, operand))
    value = apply_op(value, kind, operand)
  return Problem(start, tuple(ops))


SPLITS = {"sft": range(0, 6), "rl": range(6, 8), "test": range(8, 10)}


def prompt_split(prompt: str) -> str:
  """The split a prompt belongs to: a stable hash of its text (60/20/20)."""
  bucket = zlib.crc32(prompt.encode()) % 10
  return next(name for name, buckets in SPLITS.items() if bucket in buckets)


def make_problems(
  num: int, seed: int, split: str, num_ops: tuple[int, int] = (2, MAX_OPS), unique: bool = False
) -> list[Problem]:
  """`num` problems of `split` (rejection-sampled by `prompt_split`).

  Args:
    num: how many.
    seed: the same (seed, split, num_ops) always gives the same list.
    split: "sft", "rl" or "test".
    num_ops: inclusive range of the number of operations.
    unique: no repeated prompts (the pool is finite: ValueError if too few).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
  rng = np.random.default_rng([int(seed), list(SPLITS).index(split), 4242])
  out, seen, tries = [], set(), 0
  while len(out) < num:
    tries += 1
    if tries > 200 * num + 10000:
      raise ValueError(f"could not draw {num} {'unique ' if unique else ''}{split} problems")
    problem = random_problem(rng, num_ops)
    text = problem.prompt
    if prompt_split(text) != split or (unique and text in seen):
      continue
    seen.add(text)
    out.append(problem)
  return out


def solve_steps(problem: Problem, slip_at: int | None = None, slip: int = 0) -> list[int]:
  """The "now" values of one attempt; with a slip, step `slip_at` is off by `slip`
  and later steps are computed correctly from the wrong value."""
  out, value = [], problem.start
  for i, (kind, operand) in enumerate(problem.ops):
    value = apply_op(value, kind, operand)
    if i == slip_at:
      value += slip
    out.append(value)
  return out


def _slipped_attempt(problem: Problem, rng: np.random.Generator) -> list[int]:
  """An attempt with exactly one slip whose values all stay in [0, 20]."""
  options = []
  for step in range(len(problem.ops)):
    for delta in (-2, -1, 1, 2):
      values = solve_steps(problem, step, delta)
      if all(0 <= v <= MAX_VALUE for v in values):
        options.append(values)
  return options[int(rng.integers(len(options)))]


@dataclasses.dataclass(frozen=True)
class CorpusMix:
  """How often SFT solutions go wrong (see the module docstring)."""

  slip_probs: tuple[float, ...] = (0.35, 0.25, 0.15)
  check_after_slip: float = 0.7
  check_after_correct: float = 0.15
  max_attempts: int = 3


def format_response(attempts: Sequence[Sequence[int]]) -> str:
  """ "now a . now b . [check . now ...] answer z ." from attempts' values."""
  parts = []
  for i, values in enumerate(attempts):
    if i:
      parts.append("check .")
    parts.extend(f"now {NUMBER_WORDS[v]} ." for v in values)
  parts.append(f"answer {NUMBER_WORDS[attempts[-1][-1]]} .")
  return " ".join(parts)


def make_solution(problem: Problem, rng: np.random.Generator, mix: CorpusMix = CorpusMix()) -> dict[str, Any]:
  """One corpus solution: {"response", "attempts", "correct", "slipped"}."""
  attempts, slipped = [], []
  while True:
    a = len(attempts)
    slip = rng.random() < mix.slip_probs[min(a, len(mix.slip_probs) - 1)]
    attempts.append(_slipped_attempt(problem, rng) if slip else solve_steps(problem))
    slipped.append(bool(slip))
    if len(attempts) == mix.max_attempts:
      break
    if rng.random() >= (mix.check_after_slip if slip else mix.check_after_correct):
      break
  return {
    "response": format_response(attempts),
    "attempts": attempts,
    "correct": attempts[-1][-1] == problem.answer,
    "slipped": slipped,
  }


def make_sft_corpus(
  num: int, seed: int, mix: CorpusMix = CorpusMix(), num_ops: tuple[int, int] = (2, MAX_OPS)
) -> list[dict[str, Any]]:
  """`num` {"prompt", "response", "answer", "correct"} examples on sft-split prompts."""
  rng = np.random.default_rng([int(seed), 777])
  out = []
  for problem in make_problems(num, seed, "sft", num_ops):
    solution = make_solution(problem, rng, mix)
    out.append(
      {
        "prompt": problem.prompt,
        "response": solution["response"],
        "answer": problem.answer,
        "correct": solution["correct"],
        "num_attempts": len(solution["attempts"]),
      }
    )
  return out


def max_response_tokens(mix: CorpusMix = CorpusMix()) -> int:
  """Longest corpus response incl. EOS: attempts x 3 MAX_OPS + checks + answer."""
  return mix.max_attempts * 3 * MAX_OPS + 2 * (mix.max_attempts - 1) + 3 + 1


def prompt_arrays(problems: Sequence[Problem], width: int = MAX_PROMPT_TOKENS) -> dict[str, np.ndarray]:
  """[BOS] + prompt, left-padded to `width`: {"tokens" [N, W] int32, "mask" [N, W] int32}."""
  tokens = np.zeros((len(problems), width), np.int32)
  mask = np.zeros((len(problems), width), np.int32)
  for i, problem in enumerate(problems):
    ids = [BOS_ID] + TOKENIZER.encode(problem.prompt)
    if len(ids) > width:
      raise ValueError(f"prompt {i} has {len(ids)} tokens, more than the width {width}")
    tokens[i, width - len(ids) :] = ids
    mask[i, width - len(ids) :] = 1
  return {"tokens": tokens, "mask": mask}


# ----------------------------------------------------------------------------
# Exact answers in JAX (jittable; also fine on numpy inputs).
# ----------------------------------------------------------------------------


# Jitted: one compiled program per shape instead of dozens of eager ops.
@jax.jit
def response_body(response_tokens: Array, response_mask: Array) -> Array:
  """[B, N] bool: masked tokens strictly before the first masked EOS."""
  tokens = jnp.asarray(response_tokens, jnp.int32)
  mask = jnp.asarray(response_mask).astype(bool)
  eos = (tokens == EOS_ID) & mask
  after_eos = jnp.cumsum(eos.astype(jnp.int32), axis=1) > 0
  return mask & ~after_eos


def _values(tokens: Array) -> Array:
  return jnp.asarray(NUMBER_VALUE)[jnp.clip(tokens, 0, VOCAB_SIZE - 1)]


def _next(x: Array, fill) -> Array:
  """x shifted left by one column: out[:, t] = x[:, t + 1], `fill` at the end."""
  return jnp.concatenate([x[:, 1:], jnp.full_like(x[:, :1], fill)], axis=1)


# Jitted: one compiled program per shape instead of dozens of eager ops.
@jax.jit
def final_answer(response_tokens: Array, response_mask: Array) -> tuple[Array, Array]:
  """The final answer and its response column.

  Args:
    response_tokens: [B, N] int ids.
    response_mask: [B, N] bool/int.

  Returns:
    (values [B] int32 in [0, 20] or -1 for no answer, positions [B] int32 of
    the answer's number token, -1 for no answer).
  """
  tokens = jnp.asarray(response_tokens, jnp.int32)
  body = response_body(tokens, response_mask)
  is_answer = (tokens == ANSWER_ID) & body
  first = jnp.argmax(is_answer, axis=1)
  has = jnp.any(is_answer, axis=1)
  next_value = jnp.where(_next(body, False), _next(_values(tokens), -1), -1)
  value = jnp.take_along_axis(next_value, first[:, None], axis=1)[:, 0]
  ok = has & (value >= 0)
  return jnp.where(ok, value, -1), jnp.where(ok, first + 1, -1).astype(jnp.int32)


# Jitted: one compiled program per shape instead of dozens of eager ops.
@jax.jit
def final_answer_key(response_tokens: Array, response_mask: Array) -> tuple[Array, Array]:
  """EMPO cluster key of a response: (final answer [B] int32, valid [B] bool)."""
  value, _ = final_answer(response_tokens, response_mask)
  return value, value >= 0


# Jitted like final_answer above, and documented the same way on purpose: each reads on its own.
@jax.jit
def intermediate_answers(response_tokens: Array, response_mask: Array) -> dict[str, Array]:
  """Intermediate answers ("now X") at their response columns.

  Args:
    response_tokens: [B, N] int ids.
    response_mask: [B, N] bool/int.

  Returns:
    dict of [B, N] arrays: "is_answer" bool (column holds an intermediate
    answer), "value" int32 (its number, -1 elsewhere), "attempt" int32
    (number of "check" tokens before it), "step" int32 (index of the step
    within its attempt).
  """
  tokens = jnp.asarray(response_tokens, jnp.int32)
  body = response_body(tokens, response_mask)
  values = _values(tokens)
  prev_now = jnp.concatenate([jnp.zeros_like(tokens[:, :1], bool), (tokens[:, :-1] == NOW_ID) & body[:, :-1]], axis=1)
  is_answer = prev_now & body & (values >= 0)
  is_check = (tokens == CHECK_ID) & body
  attempt = jnp.cumsum(is_check.astype(jnp.int32), axis=1)
  is_now = (tokens == NOW_ID) & body
  now_count = jnp.cumsum(is_now.astype(jnp.int32), axis=1)
  at_last_check = jax.lax.cummax(jnp.where(is_check, now_count, 0), axis=1)
  step = now_count - at_last_check - 1
  return {
    "is_answer": is_answer,
    "value": jnp.where(is_answer, values, -1),
    "attempt": attempt,
    "step": jnp.where(is_answer, step, -1),
  }


# Jitted: one compiled program per shape instead of dozens of eager ops.
@jax.jit
def true_values(prompt_tokens: Array, prompt_mask: Array) -> tuple[Array, Array]:
  """The exact intermediate values of each prompt's program.

  Reads the masked prompt tokens in order (any padding; BOS optional):
  "with X" sets the value, "add X" / "minus X" / "double" apply an
  operation.

  Returns:
    (values [B, MAX_OPS] int32, value after op i (-1 past num_ops),
    num_ops [B] int32).
  """
  tokens = jnp.asarray(prompt_tokens, jnp.int32)
  mask = jnp.asarray(prompt_mask).astype(bool)
  batch = tokens.shape[0]

  def step(carry, xs):
    value, prev, n, out = carry
    tok, m = xs
    num = _values(tok)
    is_num = num >= 0
    new_value = jnp.where(is_num & (prev == WITH_ID), num, value)
    applied = is_num & ((prev == ADD_ID) | (prev == MINUS_ID))
    new_value = jnp.where(is_num & (prev == ADD_ID), value + num, new_value)
    new_value = jnp.where(is_num & (prev == MINUS_ID), value - num, new_value)
    is_double = tok == DOUBLE_ID
    new_value = jnp.where(is_double, 2 * value, new_value)
    applied = (applied | is_double) & m
    new_value = jnp.where(m, new_value, value)
    slot = jax.nn.one_hot(jnp.minimum(n, MAX_OPS), MAX_OPS + 1, dtype=bool)[:, :MAX_OPS] & applied[:, None]
    out = jnp.where(slot, new_value[:, None], out)
    n = n + applied.astype(jnp.int32)
    prev = jnp.where(m, tok, prev)
    return (new_value, prev, n, out), None

  init = (
    jnp.zeros((batch,), jnp.int32),
    jnp.full((batch,), -1, jnp.int32),
    jnp.zeros((batch,), jnp.int32),
    jnp.full((batch, MAX_OPS), -1, jnp.int32),
  )
  (_, _, n, out), _ = jax.lax.scan(step, init, (tokens.T, mask.T))
  return out, jnp.minimum(n, MAX_OPS)


# Jitted: one compiled program per shape instead of dozens of eager ops.
@jax.jit
def true_answer(prompt_tokens: Array, prompt_mask: Array) -> Array:
  """[B] int32 exact final answer of each prompt (-1 for a prompt with no operation)."""
  values, n = true_values(prompt_tokens, prompt_mask)
  return jnp.where(n > 0, jnp.take_along_axis(values, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0], -1)


# Jitted: one compiled program per shape instead of dozens of eager ops.
@jax.jit
def correctness_reward(prompt_tokens: Array, prompt_mask: Array, response_tokens: Array, response_mask: Array) -> Array:
  """[B] float32: 1 iff the response's final answer is the exact answer (the labelled reward)."""
  answer, _ = final_answer(response_tokens, response_mask)
  truth = true_answer(prompt_tokens, prompt_mask)
  return ((answer == truth) & (truth >= 0)).astype(jnp.float32)


# Jitted: one compiled program per shape instead of dozens of eager ops.
@jax.jit
def intermediate_labels(
  prompt_tokens: Array, prompt_mask: Array, response_tokens: Array, response_mask: Array
) -> dict[str, Array]:
  """`intermediate_answers` plus "correct" and "candidate" ([B, N] bool).

  correct: the intermediate answer equals the true value after step+1
  operations (a step past the last operation is never correct).
  candidate: the attempt's last step (its candidate final answer).
  """
  out = intermediate_answers(response_tokens, response_mask)
  values, n = true_values(prompt_tokens, prompt_mask)
  step = out["step"]
  in_range = out["is_answer"] & (step >= 0) & (step < n[:, None])
  truth = jnp.take_along_axis(values, jnp.clip(step, 0, MAX_OPS - 1), axis=1)
  out["correct"] = in_range & (out["value"] == truth)
  out["candidate"] = out["is_answer"] & (step == n[:, None] - 1)
  return out
