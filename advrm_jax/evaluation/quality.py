"""Automatic quality checks of responses: what an adversary's answers look like.

Real text has no gold reward, so after an attack on your own RM the question
"what did the adversary find?" is answered by reading its answers and by
cheap automatic checks of the failure modes reward hacking tends to produce:

* repetition: ``repeated_ngram_fraction`` (rep-n of Welleck et al. 2019:
  the share of word n-grams that repeat an earlier one) and ``longest_run``
  (the longest run of one token, or word);
* ``missing_final_punctuation``: the answer stops mid-sentence;
* copying the prompt: ``prompt_copy_fraction`` (share of the answer's word
  n-grams found in the prompt) and ``longest_prompt_span`` (longest verbatim
  run of prompt words);
* ``num_words``: empty and near-empty answers;
* ``response_perplexity``: how likely the reference policy finds the answer
  (exp of the mean token NLL given the prompt), with the package's own
  transformer forward, jitted once per shape.

The text checks are pure Python on strings (or token-id sequences);
``text_quality`` bundles them for one response and ``quality_flags`` turns
them into short labels for a report (``pipelines/inspect_stage.py``).

Words are lower-cased runs of letters/digits (apostrophes inside a word
kept), so punctuation and spacing never make two otherwise equal n-grams
differ.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
import re
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.models.lm import token_logprobs_from_logits
from advrm_jax.rl.sampler import concat_prompt_response, left_align

# A response that ends in one of these (after stripping whitespace) ends a
# sentence: terminal punctuation (Latin, CJK, ellipsis), or a closing
# quote/bracket/code fence after which a sentence may legitimately stop.
FINAL_PUNCTUATION = frozenset(".!?…。！？" + "\"'”’»)]}`")

_WORD = re.compile(r"\w+(?:['’]\w+)*")

# quality_flags defaults: what counts as a problem worth a label.
MAX_REPEATED_FRACTION = 0.3
MAX_RUN = 4
MAX_COPY_FRACTION = 0.5
MIN_COPY_SPAN = 8
MIN_WORDS = 3


# ----------------------------------------------------------------------------
# Text checks.
# ----------------------------------------------------------------------------


def words(text: str) -> list[str]:
  """The lower-cased words of ``text`` (punctuation dropped)."""
  return _WORD.findall(text.lower())


def _as_items(value: str | Sequence[Hashable]) -> list[Hashable]:
  return words(value) if isinstance(value, str) else list(value)


def ngrams(items: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
  """Every contiguous n-gram of ``items``, in order (none when there are fewer than n)."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]


def num_words(text: str) -> int:
  """Number of words in ``text`` (0 for an empty or punctuation-only response)."""
  return len(words(text))


def repeated_ngram_fraction(response: str | Sequence[Hashable], n: int = 3) -> float:
  """Share of the response's n-grams that repeat an earlier one: ``1 - distinct / total``.

  Args:
    response: text (split into words) or a sequence of tokens.
    n: n-gram length.

  Returns:
    0.0 without repetition (or with fewer than n words), approaching 1.0 for
    a response that loops. "a b c a b c" has 4 word 3-grams, 3 distinct:
    0.25.
  """
  grams = ngrams(_as_items(response), n)
  if not grams:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)


def longest_run(sequence: str | Sequence[Hashable]) -> int:
  """Length of the longest run of one repeated item (token ids, or the words of a text); 0 when empty."""
  best, run, previous = 0, 0, object()
  for item in _as_items(sequence):
    run = run + 1 if item == previous else 1
    previous = item
    best = max(best, run)
  return best


def missing_final_punctuation(text: str) -> bool:
  """Whether ``text`` (whitespace stripped) does not end in . ! ? … or a closing quote/bracket.

  An empty response has no final punctuation either: True.
  """
  stripped = text.rstrip()
  return not stripped or stripped[-1] not in FINAL_PUNCTUATION


def prompt_copy_fraction(response: str, prompt: str, n: int = 3) -> float:
  """Share of the response's word n-grams (with repeats) that occur in the prompt.

  0.0 when the response has fewer than n words.
  """
  grams = ngrams(words(response), n)
  if not grams:
    return 0.0
  prompt_grams = set(ngrams(words(prompt), n))
  return sum(g in prompt_grams for g in grams) / len(grams)


