"""The glue of the Adv-RM stages (prefs, attack, filter, advtrain, evaluate) on hand-made inputs."""

import dataclasses
import importlib.util
import pathlib

import numpy as np
import pytest

from advrm_jax import inference
from advrm_jax.config_node import ConfigError
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines import advtrain, attack, evaluate, nodes

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="small"):
  spec = importlib.util.spec_from_file_location("synthetic_config", REPO / "configs" / "synthetic.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_rollout_collector_flattens_seeds_and_steps(tmp_path):
  collector = attack.RolloutCollector(tmp_path / "rollouts")
  for step in (1, 2):
    # 2 seeds x 3 rows; token value encodes (step, seed, row).
    tokens = np.array([[[100 * step + 10 * s + r] * 4 for r in range(3)] for s in range(2)], np.int32)
    collector(step, {"response_tokens": tokens, "response_mask": np.ones_like(tokens, bool)})
  rows = collector.load(2)
  assert rows["response_tokens"].shape == (12, 4)
  assert rows["seed"].tolist() == [0, 0, 0, 1, 1, 1] * 2
  assert rows["step"].tolist() == [1] * 6 + [2] * 6
  assert rows["response_tokens"][4, 0] == 100 + 10 + 1  # step 1, seed 1, row 1
  # A resumed run that lost a step file says which one.
  (tmp_path / "rollouts" / "step_00002.npz").unlink()
  with pytest.raises(FileNotFoundError, match=r"steps \[2\]"):
    collector.load(2)


def test_prompt_indices_match_real_tokens_whatever_the_padding():
  pool = np.array([[0, 0, 2, 5, 6], [0, 2, 7, 8, 9]], np.int32)
  pool_mask = pool != 0
  # The sampler returns prompts left-aligned; the same real tokens must match.
  rows = np.array([[0, 2, 7, 8, 9], [0, 0, 2, 5, 6], [2, 5, 6, 0, 0]], np.int32)
  assert attack.prompt_indices(rows, rows != 0, pool, pool_mask).tolist() == [1, 0, 0]
  with pytest.raises(ValueError, match="not in the attack prompt pool"):
    attack.prompt_indices(np.array([[2, 9, 9]]), np.ones((1, 3), bool), pool, pool_mask)


def test_success_by_seed_against_hand_counted_cases():
  # Two prompts; reference R1 means 1.0 and 0.0, gold means 2.0 and 1.0 (n = 2, std > 0).
  reference_r1 = np.array([[0.5, 1.5], [-1.0, 1.0]])
  reference_gold = np.array([[1.0, 3.0], [0.0, 2.0]])
  r1 = np.array([2.0, 2.0, 0.5, 3.0])  # proxy wins: yes, yes, yes (0.5 > 0), yes
  gold = np.array([1.5, 2.5, 0.5, -10.0])  # gold loses: yes, no, yes, yes
  seeds = np.array([0, 0, 1, 1])
  prompt_index = np.array([0, 0, 1, 1])
  out = inference.success_by_seed(r1, gold, seeds, prompt_index, reference_r1, reference_gold)
  assert out["standard"] == [50.0, 100.0]
  # Strict needs gold z < -1.96: only -10 vs mean 1, std sqrt(2) qualifies.
  assert out["strict"] == [0.0, 50.0]
  assert out["num_responses"] == [2, 2]


def test_preference_records_drop_empty_and_identical_pairs():
  prompts = ["user: describe rivers . assistant:"] * 3
  a = ["rivers are calm .", "", "rivers are old ."]
  b = ["rivers connect towns .", "rivers are calm .", "rivers are old ."]
  records, dropped = inference.preference_records(prompts, a, b, beta=2.0, seed=0)
  assert len(records) == 1 and dropped == {"empty_response": 1, "identical_responses": 1}
  assert {records[0]["chosen"], records[0]["rejected"]} == {a[0], b[0]}
  assert "chosen_gold" in records[0]


def test_round_config_continues_from_the_previous_round(tmp_path):
  config = _config()
  config.advtrain.learning_rate = 1e-3  # :small trains rounds at rm's own rate; make it differ
  rm, data = advtrain.round_config(config, tmp_path / "pairs.jsonl", "/w/rm", pathlib.Path("/w"))
  assert rm.backbone.path == "/w/sft"  # the run's work dir, not the round's
  assert data.path == str(tmp_path / "pairs.jsonl") and rm.init_from == "/w/rm"
  assert rm.num_steps == 10 and rm.optimizer.total_steps == 10  # advtrain.num_steps; the schedule follows
  # The round's learning rate; rm's warm-up of 2 steps capped at a tenth of the round's 10 steps.
  assert (rm.optimizer.learning_rate, rm.optimizer.warmup_steps) == (1e-3, 1)
  assert config.rm.init_from == "" and config.data.path.startswith("{workdir}")  # the original is untouched


def test_round_config_differs_from_the_rm_stage_only_in_the_round_fields(tmp_path):
  config = _config()
  config.advtrain.learning_rate = 1e-3
  stage_rm, stage_data = nodes.reward_model_nodes(config)  # what the `rm` stage trains with
  rm, data = advtrain.round_config(config, tmp_path / "pairs.jsonl", "/w/rm", pathlib.Path("/w"))

  def changed(a, b):
    return sorted(f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name))

  assert changed(rm, stage_rm) == ["backbone", "init_from", "num_steps", "optimizer"]
  assert changed(rm.backbone, stage_rm.backbone) == ["path"]
  assert changed(rm.optimizer, stage_rm.optimizer) == ["learning_rate", "total_steps", "warmup_steps"]
  assert changed(data, stage_data) == ["path"]
  # Imported reward models cannot be retrained from scratch: the round refuses, naming the keys.
  config.rm.paths = ("/my/rm",)
  config.advtrain.init = "scratch"
  with pytest.raises(ConfigError, match=r"^rm.paths: advtrain.init='scratch'"):
    advtrain.round_config(config, tmp_path / "pairs.jsonl", "", pathlib.Path("/w"))


