"""Loading configs from Python, and the stages on your own model and data (configs/advrm_own.py).

The whole own-model loop (rm -> attack -> filter -> advtrain) runs in
tests/test_notebooks.py (notebook 02) and, with the `inspect` report, in the
slow test at the end; the rest are the cheap parts: config loading, importing
a checkpoint as the policy, the `prefs` stage on a file, decoding with the
policy's tokenizer, and the errors of stages that need the synthetic world or
an earlier stage's artefacts.
"""

import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from advrm_jax import inference
from advrm_jax.pipelines import workdir as wd
from advrm_jax.evaluation import quality
from advrm_jax.pipelines import STAGES, advtrain, attack, evaluate, load_config, prefs, rlhf, rm, sft
from advrm_jax.pipelines import filter_stage
from advrm_jax.pipelines import inspect_stage
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
  online = load_config("configs/synthetic.py:small,online")  # the online mode and an RLHF run on its RM
  assert online.stages.index("online") < online.stages.index("rlhf") and online.sft.num_steps == 20
  assert online.rlhf.runs.online.rm_stage == "online/rm" and "online" not in config.rlhf.runs
  with pytest.raises(FileNotFoundError, match="no_such.py"):
    load_config("configs/no_such.py")


def test_own_config_points_the_rm_at_the_policy_checkpoint():
  config = load_config("configs/advrm_own.py:hf,small")
  assert config.model.source == "hf" and config.prefs.source == "jsonl"
  config.model.path = "/models/mine"
  assert config.rm.backbone.path == "/models/mine" and config.rm.backbone.source == "hf"
  assert config.attack.sampling.max_new_tokens == config.data.max_response_len
  assert load_config("configs/advrm_own.py").model.source == "gguf"
  cpu = load_config("configs/advrm_own.py:cpu")  # the reduced CPU budget keeps the references linked
  assert cpu.rm.optimizer.total_steps == cpu.rm.num_steps < 500
  assert cpu.attack.sampling.max_new_tokens == cpu.data.max_response_len == 32
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
  model_config, _, params = wd.load_policy(workdir / "sft")
  want_config, want_model = load_hf_checkpoint(checkpoint)
  assert model_config == want_config
  import jax  # pylint: disable=import-outside-toplevel

  jax.tree.map(np.testing.assert_array_equal, params, split_module(want_model)[1])
  tokenizer = wd.policy_tokenizer(workdir)
  assert (tokenizer.eos_id, tokenizer.bos_id) == (EOS_ID, BOS_ID)
  assert wd.policy_tokenizer(workdir / "elsewhere") is None  # a synthetic run has no policy_meta.json


def test_decoding_with_the_policy_tokenizer_stops_at_eos(own_run):
  _, workdir, _, _ = own_run
  tokenizer = wd.policy_tokenizer(workdir)
  cats, calm = tokenizer.encode("cats")[0], tokenizer.encode("calm")[0]
  tokens = np.array([[cats, calm, EOS_ID, cats], [calm, PAD_ID, PAD_ID, PAD_ID]])
  mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
  assert inference.decode_responses(tokens, mask, tokenizer) == ["cats calm", "calm"]
  prompt = np.array([[PAD_ID, BOS_ID, cats]])
  assert inference.decode_prompts(prompt, prompt != PAD_ID, tokenizer) == ["cats"]
  assert np.isnan(inference.gold_of(prompt, prompt != PAD_ID, tokens, mask, tokenizer)).all()


def test_prefs_from_a_file_splits_pairs_and_samples_reference_answers(own_run):
  config, workdir, _, pairs = own_run
  prefs.run(config, workdir)
  stage = workdir / "prefs"
  train = [json.loads(line) for line in (stage / wd.TRAIN_FILE).open()]
  test = [json.loads(line) for line in (stage / wd.TEST_FILE).open()]
  assert len(train) + len(test) == len(pairs.read_text().splitlines())
  assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}  # split by prompt
  reference = wd.load_reference(workdir)
  num_prompts, n = config.prefs.num_attack_prompts, config.prefs.reference_samples
  assert reference["prompt_tokens"].shape == (num_prompts, config.data.max_prompt_len)
  assert reference["response_tokens"].shape == (num_prompts, n, config.data.max_response_len)
  assert np.isnan(reference["gold"]).all()  # real text has no gold
  pool = wd.reference_prompts(reference)
  assert len(set(pool)) == num_prompts and set(pool) <= {r["prompt"] for r in train}
  # Prompts are encoded as the rm stage encodes them: BOS, then the words, left-padded.
  tokenizer = wd.policy_tokenizer(workdir)
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


def test_inspect_is_the_last_own_model_stage():
  config = load_config("configs/advrm_own.py:hf,small")
  assert config.stages[-2:] == ("advtrain", "inspect") and STAGES["inspect"] == inspect_stage.__name__
  assert (config.inspect.round, config.inspect.num_examples) == (0, 8)


