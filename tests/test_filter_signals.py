"""Semantic-entropy and verdict-probe signals for Adv-RM's filter, against hand-computed values."""

import math

import jax
import numpy as np
import pytest

from advrm_jax import inference
from advrm_jax.adversarial import signals
from advrm_jax.data import synthetic_world as world


def test_meaning_key_ignores_style_order_and_repetition_but_not_claims():
  key = world.meaning_key("indeed , rivers shape valleys . bridges are old .")
  assert key == "bridges old . rivers shape valleys"
  assert world.meaning_key("bridges are really old . rivers shape valleys . rivers shape valleys .") == key
  assert world.meaning_key("rivers shape valleys , bridges are old") != key  # one claim, not two
  assert world.meaning_key("rivers shape towns . bridges are old .") != key
  assert world.meaning_key("indeed , clearly .") == ""


def test_text_meaning_key_normalises_case_punctuation_and_spaces():
  assert signals.text_meaning_key("Paris, of course!  ") == signals.text_meaning_key("paris of course")
  assert signals.text_meaning_key("Paris") != signals.text_meaning_key("Lyon")


def test_semantic_signals_equal_hand_computed_shares():
  texts = [
    "rivers shape valleys .",
    "indeed , rivers shape valleys .",
    "bridges are old .",
    "",
    "ships carry sailors .",
    "ships carry sailors .",
    "ships carry sailors .",
    "ships carry sailors .",
  ]
  surprisal = signals.semantic(texts, 4, "semantic_surprisal", world.meaning_key)
  # Group 1: 3 answers, clusters {2, 1}; the empty one gets log(2G) = log 8. Group 2: one cluster.
  np.testing.assert_allclose(surprisal, [math.log(1.5), math.log(1.5), math.log(3), math.log(8), 0, 0, 0, 0], atol=1e-6)
  entropy = signals.semantic(texts, 4, "semantic_entropy", world.meaning_key)
  h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
  np.testing.assert_allclose(entropy, [h] * 4 + [0] * 4, atol=1e-6)
  with pytest.raises(ValueError, match="semantic signal"):
    signals.semantic(texts, 4, "entropy")


def test_group_check_names_the_broken_column():
  signals.group_size_check(2, prompt=np.array([3, 3, 1, 1]), step=np.array([0, 0, 0, 0]))
  with pytest.raises(ValueError, match="one prompt each"):
    signals.group_size_check(2, prompt=np.array([3, 1, 1, 3]))
  with pytest.raises(ValueError, match="groups of 4"):
    signals.group_size_check(4, prompt=np.arange(6))


def test_precision_at_shares_ties_at_the_cut():
  u = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
  bad = np.array([1, 0, 1, 1, 0], bool)
  # Budget 2: the 3.0 row (bad) plus one of three tied rows, 2/3 of them bad.
  assert signals.precision_at(u, bad, 2) == pytest.approx((1 + 2 / 3) / 2)
  assert signals.precision_at(u, bad, 5) == pytest.approx(3 / 5)
  assert signals.precision_at(u, bad, 0) is None


def test_compare_reports_auc_and_precision_among_liked_rows_only():
  liked = np.array([1, 1, 1, 1, 0], bool)
  bad = np.array([1, 1, 0, 0, 1], bool)
  perfect = np.array([5.0, 4.0, 1.0, 0.0, 9.0])  # the unliked row's 9.0 must not count
  out = signals.compare({"perfect": perfect, "reversed": -perfect}, liked, bad, budget=2)
  assert out["num_liked"] == 4 and out["base_rate"] == 0.5
  assert out["signals"]["perfect"] == {"auc_bad": 1.0, "precision": 1.0}
  assert out["signals"]["reversed"] == {"auc_bad": 0.0, "precision": 0.0}


def test_verdict_features_point_from_the_preferred_side():
  h_a, h_b = np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 2.0], [0.0, 2.0]])
  x = signals.verdict_features(h_a, h_b, np.array([1.0, -1.0]), np.array([0.0, 0.0]))
  np.testing.assert_array_equal(x, [[1.0, -2.0], [-1.0, 2.0]])


def test_verdict_probe_learns_that_small_margins_are_wrong_verdicts():
  # A target head w: its verdict is wrong exactly on pairs it separates by a small margin.
  rng = np.random.default_rng(0)
  n, d = 600, 6
  w = np.zeros(d, np.float32)
  w[0] = 1.0
  h_chosen = rng.normal(size=(n, d)).astype(np.float32)
  margin = rng.uniform(-0.3, 3.0, size=n).astype(np.float32)  # chosen - rejected along w
  h_rejected = h_chosen - margin[:, None] * w
  r1_chosen, r1_rejected = h_chosen @ w, h_rejected @ w
  params, info = signals.train_verdict_probe(
    jax.random.PRNGKey(0), h_chosen, h_rejected, r1_chosen, r1_rejected, hidden=0, num_steps=300, learning_rate=0.05
  )
  assert info["num_pairs"] == n and info["verdict_accuracy"] == pytest.approx(np.mean(margin > 0))
  assert info["holdout"]["roc_auc"] > 0.85
  # A sample 3.0 above its reference along w vs one 0.01 above: the second verdict is the suspect one.
  h = np.stack([3.0 * w, 0.01 * w])
  u = signals.verdict_uncertainty(params, h, np.zeros_like(h), h @ w, np.zeros(2, np.float32))
  assert u.shape == (2,) and u[1] > u[0] + 0.3
  with pytest.raises(ValueError, match="both right and wrong"):
    signals.train_verdict_probe(jax.random.PRNGKey(0), h_chosen, h_rejected, r1_chosen + 100.0, r1_rejected)


@pytest.mark.parametrize("kind", ["shared", "independent"])
def test_scores_and_hidden_equal_one_unchunked_forward(kind):
  # The probe's features and the verdicts it learns: chunked (padded last chunk) and in one pass, they
  # must equal the model's own reward_scores and last_hidden on the whole batch at once.
  from flax import nnx
  from advrm_jax.models.config import ModelConfig
  from advrm_jax.reward.model import init_reward_model, reward_scores

  cfg = ModelConfig(
    arch="llama",
    vocab_size=32,
    d_model=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=2,
    head_dim=8,
    d_ff=32,
    max_seq_len=16,
    tie_embeddings=True,
  )
  graphdef, params, _ = init_reward_model(cfg, 3, kind, seed=0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 32, (5, 9)).astype(np.int32)
  mask = np.arange(9)[None] < np.array([9, 4, 1, 7, 2])[:, None]  # right padding, ragged
  expected_scores = np.asarray(reward_scores(graphdef, params, tokens, mask))
  expected_hidden = np.asarray(nnx.merge(graphdef, params).last_hidden(tokens, mask))  # [5, D] or [3, 5, D]
  for member in (0, 2):
    scores, hidden = inference.scores_and_hidden(graphdef, params, tokens, mask, member=member, batch_size=2)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(hidden, expected_hidden if kind == "shared" else expected_hidden[member], atol=1e-5)