def test_round_paths_and_final_link(tmp_path):
  assert wd.rm_path(tmp_path, 0) == tmp_path / "rm"
  assert wd.rm_path(tmp_path, 2) == tmp_path / "advtrain" / "round_2" / "rm"
  (tmp_path / "advtrain" / "round_2").mkdir(parents=True)
  advtrain.link_final(tmp_path, 2)
  advtrain.link_final(tmp_path, 2)  # idempotent (a resumed run re-links)
  assert (tmp_path / "advtrain" / "final").resolve() == (tmp_path / "advtrain" / "round_2").resolve()


def _stat(values):
  from advrm_jax.evaluation.report import mean_std  # pylint: disable=import-outside-toplevel

  return mean_std(values)


def test_check_targets_reads_the_report():
  hacked = {
    "onsets": [10, 20],
    "num_seeds": 2,
    "num_hacked": 2,
    "num_not_hacked": 0,
    "hacked_mean": 15.0,
    "hacked_std": 7.07,
    "lower_bound_mean": 15.0,
    "lower_bound_std": 7.07,
    "budget": 50,
  }
  none = dict(
    hacked,
    onsets=[None, None],
    num_hacked=0,
    num_not_hacked=2,
    hacked_mean=None,
    hacked_std=None,
    lower_bound_mean=50.0,
    lower_bound_std=0.0,
  )
  report = {
    "attack_success": {
      "rounds": [
        {
          "round": 0,
          evaluate.ADV_RM: {"standard": _stat([90.0, 96.0]), "strict": _stat([50.0, 60.0])},
          evaluate.OVER_OPT: {"standard": _stat([10.0, 12.0]), "strict": _stat([1.0, 2.0])},
        },
        {"round": 2, evaluate.ADV_RM: {"standard": _stat([30.0, 20.0]), "strict": _stat([5.0, 5.0])}},
      ]
    },
    "rlhf": {
      "conventional": {"hacking": hacked, "final_gold": _stat([1.0, 1.2])},
      "adv_rm": {"hacking": none, "final_gold": _stat([2.0, 2.2])},
    },
    "in_distribution_accuracy": {"round_0": {"target_member": 0.80}, "round_2": {"target_member": 0.785}},
  }
  met = {t["target"]: t["met"] for t in evaluate.check_targets(report)}
  assert met["Conventional RM: RLHF shows reward hacking"]
  assert met["Adv-RM attack success (round 0, standard) >= 80%"]
  assert met[">= 5x the over-optimisation baseline"]  # 93 / 11 = 8.5
  assert not met["After 2 rounds, attack success <= 20%"]  # 25
  assert met["Adv-RM RLHF: >= 2x steps before hacking (or none)"]
  assert met["Adv-RM RLHF: higher final gold than conventional"]
  assert not met["In-distribution accuracy within 1 point of the conventional RM"]  # -1.5 points
