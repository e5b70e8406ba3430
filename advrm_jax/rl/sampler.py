"""Autoregressive sampling with a KV cache, as a pure jittable function.

Modelled on google-deepmind/gemma's sampler: the whole decode loop runs
inside ``jax.jit`` as a ``jax.lax.while_loop`` over a pytree state, so one
compiled program serves every call with the same shapes and config, and the
function can sit inside a larger jitted RL iteration.

Pipeline of :func:`sample`:

1. Left-align the prompts (:func:`left_align`): each row is rolled so that its
   last real token sits in the last column. The KV cache has a single write
   index shared by all rows, so every row must end at the same slot; the
   transformer derives positions from the mask, so left padding does not
   shift positions.
2. Prefill: the first ``P - 1`` prompt tokens in one call with
   ``compute_logits=False`` (full-prompt logits would be [B, P, V] float32,
   gigabytes at real vocabulary sizes, and only the last column is needed).
3. Decode: each ``while_loop`` step feeds one token through the cache (the
   last prompt column at step 0, then the previously sampled token), samples
   the next token from the resulting logits (temperature, top-k, top-p; a
   static greedy branch when ``temperature == 0``) and records it. The loop
   stops when every row is finished (EOS or its length budget) or after
   ``max_new_tokens`` tokens. The last sampled token is never fed back, so
   the cache holds ``P + max_new_tokens - 1`` slots. All model calls go
   through the model's own ``__call__``, so the numerics are the model's.

Log-probabilities. Three per-token log-probs of the chosen token are
returned, all [B, N] float32 and 0 outside ``response_mask``:

* ``logprobs``: ``log_softmax(logits / temperature)``, *before* top-k/top-p
  filtering (temperature 1 when greedy). This is the convention of
  verl/OpenRLHF: the trainer recomputes log-probs with logits divided by the
  same temperature, so PPO ratios start at exactly 1. With temperature 1 this
  is the model's plain distribution.
* ``plain_logprobs``: ``log_softmax(logits)``, the model at temperature 1,
  whatever the sampling temperature (e.g. for a KL to the reference model).
* ``sampling_logprobs``: the log-prob under the distribution actually sampled
  from (tempered, then top-k/top-p filtered and renormalised); 0 when greedy.
  Use it for exact importance weights of off-policy corrections.

Typical use::

  config = SamplingConfig(max_new_tokens=64, temperature=1.0, eos_id=2, pad_id=0)
  out = generate(model, prompt_tokens, prompt_mask, jax.random.key(0), config)
  tokens, mask = concat_prompt_response(out.prompt_tokens, out.prompt_mask,
                                        out.tokens, out.response_mask)

Inside a jitted RL step, use ``graphdef, params = nnx.split(model)`` once and
call :func:`sample` directly (``config`` and ``graphdef`` static).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.models.transformer import KVCache
from advrm_jax.models.transformer import init_cache

Array = jax.Array


LAYER_SLICINGS = ("auto", "once", "in_loop")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static sampling options (frozen, so hashable: a static jit argument).

  Attributes:
    max_new_tokens: N, the number of response columns (per-row budgets can be
      smaller, see ``max_new_tokens_per_row`` of :func:`sample`).
    temperature: softmax temperature; 0 means greedy (argmax, no randomness).
    top_k: keep only the k largest logits; 0 (or >= vocab) disables it.
    top_p: nucleus sampling; keep the smallest set of most likely tokens
      whose tempered (and top-k-filtered) probability mass is >= top_p; 1.0
      disables it.
    eos_id: token id(s) that end a response (an int or a tuple of ints, e.g.
      Llama-3's end-of-text and end-of-turn); None means never stop early.
    pad_id: id written after a row has finished and used for prompt padding.
    layer_slicing: how the decode loop reads the stacked layer weights. "once": per-layer weights sliced
      before the loop (a second copy of the weights while sampling; XLA:CPU would otherwise copy every
      slice at every step); "in_loop": sliced in place at each step (the weights stay in memory once;
      TPU/GPU compilers fuse the slices into the matmuls that read them); "auto": "once" on CPU,
      "in_loop" elsewhere (``resolve_layer_slicing``). The same tokens either way.
  """

  max_new_tokens: int = 32
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int | tuple[int, ...] | None = None
  pad_id: int = 0
  layer_slicing: str = "auto"

  def __post_init__(self):
    if self.layer_slicing not in LAYER_SLICINGS:
      raise ValueError(f"sampling.layer_slicing must be one of {LAYER_SLICINGS}, got {self.layer_slicing!r}")
    if self.max_new_tokens < 1:
      raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
    # Normalise lists / numpy ints so the config stays a hashable static arg.
    if isinstance(self.eos_id, (int, np.integer)):
      object.__setattr__(self, "eos_id", int(self.eos_id))
    elif self.eos_id is not None:
      object.__setattr__(self, "eos_id", tuple(int(e) for e in self.eos_id))

  @property
  def greedy(self) -> bool:
    """True when temperature is 0 (argmax decoding)."""
    return self.temperature == 0

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """The end-of-sequence ids as a tuple (empty when ``eos_id`` is None)."""
    if self.eos_id is None:
      return ()
    if isinstance(self.eos_id, int):
      return (self.eos_id,)
    return self.eos_id

  def replace(self, **changes) -> "SamplingConfig":
    """A copy with the given fields changed (validated again)."""
    return dataclasses.replace(self, **changes)


