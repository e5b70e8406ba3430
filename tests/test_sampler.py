"""Tests for advrm_jax.rl.sampler on tiny random Llama and GPT-2 models.

The models' weights are scaled up (x4-x8) from the default 0.02-std init so the
output distribution is far from uniform and depends on the whole context:
otherwise a cache bug that ignores earlier tokens could go unnoticed and the
chi-square tests would have no power.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.rl import sampler as S


def greedy_reference(model: nnx.Module, prompt_tokens: jax.Array, prompt_mask: jax.Array, n: int) -> np.ndarray:
  """Greedy decoding without a cache, recomputing the full forward each step.

  The test oracle of the cached sampler. Prompts are used as given (no
  re-alignment): a buffer of
  ``n`` masked columns is appended after the prompt, step t fills column
  ``P + t`` with mask 1, and the next token is read at each row's last real
  position. Not-yet-filled columns are masked and causally after every query
  that matters, so they change nothing; the fixed shape means one compile.

  Args:
    model: a Transformer.
    prompt_tokens: [B, P] int.
    prompt_mask: [B, P] bool/int.
    n: number of tokens to generate (no EOS handling).

  Returns:
    [B, n] int32 numpy array of greedy tokens.
  """
  graphdef, state = nnx.split(model)
  batch, prompt_len = prompt_tokens.shape
  tokens = jnp.concatenate([jnp.asarray(prompt_tokens, jnp.int32), jnp.zeros((batch, n), jnp.int32)], axis=1)
  mask = jnp.concatenate([jnp.asarray(prompt_mask).astype(bool), jnp.zeros((batch, n), bool)], axis=1)
  for t in range(n):
    nxt = _reference_next_token(graphdef, state, tokens, mask)
    tokens = tokens.at[:, prompt_len + t].set(nxt)
    mask = mask.at[:, prompt_len + t].set(True)
  return np.asarray(tokens[:, prompt_len:])


@functools.partial(jax.jit, static_argnums=0)
def _reference_next_token(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Full forward (no cache); argmax at each row's last real position. [B]."""
  logits = nnx.merge(graphdef, state)(tokens, mask).logits
  cols = jnp.arange(tokens.shape[1])
  last = jnp.max(jnp.where(mask, cols[None], -1), axis=1)
  last_logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
  return jnp.argmax(last_logits, axis=-1).astype(jnp.int32)


VOCAB = 64
PAD = 0
N_NEW = 8
# Real lengths of the test prompts (the batch is padded to max = 6).
LENGTHS = (6, 3, 1, 4)
NUM_DRAWS = 4000


@functools.cache
def _make_model(arch: str) -> Transformer:
  """One tiny model per architecture, shared by all tests (never mutated)."""
  cfg = ModelConfig(
    arch=arch,
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2 if arch == "llama" else 4,
    head_dim=8,
    d_ff=64,
    max_seq_len=64,
    tie_embeddings=False,
  )
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  # Larger weights than the 0.02-std init (see the module docstring). The
  # body is scaled less than the head: float32 rounding differences between
  # the cached and full forward grow with every layer's gain, and x8 on all
  # matrices pushes them past the 1e-5 log-prob tolerance.
  for name in ("embed", "pos_embed"):
    if hasattr(model, name):
      getattr(model, name)[...] *= 4.0
  for name, param in vars(model.layers).items():
    if isinstance(param, nnx.Param) and param[...].ndim >= 3:
      param[...] *= 4.0
  model.lm_head[...] *= 8.0
  return model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
  return _make_model(request.param)


@pytest.fixture(scope="module")
def llama():
  return _make_model("llama")


def _prompts(seed: int = 1):
  """Left- and right-padded versions of the same prompts, [B, P] each."""
  rng = np.random.default_rng(seed)
  width = max(LENGTHS)
  left = np.full((len(LENGTHS), width), PAD, np.int32)
  right = np.full_like(left, PAD)
  for row, n in enumerate(LENGTHS):
    toks = rng.integers(1, VOCAB, size=n)
    left[row, width - n :] = toks
    right[row, :n] = toks
  return (jnp.asarray(left), jnp.asarray(left != PAD)), (jnp.asarray(right), jnp.asarray(right != PAD))


