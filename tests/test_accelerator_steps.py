"""Accelerator-grade training steps (issue 18): attention kernels, rematerialisation, bf16, chunked LM loss.

Memory claims are checked compile-only: ``jax.jit(step).lower(abstract shapes).compile()``
and its ``memory_analysis()``, so no large array is ever allocated.
"""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from advrm_jax.models import lm
from advrm_jax.models import transformer as T
from advrm_jax.models.config import ModelConfig
from advrm_jax.reward.losses import make_bt_step
from advrm_jax.reward.model import RewardEnsemble, init_reward_model
from advrm_jax.train_state import TrainState, abstract_module, make_optimizer, split_module

SMALL = dict(vocab_size=97, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64, max_seq_len=64)


def _padded_batch(batch=4, length=12, vocab=97, seed=0):
  """Tokens and a mask with a left-padded and a right-padded row."""
  rng = np.random.default_rng(seed)
  mask = np.ones((batch, length), np.int32)
  mask[1, :4] = 0
  mask[2, -5:] = 0
  return rng.integers(1, vocab, (batch, length)).astype(np.int32) * mask, mask


def _reference_attention(q, k, v, mask):
  """Masked softmax attention in float64 numpy, key heads repeated for GQA."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  group = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask[:, None], scores, -np.inf)
  with np.errstate(invalid="ignore"):  # rows with no visible key become NaN (the caller skips them)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", probs, v)


def test_xla_attention_matches_reference_with_gqa_and_padding():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(3, 10, 6, 8)).astype(np.float32)
  k, v = (rng.normal(size=(3, 10, 2, 8)).astype(np.float32) for _ in range(2))
  keys = np.ones((3, 10), bool)
  keys[1, :3] = False  # left padding
  keys[2, 7:] = False  # right padding
  mask = np.tril(np.ones((10, 10), bool))[None] & keys[:, None, :]
  got = np.asarray(T._dot_product_attention(q, k, v, jnp.asarray(mask), "xla"))  # pylint: disable=protected-access
  want = _reference_attention(q, k, v, mask)
  real = mask.any(-1)  # query rows with at least one visible key (pad queries of left padding have none)
  np.testing.assert_allclose(got[real], want[real], atol=1e-5)
  assert np.isfinite(got).all()  # fully masked pad queries average, never NaN


def test_attention_and_remat_config_values():
  cfg = ModelConfig(**SMALL)
  assert T.resolve_attention(cfg, 16) == "xla"  # auto on CPU
  assert T.resolve_attention(cfg.replace(dtype="bfloat16"), 16) == ("cudnn" if T._on_cuda() else "xla")  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="model.attention='cudnn' needs model.dtype"):
    T.resolve_attention(cfg.replace(attention="cudnn"), 16)
  with pytest.raises(ValueError, match="model.remat"):
    ModelConfig(remat="some")
  with pytest.raises(ValueError, match="model.attention"):
    ModelConfig(attention="flash")
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@functools.cache
def _bt_loss_and_grads(cfg):
  graphdef, params, _ = init_reward_model(cfg, 2, seed=0)
  tokens, mask = _padded_batch()
  batch = dict(chosen_tokens=tokens[:2], chosen_mask=mask[:2], rejected_tokens=tokens[2:], rejected_mask=mask[2:])
  # Plain SGD: parameters after a step differ exactly by the gradients' differences (Adam would
  # blow up rounding differences of near-zero gradients into whole-step differences).
  optimizer = optax.sgd(0.1)
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  step = jax.jit(make_bt_step(graphdef, optimizer))
  losses = []
  for _ in range(2):
    state, metrics = step(state, batch, jax.random.key(0))
    losses.append(float(metrics["loss"]))
  return losses, state.params


def test_remat_changes_no_loss():
  base_losses, base_params = _bt_loss_and_grads(ModelConfig(**SMALL))
  for remat in ("dots", "full"):
    losses, params = _bt_loss_and_grads(ModelConfig(**SMALL, remat=remat))
    np.testing.assert_allclose(losses, base_losses, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, base_params)


def _bt_step_temp_bytes(cfg, pairs, length):
  """Compiled temporaries of a BT step (one-member ensemble, AdamW) on abstract shapes."""
  graphdef, params, _ = abstract_module(lambda: RewardEnsemble(cfg, 1, rngs=nnx.Rngs(0)))
  optimizer = make_optimizer(schedule="constant")
  state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), params)
  tokens = jax.ShapeDtypeStruct((pairs, length), jnp.int32)
  batch = dict(chosen_tokens=tokens, chosen_mask=tokens, rejected_tokens=tokens, rejected_mask=tokens)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  # The state donated, as jit_bt_step does (the 1B-like step below: 21 GiB donated, 13 GiB not).
  compiled = jax.jit(make_bt_step(graphdef, optimizer), donate_argnums=(0,)).lower(state, batch, rng).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_full_remat_temporaries_grow_with_one_layer_not_all():
  # The shape: d256, 8 pairs x 1,024 tokens, 4 vs 8 layers (1.82x without remat here).
  base = ModelConfig(vocab_size=512, d_model=256, num_heads=4, num_kv_heads=4, head_dim=64, d_ff=1024, max_seq_len=1024)
  temp = {
    (remat, layers): _bt_step_temp_bytes(base.replace(num_layers=layers, remat=remat), 8, 1024)
    for remat in ("none", "full")
    for layers in (4, 8)
  }
  assert temp[("none", 8)] / temp[("none", 4)] > 1.6
  assert temp[("full", 8)] / temp[("full", 4)] < 1.3
  assert temp[("full", 8)] < temp[("none", 8)] / 3


def test_bf16_compute_with_f32_master_weights_runs_on_cpu():
  cfg = ModelConfig(**SMALL, dtype="bfloat16", remat="full")
  graphdef, params, _ = init_reward_model(cfg, 2, seed=0)
  tokens, mask = _padded_batch()
  batch = dict(chosen_tokens=tokens[:2], chosen_mask=mask[:2], rejected_tokens=tokens[2:], rejected_mask=mask[2:])
  optimizer = make_optimizer(learning_rate=1e-3, schedule="constant")
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  state, metrics = jax.jit(make_bt_step(graphdef, optimizer))(state, batch, jax.random.key(0))
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  # Master weights and both Adam moments stay float32; only the layer compute is bf16.
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {jnp.dtype(jnp.float32)}
  f32_loss = _bt_loss_and_grads(ModelConfig(**SMALL))[0][0]
  assert 0 < abs(float(metrics["loss"]) - f32_loss) < 0.02  # bf16 rounding (so bf16 did run), same model


_LOSS_GRAD = jax.jit(jax.value_and_grad(lm.lm_loss, argnums=1, has_aux=True), static_argnums=(0, 5))


def test_chunked_lm_loss_equals_plain_loss_and_grads():
  graphdef, params, _ = split_module(T.Transformer(ModelConfig(**SMALL, tie_embeddings=False), rngs=nnx.Rngs(0)))
  tokens, mask = _padded_batch()
  (plain, _), plain_grads = _LOSS_GRAD(graphdef, params, tokens, mask, mask, 0)
  (chunked, _), chunked_grads = _LOSS_GRAD(graphdef, params, tokens, mask, mask, 5)  # 11 targets: 3 chunks, padded
  # The plain loss itself against a numpy log-softmax of the model's logits.
  logits = np.asarray(nnx.merge(graphdef, params)(tokens, mask).logits[:, :-1], np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  picked = np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  targets = mask[:, 1:] * mask[:, :-1]
  np.testing.assert_allclose(float(plain), -(picked * targets).sum() / targets.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(chunked), float(plain), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), chunked_grads, plain_grads)


def test_chunked_lm_loss_drops_the_full_vocab_logits_buffer():
  # SmolLM2's vocabulary on a narrow model: the [B, T, V] float32 logits are the largest buffer.
  vocab, batch, length = 49152, 8, 512
  cfg = ModelConfig(
    vocab_size=vocab, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=128, max_seq_len=length
  )
  graphdef, params, _ = abstract_module(lambda: T.Transformer(cfg, rngs=nnx.Rngs(0)))
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  logits_bytes = batch * (length - 1) * vocab * 4
  temp = {
    chunk: _LOSS_GRAD.lower(graphdef, params, tokens, tokens, tokens, chunk)
    .compile()
    .memory_analysis()
    .temp_size_in_bytes
    for chunk in (0, None)
  }  # None: the default, LOSS_CHUNK positions at this vocabulary size
  # Plain: the logits, their softmax and gradient, 3.2x one [B, T-1, V] tensor here; chunked: three
  # [B, 128, V] blocks, less than one full tensor.
  assert temp[0] > 2 * logits_bytes
  assert temp[None] < logits_bytes


def test_1b_like_bt_step_fits_in_40_gib_of_temporaries_with_full_remat_and_bf16():
  # The step that ran out of memory on an H200 (139 GiB of temporaries there, ~200 GiB compiled for
  # CPU here with remat="none"): d2048, 16 layers, GQA 32/8, vocab 32,000, 32 pairs x 512 tokens.
  cfg = ModelConfig(
    vocab_size=32000,
    d_model=2048,
    num_layers=16,
    num_heads=32,
    num_kv_heads=8,
    head_dim=64,
    d_ff=8192,
    max_seq_len=512,
    tie_embeddings=False,
    dtype="bfloat16",
    remat="full",
  )
  assert _bt_step_temp_bytes(cfg, 32, 512) <= 40 * 2**30


@pytest.mark.slow
def test_accelerator_benchmark_tiny_runs_every_section(tmp_path):
  repo = pathlib.Path(__file__).resolve().parents[1]
  subprocess.run(
    [sys.executable, "benchmarks/accelerator.py", "--tiny", "--out", str(tmp_path)], cwd=repo, check=True, timeout=900
  )
  sections = json.loads((tmp_path / "accelerator.json").read_text())["sections"]
  assert not [name for name, result in sections.items() if "error" in result or "skipped" in result]
  assert len(sections) == 12
  for name, result in sections.items():
    if name.startswith(("bt/", "sft/")):  # same weights, float32 on CPU: the first steps agree
      assert abs(result["ours_first_loss"] - result["torch_first_loss"]) < 1e-3, (name, result)
    if name.startswith("sampler/"):
      assert result["greedy_token_agreement"] == 1.0, (name, result)
  assert sections["memory_1b_bt_32x512"]["temp_bytes"] <= 40 * 2**30