def resolve_layer_slicing(config: SamplingConfig) -> str:
  """``config.layer_slicing``, "auto" decided by the backend: in Python at trace time, never from a traced value."""
  if config.layer_slicing != "auto":
    return config.layer_slicing
  return "once" if jax.default_backend() == "cpu" else "in_loop"


class SampleOutput(NamedTuple):
  """Result of :func:`sample`. B rows, N = max_new_tokens, P = prompt length.

  Attributes:
    tokens: [B, N] int32 response tokens; pad_id after a row has finished.
    logprobs: [B, N] float32 log softmax(logits / temperature) of each token,
      before top-k/top-p (temperature 1 when greedy); 0 where masked.
    plain_logprobs: [B, N] float32 log softmax(logits) (temperature 1).
    sampling_logprobs: [B, N] float32 log-prob under the filtered distribution
      actually sampled from; 0 when greedy.
    response_mask: [B, N] bool, True on real response tokens including the EOS
      token. Always a prefix of each row.
    lengths: [B] int32 number of real response tokens.
    has_eos: [B] bool, the row ended with an EOS token (False when it ran
      out of budget).
    prompt_tokens: [B, P] int32 left-aligned prompts (pad_id on padding).
    prompt_mask: [B, P] bool, the left-aligned prompt mask.
  """

  tokens: Array
  logprobs: Array
  plain_logprobs: Array
  sampling_logprobs: Array
  response_mask: Array
  lengths: Array
  has_eos: Array
  prompt_tokens: Array
  prompt_mask: Array


class _LoopState(NamedTuple):
  """Decode-loop carry; every leaf is an array so it is a valid pytree."""

  step: Array  # [] int32, index of the token sampled next
  cache: KVCache
  inputs: Array  # [B] int32, token to feed at this step
  input_mask: Array  # [B] bool, whether that token is real
  done: Array  # [B] bool, row finished before `step`
  tokens: Array  # [B, N] int32
  logprobs: Array  # [B, N] float32
  plain_logprobs: Array  # [B, N] float32
  sampling_logprobs: Array  # [B, N] float32
  mask: Array  # [B, N] bool
  has_eos: Array  # [B] bool