@functools.partial(jax.jit, static_argnums=0)
def _jit_forward(graphdef, state, tokens, mask):
  return nnx.merge(graphdef, state)(tokens, mask).logits


def _forward(model, tokens, mask=None):
  """Full forward without a cache, jitted (eager scan would recompile per call)."""
  if mask is None:
    mask = jnp.ones_like(tokens, bool)
  graphdef, state = nnx.split(model)
  return _jit_forward(graphdef, state, tokens, mask)


def _response_logits(model, out):
  """Full-forward (no cache) logits predicting each response token: [B, N, V]."""
  tokens, mask = S.concat_prompt_response(
    out.prompt_tokens, out.prompt_mask, out.tokens, out.response_mask, pad_id=PAD, left_pad=False
  )
  prompt_len = out.prompt_tokens.shape[1]
  logits = _forward(model, tokens, mask)
  return np.asarray(logits[:, prompt_len - 1 : prompt_len - 1 + out.tokens.shape[1]], np.float64)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _take(x, tokens):
  return np.take_along_axis(x, np.asarray(tokens)[..., None], axis=-1)[..., 0]


# --------------------------------------------------------------------------
# Padding helpers.


def test_left_align_and_concat():
  tokens = jnp.array([[5, 6, 0, 0], [0, 0, 7, 8], [9, 0, 0, 0]])
  mask = tokens != 0
  aligned, amask = S.left_align(tokens, mask)
  np.testing.assert_array_equal(aligned, [[0, 0, 5, 6], [0, 0, 7, 8], [0, 0, 0, 9]])
  np.testing.assert_array_equal(amask, aligned != 0)

  resp = jnp.array([[1, 2, 0], [3, 0, 0], [0, 0, 0]])
  rmask = resp != 0
  full, fmask = S.concat_prompt_response(aligned, amask, resp, rmask)
  np.testing.assert_array_equal(full, [[0, 0, 0, 5, 6, 1, 2], [0, 0, 0, 0, 7, 8, 3], [0, 0, 0, 0, 0, 0, 9]])
  np.testing.assert_array_equal(fmask, full != 0)
  plain, _ = S.concat_prompt_response(aligned, amask, resp, rmask, left_pad=False)
  np.testing.assert_array_equal(plain[:, 4:], resp)


# --------------------------------------------------------------------------
# Greedy decoding with the cache vs. the no-cache reference.


def test_greedy_matches_no_cache_reference(model):
  config = S.SamplingConfig(max_new_tokens=N_NEW, temperature=0.0, pad_id=PAD)
  (left, lmask), (right, rmask) = _prompts()
  out_left = S.generate(model, left, lmask, jax.random.key(0), config)
  out_right = S.generate(model, right, rmask, jax.random.key(0), config)
  reference = greedy_reference(model, right, rmask, N_NEW)

  np.testing.assert_array_equal(out_left.tokens, reference)
  np.testing.assert_array_equal(out_right.tokens, reference)
  np.testing.assert_array_equal(greedy_reference(model, left, lmask, N_NEW), reference)
  # Both layouts are left-aligned to the same prompts.
  np.testing.assert_array_equal(out_right.prompt_tokens, left)
  np.testing.assert_array_equal(out_right.prompt_mask, lmask)
  assert np.all(out_left.response_mask) and np.all(out_left.lengths == N_NEW)
  assert not np.any(out_left.has_eos)

  # Log-probs equal log-softmax of the full-forward logits (temperature 1 when greedy).
  expected = _take(_log_softmax(_response_logits(model, out_right)), out_right.tokens)
  np.testing.assert_allclose(out_right.logprobs, expected, atol=1e-5)
  np.testing.assert_allclose(out_right.plain_logprobs, expected, atol=1e-5)
  np.testing.assert_array_equal(out_right.sampling_logprobs, 0.0)


