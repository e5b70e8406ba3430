"""The whole Adv-RM loop through the entry point on the `:small` synthetic config.

sft -> prefs -> rm -> advrm (2 rounds of attack -> filter -> advtrain, then a
last attack) -> rlhf (conventional, ensemble baselines, Adv-RM, oracle) ->
evaluate; then report.json is checked for structure and sanity, and a rerun
is checked to skip every finished stage.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic.py"
RUNS = ("conventional", "ensemble_mean", "ensemble_min", "uncertainty_weighted", "adv_rm", "fresh_pairs", "oracle_gold")


def _run(workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess:
  # One CPU device: the small run is about the pipeline, not the mesh.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
    [sys.executable, "-m", "advrm_jax.main", f"--config={CONFIG}:small", f"--workdir={workdir}", *overrides],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=3600,
  )


def _is_percent(stat) -> bool:
  return stat["n"] >= 1 and all(0.0 <= v <= 100.0 for v in stat["values"])


@pytest.mark.slow  # every stage of the small config (compiles dominate: ~1-2 min on 2 quiet cores)
def test_small_config_runs_every_stage_and_writes_a_sane_report(tmp_path):
  workdir = tmp_path / "run"
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-4000:]

  for done in (
    "sft",
    "prefs",
    "attack/round_0",
    "filter/round_0",
    "advtrain/round_1",
    "advtrain/round_2",
    "attack/round_2",
    "filter/round_2",
    *(f"rlhf/{r}" for r in RUNS),
  ):
    assert (workdir / done / "DONE").exists(), done
  assert (workdir / "advtrain" / "final").resolve() == (workdir / "advtrain" / "round_2").resolve()
  assert (workdir / "advtrain_control" / "final").resolve() == (workdir / "advtrain_control" / "round_2").resolve()

  # Dose and control: each round adds exactly advtrain.num_pairs (200 in :small) pairs to the same ordinary
  # set and trains the same number of steps (10), adversarial pairs in the Adv-RM arm, fresh gold-labelled
  # pairs in the control. Read from what each RM trained on (pairs.jsonl) and logged (its metrics).
  num_ordinary = len((workdir / "prefs" / "preferences.jsonl").read_text().splitlines())
  for r in (1, 2):
    trained = {}
    for arm in ("advtrain", "advtrain_control"):
      round_dir = workdir / arm / f"round_{r}"
      pairs = [json.loads(line) for line in (round_dir / "pairs.jsonl").read_text().splitlines()]
      steps = [
        row["step"]
        for row in map(json.loads, (round_dir / "rm" / "metrics.jsonl").read_text().splitlines())
        if "loss" in row
      ]
      trained[arm] = (len(pairs), sum(p["adversarial"] for p in pairs), sum(p["fresh"] for p in pairs), max(steps))
    assert trained["advtrain_control"] == (num_ordinary + 200, 0, 200, 10)
    summary = json.loads((workdir / "advtrain" / f"round_{r}" / "summary.json").read_text())
    if summary["num_adversarial_available"]:
      assert trained["advtrain"] == (num_ordinary + 200, 200, 0, 10)
      assert 1 <= summary["num_adversarial_unique"] <= min(200, summary["num_adversarial_available"])
    else:  # nothing kept: ordinary pairs only, still the same step count
      assert trained["advtrain"] == (num_ordinary, 0, 0, 10)
  # The reward units are stored with each RM round the adversary attacked.
  units = json.loads((workdir / "rm" / "reference_standardization.json").read_text())
  assert len(units["loc"]) == len(units["scale"]) == 2 and min(units["scale"]) > 0

  report = json.loads((workdir / "report.json").read_text())
  assert report["num_rounds"] == 2 and report["num_seeds"] == 1
  rounds = report["attack_success"]["rounds"]
  assert [r["round"] for r in rounds] == [0, 1, 2]
  for entry in rounds:
    for method in ("Adv-RM", "TextFooler"):
      assert _is_percent(entry[method]["standard"]) and _is_percent(entry[method]["strict"]), (entry["round"], method)
      # Strict success implies standard success on the same responses (same R1 test, stricter gold test).
      assert entry[method]["strict"]["mean"] <= entry[method]["standard"]["mean"] + 1e-9
  assert _is_percent(rounds[0]["RM over-optimisation"]["standard"])
  assert _is_percent(rounds[2]["RM over-optimisation"]["standard"])

  assert [f["round"] for f in report["filter"]] == [0, 1, 2]
  for summary in report["filter"]:
    assert 0 <= summary["num_pairs"] <= summary["num_kept"] <= summary["num_collected"]
    # Every uncertainty signal is compared with gold, the verdict probe trained on the held-out pairs.
    compared = summary["signals"]["signals"]
    assert set(compared) == {"r1_minus_r2", "std", "semantic_surprisal", "semantic_entropy", "probe"}
    assert summary["probe"]["num_pairs"] == report["in_distribution_accuracy"][f"round_{summary['round']}"]["num_pairs"]
    for entry in compared.values():
      assert entry["auc_bad"] is None or 0.0 <= entry["auc_bad"] <= 1.0

  assert set(report["rlhf"]) == set(RUNS)
  assert report["rlhf"]["oracle_gold"]["oracle"] and not report["rlhf"]["conventional"]["oracle"]
  for name, run in report["rlhf"].items():
    steps = run["steps"]
    assert steps[-1] == 4 and len(run["gold"]) == 1 and len(run["gold"][0]) == len(steps), name
    assert all(math.isfinite(v) for v in run["gold"][0] + run["proxy"][0] + run["kl"][0]), name
    assert run["hacking"]["num_seeds"] == 1 and run["hacking"]["budget"] == 4

  # The method checks come first, each with its value, rule and verdict.
  checks = report["method_checks"]
  assert set(checks) == {
    "adversary_final_mean_zU",
    "kept_unique_per_round",
    "member_reward_corr_adversary",
    "conventional_rlhf_gold_rise",
    "all_pass",
  }
  assert len(checks["kept_unique_per_round"]["value"]) == 3
  assert checks["all_pass"] == all(c["pass"] for k, c in checks.items() if k != "all_pass")
  assert report["attack_success"]["prompts"] == "held-out"
  heldout = report["attack_summaries"]["0"]["final_heldout"]
  assert heldout["num_prompts"] == 16 and heldout["reference_samples"] == 8 and heldout["gold_std_floor"] > 0
  assert report["fresh_pairs"]["rlhf"] is not None and len(report["fresh_pairs"]["advtrain"]) == 2
  assert set(report["exploits"]["families"]) >= {"off_topic_praise", "style_stacking", "topic_stuffing"}
  assert report["exploits"]["disagreement_share"] is None or 0.0 <= report["exploits"]["disagreement_share"] <= 1.0
  assert report["matched_kl"]["kl"] == [2.0, 4.0, 6.0] and set(report["matched_kl"]["rlhf_gold"]) == set(RUNS)
  # Snapshots (every 2 steps of 4, and step 0) of the round-0 adversary and of conventional RLHF, read at matched KL.
  snapshots = report["matched_kl"]["snapshots"]
  assert set(snapshots) == {"adversary", "conventional_rlhf"}
  for snap in snapshots.values():
    assert snap["steps"] == [0, 2, 4] and len(snap["standard"]) == len(snap["kl"]) == 1  # [seeds][snapshots]
    assert snap["kl"][0][0] == 0.0 and len(snap["at_kl"]["standard"]) == 3
  assert report["rlhf"]["conventional"]["kl"][0] == snapshots["conventional_rlhf"]["kl"][0][1:]
  peak = report["over_optimisation_peak"]
  assert peak["snapshot_step"] in (0, 2, 4) and 0.0 <= peak["standard"]["mean"] <= 100.0

  accuracy = report["in_distribution_accuracy"]
  assert set(accuracy) == {"round_0", "round_1", "round_2", "fresh_pairs_round_1", "fresh_pairs_round_2"}
  for value in accuracy.values():
    assert 0.0 <= value["target_member"] <= 1.0 and len(value["members"]) == 2
  assert 0.5 <= report["label_gold_agreement"] <= 1.0

  assert {t["target"] for t in report["targets"]} >= {
    "Adv-RM attack success (round 0, standard) >= 80%",
    "After 2 rounds, attack success <= 20%",
  }
  assert report["paper_table1"]["Adv-RM"] == [99.31, 92.91]
  markdown = (workdir / "REPORT.md").read_text()
  assert "Table 1" in markdown and "Targets" in markdown and "Which uncertainty signal" in markdown
  assert markdown.index("Method checks") < markdown.index("Table 1")
  assert "fresh-pairs control" in markdown and "matched KL" in markdown
  for plot in report["plots"]:
    assert (workdir / "plots" / plot).stat().st_size > 0
  assert set(report["plots"]) == {"rlhf_gold_proxy.png", "attack_success_per_round.png", "uncertainty_vs_gold.png"}

  # Every artefact is in place: a rerun skips the finished stages and rebuilds the same report.
  again = _run(workdir, "--verbosity=0")  # the skip messages are INFO lines
  assert again.returncode == 0, again.stderr[-4000:]
  for skipped in (
    "sft: ",
    "prefs: ",
    "attack/round_0: done, skipping",
    "advtrain/round_2: done, skipping",
    "rlhf/conventional: done, skipping",
  ):
    assert skipped in again.stderr, skipped
  assert json.loads((workdir / "report.json").read_text())["attack_success"] == report["attack_success"]