def left_align(tokens: Array, mask: Array, pad_id: int = 0) -> tuple[Array, Array]:
  """Rolls each row right so that its last real token is in the last column.

  Works for left-, right- or both-side padding (and keeps interior holes
  as they are); positions in the transformer come from the mask, so the
  roll does not change what the model computes for real tokens.

  Args:
    tokens: [B, T] int token ids.
    mask: [B, T] bool/int, 1 on real tokens.
    pad_id: written at every masked slot.

  Returns:
    (tokens [B, T] int32, mask [B, T] bool), left-padded.
  """
  mask = jnp.asarray(mask).astype(bool)
  tokens = jnp.asarray(tokens, jnp.int32)
  length = tokens.shape[1]
  cols = jnp.arange(length)
  last = jnp.max(jnp.where(mask, cols[None], -1), axis=1)  # [B]; -1 if empty
  shift = (length - 1 - last) % length  # empty rows: 0
  src = (cols[None, :] - shift[:, None]) % length  # out[j] = in[j - shift]
  tokens = jnp.take_along_axis(tokens, src, axis=1)
  mask = jnp.take_along_axis(mask, src, axis=1)
  return jnp.where(mask, tokens, pad_id), mask


def concat_prompt_response(
  prompt_tokens: Array,
  prompt_mask: Array,
  response_tokens: Array,
  response_mask: Array,
  pad_id: int = 0,
  left_pad: bool = True,
) -> tuple[Array, Array]:
  """Full sequences ``prompt + response`` for scoring and training.

  Args:
    prompt_tokens: [B, P] int prompt tokens (any padding).
    prompt_mask: [B, P] bool/int.
    response_tokens: [B, N] int.
    response_mask: [B, N] bool/int.
    pad_id: written at every masked slot.
    left_pad: (static) if True (default) the result is left-padded: the last
      real token of every row is in the last column, convenient for reward
      models that read the final position. If False, the arrays are simply
      concatenated; with the sampler's left-aligned prompts the response then
      occupies columns ``P .. P + N - 1`` exactly, so the log-probs of the
      response tokens are ``log_softmax(logits[:, P - 1 : P + N - 1])``
      gathered at ``response_tokens`` -- the layout a PPO trainer wants.

  Returns:
    (tokens [B, P + N] int32, mask [B, P + N] bool).
  """
  tokens = jnp.concatenate([jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(response_tokens, jnp.int32)], axis=1)
  mask = jnp.concatenate([jnp.asarray(prompt_mask).astype(bool), jnp.asarray(response_mask).astype(bool)], axis=1)
  if left_pad:
    return left_align(tokens, mask, pad_id)
  return jnp.where(mask, tokens, pad_id), mask


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Top-k then top-p (nucleus) filtering; removed entries become -inf.

  Ties at a threshold are kept (so slightly more than k tokens may survive
  when logits tie exactly), which keeps the op a cheap comparison instead of
  a scatter.

  Args:
    logits: [..., V] float (already divided by the temperature).
    top_k: (static) keep the k largest logits; 0 or >= V disables.
    top_p: (static) keep the smallest set of most likely tokens whose
      probability (after top-k) sums to >= top_p; 1.0 disables.

  Returns:
    [..., V] float32 logits with removed entries set to -inf.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  use_k = 0 < top_k < vocab
  if not use_k and top_p >= 1.0:
    return logits
  neg_inf = jnp.array(-jnp.inf, jnp.float32)
  if use_k:
    # top_k values come out sorted in descending order; reuse them for top-p
    # so the nucleus needs a sort over k entries instead of V.
    sorted_logits = jax.lax.top_k(logits, top_k)[0]
    logits = jnp.where(logits < sorted_logits[..., -1:], neg_inf, logits)
  else:
    sorted_logits = -jnp.sort(-logits, axis=-1)
  if top_p < 1.0:
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep token i iff the mass strictly before it is < p: the smallest
    # prefix whose mass reaches p (the most likely token is always kept).
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_logits, num_keep - 1, axis=-1)
    logits = jnp.where(logits < threshold, neg_inf, logits)
  return logits


def _gather(x: Array, idx: Array) -> Array:
  return jnp.take_along_axis(x, idx[:, None], axis=-1)[:, 0]


def _choose(logits: Array, rng: Array, config: SamplingConfig):
  """Picks one token per row from [B, V] logits.

  Returns:
    token [B] int32, logprob, plain_logprob, sampling_logprob (each [B] f32).
  """
  logits = logits.astype(jnp.float32)
  plain = jax.nn.log_softmax(logits, axis=-1)
  if config.greedy:
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    lp = _gather(plain, token)
    return token, lp, lp, jnp.zeros_like(lp)
  scaled = logits / config.temperature
  filtered = filter_logits(scaled, config.top_k, config.top_p)
  token = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
  lp = _gather(jax.nn.log_softmax(scaled, axis=-1), token)
  sampling_lp = _gather(jax.nn.log_softmax(filtered, axis=-1), token)
  return token, lp, _gather(plain, token), sampling_lp


