"""EMPO and the reasoning task: hand-computed clusters, entropies, masks, answers; reward inside jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from advrm_jax.adversarial import filtering
from advrm_jax.data import reasoning_world as rw
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.rl import advantages as adv
from advrm_jax.rl import empo
from advrm_jax.rl.engine import RLConfig, init_policy_params, init_rl_state, make_iteration
from advrm_jax.rl.rewards import Rollout
from advrm_jax.rl.sampler import SamplingConfig
from advrm_jax.train_state import make_optimizer, split_module

# Three prompts x G = 4 answers; -1 is "no answer".
KEYS = np.array([5, 5, 3, -1, 7, 7, 7, 7, 1, 2, -1, -1])
H0 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))  # 0.6365


def _responses(texts, width=24):
  """Right-padded [B, width] response ids (+ EOS) and masks from texts."""
  tokens = np.zeros((len(texts), width), np.int32)
  mask = np.zeros((len(texts), width), bool)
  for i, text in enumerate(texts):
    ids = rw.TOKENIZER.encode(text) + [rw.EOS_ID]
    tokens[i, : len(ids)] = ids
    mask[i, : len(ids)] = True
  return tokens, mask


# ---------------------------------------------------------------- reasoning task


def test_answer_extraction_by_hand():
  tokens, mask = _responses(
    [
      "now five . now nine . check . now six . now ten . answer ten .",
      "now three . answer",  # "answer" with nothing after it
      "answer check seven .",  # a non-number after "answer"
      "now two . answer four . answer six .",  # the first "answer" counts
      "now two .",  # no "answer" at all
    ]
  )
  tokens[4, 4:7] = rw.TOKENIZER.encode("answer one .")  # after EOS: ignored
  mask[4, 4:7] = True
  values, positions = rw.final_answer(tokens, mask)
  np.testing.assert_array_equal(values, [10, -1, -1, 4, -1])
  np.testing.assert_array_equal(positions, [15, -1, -1, 4, -1])
  masked = mask.copy()
  masked[0, 15] = False  # a masked-out answer token is not there
  assert int(rw.final_answer(tokens, masked)[0][0]) == -1

  inter = rw.intermediate_answers(tokens, mask)
  row = {k: np.asarray(v[0]) for k, v in inter.items()}
  np.testing.assert_array_equal(np.nonzero(row["is_answer"])[0], [1, 4, 9, 12])
  np.testing.assert_array_equal(row["value"][[1, 4, 9, 12]], [5, 9, 6, 10])
  np.testing.assert_array_equal(row["step"][[1, 4, 9, 12]], [0, 1, 0, 1])
  np.testing.assert_array_equal(row["attempt"][[1, 4, 9, 12]], [0, 0, 1, 1])


def test_true_values_and_labels_by_hand():
  problem = rw.Problem(start=3, ops=(("add", 2), ("double", 0), ("minus", 4)))
  assert problem.prompt == "start with three . add two . double it . minus four ."
  assert problem.values == (5, 10, 6)
  prompts = rw.prompt_arrays([problem, rw.Problem(4, (("add", 1), ("add", 1)))])
  values, n = rw.true_values(prompts["tokens"], prompts["mask"])
  np.testing.assert_array_equal(values, [[5, 10, 6], [5, 6, -1]])
  np.testing.assert_array_equal(n, [3, 2])
  np.testing.assert_array_equal(rw.true_answer(prompts["tokens"], prompts["mask"]), [6, 6])

  # Attempt 1 slips at step 1 (nine instead of ten), attempt 2 is right.
  tokens, mask = _responses(
    [
      "now five . now nine . now five . check . now five . now ten . now six . answer six .",
      "now five . now six . now seven . answer seven .",
    ]
  )
  labels = rw.intermediate_labels(prompts["tokens"], prompts["mask"], tokens, mask)
  cols = np.nonzero(np.asarray(labels["is_answer"][0]))[0]
  np.testing.assert_array_equal(np.asarray(labels["correct"][0])[cols], [1, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(np.asarray(labels["candidate"][0])[cols], [0, 0, 1, 0, 0, 1])
  # Prompt 2 has two operations: a third step is never correct nor a candidate.
  cols = np.nonzero(np.asarray(labels["is_answer"][1]))[0]
  np.testing.assert_array_equal(np.asarray(labels["correct"][1])[cols], [1, 1, 0])
  np.testing.assert_array_equal(np.asarray(labels["candidate"][1])[cols], [0, 1, 0])
  np.testing.assert_array_equal(rw.correctness_reward(prompts["tokens"], prompts["mask"], tokens, mask), [1, 0])


def test_problems_match_jax_and_splits_are_disjoint():
  problems = rw.make_problems(64, seed=3, split="test")
  prompts = rw.prompt_arrays(problems)
  np.testing.assert_array_equal(rw.true_answer(prompts["tokens"], prompts["mask"]), [p.answer for p in problems])
  for p in problems:
    assert all(0 <= v <= rw.MAX_VALUE for v in p.values)
  rl = {p.prompt for p in rw.make_problems(200, seed=3, split="rl")}
  assert not rl & {p.prompt for p in problems}
  assert all(rw.prompt_split(p) == "rl" for p in rl)


def test_sft_corpus_is_imperfect_and_parses():
  corpus = rw.make_sft_corpus(400, seed=0)
  accuracy = np.mean([c["correct"] for c in corpus])
  assert 0.6 < accuracy < 0.97, accuracy  # mixed correct and wrong solutions
  assert {c["num_attempts"] for c in corpus} == {1, 2, 3}
  longest = max(len(rw.TOKENIZER.encode(c["response"])) + 1 for c in corpus)
  assert longest <= rw.max_response_tokens()
  tokens, mask = _responses([c["response"] for c in corpus], width=rw.max_response_tokens())
  values, _ = rw.final_answer(tokens, mask)
  prompts = rw.prompt_arrays(rw.make_problems(400, 0, "sft"))  # the corpus's own prompts
  assert np.all(np.asarray(values) >= 0)
  np.testing.assert_array_equal(
    rw.correctness_reward(prompts["tokens"], prompts["mask"], tokens, mask), [c["correct"] for c in corpus]
  )


# ---------------------------------------------------------------- EMPO maths


def test_cluster_shares_and_entropy_by_hand():
  scores, info = empo.empo_scores(KEYS, KEYS >= 0, num_samples=4)
  np.testing.assert_allclose(scores, [2 / 3, 2 / 3, 1 / 3, 0, 1, 1, 1, 1, 0.5, 0.5, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(info["entropy"], [H0, 0.0, math.log(2)], rtol=1e-6)
  np.testing.assert_array_equal(info["ids"], [[0, 0, 2, -1], [0, 0, 0, 0], [0, 1, -1, -1]])
  np.testing.assert_array_equal(info["keep"], [True, True, True])

  # "no answer" as its own cluster: group 1 is {5,5}, {3}, {none}: n = 4.
  scores, info = empo.empo_scores(KEYS, KEYS >= 0, 4, no_answer="cluster")
  np.testing.assert_allclose(scores[:4], [0.5, 0.5, 0.25, 0.25])
  np.testing.assert_allclose(info["entropy"][0], -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), rtol=1e-6)
  np.testing.assert_allclose(scores[8:], [0.25, 0.25, 0.5, 0.5])

  # log p(c|q); an excluded answerless response gets the floor log(1 / 2G).
  scores, _ = empo.empo_scores(KEYS, KEYS >= 0, 4, reward="log_prob")
  np.testing.assert_allclose(scores[:4], [math.log(2 / 3)] * 2 + [math.log(1 / 3), math.log(1 / 8)], rtol=1e-6)


def test_entropy_bounds_drop_whole_prompts_with_zero_advantage():
  # ln 2 = 0.693 > 0.65: prompt 3 is dropped; min 0.1 drops the unanimous prompt 2.
  scores, info = empo.empo_scores(KEYS, KEYS >= 0, 4, entropy_min=0.1, entropy_max=0.65)
  np.testing.assert_array_equal(info["keep"], [True, False, False])
  np.testing.assert_allclose(scores, [2 / 3, 2 / 3, 1 / 3, 0] + [0] * 8, rtol=1e-6)
  advantages = adv.compute_grpo_advantages(scores, 4)
  np.testing.assert_array_equal(advantages[4:], np.zeros(8))  # exactly zero: no policy gradient
  assert float(advantages[0]) > 0 > float(advantages[2])
  # A prompt with no answer at all has nothing to cluster and is dropped.
  keep = empo.entropy_keep_mask(jnp.array([0.0]), jnp.array([0]))
  assert not bool(keep[0])


def test_pluggable_equivalence_greedy_clusters():
  keys = jnp.array([[1, 2, 3, 4]])
  ids, _ = empo.greedy_clusters(keys, jnp.ones((1, 4), bool), empo.within_one)
  # 2 joins 1's cluster; 3 is 2 away from representative 1, so it opens one; 4 joins 3.
  np.testing.assert_array_equal(ids, [[0, 0, 2, 2]])
  # Vector keys: equivalent when every component is.
  vec = jnp.array([[[1, 2], [1, 2], [1, 3], [1, 2]]])
  ids, _ = empo.greedy_clusters(vec, jnp.ones((1, 4), bool))
  np.testing.assert_array_equal(ids, [[0, 0, 2, 0]])


def test_semantic_uncertainty_feeds_the_adv_rm_filter():
  u = empo.semantic_uncertainty(KEYS, KEYS >= 0, 4, kind="response")
  np.testing.assert_allclose(u[:4], [-math.log(2 / 3)] * 2 + [-math.log(1 / 3), math.log(8)], rtol=1e-6)
  np.testing.assert_allclose(u[4:8], 0.0, atol=1e-7)
  h = empo.semantic_uncertainty(KEYS, KEYS >= 0, 4, kind="prompt")
  np.testing.assert_allclose(h, np.repeat([H0, 0.0, math.log(2)], 4), rtol=1e-6)
  z = filtering.standardize(u)
  keep = filtering.filter_mask(jnp.ones(12), 0.0, z, z_min=1.0)
  # Only the answerless responses (surprisal ln 8) are unusual enough.
  np.testing.assert_array_equal(np.nonzero(np.asarray(keep))[0], [3, 10, 11])


def test_source_inside_jit_matches_hand_values_and_config_checks():
  texts = [
    "answer five .",
    "now one . answer five .",
    "answer three .",
    "now two .",
    "answer seven .",
    "answer seven .",
    "answer seven .",
    "answer seven .",
  ]
  tokens, mask = _responses(texts, width=8)
  source = empo.SemanticEntropySource(num_samples=4, key_fn=rw.final_answer_key)
  prompt = jnp.zeros((8, 2), jnp.int32)
  rollout = Rollout(
    prompt,
    jnp.ones((8, 2), bool),
    jnp.asarray(tokens),
    jnp.asarray(mask),
    jnp.concatenate([prompt, tokens], 1),
    jnp.ones((8, 10), bool),
    jnp.zeros(8),
  )
  scores, metrics = jax.jit(source)(None, rollout)
  np.testing.assert_allclose(scores, [2 / 3, 2 / 3, 1 / 3, 0, 1, 1, 1, 1], rtol=1e-6)
  np.testing.assert_allclose(metrics["empo/semantic_entropy"], H0 / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["empo/no_answer_fraction"], 1 / 8)
  np.testing.assert_allclose(metrics["empo/num_clusters"], 1.5)
  with pytest.raises(ValueError, match="whiten_advantages"):
    empo.check_rl_config(RLConfig(algorithm="grpo", num_samples=4, kl_in_reward=False), source)
  with pytest.raises(ValueError, match="kl_in_reward"):
    empo.check_rl_config(RLConfig(algorithm="grpo", num_samples=4, whiten_advantages=False), source)
  empo.check_rl_config(RLConfig(algorithm="grpo", num_samples=4, whiten_advantages=False, kl_in_reward=False), source)


def test_empo_reward_runs_inside_the_jitted_rl_iteration():
  cfg = ModelConfig(
    vocab_size=rw.VOCAB_SIZE,
    d_model=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=2,
    head_dim=16,
    d_ff=64,
    max_seq_len=32,
  )
  graphdef, params, _ = split_module(Transformer(cfg, rngs=nnx.Rngs(0)))
  config = RLConfig(algorithm="grpo", num_samples=4, whiten_advantages=False, kl_in_reward=False, kl_estimator="k3")
  source = empo.SemanticEntropySource(num_samples=4, key_fn=rw.final_answer_key, entropy_max=1.0)
  empo.check_rl_config(config, source)
  optimizer = make_optimizer(learning_rate=1e-3, schedule="constant")
  state = init_rl_state(init_policy_params(params, cfg.d_model), optimizer, config)
  iteration = jax.jit(
    make_iteration(
      graphdef,
      optimizer,
      config,
      SamplingConfig(max_new_tokens=8, eos_id=rw.EOS_ID, pad_id=0),
      source,
      gold_fn=rw.correctness_reward,
    )
  )
  prompts = {k: jnp.asarray(v) for k, v in rw.prompt_arrays(rw.make_problems(2, 0, "rl")).items()}
  state, out = iteration(state, params, None, prompts, jax.random.key(0))
  for key in ("loss", "empo/semantic_entropy", "empo/kept_fraction", "gold_reward"):
    assert np.isfinite(float(out.metrics[key])), key
  assert int(state.step) == 1
