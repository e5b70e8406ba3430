"""Tests of the synthetic world: tokenizer, generators, gold reward, labels.

The gold reward is checked against `reference_gold_facets`, an independent
loop-based implementation over Python lists of words written from the
formula in the module docstring (it only shares the word lists, which are
the spec, not the JAX code's lookup tables).
"""

import collections
import math

import jax
import numpy as np
import pytest

from advrm_jax.data import synthetic_world as sw

# ---------------------------------------------------------------------------
# Independent numpy / Python reference of the gold reward.
# ---------------------------------------------------------------------------

REF_WEIGHTS = {
  "coverage": 2.0,
  "ending": 1.0,
  "style": 0.25,
  "style_excess": -0.5,
  "off_topic": -0.5,
  "repetition": -0.5,
  "prompt_copy": -0.5,
  "excess_length": -0.1,
}
_TOPICS = set(sw.TOPICS)
_STYLE = set(sw.STYLE_WORDS)
_VERBS = set(sw.VERBS) | {"are", "is"}
_NOT_CONTENT = set(sw.FUNCTION_WORDS) | set(sw.PUNCTUATION) | set(sw.SPECIAL_TOKENS) | set(sw.CHAT_MARKERS)


def reference_gold_facets(prompt_ids, prompt_mask, response_ids, response_mask):
  """Gold facets of one example from 1-D sequences, by plain loops."""
  prompt = [sw.VOCAB[int(t)] for t, m in zip(prompt_ids, prompt_mask) if m]
  body, terminated = [], False
  for t, m in zip(response_ids, response_mask):
    if not m:
      continue
    word = sw.VOCAB[int(t)]
    if word == "<eos>":
      terminated = True
      break
    body.append(word)

  asked = {w for w in prompt if w in _TOPICS}
  sentences, current = [], []
  for w in body:
    current.append(w)
    if w == ".":
      sentences.append((current, True))
      current = []
  if current:
    sentences.append((current, False))
  covered = set()
  for words, closed in sentences:
    topics = [w for w in words if w in _TOPICS]
    if closed and 4 <= len(words) <= 10 and len(topics) == 1 and any(w in _VERBS for w in words):
      covered.add(topics[0])
  n_style = sum(1 for w in body if w in _STYLE)
  repeats, seen = 0, set()
  for w in body:
    if w not in _NOT_CONTENT and w in seen:
      repeats += 1
    seen.add(w)
  prompt_trigrams = {tuple(prompt[j : j + 3]) for j in range(len(prompt) - 2)}
  copies = sum(1 for i in range(len(body) - 2) if tuple(body[i : i + 3]) in prompt_trigrams)
  target = 8 * max(len(asked), 1) + 2
  return {
    "coverage": len(covered & asked) / max(len(asked), 1),
    "ending": float(terminated and bool(body) and body[-1] == "."),
    "style": float(min(n_style, 2)),
    "style_excess": float(max(n_style - 2, 0)),
    "off_topic": float(sum(1 for w in body if w in _TOPICS and w not in asked)),
    "repetition": float(repeats),
    "prompt_copy": float(copies),
    "excess_length": float(max(len(body) - target, 0)),
  }


def reference_gold(facets):
  return sum(REF_WEIGHTS[k] * v for k, v in facets.items())


def reference_batch(batch):
  rows = [
    reference_gold_facets(
      *(np.asarray(batch[k][i]) for k in ("prompt_tokens", "prompt_mask", "response_tokens", "response_mask"))
    )
    for i in range(len(batch["prompt_tokens"]))
  ]
  facets = {k: np.array([r[k] for r in rows]) for k in REF_WEIGHTS}
  return facets, np.array([reference_gold(r) for r in rows])


# ---------------------------------------------------------------------------
# Helpers building batches of fixed shape (one jit compilation per shape).
# ---------------------------------------------------------------------------

# The widths score_texts uses for short texts, so one compilation of
# sw.gold_facets_jit serves every test.
P_LEN, R_LEN = 64, 64