def sample(
  graphdef: nnx.GraphDef,
  params: nnx.State,
  prompt_tokens: Array,
  prompt_mask: Array,
  rng: Array,
  config: SamplingConfig,
  max_new_tokens_per_row: Array | None = None,
) -> SampleOutput:
  """Samples responses; pure, so it can be jitted, vmapped or sharded.

  Every row needs at least one real prompt token (the first response token
  is predicted from the last one).

  Args:
    graphdef: (static) from ``nnx.split(model)`` of a ``Transformer``.
    params: the matching state (all of the model's variables).
    prompt_tokens: [B, P] int prompts, left- or right-padded.
    prompt_mask: [B, P] bool/int, 1 on real prompt tokens.
    rng: a PRNG key; token t of the loop uses ``fold_in(rng, t)``. Ignored
      when greedy.
    config: (static) a SamplingConfig.
    max_new_tokens_per_row: optional [B] int budget per row (clipped to
      ``config.max_new_tokens``); a row that reaches it stops without EOS.

  Returns:
    A SampleOutput (see its docstring for shapes and the log-prob variants).
  """
  model = nnx.merge(graphdef, params)
  batch, prompt_len = prompt_tokens.shape
  n = config.max_new_tokens
  cache_len = prompt_len + n - 1
  cfg = model.cfg
  if cfg.arch == "gpt2" and cache_len > cfg.max_seq_len:
    # Learned positions: jnp.take would silently clamp out-of-range positions.
    raise ValueError(f"prompt length {prompt_len} + max_new_tokens {n} - 1 exceeds model.max_seq_len {cfg.max_seq_len}")
  pad_id = config.pad_id
  prompt_tokens, prompt_mask = left_align(prompt_tokens, prompt_mask, pad_id)
  if max_new_tokens_per_row is None:
    budget = jnp.full((batch,), n, jnp.int32)
  else:
    budget = jnp.minimum(jnp.asarray(max_new_tokens_per_row, jnp.int32), n)

  # Prefill all but the last prompt column, without the LM head. Every row
  # now ends in the last column, so feeding that column as the loop's first
  # input yields every row's first-token logits; the model is then inlined
  # only twice in the compiled program (prefill + loop body).
  cache = init_cache(cfg, batch, cache_len)
  # XLA:CPU materialises every slice of the stacked layer weights, so there
  # the decode loop gets per-layer weights sliced once, here, at the cost of
  # a second copy of the weights while sampling (sliced inside the loop body,
  # they would be copied at every step). TPU/GPU compilers fuse such slices
  # into the matmuls that read them, so there the loop slices in place and
  # the weights stay in memory once (not measured here: no accelerator).
  layers = model.unstacked_layers() if resolve_layer_slicing(config) == "once" else None
  if prompt_len > 1:
    cache = model(prompt_tokens[:, :-1], prompt_mask[:, :-1], cache=cache, compute_logits=False).cache
  eos_ids = jnp.asarray(config.eos_ids, jnp.int32)

  def cond(state: _LoopState) -> Array:
    return (state.step < n) & ~jnp.all(state.done)

  def body(state: _LoopState) -> _LoopState:
    """Forwards the previous token, samples token `step` and writes it."""
    out = model(state.inputs[:, None], state.input_mask[:, None], cache=state.cache, layers=layers)
    token, lp, plain_lp, sampling_lp = _choose(out.logits[:, -1], jax.random.fold_in(rng, state.step), config)
    active = ~state.done & (state.step < budget)
    is_eos = jnp.isin(token, eos_ids) if config.eos_ids else jnp.zeros_like(active)
    done = state.done | (active & is_eos) | (state.step + 1 >= budget)
    zero = jnp.zeros_like(lp)

    def put(buf, value):
      return jax.lax.dynamic_update_slice(buf, value[:, None], (0, state.step))

    return _LoopState(
      step=state.step + 1,
      cache=out.cache,
      # Finished rows feed a masked pad, so their cache mask only ever
      # covers real tokens.
      inputs=jnp.where(done, pad_id, token),
      input_mask=~done,
      done=done,
      tokens=put(state.tokens, jnp.where(active, token, pad_id)),
      logprobs=put(state.logprobs, jnp.where(active, lp, zero)),
      plain_logprobs=put(state.plain_logprobs, jnp.where(active, plain_lp, zero)),
      sampling_logprobs=put(state.sampling_logprobs, jnp.where(active, sampling_lp, zero)),
      mask=put(state.mask, active),
      has_eos=state.has_eos | (active & is_eos),
    )

  zeros_f = jnp.zeros((batch, n), jnp.float32)
  state = _LoopState(
    step=jnp.zeros((), jnp.int32),
    cache=cache,
    inputs=prompt_tokens[:, -1],
    input_mask=prompt_mask[:, -1],
    done=budget <= 0,
    tokens=jnp.full((batch, n), pad_id, jnp.int32),
    logprobs=zeros_f,
    plain_logprobs=zeros_f,
    sampling_logprobs=zeros_f,
    mask=jnp.zeros((batch, n), bool),
    has_eos=jnp.zeros((batch,), bool),
  )
  # N forwards at most (the last sampled token is never fed back); stops as
  # soon as every row is finished.
  state = jax.lax.while_loop(cond, body, state)

  return SampleOutput(
    tokens=state.tokens,
    logprobs=state.logprobs,
    plain_logprobs=state.plain_logprobs,
    sampling_logprobs=state.sampling_logprobs,
    response_mask=state.mask,
    lengths=jnp.sum(state.mask, axis=1, dtype=jnp.int32),
    has_eos=state.has_eos,
    prompt_tokens=prompt_tokens,
    prompt_mask=prompt_mask,
  )


