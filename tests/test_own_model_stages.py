"""Loading configs from Python, and the stages on your own model and data (configs/advrm_own.py).

The whole own-model loop (rm -> attack -> filter -> advtrain) runs in
tests/test_notebooks.py (notebook 02); these are the cheap parts: config
loading, importing a checkpoint as the policy, the `prefs` stage on a file,
decoding with the policy's tokenizer, and the errors of stages that need the
synthetic world.
"""

import json
import pathlib

import numpy as np
import pytest

from advrm_jax.pipelines import advrm, evaluate, load_config, prefs, rlhf, sft
from tests.tiny_own_model import BOS_ID, EOS_ID, PAD_ID, write_tiny_checkpoint_and_pairs

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_load_config_reads_path_and_arg_and_locks(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a relative path falls back to the repository root
  config = load_config("configs/synthetic.py:small")
  assert config.rm.num_members == 2 and config.sft.num_steps == 20
  assert load_config(REPO / "configs" / "synthetic.py").sft.num_steps == 700
  config.rm.num_steps = 5  # existing keys change ...
  assert config.rm.optimizer.total_steps == 5  # ... and their references follow
  with pytest.raises(AttributeError):
    config.rm.num_stpes = 5  # a misspelt key is an error, as with --config.rm.num_stpes
  with pytest.raises(ValueError, match="unknown argument 'large'"):
    load_config("configs/synthetic.py:large")
  with pytest.raises(FileNotFoundError, match="no_such.py"):
    load_config("configs/no_such.py")


def test_own_config_points_the_rm_at_the_policy_checkpoint():
  config = load_config("configs/advrm_own.py:hf,small")
  assert config.model.source == "hf" and config.prefs.source == "jsonl"
  config.model.path = "/models/mine"
  assert config.rm.backbone.path == "/models/mine" and config.rm.backbone.source == "hf"
  assert config.attack.sampling.max_new_tokens == config.data.max_response_len
  assert load_config("configs/advrm_own.py").model.source == "gguf"
  with pytest.raises(ValueError, match="unknown option"):
    load_config("configs/advrm_own.py:tpu")


def _own_config(checkpoint, pairs):
  config = load_config("configs/advrm_own.py:hf,small")
  config.model.path = str(checkpoint)
  config.prefs.path = str(pairs)
  config.attack.sampling.eos_id = EOS_ID
  config.attack.sampling.pad_id = PAD_ID
  config.data.add_bos = True
  config.prefs.num_attack_prompts = 4
  return config


@pytest.fixture(name="own_run")
def _own_run(tmp_path):
  checkpoint, pairs = write_tiny_checkpoint_and_pairs(tmp_path)
  config = _own_config(checkpoint, pairs)
  workdir = tmp_path / "run"
  sft.run(config, workdir)
  return config, workdir, checkpoint, pairs


def test_sft_imports_the_checkpoint_as_the_reference_policy(own_run):
  _, workdir, checkpoint, _ = own_run
  from advrm_jax.checkpoints.hf import load_hf_checkpoint  # pylint: disable=import-outside-toplevel
  from advrm_jax.train_state import split_module  # pylint: disable=import-outside-toplevel
  assert (workdir / "sft" / "DONE").exists()
  model_config, _, params = sft.load_policy(workdir / "sft")
  want_config, want_model = load_hf_checkpoint(checkpoint)
  assert model_config == want_config
  import jax  # pylint: disable=import-outside-toplevel
  jax.tree.map(np.testing.assert_array_equal, params, split_module(want_model)[1])
  tokenizer = advrm.policy_tokenizer(workdir)
  assert (tokenizer.eos_id, tokenizer.bos_id) == (EOS_ID, BOS_ID)
  assert advrm.policy_tokenizer(workdir / "elsewhere") is None  # a synthetic run has no policy_meta.json


def test_decoding_with_the_policy_tokenizer_stops_at_eos(own_run):
  _, workdir, _, _ = own_run
  tokenizer = advrm.policy_tokenizer(workdir)
  cats, calm = tokenizer.encode("cats")[0], tokenizer.encode("calm")[0]
  tokens = np.array([[cats, calm, EOS_ID, cats], [calm, PAD_ID, PAD_ID, PAD_ID]])
  mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
  assert advrm.decode_responses(tokens, mask, tokenizer) == ["cats calm", "calm"]
  prompt = np.array([[PAD_ID, BOS_ID, cats]])
  assert advrm.decode_prompts(prompt, prompt != PAD_ID, tokenizer) == ["cats"]
  assert np.isnan(advrm.gold_of(prompt, prompt != PAD_ID, tokens, mask, tokenizer)).all()


def test_prefs_from_a_file_splits_pairs_and_samples_reference_answers(own_run):
  config, workdir, _, pairs = own_run
  prefs.run(config, workdir)
  stage = workdir / "prefs"
  train = [json.loads(line) for line in (stage / prefs.TRAIN_FILE).open()]
  test = [json.loads(line) for line in (stage / prefs.TEST_FILE).open()]
  assert len(train) + len(test) == len(pairs.read_text().splitlines())
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}  # split by prompt
  reference = advrm.load_reference(workdir)
  num_prompts, n = config.prefs.num_attack_prompts, config.prefs.reference_samples
  assert reference["prompt_tokens"].shape == (num_prompts, config.data.max_prompt_len)
  assert reference["response_tokens"].shape == (num_prompts, n, config.data.max_response_len)
  assert np.isnan(reference["gold"]).all()  # real text has no gold
  pool = advrm.reference_prompts(reference)
  assert len(set(pool)) == num_prompts and set(pool) <= {r["prompt"] for r in train}
  # Prompts are encoded as the rm stage encodes them: BOS, then the words, left-padded.
  tokenizer = advrm.policy_tokenizer(workdir)
  row = reference["prompt_tokens"][0][reference["prompt_mask"][0]].tolist()
  assert row == [BOS_ID] + tokenizer.encode(pool[0])
  summary = json.loads((stage / "summary.json").read_text())
  assert summary["num_attack_prompts"] == num_prompts and summary["source"] == "jsonl"


def test_prefs_names_the_eos_key_when_it_is_not_the_tokenizers(own_run):
  config, workdir, _, _ = own_run
  config.attack.sampling.eos_id = 7
  with pytest.raises(ValueError, match=r"--config\.attack\.sampling\.eos_id=1"):
    prefs.run(config, workdir)
  assert not (workdir / "prefs" / "DONE").exists()


def test_synthetic_only_stages_refuse_an_imported_policy(own_run):
  _, workdir, _, _ = own_run
  synthetic = load_config("configs/synthetic.py:small")
  for stage in (rlhf, evaluate, prefs):
    with pytest.raises(ValueError, match="needs the synthetic world"):
      stage.run(synthetic, workdir)


def test_prefs_from_a_file_needs_an_imported_policy(tmp_path):
  _, pairs = write_tiny_checkpoint_and_pairs(tmp_path)
  config = load_config("configs/advrm_own.py:hf,small")
  config.prefs.path = str(pairs)
  (tmp_path / "run" / "sft").mkdir(parents=True)
  with pytest.raises(ValueError, match="needs a policy imported by the `sft` stage"):
    prefs.run(config, tmp_path / "run")