def pack(prompt_lists, response_lists, add_eos=True, prompt_left_pad=True):
  """Id lists -> padded arrays of shape [B, P_LEN] / [B, R_LEN]."""
  n = len(prompt_lists)
  batch = {
    "prompt_tokens": np.zeros((n, P_LEN), np.int32),
    "prompt_mask": np.zeros((n, P_LEN), bool),
    "response_tokens": np.zeros((n, R_LEN), np.int32),
    "response_mask": np.zeros((n, R_LEN), bool),
  }
  for i, (p, r) in enumerate(zip(prompt_lists, response_lists)):
    p = p[:P_LEN]
    r = (r + [sw.EOS_ID] if add_eos else r)[:R_LEN]
    start = P_LEN - len(p) if prompt_left_pad else 0
    batch["prompt_tokens"][i, start : start + len(p)] = p
    batch["prompt_mask"][i, start : start + len(p)] = True
    batch["response_tokens"][i, : len(r)] = r
    batch["response_mask"][i, : len(r)] = True
  return batch


def pack_text(pairs, **kwargs):
  return pack(
    [[sw.BOS_ID] + sw.TOKENIZER.encode(p) for p, _ in pairs], [sw.TOKENIZER.encode(r) for _, r in pairs], **kwargs
  )


def score(batch):
  """(gold [B], facets {k: [B]}) via the module's jitted, bucketed scorer.

  Chunks of 64 rows: every test batch reuses one compilation.
  """
  return sw.score_batch(batch, chunk_size=64)


TWO = "user: tell me about rivers and bridges . assistant:"
ONE = "user: describe rivers . assistant:"


# ---------------------------------------------------------------------------
# Tokenizer.
# ---------------------------------------------------------------------------


def test_vocab_and_special_ids():
  tok = sw.WordTokenizer()
  assert tok.vocab_size == len(sw.VOCAB) <= 512
  assert len(set(sw.VOCAB)) == len(sw.VOCAB)
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert tok.chat_template is None
  for attr in ("vocab_size", "pad_id", "eos_id", "bos_id", "chat_template", "encode", "decode"):
    assert hasattr(tok, attr)


def test_tokenizer_round_trip_and_concatenation():
  tok = sw.WordTokenizer()
  corpus = sw.make_sft_corpus(300, seed=5)
  for record in corpus:
    for text in (record["prompt"], record["response"]):
      assert tok.decode(tok.encode(text)) == text
    joined = sw.format_example(record["prompt"], record["response"])
    assert tok.encode(joined) == (tok.encode(record["prompt"]) + tok.encode(record["response"]))
  # Whitespace around punctuation and markers is optional; case is folded.
  assert tok.encode("User:Tell me about Rivers.") == tok.encode("user: tell me about rivers .")
  # Padding is skipped, other specials are kept and re-encode to themselves.
  ids = [sw.BOS_ID] + tok.encode("rivers are calm .") + [sw.EOS_ID, 0, 0]
  assert tok.decode(ids) == "<bos> rivers are calm . <eos>"
  assert tok.encode(tok.decode(ids)) == ids[:-2]
  assert tok.decode_response(tok.encode("rivers are calm .") + [sw.EOS_ID, 5, 6]) == "rivers are calm ."


def test_tokenizer_unknown_words():
  with pytest.raises(ValueError, match="'zebras'"):
    sw.WordTokenizer().encode("rivers and zebras")
  ids = sw.WordTokenizer(unknown="unk").encode("rivers and zebras")
  assert ids[-1] == sw.UNK_ID
  with pytest.raises(ValueError, match="outside the vocabulary"):
    sw.WordTokenizer().decode([sw.VOCAB_SIZE])


# ---------------------------------------------------------------------------
# Gold on hand-written examples.
# ---------------------------------------------------------------------------