def test_layer_slicing_is_the_callers_choice_and_gives_the_same_tokens(model):
  # Per-layer weights sliced once before the decode loop ("once", what "auto" picks on CPU) or sliced in
  # place at every step ("in_loop", what it picks on TPU/GPU): two programs, the no-cache reference's tokens.
  (left, lmask), _ = _prompts()
  reference = greedy_reference(model, left, lmask, N_NEW)
  assert S.resolve_layer_slicing(S.SamplingConfig()) == ("once" if jax.default_backend() == "cpu" else "in_loop")
  for slicing in ("once", "in_loop"):
    config = S.SamplingConfig(max_new_tokens=N_NEW, temperature=0.0, pad_id=PAD, layer_slicing=slicing)
    assert S.resolve_layer_slicing(config) == slicing
    np.testing.assert_array_equal(S.generate(model, left, lmask, jax.random.key(0), config).tokens, reference)
  with pytest.raises(ValueError, match=r"sampling.layer_slicing must be one of .*got 'fused'"):
    S.SamplingConfig(layer_slicing="fused")


def test_cached_forward_in_pieces_equals_the_full_forward(model):
  # A prefill into an empty cache, a second prefill into a partly filled one
  # (the scan over stacked layers) and one-token decode steps (the per-layer
  # loop, with and without precomputed per-layer weights) must give the logits
  # of one full forward over the whole left-padded sequence.
  (tokens, mask), _ = _prompts(seed=3)
  extra = jnp.asarray(np.random.default_rng(4).integers(1, VOCAB, (len(LENGTHS), 4)), jnp.int32)
  tokens = jnp.concatenate([tokens, extra], axis=1)
  mask = jnp.concatenate([mask, jnp.ones_like(extra, bool)], axis=1)
  expected = np.asarray(_forward(model, tokens, mask))

  cache = model.init_cache(tokens.shape[0], tokens.shape[1])
  layers = model.unstacked_layers()
  pieces = [(0, 4, None), (4, 8, None), (8, 9, None), (9, 10, layers)]
  got = []
  for start, stop, layer_arg in pieces:
    out = model(tokens[:, start:stop], mask[:, start:stop], cache=cache, layers=layer_arg)
    cache = out.cache
    got.append(np.asarray(out.logits))
  got = np.concatenate(got, axis=1)
  real = np.asarray(mask[:, :10])
  assert int(cache.index) == 10 and len(cache.keys) == model.cfg.num_layers
  np.testing.assert_allclose(got[real], expected[:, :10][real], atol=1e-4)


def test_sampled_logprobs_match_full_forward(llama):
  temperature, top_k, top_p = 0.7, 10, 0.9
  config = S.SamplingConfig(max_new_tokens=N_NEW, temperature=temperature, top_k=top_k, top_p=top_p, pad_id=PAD)
  _, (right, rmask) = _prompts(seed=2)
  out = S.generate(llama, right, rmask, jax.random.key(3), config)
  logits = _response_logits(llama, out)
  scaled = logits / temperature
  np.testing.assert_allclose(out.logprobs, _take(_log_softmax(scaled), out.tokens), atol=1e-5)
  np.testing.assert_allclose(out.plain_logprobs, _take(_log_softmax(logits), out.tokens), atol=1e-5)
  filtered = np.asarray(S.filter_logits(jnp.asarray(scaled, jnp.float32), top_k, top_p), np.float64)
  assert np.all(np.isfinite(_take(filtered, out.tokens))), "sampled a filtered-out token"
  np.testing.assert_allclose(out.sampling_logprobs, _take(_log_softmax(filtered), out.tokens), atol=1e-5)
  # Filtering can only raise a token's probability.
  assert np.all(np.asarray(out.sampling_logprobs) >= np.asarray(out.logprobs) - 1e-6)


# --------------------------------------------------------------------------
# Sampling distribution of the first response token.


def _first_token_draws(model, config, seed):
  """NUM_DRAWS first tokens for one fixed prompt, and that prompt's logits [V]."""
  prompt = jnp.array([[11, 22, 33, 44]], jnp.int32)
  tokens = jnp.tile(prompt, (NUM_DRAWS, 1))
  out = S.generate(model, tokens, jnp.ones_like(tokens, bool), jax.random.key(seed), config)
  logits = np.asarray(_forward(model, prompt)[0, -1], np.float64)
  return np.asarray(out.tokens[:, 0]), logits


