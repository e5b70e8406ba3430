"""advrm_jax.evaluation.quality: the text checks against hand-computed values, perplexity against transformers."""

import math

import numpy as np
import pytest

from advrm_jax.evaluation import quality
from tests.tiny_own_model import EOS_ID, PAD_ID, write_tiny_checkpoint_and_pairs

PROMPT = "Tell me about cats, please"


def test_words_lowercase_and_drop_punctuation():
  assert quality.words("Hello, World! It's  fine.\n") == ["hello", "world", "it's", "fine"]
  assert quality.num_words(" ... !? ") == 0
  assert quality.ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
  assert quality.ngrams([1, 2], 3) == []


def test_repeated_ngram_fraction():
  # 3-grams abc, bca, cab, abc: 4, 3 distinct.
  assert quality.repeated_ngram_fraction("a b c a b c") == pytest.approx(0.25)
  # go go go x3, one distinct.
  assert quality.repeated_ngram_fraction("Go go, go go go!") == pytest.approx(2 / 3)
  assert quality.repeated_ngram_fraction("the cat sat on the mat") == 0.0
  assert quality.repeated_ngram_fraction("two words") == 0.0  # no 3-gram at all
  # Token ids, bigrams (1,2) (2,1) (1,2) (2,1) (1,2): 5, 2 distinct.
  assert quality.repeated_ngram_fraction([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(0.6)


def test_longest_run():
  assert quality.longest_run([5, 5, 7, 7, 7, 5]) == 3
  assert quality.longest_run("very very Very good") == 3
  assert quality.longest_run([4]) == 1
  assert quality.longest_run([]) == 0 and quality.longest_run("") == 0


@pytest.mark.parametrize(
  "text,missing",
  [
    ("Done.", False),
    ("Done", True),
    ("Really?  \n", False),
    ("Wow!", False),
    ('He said "hi"', False),
    ("(see above)", False),
    ("wait...", False),
    ("a list:", True),
    ("ends with a comma,", True),
    ("", True),
    ("   ", True),
    ("好。", False),
  ],
)
def test_missing_final_punctuation(text, missing):
  assert quality.missing_final_punctuation(text) is missing


def test_prompt_copying():
  # Response 3-grams: (tell me about) (me about cats) (about cats please) (cats please now); 3 are the prompt's.
  assert quality.prompt_copy_fraction("tell me about cats please now", PROMPT) == pytest.approx(0.75)
  assert quality.prompt_copy_fraction("cats are calm and quiet", PROMPT) == 0.0
  assert quality.prompt_copy_fraction("cats", PROMPT) == 0.0
  assert quality.longest_prompt_span("Well, tell me about dogs please", PROMPT) == 3  # "tell me about"
  assert quality.longest_prompt_span("please please", PROMPT) == 1
  assert quality.longest_prompt_span("Tell me about cats please. Tell me about", PROMPT) == 5
  assert quality.longest_prompt_span("", PROMPT) == 0


def test_text_quality_and_flags():
  metrics = quality.text_quality("loud loud loud loud", PROMPT)
  assert metrics == {
    "num_words": 4,
    "empty": False,
    "near_empty": False,
    "repeated_ngram_fraction": 0.5,
    "longest_run": 4,
    "missing_final_punctuation": True,
    "prompt_copy_fraction": 0.0,
    "longest_prompt_span": 0,
    "copies_prompt": False,
  }
  assert quality.quality_flags(metrics) == ["repetitive", "no final punctuation"]
  # With token ids the run counts tokens, not words.
  assert quality.text_quality("loud loud loud loud", PROMPT, tokens=[7, 8, 7, 8])["longest_run"] == 1
  assert quality.quality_flags(dict(metrics, has_eos=False, perplexity=120.0), perplexity_limit=100.0) == [
    "repetitive",
    "no final punctuation",
    "no EOS",
    "high perplexity",
  ]

  copied = quality.text_quality("Tell me about cats, please.", PROMPT, min_copy_span=5)
  assert copied["longest_prompt_span"] == 5 and copied["copies_prompt"] and copied["prompt_copy_fraction"] == 1.0
  assert quality.quality_flags(copied) == ["copies prompt"]

  assert quality.quality_flags(quality.text_quality("", PROMPT)) == ["empty"]
  assert quality.quality_flags(quality.text_quality("Yes.", PROMPT)) == ["near-empty"]
  assert quality.quality_flags(quality.text_quality("Cats sleep a lot.", PROMPT)) == []


def _sharp_checkpoint(tmp_path):
  """The tiny Llama with larger random weights: peaked next-token distributions, so a masking slip shows."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  checkpoint, _ = write_tiny_checkpoint_and_pairs(tmp_path)
  model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32)
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      if "norm" not in name:
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
  sharp = tmp_path / "sharp_llama"
  model.save_pretrained(sharp)
  return sharp, model.eval()


def test_perplexity_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  from advrm_jax.checkpoints.hf import load_hf_checkpoint  # pylint: disable=import-outside-toplevel
  from advrm_jax.train_state import split_module  # pylint: disable=import-outside-toplevel

  checkpoint, torch_model = _sharp_checkpoint(tmp_path)
  _, model = load_hf_checkpoint(checkpoint)
  graphdef, params, _ = split_module(model)

  prompts = [[2, 10, 11], [2, 12, 13, 14, 15], [2, 16], [2, 17, 18]]
  responses = [[20, 21, EOS_ID], [22, 23, 24, 25, 26], [30], []]
  # Prompts left-padded, except row 2 (right-padded: the function must not care); responses right-padded.
  prompt_tokens = np.full((4, 6), PAD_ID, np.int32)
  prompt_mask = np.zeros((4, 6), bool)
  for row, prompt in enumerate(prompts):
    cols = slice(0, len(prompt)) if row == 2 else slice(6 - len(prompt), 6)
    prompt_tokens[row, cols], prompt_mask[row, cols] = prompt, True
  response_tokens = np.full((4, 5), PAD_ID, np.int32)
  response_mask = np.zeros((4, 5), bool)
  for row, response in enumerate(responses):
    response_tokens[row, : len(response)], response_mask[row, : len(response)] = response, True
  response_tokens[3, :2] = [27, 28]  # tokens outside the mask are ignored

  # batch_size 3: two chunks, the second padded.
  got = quality.response_perplexity(
    graphdef, params, prompt_tokens, prompt_mask, response_tokens, response_mask, batch_size=3
  )

  want = []
  for prompt, response in zip(prompts, responses):
    if not response:
      want.append(math.nan)
      continue
    with torch.no_grad():
      logits = torch_model(torch.tensor([prompt + response])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    nll = -np.mean([logprobs[len(prompt) - 1 + t, token].item() for t, token in enumerate(response)])
    want.append(math.exp(nll))
  np.testing.assert_allclose(got, np.array(want), rtol=1e-4)
  assert np.isnan(got[3])
  # The sharp model is far from uniform: the comparison is not trivially met.
  assert np.nanmax(got) / np.nanmin(got) > 2.0