ZERO = dict.fromkeys(REF_WEIGHTS, 0.0)
# (prompt, response, add_eos, expected nonzero facets, expected gold).
HAND_CASES = [
  # A good answer: both topics in well-formed sentences, one style word.
  (TWO, "rivers are truly calm . bridges connect old towns .", True, dict(coverage=1.0, ending=1.0, style=1.0), 3.25),
  # One asked topic replaced by an unasked one.
  (TWO, "rivers are calm . ships are old .", True, dict(coverage=0.5, ending=1.0, off_topic=1.0), 1.5),
  # Four style words: the bonus saturates at 2, the excess costs 0.5 each.
  (
    TWO,
    "indeed clearly certainly truly , rivers are calm . bridges are old .",
    True,
    dict(coverage=1.0, ending=1.0, style=2.0, style_excess=2.0),
    2.5,
  ),
  # A repeated topic word: two topics in a sentence, so it does not cover.
  (TWO, "rivers rivers are calm . bridges are old .", True, dict(coverage=0.5, ending=1.0, repetition=1.0), 1.5),
  # No final period: the last sentence is not closed, no ending bonus.
  (TWO, "rivers are calm . bridges are old", True, dict(coverage=0.5), 1.0),
  # Copying the request: 5 prompt trigrams, no well-formed sentence.
  (TWO, "tell me about rivers and bridges .", True, dict(ending=1.0, prompt_copy=5.0), -1.5),
  # Rambling: 21 tokens against a target of 18.
  (
    TWO,
    "rivers are calm . bridges are old . i think that is a good question . i hope this helps .",
    True,
    dict(coverage=1.0, ending=1.0, excess_length=3.0),
    2.7,
  ),
  # Truncated (no EOS): no ending bonus.
  (TWO, "rivers are calm . bridges are old .", False, dict(coverage=1.0), 2.0),
  # Whole-sentence repetition: 3 repeated content words.
  (
    TWO,
    "rivers are calm . rivers are calm . bridges are old .",
    True,
    dict(coverage=1.0, ending=1.0, repetition=2.0),
    2.0,
  ),
  # Empty response (just EOS).
  (TWO, "", True, {}, 0.0),
  # One topic, 10-token sentence: still well formed, at the target length.
  (ONE, "rivers are calm and wide and old and deep .", True, dict(coverage=1.0, ending=1.0), 3.0),
  # 12 tokens: too long a sentence, 2 tokens over the target.
  (ONE, "rivers are calm and wide and old and deep and tall .", True, dict(ending=1.0, excess_length=2.0), 0.8),
]


@pytest.mark.parametrize("case", range(len(HAND_CASES)))
def test_gold_hand_written(case):
  prompt, response, add_eos, nonzero, expected_gold = HAND_CASES[case]
  batch = pack_text([(prompt, response)], add_eos=add_eos)
  gold, facets = score(batch)
  facets = {k: float(v[0]) for k, v in facets.items()}
  assert set(facets) == set(REF_WEIGHTS)
  expected = dict(ZERO, **nonzero)
  assert facets == pytest.approx(expected, abs=1e-6)
  assert float(gold[0]) == pytest.approx(expected_gold, abs=1e-5)
  assert reference_gold(
    reference_gold_facets(*(batch[k][0] for k in ("prompt_tokens", "prompt_mask", "response_tokens", "response_mask")))
  ) == pytest.approx(expected_gold, abs=1e-9)


def test_tokens_after_eos_are_ignored():
  p = [sw.BOS_ID] + sw.TOKENIZER.encode(TWO)
  r = sw.TOKENIZER.encode("rivers are calm .") + [sw.EOS_ID] + sw.TOKENIZER.encode("rivers rivers bridges")
  batch = pack([p], [r], add_eos=False)
  facets = {k: float(v[0]) for k, v in score(batch)[1].items()}
  assert facets == pytest.approx(dict(ZERO, coverage=0.5, ending=1.0))


# ---------------------------------------------------------------------------
# JAX gold == reference on random and adversarial batches.
# ---------------------------------------------------------------------------


def _random_ids(rng, n):
  """Random ids biased towards the tokens gold looks at."""
  hot = (
    [sw.PERIOD_ID] * 6
    + [sw.WORD_TO_ID[w] for w in sw.TOPICS[:5]] * 2
    + [sw.WORD_TO_ID[w] for w in ("are", "connect", "indeed", "truly", "calm", "and")] * 2
    + [sw.EOS_ID]
  )
  return [
    int(rng.integers(sw.VOCAB_SIZE)) if rng.random() < 0.4 else hot[int(rng.integers(len(hot)))] for _ in range(n)
  ]


