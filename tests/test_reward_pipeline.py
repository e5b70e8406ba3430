"""Stage ``rm`` end to end: entry point, resume, synthetic accuracy, backbones, config errors."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from advrm_jax.pipelines import rm_training
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines import rm as rm_stage
from advrm_jax.pipelines.nodes import reward_model_nodes
from advrm_jax.reward.data import MemberBatches
from advrm_jax.reward.model import reward_scores

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "configs" / "rm_hh.py"


def _config(arg="small"):
  spec = importlib.util.spec_from_file_location("rm_hh_config", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _tiny_synthetic_config(num_steps=6):
  config = _config("small,synthetic")
  config.mesh.shape = (1, 1, 1)
  config.data.synthetic.num_pairs = 64
  config.data.max_prompt_len = 20
  config.data.max_response_len = 24
  config.rm.num_steps = num_steps
  config.rm.checkpoint_every = 2
  config.rm.keep_checkpoints = 5
  config.rm.eval_every = 0
  config.rm.eval_train_pairs = 0
  return config


def test_config_without_arguments_reads_the_bundled_example():
  """`configs/rm_hh.py` with no options and no data.path has data in a fresh clone (not a file beside it)."""
  config = _config(None)
  _, data = reward_model_nodes(config)
  pairs, info = rm_training.load_pairs(data)
  assert pathlib.Path(info["path"]) == REPO / "advrm_jax" / "data" / "examples" / "hh_example.jsonl"
  assert (info["format"], info["num_used"]) == ("hh_rlhf", 64)
  # 16 topics x 4 variants; every prompt is a transcript that ends with the assistant's turn.
  assert all(p.prompt.endswith("\n\nAssistant:") and p.prompt_messages for p in pairs)
  train, test = rm_training.split_pairs(pairs, data)
  assert (len(train), len(test)) == (58, 6)  # round(0.1 * 64) = 6 held-out pairs, one per prompt


@pytest.mark.slow  # ~45 s on 2 shared CPU cores: a subprocess, 8 devices, two compilations.
def test_rm_stage_runs_from_the_entry_point_on_hh(hh_rlhf_path, tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "advrm_jax.main",
      f"--config={CONFIG_FILE}:small",
      f"--workdir={workdir}",
      f"--config.data.path={hh_rlhf_path}",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  stage_dir = workdir / "rm"
  summary = json.loads((stage_dir / "eval_summary.json").read_text())
  assert summary["data"]["format"] == "hh_rlhf" and summary["data"]["num_test"] > 0
  test = summary["test"]
  assert set(test["accuracy"]) == {"member_0", "member_1", "mean", "min", "mean_minus_std", "members_mean"}
  assert 0.0 <= test["accuracy"]["mean"] <= 1.0 and 0.0 <= test["ece"]["mean"] <= 1.0
  assert {"q05", "q50", "q95", "mean"} <= set(test["disagreement"])
  assert (stage_dir / "metrics.jsonl").exists() and list(stage_dir.glob("*.png"))
  assert any((stage_dir / "tb").iterdir())
  assert "[rm] step 8/8" in result.stderr  # the progress line
  graphdef, params, meta = wd.load_reward_model(workdir)
  assert meta["step"] == 8 and meta["num_members"] == 2
  tokenizer = wd.load_tokenizer(meta)
  ids = tokenizer.encode("\n\nHuman: hi\n\nAssistant: hello") + [tokenizer.eos_id]
  scores = reward_scores(graphdef, params, np.array([ids], np.int32), np.ones((1, len(ids)), np.int32))
  assert scores.shape == (2, 1) and np.isfinite(np.asarray(scores)).all()


@pytest.mark.slow  # ~35 s: three runs of the stage, each compiling its step.
def test_resumed_run_ends_with_the_uninterrupted_parameters(tmp_path, monkeypatch):
  config = _tiny_synthetic_config(num_steps=6)
  rm_stage.run(config, tmp_path / "straight")
  _, straight, _ = wd.load_reward_model(tmp_path / "straight")

  # Crash during step 4 (0-based 3): checkpoints of steps 2 (and maybe none
  # later) are on disk; the rerun must continue from there.
  original = MemberBatches.batch

  def crashing_batch(self, data, step, share):
    if step == 3:
      raise RuntimeError("simulated crash")
    return original(self, data, step, share)

  monkeypatch.setattr(MemberBatches, "batch", crashing_batch)
  with pytest.raises(RuntimeError, match="simulated crash"):
    rm_stage.run(config, tmp_path / "resumed")
  monkeypatch.setattr(MemberBatches, "batch", original)
  checkpoints = tmp_path / "resumed" / "rm" / "checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [2]
  summary = rm_stage.run(config, tmp_path / "resumed")
  _, resumed, meta = wd.load_reward_model(tmp_path / "resumed")
  assert meta["step"] == 6 and summary["test"] is not None
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), resumed, straight)
  # The metrics log has one record per logged step, none duplicated by the crash.
  steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "rm" / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps)


@pytest.mark.slow  # ~40 s: 1,000 generated pairs and 200 steps.
def test_synthetic_world_accuracy_is_well_above_chance(tmp_path):
  config = _config("small,synthetic")
  config.mesh.shape = (1, 1, 1)
  config.data.synthetic.num_pairs = 1000
  config.data.test_fraction = 0.25
  config.data.max_prompt_len = 24
  config.data.max_response_len = 48
  config.rm.batch_size = 32
  config.rm.num_steps = 200
  config.rm.optimizer.learning_rate = 3e-3
  config.rm.log_every = 50
  config.rm.eval_every = 0
  config.rm.checkpoint_every = 200
  config.rm.eval_batch_size = 64
  summary = rm_stage.run(config, tmp_path)
  test = summary["test"]
  assert test["num_pairs"] >= 200
  # Chance is 0.5; labels are BT samples on gold (beta = 2), so even gold
  # itself agrees with only `test_gold_accuracy` of them.
  assert test["accuracy"]["mean"] > 0.65, (test["accuracy"], summary["test_gold_accuracy"])
  assert summary["test_gold_accuracy"] > test["accuracy"]["mean"] - 0.05


def test_hf_checkpoint_backbone_is_loaded_into_every_member(tmp_path):
  from flax import nnx
  from advrm_jax.checkpoints.hf import save_hf_checkpoint
  from advrm_jax.models.config import ModelConfig
  from advrm_jax.models.transformer import Transformer

  cfg = ModelConfig(
    vocab_size=300, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=64, max_seq_len=256
  )
  model = Transformer(cfg, rngs=nnx.Rngs(3))
  save_hf_checkpoint(model, cfg, tmp_path / "hf")
  config = _config("hf,small")
  config.rm.backbone.path = str(tmp_path / "hf")
  config.rm.tokenizer = "byte"
  rm, _ = reward_model_nodes(config)
  tokenizer = rm_training.build_tokenizer(rm.tokenizer, config.data.source, "hf", rm.backbone.path)
  loaded_cfg, params = rm_training.build_backbone(rm, tokenizer, sequence_width=81)
  assert loaded_cfg.d_model == 32 and loaded_cfg.vocab_size == 300
  np.testing.assert_allclose(params["embed"], np.asarray(model.embed[...]))
  # A sequence longer than the checkpoint's max_seq_len names the keys.
  with pytest.raises(wd.ConfigError, match="data.max_prompt_len"):
    rm_training.build_backbone(rm, tokenizer, sequence_width=257)


@pytest.mark.slow  # reads the 135M-parameter SmolLM2 GGUF and compiles a 30-layer forward.
def test_gguf_backbone_scores_a_pair():
  from advrm_jax.checkpoints import gguf

  try:
    path = gguf.find_smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  from advrm_jax.reward.model import init_reward_model

  config = _config("gguf")
  rm, _ = reward_model_nodes(config)
  tokenizer = rm_training.build_tokenizer(rm.tokenizer, config.data.source, "gguf", str(path))
  cfg, backbone = rm_training.build_backbone(rm, tokenizer, sequence_width=385)
  assert cfg.num_layers == 30 and cfg.d_model == 576
  graphdef, params, _ = init_reward_model(cfg, 2, "shared", backbone_params=backbone)
  ids = tokenizer.encode("The capital of France is Paris.") + [tokenizer.eos_id]
  scores = jax.jit(reward_scores, static_argnums=0)(graphdef, params, np.array([ids]), np.ones((1, len(ids))))
  assert scores.shape == (2, 1) and np.isfinite(np.asarray(scores)).all()


def test_config_errors_name_the_key(tmp_path):
  config = _tiny_synthetic_config()
  config.data.source = "jsonl"
  config.data.path = str(tmp_path / "missing.jsonl")
  with pytest.raises(wd.ConfigError, match="data.path"):
    rm_stage.run(config, tmp_path)
  config = _tiny_synthetic_config()
  with config.unlocked():
    config.rm.learning_rate = 1.0  # belongs in rm.optimizer
  with pytest.raises(wd.ConfigError, match=r"^config.rm.learning_rate: unknown key; known: .*backbone"):
    rm_stage.run(config, tmp_path)
  config = _tiny_synthetic_config()
  config.rm.tokenizer = "backbone"
  with pytest.raises(wd.ConfigError, match="rm.tokenizer"):
    rm_stage.run(config, tmp_path)
  config = _tiny_synthetic_config()
  config.data.use_chat_template = True  # the word tokenizer has no chat template
  with pytest.raises(wd.ConfigError, match="data.use_chat_template=True"):
    rm_stage.run(config, tmp_path)
  config = _tiny_synthetic_config()
  config.rm.member_data = "shuffle"  # needs an independent ensemble
  with pytest.raises(ValueError, match="rm.member_data"):
    rm_stage.run(config, tmp_path)
  if jax.device_count() >= 8:
    config = _tiny_synthetic_config()
    config.mesh.shape = (8, 1, 1)
    config.rm.batch_size = 12
    with pytest.raises(ValueError, match="rm.batch_size=12"):
      rm_stage.run(config, tmp_path)


def test_every_config_field_has_a_comment():
  lines = CONFIG_FILE.read_text().splitlines()
  assignment = re.compile(r"^\s+(config|rm)\.[\w.]+ = ")
  for number, line in enumerate(lines):
    if assignment.match(line) and "ConfigDict()" not in line:
      previous = lines[number - 1].strip()
      assert previous.startswith("#"), f"configs/rm_hh.py line {number + 1} has no comment: {line.strip()}"
  config = _config("small")
  assert config.data.path == "advrm_jax/data/examples/hh_example.jsonl"
  assert config.rm.optimizer.total_steps == config.rm.num_steps
  with pytest.raises(ValueError, match="unknown option"):
    _config("smal")


def test_synthetic_option_alone_implies_a_scratch_backbone_without_chat_template():
  # `:synthetic` used to keep the gguf default, whose chat template the word tokenizer cannot render.
  config = _config("synthetic")
  assert config.data.source == "synthetic" and config.rm.backbone.source == "scratch"
  assert not config.data.use_chat_template and config.rm.num_steps == _config(None).rm.num_steps
  for arg, backbone in (("synthetic,hf", "hf"), ("synthetic,gguf", "gguf"), ("small,synthetic", "scratch")):
    config = _config(arg)
    assert config.rm.backbone.source == backbone and not config.data.use_chat_template, arg
  assert _config(None).data.use_chat_template and _config("gguf,small").rm.backbone.source == "gguf"
  with pytest.raises(ValueError, match=r"\['gguf', 'hf'\] each choose the backbone"):
    _config("hf,gguf")