def longest_prompt_span(response: str, prompt: str) -> int:
  """Length in words of the longest run of words the response copies verbatim from the prompt."""
  response_words, prompt_words = words(response), words(prompt)
  positions: dict[str, list[int]] = {}
  for j, word in enumerate(prompt_words):
    positions.setdefault(word, []).append(j)
  # Longest common substring over words, keeping only the prompt positions
  # that match (sparse, so long prompts cost little).
  best, previous = 0, {}
  for word in response_words:
    current = {j: previous.get(j - 1, 0) + 1 for j in positions.get(word, ())}
    if current:
      best = max(best, max(current.values()))
    previous = current
  return best


def text_quality(
  response: str,
  prompt: str,
  tokens: Sequence[Hashable] | None = None,
  *,
  n: int = 3,
  min_copy_span: int = MIN_COPY_SPAN,
  min_words: int = MIN_WORDS,
) -> dict[str, Any]:
  """Every text check of one response.

  Args:
    response: the response text (decoded, EOS dropped).
    prompt: the prompt text it answers (its content, without a chat template).
    tokens: the response's token ids (EOS dropped); ``longest_run`` counts
      tokens when given, words otherwise.
    n: n-gram length of the repetition and copying checks.
    min_copy_span: a verbatim run of this many prompt words is "copying the
      prompt".
    min_words: fewer words than this is "near-empty".

  Returns:
    {"num_words", "empty", "near_empty", "repeated_ngram_fraction",
    "longest_run", "missing_final_punctuation", "prompt_copy_fraction",
    "longest_prompt_span", "copies_prompt"}.
  """
  count = num_words(response)
  span = longest_prompt_span(response, prompt)
  return {
    "num_words": count,
    "empty": count == 0,
    "near_empty": count < min_words,
    "repeated_ngram_fraction": repeated_ngram_fraction(response, n),
    "longest_run": longest_run(response if tokens is None else tokens),
    "missing_final_punctuation": missing_final_punctuation(response),
    "prompt_copy_fraction": prompt_copy_fraction(response, prompt, n),
    "longest_prompt_span": span,
    "copies_prompt": span >= min_copy_span,
  }


def quality_flags(
  metrics: dict[str, Any],
  *,
  max_repeated_fraction: float = MAX_REPEATED_FRACTION,
  max_run: int = MAX_RUN,
  max_copy_fraction: float = MAX_COPY_FRACTION,
  perplexity_limit: float | None = None,
) -> list[str]:
  """Short labels of what looks wrong with a response, from ``text_quality`` metrics.

  Args:
    metrics: ``text_quality`` output, optionally with "has_eos" (False: the
      response hit the length limit) and "perplexity".
    max_repeated_fraction: "repetitive" above this repeated n-gram share ...
    max_run: ... or with a run of at least this many identical tokens.
    max_copy_fraction: "copies prompt" above this share of copied n-grams
      (or with a long verbatim span, ``metrics["copies_prompt"]``).
    perplexity_limit: "high perplexity" above it (None: not checked).

  Returns:
    A subset of "empty", "near-empty", "repetitive", "no final punctuation",
    "copies prompt", "no EOS", "high perplexity", in that order.
  """
  flags = []
  if metrics["empty"]:
    flags.append("empty")
  elif metrics["near_empty"]:
    flags.append("near-empty")
  if metrics["repeated_ngram_fraction"] > max_repeated_fraction or metrics["longest_run"] >= max_run:
    flags.append("repetitive")
  if metrics["missing_final_punctuation"] and not metrics["empty"]:
    flags.append("no final punctuation")
  if metrics["copies_prompt"] or metrics["prompt_copy_fraction"] > max_copy_fraction:
    flags.append("copies prompt")
  if metrics.get("has_eos") is False:
    flags.append("no EOS")
  perplexity = metrics.get("perplexity")
  if (
    perplexity_limit is not None
    and perplexity is not None
    and np.isfinite(perplexity)
    and perplexity > perplexity_limit
  ):
    flags.append("high perplexity")
  return flags