def test_inspect_names_the_first_missing_artefact(own_run):
  config, workdir, _, _ = own_run
  # Only existence is checked before anything is read, so empty stand-ins walk the pipeline order.
  expected = [
    "prefs/reference.npz",
    "rm/rm_meta.json",
    "attack/round_0/collected.npz",
    "attack/round_0/final_samples.npz",
    "attack/round_0/DONE",
    "filter/round_0/scores.npz",
    "filter/round_0/adversarial_pairs.jsonl",
    "filter/round_0/DONE",
  ]
  for artefact in expected:
    with pytest.raises(FileNotFoundError, match=re.escape(str(workdir / artefact))):
      inspect_stage.run(config, workdir)
    (workdir / artefact).parent.mkdir(parents=True, exist_ok=True)
    (workdir / artefact).touch()
  assert not (workdir / "inspect" / "DONE").exists()


@pytest.mark.slow  # prefs -> rm -> attack -> filter -> advtrain on the tiny checkpoint (compiles dominate)
def test_inspect_reports_what_the_adversary_found(own_run):
  config, workdir, _, _ = own_run
  config.filter.z_min = -1e9  # every sample above T(x) is kept: the filter has pairs to report
  config.mesh.shape = (1, 1, 1)  # one device: the attack's 4 prompts do not split over the 8 test devices
  for stage in (prefs, rm, attack, filter_stage):
    stage.run(config, workdir)
  out = workdir / "inspect"

  # Before adversarial training: RM round 0 only.
  report = inspect_stage.run(config, workdir)
  assert report["rm_rounds"] == [0] and (out / "DONE").exists()
  assert "RM round 1" not in (out / "REPORT.md").read_text()

  # After it the report is recomputed with RM round 1; then it is done and skipped.
  advtrain.run(config, workdir)
  report = inspect_stage.run(config, workdir)
  assert report["rm_rounds"] == [0, 1]
  assert inspect_stage.run(config, workdir) is None
  assert json.loads((out / "report.json").read_text())["rm_rounds"] == [0, 1]

  pairs = [json.loads(line) for line in (workdir / "filter" / "round_0" / "adversarial_pairs.jsonl").open()]
  groups = report["groups"]
  num_prompts, n = config.prefs.num_attack_prompts, config.prefs.reference_samples
  assert groups["reference"]["num_responses"] == num_prompts * n
  assert groups["adversary"]["num_responses"] == num_prompts * config.attack.final_samples_per_prompt
  assert pairs and groups["adversarial"]["num_responses"] == len(pairs)
  for group in groups.values():
    for r in (0, 1):
      assert group[f"rm_round_{r}"]["reward_mean"] is not None and group[f"rm_round_{r}"]["member_spread"] >= 0
    assert 0.0 <= group["missing_final_punctuation"] <= 1.0 and group["perplexity_median"] > 1.0

  responses = [json.loads(line) for line in (out / "responses.jsonl").open()]
  assert len(responses) == sum(g["num_responses"] for g in groups.values())
  adversarial = [r for r in responses if r["group"] == "adversarial"]
  # Matched back to their tokens and scored as the filter scored them: round-0 R1 is the pair's.
  assert [r["response"] for r in adversarial] == [p["rejected"] for p in pairs]
  np.testing.assert_allclose(
    [r["rewards"]["0"]["r1"] for r in adversarial], [p["r1"] for p in pairs], rtol=1e-5, atol=1e-6
  )
  for record in responses:
    assert record["repeated_ngram_fraction"] == quality.repeated_ngram_fraction(record["response"])
    assert record["missing_final_punctuation"] == quality.missing_final_punctuation(record["response"])
    assert record["perplexity"] is None or record["perplexity"] > 1.0

  examples = report["examples"]
  assert report["examples_from"] == "adversarial"
  assert 0 < len(examples) <= config.inspect.num_examples
  for example in examples:
    assert example["adversarial"]["group"] == "adversarial" and example["reference"]["group"] == "reference"
    assert example["adversarial"]["prompt_index"] == example["reference"]["prompt_index"]
    assert example["adversarial"]["response"] in {p["rejected"] for p in pairs}

  markdown = (out / "REPORT.md").read_text()
  print(markdown)  # pytest -s shows what a user reads
  assert "## Summary" in markdown and "| metric | reference (the policy's own answers) |" in markdown
  assert "RM round 1 (adversarially trained): reward, ensemble mean" in markdown
  assert "### 1. " in markdown and "| flags |" in markdown

  # A filter that kept nothing: the examples come from the final adversary instead.
  shutil.rmtree(workdir / "filter" / "round_0")
  config.filter.z_min = 1e9
  filter_stage.run(config, workdir)
  (out / "DONE").unlink()
  report = inspect_stage.run(config, workdir)
  assert report["groups"]["adversarial"]["num_responses"] == 0 and report["examples_from"] == "adversary"
  assert report["examples"] and all(e["adversarial"]["group"] == "adversary" for e in report["examples"])
  assert "the final adversary's answers (the filter kept none)" in (out / "REPORT.md").read_text()