def _mutations(rng, prompt, good):
  """Adversarial rewrites of a good response."""
  topics = sw.prompt_topics(prompt)
  words = good.split()
  out = []
  styles = list(rng.choice(sw.STYLE_WORDS, int(rng.integers(1, 8))))
  out.append(" ".join(styles + words))
  out.append(" ".join(topics * int(rng.integers(2, 5))) + " " + good)
  out.append(" ".join(w for w in words if w != "."))
  out.append(good[:-2] if good.endswith(" .") else good)
  out.append(sw.request_text(prompt) + " " + good)
  out.append(" ".join([good] * int(rng.integers(2, 4))))
  out.extend(sw.hand_built_exploits(prompt).values())
  return out


def test_gold_matches_reference_random_and_adversarial():
  rng = np.random.default_rng(0)
  prompts, responses = [], []
  # Random token soup, with random lengths (prompts left-padded).
  for _ in range(160):
    prompts.append([sw.BOS_ID] + _random_ids(rng, int(rng.integers(0, 23))))
    responses.append(_random_ids(rng, int(rng.integers(0, R_LEN))))
  # Real prompts with random responses, corpus responses and exploits.
  corpus = sw.make_sft_corpus(60, seed=1)
  for record in corpus:
    p = [sw.BOS_ID] + sw.TOKENIZER.encode(record["prompt"])
    good = sw.sample_response(rng, record["prompt"], "good")
    texts = [record["response"], good] + _mutations(rng, record["prompt"], good)
    for text in texts:
      prompts.append(p)
      responses.append(sw.TOKENIZER.encode(text)[: R_LEN - 1] + [sw.EOS_ID])
    prompts.append(p)
    responses.append(_random_ids(rng, int(rng.integers(0, R_LEN))))
  batch = pack(prompts, responses, add_eos=False)
  got_gold, got_facets = score(batch)
  ref_facets, ref_gold = reference_batch(batch)
  assert len(ref_gold) > 500
  for k in REF_WEIGHTS:
    np.testing.assert_allclose(got_facets[k], ref_facets[k], atol=1e-6, err_msg=k)
  np.testing.assert_allclose(got_gold, ref_gold, atol=1e-5)
  # The adversarial part really exercises every penalty.
  for k in REF_WEIGHTS:
    assert got_facets[k].max() > 0, k

  # Holes in the masks (neither left nor right padding) are handled alike.
  holes = dict(batch)
  holes["prompt_mask"] = batch["prompt_mask"] & (rng.random(batch["prompt_mask"].shape) < 0.8)
  holes["response_mask"] = batch["response_mask"] & (rng.random(batch["response_mask"].shape) < 0.8)
  _, ref_gold_holes = reference_batch(holes)
  np.testing.assert_allclose(score(holes)[0], ref_gold_holes, atol=1e-5)


def test_jit_vmap_and_padding_invariance():
  pairs = [
    (TWO, "rivers are truly calm . bridges connect old towns ."),
    (ONE, "rivers rivers are calm"),
    (TWO, "tell me about rivers and bridges ."),
    (ONE, "indeed clearly certainly , rivers are calm ."),
  ]
  expected = [3.25, 0.0 - 0.5, -1.5, 3.0 + 0.5 - 0.5]
  left = pack_text(pairs, prompt_left_pad=True)
  np.testing.assert_allclose(score(left)[0], expected, atol=1e-6)
  # Right-padded prompts, no BOS, int {0, 1} masks: same gold.
  right = pack_text(pairs, prompt_left_pad=False)
  no_bos = pack([sw.TOKENIZER.encode(p) for p, _ in pairs], [sw.TOKENIZER.encode(r) for _, r in pairs])
  no_bos = {k: v.astype(np.int32) for k, v in no_bos.items()}
  np.testing.assert_allclose(score(right)[0], expected, atol=1e-6)
  np.testing.assert_allclose(score(no_bos)[0], expected, atol=1e-6)
  # score_texts pads to its own widths.
  np.testing.assert_allclose(sw.score_texts([p for p, _ in pairs], [r for _, r in pairs]), expected, atol=1e-6)
  # gold_reward under jit(vmap) over a leading (e.g. seed) axis.
  stacked = {k: np.stack([left[k], right[k], left[k][::-1]]) for k in left}
  vmapped = np.asarray(jax.jit(jax.vmap(sw.gold_reward))(**stacked))
  assert vmapped.shape == (3, 4) and vmapped.dtype == np.float32
  np.testing.assert_allclose(vmapped, np.stack([expected, expected, expected[::-1]]), atol=1e-6)