# ----------------------------------------------------------------------------
# Perplexity under a policy.
# ----------------------------------------------------------------------------


def _lm_head(model: Any, hidden: jax.Array) -> jax.Array:
  # The transformer's own head (Transformer.__call__), applied to the
  # response columns only: logits of every column would be [B, P + N, V]
  # float32, gigabytes at real vocabulary sizes.
  cfg = model.cfg
  if cfg.tie_embeddings:
    head = model.embed[...].astype(cfg.jnp_dtype).T
  else:
    head = model.lm_head[...].astype(cfg.jnp_dtype)
  return jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)


def response_nll(
  graphdef: nnx.GraphDef,
  params: Any,
  prompt_tokens: jax.Array,
  prompt_mask: jax.Array,
  response_tokens: jax.Array,
  response_mask: jax.Array,
) -> jax.Array:
  """Mean negative log-likelihood per response token, given the prompt: [B] float32.

  Pure (jit it once: ``response_nll_jit``).

  Args:
    graphdef, params: the policy transformer.
    prompt_tokens: [B, P] prompts with any padding; prompt_mask [B, P].
    response_tokens: [B, N]; response_mask [B, N] True on the response's
      tokens (an EOS included when the mask includes it), a prefix of the
      row as the sampler writes it.

  Returns:
    ``-mean log p(y_t | x, y_<t)`` over each row's masked response tokens,
    at temperature 1; NaN for a row without response tokens.
  """
  prompt_len = prompt_tokens.shape[1]
  # The sampler's layout: each prompt's last real token in column P - 1, so
  # response token t sits in column P + t and is predicted from column P + t - 1
  # (positions come from the mask, so padding shifts nothing).
  prompt_tokens, prompt_mask = left_align(prompt_tokens, prompt_mask)
  tokens, mask = concat_prompt_response(prompt_tokens, prompt_mask, response_tokens, response_mask, left_pad=False)
  model = nnx.merge(graphdef, params)
  hidden = model(tokens, mask, compute_logits=False).hidden[:, prompt_len - 1 : -1]
  logprobs = token_logprobs_from_logits(_lm_head(model, hidden), tokens[:, prompt_len:])
  weights = jnp.asarray(response_mask).astype(jnp.float32)
  count = weights.sum(axis=1)
  total = -(logprobs * weights).sum(axis=1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


# Replicated on the policy's mesh: every host of a multi-process job reads the NLLs whole.
response_nll_jit = shd.jit_host_readable(response_nll, static_argnames=("graphdef",))


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  if array.shape[0] == rows:
    return array
  return np.concatenate([array, np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)])


def response_perplexity(
  graphdef: nnx.GraphDef,
  params: Any,
  prompt_tokens: np.ndarray,
  prompt_mask: np.ndarray,
  response_tokens: np.ndarray,
  response_mask: np.ndarray,
  batch_size: int = 16,
) -> np.ndarray:
  """Perplexity of each response under the policy, ``exp(response_nll)``: [N] numpy.

  Rows go through ``response_nll_jit`` in chunks of ``batch_size`` (the last
  one padded), so one compilation serves every call with the same widths.
  NaN for a row without response tokens.
  """
  num_rows = prompt_tokens.shape[0]
  out = []
  for start in range(0, num_rows, batch_size):
    rows = min(batch_size, num_rows - start)
    chunk = slice(start, start + batch_size)
    p_tokens = _pad_rows(np.asarray(prompt_tokens[chunk], np.int32), batch_size)
    p_mask = _pad_rows(np.asarray(prompt_mask[chunk], bool), batch_size)
    p_mask[rows:, -1] = True  # pad rows get one real token (no all-masked row)
    r_tokens = _pad_rows(np.asarray(response_tokens[chunk], np.int32), batch_size)
    r_mask = _pad_rows(np.asarray(response_mask[chunk], bool), batch_size)
    nll = response_nll_jit(graphdef, params, p_tokens, p_mask, r_tokens, r_mask)
    out.append(np.asarray(jax.device_get(nll))[:rows])
  if not out:
    return np.zeros((0,), np.float32)
  return np.exp(np.concatenate(out).astype(np.float64)).astype(np.float32)