def _chisquare_p(draws, probs):
  """Chi-square p-value, pooling bins with expected count < 5."""
  counts = np.bincount(draws, minlength=probs.size).astype(np.float64)
  expected = probs / probs.sum() * draws.size
  big = expected >= 5
  obs = list(counts[big])
  exp = list(expected[big])
  if (~big).any():
    small_obs, small_exp = counts[~big].sum(), expected[~big].sum()
    if small_exp >= 5:
      obs.append(small_obs)
      exp.append(small_exp)
    else:  # too little mass to stand alone: fold into the smallest bin
      i = int(np.argmin(exp))
      obs[i] += small_obs
      exp[i] += small_exp
  return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_frequencies_match_softmax(llama, temperature):
  config = S.SamplingConfig(max_new_tokens=1, temperature=temperature, pad_id=PAD)
  draws, logits = _first_token_draws(llama, config, seed=4)
  probs = np.exp(_log_softmax(logits / temperature))
  assert probs.max() < 0.5  # the test has power only if many tokens are likely
  assert _chisquare_p(draws, probs) > 1e-3
  # Sanity check of the test itself: the wrong temperature is rejected.
  wrong = np.exp(_log_softmax(logits / (temperature * 2.5)))
  assert _chisquare_p(draws, wrong) < 1e-3


def test_top_k(llama):
  k = 5
  config = S.SamplingConfig(max_new_tokens=1, temperature=1.0, top_k=k, pad_id=PAD)
  draws, logits = _first_token_draws(llama, config, seed=5)
  allowed = np.argsort(-logits)[:k]
  assert set(draws.tolist()) <= set(allowed.tolist())
  assert len(set(draws.tolist())) == k
  probs = np.zeros_like(logits)
  probs[allowed] = np.exp(_log_softmax(logits[allowed]))
  assert _chisquare_p(draws, probs) > 1e-3


def test_top_p(llama):
  p = 0.3
  config = S.SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=p, pad_id=PAD)
  draws, logits = _first_token_draws(llama, config, seed=6)
  order = np.argsort(-logits)
  sorted_probs = np.exp(_log_softmax(logits))[order]
  # Smallest prefix of the sorted vocabulary with mass >= p.
  size = int(np.searchsorted(np.cumsum(sorted_probs), p) + 1)
  nucleus = order[:size]
  assert 1 < size < VOCAB // 2
  assert set(draws.tolist()) <= set(nucleus.tolist())
  probs = np.zeros_like(logits)
  probs[nucleus] = np.exp(_log_softmax(logits[nucleus]))
  assert _chisquare_p(draws, probs) > 1e-3


# --------------------------------------------------------------------------
# EOS handling and per-row budgets.


def _expected_with_eos(free_tokens, eos, budgets):
  """Applies EOS / budget truncation to a no-EOS greedy run (numpy)."""
  tokens = np.full_like(free_tokens, PAD)
  mask = np.zeros(free_tokens.shape, bool)
  has_eos = np.zeros(free_tokens.shape[0], bool)
  for row, toks in enumerate(free_tokens):
    for t in range(budgets[row]):
      tokens[row, t], mask[row, t] = toks[t], True
      if toks[t] == eos:
        has_eos[row] = True
        break
  return tokens, mask, has_eos


def test_eos_and_budgets(llama):
  free_config = S.SamplingConfig(max_new_tokens=N_NEW, temperature=0.0, pad_id=PAD)
  (left, lmask), _ = _prompts()
  # Sampler without an rng: allowed because greedy.
  free = np.asarray(S.Sampler(llama, free_config)(left, lmask).tokens)
  eos = int(free[0, 2])  # row 0 must stop at step 2 at the latest
  config = free_config.replace(eos_id=eos)

  for budgets in (None, np.array([N_NEW, 2, 0, 5], np.int32)):
    out = S.generate(llama, left, lmask, jax.random.key(0), config, budgets)
    row_budgets = budgets if budgets is not None else [N_NEW] * len(LENGTHS)
    tokens, mask, has_eos = _expected_with_eos(free, eos, row_budgets)
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_array_equal(out.response_mask, mask)
    np.testing.assert_array_equal(out.has_eos, has_eos)
    np.testing.assert_array_equal(out.lengths, mask.sum(1))
    assert has_eos[0] and mask[0].sum() <= 3
    for name in ("logprobs", "plain_logprobs"):
      values = np.asarray(getattr(out, name))
      assert np.all(values[~mask] == 0.0) and np.all(values[mask] < 0.0)


