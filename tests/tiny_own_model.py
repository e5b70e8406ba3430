"""A tiny "own model and data" for tests: a random Llama checkpoint and made-up preference pairs.

Used by tests/test_own_model_stages.py and tests/test_notebooks.py (02).
Every string is made up here; nothing is copied from a real data set.
"""

import json
import pathlib
import random

import pytest

SUBJECTS = ("cats", "dogs", "birds", "fish", "boats", "trees", "clouds", "rivers")
WORDS = (
  "tell me about please what are and they like . ! ? nice calm quiet small green tall fast slow "
  "always often sleep swim fly grow run bad loud very"
).split()
# Ids of the special tokens (the tokenizer's first entries).
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2


def write_tiny_checkpoint_and_pairs(directory: pathlib.Path, num_pairs: int = 48) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes ``directory/tiny_llama`` (a random 1-layer Llama with a word-level tokenizer) and ``pairs.jsonl``.

  Returns (checkpoint directory, preference file). Prompts are
  "tell me about <subject> please"; responses use only the tokenizer's words.
  """
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from advrm_jax.checkpoints.hf import save_hf_checkpoint  # pylint: disable=import-outside-toplevel
  from advrm_jax.models.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from advrm_jax.models.transformer import Transformer  # pylint: disable=import-outside-toplevel

  vocab = {"<pad>": PAD_ID, "<eos>": EOS_ID, "<bos>": BOS_ID, "<unk>": 3}
  for word in WORDS + list(SUBJECTS):
    vocab.setdefault(word, len(vocab))
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  backend.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
  )
  model_config = ModelConfig(
    arch="llama",
    vocab_size=len(vocab),
    d_model=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    d_ff=64,
    max_seq_len=64,
    tie_embeddings=True,
  )
  checkpoint = pathlib.Path(directory) / "tiny_llama"
  save_hf_checkpoint(Transformer(model_config, rngs=nnx.Rngs(0)), model_config, checkpoint, tokenizer=tokenizer)

  rng = random.Random(0)
  records = []
  for _ in range(num_pairs):
    subject = rng.choice(SUBJECTS)
    chosen = rng.choice([f"{subject} are calm and quiet .", f"{subject} often sleep .", "they are small and green ."])
    rejected = rng.choice([f"bad bad {subject} {subject} !", "loud loud very loud", f"{subject} {subject} ?"])
    records.append({"prompt": f"tell me about {subject} please", "chosen": chosen, "rejected": rejected})
  pairs = pathlib.Path(directory) / "pairs.jsonl"
  pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
  return checkpoint, pairs