# One compiled program per (mesh, graphdef, config, shapes); params, prompts and
# rng are traced, so new weights or prompts never retrace. Outputs replicated on
# the params' mesh (params on none: a plain jit), so every host of a
# multi-process job reads the samples whole; every caller shares this one jit.
sample_jit = shd.jit_host_readable(sample, static_argnames=("graphdef", "config"))


# `sample`'s arguments with the module in place of (graphdef, params), by design: a convenience form of it.
def generate(
  model: nnx.Module,
  prompt_tokens: Array,
  prompt_mask: Array,
  rng: Array,
  config: SamplingConfig,
  max_new_tokens_per_row: Array | None = None,
) -> SampleOutput:
  """Convenience wrapper: splits ``model`` and calls the jitted :func:`sample`.

  The split happens on every call so updated weights are always used; it
  does not retrace (the graphdef is unchanged and hashes equal).
  """
  graphdef, params = nnx.split(model)
  return sample_jit(graphdef, params, prompt_tokens, prompt_mask, rng, config, max_new_tokens_per_row)


class Sampler:
  """Holds a model and a SamplingConfig; ``sampler(prompts, mask, rng)``."""

  def __init__(self, model: nnx.Module, config: SamplingConfig):
    self.model = model
    self.config = config

  def __call__(
    self,
    prompt_tokens: Array,
    prompt_mask: Array,
    rng: Array | None = None,
    max_new_tokens_per_row: Array | None = None,
  ) -> SampleOutput:
    if rng is None:
      if not self.config.greedy:
        raise ValueError("Sampler: an rng key is required unless temperature == 0")
      rng = jax.random.key(0)
    return generate(self.model, prompt_tokens, prompt_mask, rng, self.config, max_new_tokens_per_row)


__all__: Sequence[str] = (
  "LAYER_SLICINGS",
  "SamplingConfig",
  "SampleOutput",
  "sample",
  "sample_jit",
  "resolve_layer_slicing",
  "generate",
  "Sampler",
  "left_align",
  "concat_prompt_response",
  "filter_logits",
)