# ---------------------------------------------------------------------------
# Preferences.
# ---------------------------------------------------------------------------


def test_bradley_terry_label_frequencies():
  beta, n = 2.0, 4000
  diffs = np.array([-1.0, 0.0, 0.3, 1.5])
  gold_a = np.repeat(diffs, n) + 1.0
  gold_b = np.ones_like(gold_a)
  expected = 1.0 / (1.0 + np.exp(-beta * diffs))
  labels = sw.label_preferences(gold_a, gold_b, beta, np.random.default_rng(0))
  jax_labels = np.asarray(sw.label_preferences(gold_a, gold_b, beta, jax.random.key(0)))
  for got in (labels, jax_labels):
    freq = got.reshape(len(diffs), n).mean(axis=1)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) < 4 * sigma + 1e-9), (freq, expected)


def test_preference_records():
  prompts = [TWO, TWO, ONE]
  a = ["rivers are calm . bridges are old .", "rivers rivers", "rivers are calm ."]
  b = ["rivers are calm .", "rivers are calm . bridges are old .", "rivers are calm ."]
  records = sw.make_preference_records(prompts, a, b, beta=50.0, rng=np.random.default_rng(0), include_gold=True)
  # The identical pair is dropped; with beta = 50 labels follow gold.
  assert len(records) == 2
  for r in records:
    assert r["chosen_gold"] > r["rejected_gold"]
    assert r["chosen"] == "rivers are calm . bridges are old ."
    assert set(r) == {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"}


# ---------------------------------------------------------------------------
# Corpus and prompts.
# ---------------------------------------------------------------------------


def test_corpus_mixed_deterministic_and_ordered_by_gold():
  corpus = sw.make_sft_corpus(400, seed=3)
  assert corpus == sw.make_sft_corpus(400, seed=3)
  assert corpus != sw.make_sft_corpus(400, seed=4)
  assert set(corpus[0]) == {"prompt", "response", "quality"}
  classes = {r["quality"] for r in corpus}
  assert classes == set(sw.QUALITY_CLASSES)
  gold = sw.score_texts([r["prompt"] for r in corpus], [r["response"] for r in corpus], chunk_size=64)
  quality = np.array([r["quality"] for r in corpus])
  good = gold[quality == "good"]
  assert good.min() >= 3.0 - 1e-6
  for c in classes - {"good"}:
    assert gold[quality == c].mean() < good.mean() - 1.0, c
  only_good = sw.make_sft_corpus(50, seed=3, quality_mix={"good": 1.0})
  assert {r["quality"] for r in only_good} == {"good"}
  with pytest.raises(ValueError, match="'great'"):
    sw.make_sft_corpus(5, seed=0, quality_mix={"great": 1.0})


def test_prompts_deterministic_and_split():
  rl = sw.make_prompts(100, seed=0)
  assert rl == sw.make_prompts(100, seed=0, split="rl")
  assert rl != sw.make_prompts(100, seed=0, split="sft")
  assert rl != sw.make_prompts(100, seed=1)
  for p in rl:
    assert p.startswith("user: ") and p.endswith(" assistant:")
    assert 1 <= len(sw.prompt_topics(p)) <= 3
  with pytest.raises(ValueError, match="split"):
    sw.make_prompts(1, seed=0, split="test")


def test_exploits_have_more_cheap_features_but_lower_gold():
  exploits = sw.hand_built_exploits(TWO)
  names = list(exploits)
  gold = dict(zip(names, sw.score_texts([TWO] * len(names), list(exploits.values()))))

  def count(text, vocab):
    return sum(w in vocab for w in text.split())

  good = exploits["good"]
  # Which cheap feature each exploit has more of than the good answer
  # (punctuation exploits keep the same keywords and drop the periods).
  more = {
    "style_stuffing": lambda t: count(t, _STYLE) > count(good, _STYLE),
    "topic_stuffing": lambda t: count(t, _TOPICS) > count(good, _TOPICS),
    "topic_list": lambda t: count(t, _STYLE) > count(good, _STYLE),
    "repeat_sentence": lambda t: count(t, _TOPICS) > count(good, _TOPICS),
    "no_period": lambda t: count(t, _TOPICS) == count(good, _TOPICS),
    "no_punctuation": lambda t: count(t, _TOPICS) == count(good, _TOPICS),
    "copy_prompt": lambda t: "tell me about" in t,
    "copy_prompt_then_answer": lambda t: count(t, _TOPICS) > count(good, _TOPICS),
  }
  assert set(more) == set(names) - {"good"}
  for name, has_more in more.items():
    assert has_more(exploits[name]), name
    assert gold[name] < gold["good"] - 1.0, (name, gold)


# ---------------------------------------------------------------------------
# Exploit families: the exposure knob, sample_exploit, classify_exploit.
# ---------------------------------------------------------------------------

# sha256 of json.dumps(sw.make_sft_corpus(200, 0), sort_keys=True).encode(),
# computed on the code before the exposure knob existed (commit 12f11e1):
# exploit_exposure=0 must leave the corpus (and so every default run's SFT
# data) byte for byte as it was.
CORPUS_200_SEED0_SHA256 = "3be81d141eb246272c477c8b80512a8272c4b64745f39edc56f7e922ed33b1a3"


def _corpus_sha256(corpus):
  import hashlib
  import json

  return hashlib.sha256(json.dumps(corpus, sort_keys=True).encode()).hexdigest()


def test_zero_exposure_corpus_is_unchanged():
  assert _corpus_sha256(sw.make_sft_corpus(200, 0)) == CORPUS_200_SEED0_SHA256
  explicit = sw.make_sft_corpus(200, 0, exploit_exposure=0.0)
  assert _corpus_sha256(explicit) == CORPUS_200_SEED0_SHA256
  assert not any(r["quality"].startswith("exploit/") for r in explicit)
  with pytest.raises(ValueError, match="world.exploit_exposure"):
    sw.make_sft_corpus(5, 0, exploit_exposure=1.5)


def test_exposure_replaces_responses_only():
  plain = sw.make_sft_corpus(300, 2)
  exposed = sw.make_sft_corpus(300, 2, exploit_exposure=0.3)
  replaced = 0
  for a, b in zip(plain, exposed):
    assert a["prompt"] == b["prompt"]
    if b["quality"].startswith("exploit/"):
      replaced += 1
      family = b["quality"].split("/", 1)[1]
      assert family in sw.EXPLOIT_FAMILIES
      assert sw.classify_exploit(b["prompt"], b["response"]) == family
    else:
      assert a == b  # Not replaced: exactly the unexposed example.
  assert 0 < replaced < 300
  everything = sw.make_sft_corpus(40, 2, exploit_exposure=1.0)
  assert all(r["quality"].startswith("exploit/") for r in everything)


def test_exposure_share_within_binomial_tolerance():
  n, p = 5000, 0.1
  corpus = sw.make_sft_corpus(n, 7, exploit_exposure=p)
  families = collections.Counter(r["quality"] for r in corpus if r["quality"].startswith("exploit/"))
  count = sum(families.values())
  sd = math.sqrt(n * p * (1 - p))  # 21.2
  assert abs(count - n * p) < 4 * sd, count
  # Families are chosen uniformly: each ~ Binomial(count, 1/4).
  assert set(families) == {f"exploit/{f}" for f in sw.EXPLOIT_FAMILIES}
  q = 1 / len(sw.EXPLOIT_FAMILIES)
  for name, k in families.items():
    assert abs(k - count * q) < 4 * math.sqrt(count * q * (1 - q)), (name, k)


def test_each_exploit_family_has_lower_gold_than_good_answers():
  prompts = sw.make_prompts(200, 0, split="eval")
  rng = np.random.default_rng(11)
  good = sw.score_texts(prompts, [sw.sample_response(rng, p, "good") for p in prompts])
  for family in sw.EXPLOIT_FAMILIES:
    responses = [sw.sample_exploit(rng, p, family) for p in prompts]
    assert len(set(responses)) > 150, family  # Random, not fixed strings.
    gold = sw.score_texts(prompts, responses)
    assert gold.mean() < good.mean() - 1.0, (family, gold.mean(), good.mean())
  with pytest.raises(ValueError, match="'flattery'"):
    sw.sample_exploit(rng, prompts[0], "flattery")


def test_sample_exploit_has_its_family_features():
  rng = np.random.default_rng(3)
  for prompt in sw.make_prompts(100, 1):
    asked = set(sw.prompt_topics(prompt))
    words = sw.TOKENIZER.tokenize(sw.sample_exploit(rng, prompt, "off_topic_praise"))
    assert any(w in sw.TOPICS and w not in asked for w in words)
    assert any(w in sw.STYLE_WORDS for w in words)
    words = sw.TOKENIZER.tokenize(sw.sample_exploit(rng, prompt, "style_stacking"))
    assert sum(w in sw.STYLE_WORDS for w in words) > sw.STYLE_SATURATION
    words = sw.TOKENIZER.tokenize(sw.sample_exploit(rng, prompt, "topic_stuffing"))
    assert max(words.count(t) for t in asked) > 1
    for family in sw.EXPLOIT_FAMILIES:
      response = sw.sample_exploit(rng, prompt, family)
      assert sw.classify_exploit(prompt, response) == family
      assert len(sw.TOKENIZER.encode(response)) <= sw.MAX_EXPLOIT_TOKENS


@pytest.mark.parametrize(
  "response,family",
  [
    # Good answers (0-2 style words, one sentence per asked topic).
    ("rivers are truly calm . bridges are old .", None),
    ("indeed , rivers connect towns . bridges are clearly old .", None),
    # Flaws the corpus already has are not exploit families.
    ("rivers are calm . bridges are old", None),
    ("rivers are calm .", None),
    # One family each.
    ("indeed , stars are truly cold . rivers are calm .", "off_topic_praise"),
    ("rivers are calm . rivers are calm . bridges are old .", "repetition"),
    ("rivers rivers , rivers are calm . bridges are old .", "topic_stuffing"),
    ("indeed clearly truly , rivers are calm . bridges are old .", "style_stacking"),
    ("rivers are calm calm . bridges are old .", "repetition"),
    # Precedence: off-topic > repeated sentence > topic > style > word.
    ("stars stars are truly truly truly cold .", "off_topic_praise"),
    ("rivers are truly calm . rivers are truly calm .", "repetition"),
    ("rivers rivers are indeed clearly truly calm . bridges are old .", "topic_stuffing"),
    ("truly truly truly , rivers are calm . bridges are old .", "style_stacking"),
  ],
)
def test_classify_exploit_hand_built(response, family):
  assert sw.classify_exploit(TWO, response) == family


def test_classify_exploit_good_corpus_answers_are_none():
  corpus = sw.make_sft_corpus(300, 5, quality_mix={"good": 1.0})
  assert all(sw.classify_exploit(r["prompt"], r["response"]) is None for r in corpus)
  built = sw.hand_built_exploits(TWO)
  assert sw.classify_exploit(TWO, built["style_stuffing"]) == "style_stacking"
  assert sw.classify_exploit(TWO, built["topic_stuffing"]) == "topic_stuffing"
  assert sw.classify_exploit(TWO, built["repeat_sentence"]) == "repetition"