def test_multiple_eos_ids_and_all_rows_stop(llama):
  free_config = S.SamplingConfig(max_new_tokens=N_NEW, temperature=0.0, pad_id=PAD)
  (left, lmask), _ = _prompts()
  free = np.asarray(S.generate(llama, left, lmask, jax.random.key(0), free_config).tokens)
  # Every row's first token is an EOS: the loop must end with length-1 rows.
  eos_ids = tuple(sorted(set(free[:, 0].tolist())))
  out = S.generate(llama, left, lmask, jax.random.key(0), free_config.replace(eos_id=list(eos_ids)))
  np.testing.assert_array_equal(out.lengths, 1)
  assert np.all(out.has_eos)
  np.testing.assert_array_equal(out.tokens[:, 0], free[:, 0])
  np.testing.assert_array_equal(out.tokens[:, 1:], PAD)


# --------------------------------------------------------------------------
# Compilation.


def test_compiles_once_for_new_prompts_rngs_and_params(llama):
  traces = []

  def counted(*args, **kwargs):
    traces.append(1)
    return S.sample(*args, **kwargs)

  fn = jax.jit(counted, static_argnames=("graphdef", "config"))
  config = S.SamplingConfig(max_new_tokens=4, temperature=1.0, top_k=8, eos_id=3, pad_id=PAD)
  graphdef, params = nnx.split(llama)
  outs = []
  for seed in range(3):
    (left, lmask), (right, rmask) = _prompts(seed=10 + seed)
    tokens, mask = (left, lmask) if seed % 2 else (right, rmask)
    if seed == 2:  # new weights, same shapes: an RL update must not retrace
      params = jax.tree.map(lambda x: x * 1.01, params)
    outs.append(fn(graphdef, params, tokens, mask, jax.random.key(seed), config=config))
  assert len(traces) == 1
  assert fn._cache_size() == 1
  assert not np.array_equal(outs[0].tokens, outs[1].tokens)

  # The Sampler wrapper reuses the module-level jitted function.
  sampler = S.Sampler(llama, config)
  (left, lmask), _ = _prompts()
  sampler(left, lmask, jax.random.key(0))
  program = S.sample_jit.jitted(nnx.split(llama)[1])  # params on no mesh: the plain jit
  size = program._cache_size()
  assert size >= 1
  sampler(left + 1, lmask, jax.random.key(1))
  assert program._cache_size() == size


@pytest.mark.parametrize("arch,qkv_bias", [("llama", False), ("llama", True), ("gpt2", False)])
def test_fused_projections_give_the_separate_projections_logits(arch, qkv_bias):
  # The cached forward multiplies by q|k|v and gate|up concatenations; any slip in their order,
  # the GQA split or the biases would change the logits.
  cfg = ModelConfig(
    arch=arch,
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2 if arch == "llama" else 4,
    head_dim=8,
    d_ff=64,
    max_seq_len=64,
    tie_embeddings=False,
    qkv_bias=qkv_bias,
  )
  model = Transformer(cfg, rngs=nnx.Rngs(3))
  for i, (name, param) in enumerate(sorted(vars(model.layers).items())):
    if isinstance(param, nnx.Param) and name.endswith("_bias"):  # zero-initialised: make them matter
      param[...] = jax.random.normal(jax.random.PRNGKey(i), param[...].shape)
  _, state = nnx.split(model)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, VOCAB, (3, 7)), jnp.int32)
  logits = {}
  for mode in ("none", "all"):
    # The same parameters under the mode's graph (the mode is a static field of the model's config).
    graphdef, _ = nnx.split(Transformer(cfg.replace(fused_projections=mode), rngs=nnx.Rngs(0)))
    merged = nnx.merge(graphdef, state)
    assert merged.cfg.fused_projections == mode
    logits[mode] = np.asarray(merged(tokens).logits)
  assert np.abs(logits["all"] - logits["none"]).max() <= 1e-5
  assert np.abs(logits["none"]).max() > 1e-2  # the comparison is of logits that are not all ~0
