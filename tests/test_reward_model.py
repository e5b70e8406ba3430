"""Ensemble reward models: shapes, last-token reading under any padding, init, aggregates.

Expected numbers are worked out by hand in the comments, not taken from the
code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.reward.model import (
  ensemble_aggregate,
  ensemble_uncertainty,
  init_reward_model,
  last_token_index,
  reward_scores,
)
from advrm_jax.train_state import split_module

CFG = ModelConfig(
  arch="llama",
  vocab_size=40,
  d_model=32,
  num_layers=1,
  num_heads=2,
  num_kv_heads=1,
  head_dim=16,
  d_ff=64,
  max_seq_len=32,
)
EOS = 39
SCORE = jax.jit(reward_scores, static_argnums=0)


@pytest.fixture(scope="module")
def ensembles():
  """One 3-member ensemble of each kind (initialisation is the slow part on CPU)."""
  return {kind: init_reward_model(CFG, 3, kind, seed=0) for kind in ("shared", "independent")}


def _pad(rows, width, side):
  tokens = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, ids in enumerate(rows):
    cols = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
    tokens[i, cols] = ids
    mask[i, cols] = 1
  return tokens, mask


def test_last_token_index_left_and_right():
  mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4])


@pytest.mark.parametrize("kind", ["shared", "independent"])
def test_scores_have_shape_members_by_batch(kind, ensembles):
  graphdef, params, axes = ensembles[kind]
  tokens, mask = _pad([[1, 2, 3], [4, 5, 6, 7, 8]], 8, "right")
  scores = SCORE(graphdef, params, tokens, mask)
  assert scores.shape == (3, 2) and scores.dtype == jnp.float32
  assert axes["head_kernel"] == ("embed", "members") and axes["head_bias"] == ("members",)
  if kind == "independent":
    assert axes["backbone"]["embed"] == ("members", "vocab", "embed")
    assert params["backbone"]["layers"]["q_kernel"].shape[0] == 3
  # Members start different: their heads are different columns of one draw.
  assert np.ptp(np.asarray(scores), axis=0).min() > 1e-4


@pytest.mark.parametrize("kind", ["shared", "independent"])
def test_left_and_right_padding_give_identical_rewards(kind, ensembles):
  graphdef, params, _ = ensembles[kind]
  # Rows with and without a final EOS, of different lengths, in one batch.
  rows = [[3, 4, 5, EOS], [6, 7, 8, 9, 10, 11, 12], [13, EOS], [14]]
  right = SCORE(graphdef, params, *_pad(rows, 10, "right"))
  left = SCORE(graphdef, params, *_pad(rows, 10, "left"))
  np.testing.assert_allclose(np.asarray(left), np.asarray(right), atol=1e-5)
  # And equal to scoring a row alone, with no padding at all.
  alone = SCORE(graphdef, params, np.array([rows[1]], np.int32), np.ones((1, len(rows[1])), np.int32))
  np.testing.assert_allclose(np.asarray(alone)[:, 0], np.asarray(right)[:, 1], atol=1e-5)


def test_score_depends_on_the_last_real_token(ensembles):
  graphdef, params, _ = ensembles["shared"]
  a = SCORE(graphdef, params, *_pad([[1, 2, 3]], 6, "right"))
  b = SCORE(graphdef, params, *_pad([[1, 2, 4]], 6, "right"))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def test_independent_per_member_rows_match_separate_scoring(ensembles):
  graphdef, params, _ = ensembles["independent"]
  rows = [
    _pad([[1, 2, 3], [4, 5]], 6, "right"),
    _pad([[7, 8], [9, 10, 11, 12]], 6, "left"),
    _pad([[13], [14, 15, 16]], 6, "right"),
  ]
  per_member = SCORE(graphdef, params, np.stack([t for t, _ in rows]), np.stack([m for _, m in rows]))
  for k, (tokens, mask) in enumerate(rows):
    np.testing.assert_allclose(per_member[k], SCORE(graphdef, params, tokens, mask)[k], atol=1e-5)


def test_shared_backbone_rejects_per_member_rows(ensembles):
  graphdef, params, _ = ensembles["shared"]
  with pytest.raises(ValueError, match="independent"):
    reward_scores(graphdef, params, np.zeros((3, 1, 4), np.int32), np.ones((3, 1, 4), np.int32))


def test_pretrained_backbone_is_shared_by_every_member_heads_differ():
  _, backbone, _ = split_module(Transformer(CFG, rngs=nnx.Rngs(7)))
  _, independent, _ = init_reward_model(CFG, 3, "independent", head_seed=5, backbone_params=backbone)
  for k in range(3):
    np.testing.assert_array_equal(independent["backbone"]["layers"]["q_kernel"][k], backbone["layers"]["q_kernel"])
  _, shared, _ = init_reward_model(CFG, 3, "shared", head_seed=5, backbone_params=backbone)
  np.testing.assert_array_equal(shared["backbone"]["embed"], backbone["embed"])
  # Same head seed -> same heads for both kinds; the columns differ.
  np.testing.assert_array_equal(shared["head_kernel"], independent["head_kernel"])
  kernel = np.asarray(shared["head_kernel"])
  assert np.abs(kernel[:, 0] - kernel[:, 1]).max() > 1e-3
  # A pretrained tree that does not fit the config names the parameter.
  bad = dict(backbone, embed=np.zeros((41, 32), np.float32))
  with pytest.raises(ValueError, match="embed"):
    init_reward_model(CFG, 2, "shared", backbone_params=bad)


def test_aggregates_by_hand():
  # K=3 members, B=2 rows.
  scores = jnp.array([[1.0, 4.0], [3.0, 0.0], [2.0, 2.0]])
  agg = jax.jit(ensemble_aggregate, static_argnames=("kind", "member"))
  np.testing.assert_allclose(agg(scores, kind="mean"), [2.0, 2.0])
  np.testing.assert_allclose(agg(scores, kind="min"), [1.0, 0.0])
  # Population variance: column 0: (1 + 1 + 0) / 3 = 2/3; column 1: (4 + 4 + 0) / 3 = 8/3.
  np.testing.assert_allclose(agg(scores, kind="mean_minus_var", coef=0.5), [2 - 1 / 3, 2 - 4 / 3], rtol=1e-6)
  np.testing.assert_allclose(
    agg(scores, kind="mean_minus_std", coef=0.5), [2 - 0.5 * np.sqrt(2 / 3), 2 - 0.5 * np.sqrt(8 / 3)], rtol=1e-6
  )
  np.testing.assert_allclose(agg(scores, kind="member", member=1), [3.0, 0.0])
  with pytest.raises(ValueError, match="unknown ensemble aggregate"):
    ensemble_aggregate(scores, "median")


def test_uncertainty_by_hand():
  scores = jnp.array([[1.0, 4.0], [3.0, 0.0], [2.0, 2.0]])
  out = jax.jit(ensemble_uncertainty, static_argnames="member")(scores, member=0)
  # R1 = member 0 = [1, 4]; R2 = mean of members 1, 2 = [(3+2)/2, (0+2)/2] = [2.5, 1].
  np.testing.assert_allclose(out["disagreement"], [-1.5, 3.0])
  np.testing.assert_allclose(out["ensemble_std"], [np.sqrt(2 / 3), np.sqrt(8 / 3)], rtol=1e-6)
  single = ensemble_uncertainty(jnp.array([[5.0, -1.0]]))
  np.testing.assert_allclose(single["disagreement"], [0.0, 0.0])
  np.testing.assert_allclose(single["ensemble_std"], [0.0, 0.0])
