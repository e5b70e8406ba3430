"""The study runner (configs/study.py, stage `study`): realisation records, arms' chains, resume.

One `:tiny` study (2 realisations, every arm) runs once for the module through the entry point; the
tests read what it wrote against the raw artefacts it came from (metrics.jsonl, attack summaries,
config.json), not against the runner's own helpers.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from advrm_jax.pipelines import load_config
from advrm_jax.pipelines import study

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "study.py"
ALL_ARMS = ("C0", "T", "C1", "C2", "C3", "oracle")
ROUNDS = 2


def _run(workdir: pathlib.Path) -> subprocess.CompletedProcess:
  # One CPU device: the study is about the machinery, not the mesh.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
    [sys.executable, "-m", "advrm_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=3600,
  )


def _records(workdir: pathlib.Path) -> dict[str, dict]:
  return {p.parent.name: json.loads(p.read_text()) for p in sorted(workdir.glob("realisations/*/realisation.json"))}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("study") / "tiny"
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir, _records(workdir)


def test_study_configs_follow_the_protocol_table():
  screen = load_config(f"{CONFIG}:screen")
  assert [list(r) for r in screen.study.realisations] == [[s, 0] for s in range(8)]
  assert tuple(screen.study.arms) == ("C0", "T", "C1", "C2")
  full = load_config(str(CONFIG))
  assert sorted(map(tuple, full.study.realisations)) == [(s, p) for s in range(8) for p in range(4)]
  assert tuple(full.study.arms) == ALL_ARMS
  tiny = load_config(f"{CONFIG}:tiny")
  assert len(tiny.study.realisations) == 2 and tuple(tiny.study.arms) == ALL_ARMS
  for config, seeds in ((screen, 8), (full, 8), (tiny, 2)):
    assert config.stages == ("study",) and config.num_seeds == seeds and config.advrm.num_rounds == ROUNDS
    assert config.advtrain.control and config.attack.lam == 1.0
    assert sorted(config.rlhf.runs) == ["adv_rm", "conventional", "fresh_pairs", "oracle_gold"]
  # Realisation (s, p): SFT seed s, config.seed = s + 1000 p; C2 and C3 change one key each.
  main = study.realisation_config(full, 3, 2)
  assert (main.seed, main.sft.seed) == (2003, 3)
  assert study.chain_config(main, "C2").attack.lam == 0.0
  assert study.chain_config(main, "C3").filter.z_min == -math.inf
  with pytest.raises(ValueError, match="study.arms"):
    bad = load_config(f"{CONFIG}:tiny")
    bad.study.arms = ("C0", "C9")
    study.check_study(bad)


@pytest.mark.slow  # the whole :tiny study (every stage of 2 realisations, 5 chains each)
def test_every_realisation_record_has_the_schema(tiny_study):
  workdir, records = tiny_study
  assert sorted(records) == ["s0_p0", "s0_p1"]
  config = json.loads((workdir / "config.json").read_text())
  seeds, budget = config["num_seeds"], config["rlhf"]["num_steps"]
  for name, record in records.items():
    assert record["name"] == name and record["status"] == "ok" and record["error"] is None
    assert (record["sft_seed"], record["pref_seed"]) == {"s0_p0": (0, 0), "s0_p1": (0, 1)}[name]
    main = workdir / "realisations" / name / "main"
    report = json.loads((main / "report.json").read_text())
    assert record["method_checks"] == report["method_checks"]
    assert record["reference_gold"] == report["prefs"]["reference_gold_mean"]
    assert record["disagreement_share"] is None or 0.0 <= record["disagreement_share"] <= 1.0
    assert record["rl_budget"] == budget
    assert record["hacking"] == {
      "margin": config["evaluate"]["hacking_margin"],
      "window": config["evaluate"]["hacking_window"],
    }
    assert sorted(record["arms"]) == sorted(ALL_ARMS)
    for arm, entry in record["arms"].items():
      steps = entry["steps"]
      assert steps and steps[-1] == budget and all(isinstance(s, int) for s in steps)
      for key in ("gold", "proxy", "kl"):
        assert np.asarray(entry[key], np.float64).shape == (seeds, len(steps)), (arm, key)
      if arm == "oracle":
        assert entry["attack_after"] is None and entry["accuracy"] is None
        np.testing.assert_allclose(entry["proxy"], entry["gold"], rtol=1e-5)  # the oracle optimises gold
      else:
        assert 0.0 <= entry["accuracy"] <= 100.0
        after = entry["attack_after"]
        assert 0.0 <= after["strict"] <= after["standard"] + 1e-9 <= 100.0 + 1e-9
    for kind in ("adversarial", "in_distribution"):
      shortfall = record["uncertainty_shortfall"][kind]
      assert shortfall["n"] > 0 and (shortfall["r"] is None or -1.0 <= shortfall["r"] <= 1.0)
    # n: every adversary sample of round 0 (seeds x steps x rows), every reference sample of the pool.
    reference = np.load(main / "prefs" / "reference.npz")
    assert record["uncertainty_shortfall"]["in_distribution"]["n"] == reference["gold"].size


@pytest.mark.slow
def test_records_read_the_right_runs_and_attacks(tiny_study):
  workdir, records = tiny_study
  rdir = workdir / "realisations" / "s0_p1"
  record = records["s0_p1"]
  seeds = json.loads((workdir / "config.json").read_text())["num_seeds"]
  runs = {
    "C0": rdir / "main/rlhf/conventional",
    "T": rdir / "main/rlhf/adv_rm",
    "C1": rdir / "main/rlhf/fresh_pairs",
    "oracle": rdir / "main/rlhf/oracle_gold",
    "C2": rdir / "C2/rlhf/adv_rm",
    "C3": rdir / "C3/rlhf/adv_rm",
  }
  for arm, run_dir in runs.items():
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "gold_reward/seed0" in r]
    assert record["arms"][arm]["steps"] == [r["step"] for r in rows]
    np.testing.assert_allclose(
      record["arms"][arm]["gold"], [[r[f"gold_reward/seed{s}"] for r in rows] for s in range(seeds)], rtol=1e-6
    )
    np.testing.assert_allclose(
      record["arms"][arm]["kl"], [[r[f"kl/seed{s}"] for r in rows] for s in range(seeds)], rtol=1e-6
    )
  # The fresh adversary of each arm: a standard (lam = 1) attack on that arm's final RM.
  attacks = {
    "C0": rdir / "main/attack/round_0",
    "T": rdir / f"main/attack/round_{ROUNDS}",
    "C1": rdir / f"probe_C1/attack/round_{ROUNDS}",
    "C2": rdir / f"probe_C2/attack/round_{ROUNDS}",
    "C3": rdir / f"C3/attack/round_{ROUNDS}",
  }
  final_rm = {
    "C0": rdir / "main/rm",
    "T": rdir / f"main/advtrain/round_{ROUNDS}/rm",
    "C1": rdir / f"main/advtrain_control/round_{ROUNDS}/rm",
    "C2": rdir / f"C2/advtrain/round_{ROUNDS}/rm",
    "C3": rdir / f"C3/advtrain/round_{ROUNDS}/rm",
  }
  for arm, attack_dir in attacks.items():
    summary = json.loads((attack_dir / "summary.json").read_text())
    for kind in ("standard", "strict"):
      assert record["arms"][arm]["attack_after"][kind] == pytest.approx(np.mean(summary["final_heldout"][kind]))
    # The attacked RM holds the arm's final checkpoint (the probes attack a copy).
    attacked = pathlib.Path(summary["rm"])
    for path in sorted((final_rm[arm] / "checkpoints").rglob("*")):
      if path.is_file():
        assert (
          path.read_bytes() == (attacked / "checkpoints" / path.relative_to(final_rm[arm] / "checkpoints")).read_bytes()
        ), (arm, path)
    lam = json.loads((attack_dir.parents[1] / "config.json").read_text())["attack"]["lam"]
    assert lam == 1.0, arm


@pytest.mark.slow
def test_chains_reuse_the_main_chain_and_change_one_thing(tiny_study):
  workdir, _ = tiny_study
  rdir = workdir / "realisations" / "s0_p1"
  main = json.loads((rdir / "main" / "config.json").read_text())
  assert (main["seed"], main["sft"]["seed"]) == (1000, 0)
  # The SFT model depends on the SFT seed alone: s0_p1 uses s0_p0's.
  assert (rdir / "main" / "sft").resolve() == (workdir / "realisations" / "s0_p0" / "main" / "sft").resolve()
  for arm in ("C2", "C3"):
    for stage in ("sft", "prefs", "rm"):
      assert (rdir / arm / stage).resolve() == (rdir / "main" / stage).resolve(), (arm, stage)
  c2 = json.loads((rdir / "C2" / "config.json").read_text())
  assert c2["attack"]["lam"] == 0.0 and c2["filter"]["z_min"] == main["filter"]["z_min"] == 1.96
  # C2's adversary really ran without the disagreement term: its logged reward is, step by step, the mean of
  # z1 + penalty * 1[z1 <= T] over the samples it drew (z: reference z units of RM round 0), not z1 - z2 ...
  collected = np.load(rdir / "C2/attack/round_0/collected.npz")
  units = json.loads((rdir / "main/rm/reference_standardization.json").read_text())
  z = (collected["member_scores"] - np.asarray(units["loc"])[:, None]) / np.asarray(units["scale"])[:, None]
  above = z[0] > collected["threshold"]
  penalty = c2["attack"]["penalty"]
  logged = [json.loads(line) for line in (rdir / "C2/attack/round_0/metrics.jsonl").read_text().splitlines()]
  logged = {r["step"]: r["proxy_reward"] for r in logged if "proxy_reward" in r}
  assert logged
  lam1_gaps = []
  for step, value in logged.items():
    rows = collected["step"] == step
    assert value == pytest.approx(np.mean(z[0][rows] + penalty * ~above[rows]), abs=1e-3), step
    lam1_gaps.append(abs(value - np.mean(z[0][rows] - z[1][rows] * above[rows] + penalty * ~above[rows])))
  assert max(lam1_gaps) > 1e-2  # ... which lam = 1 would have given
  c3 = json.loads((rdir / "C3" / "config.json").read_text())
  assert c3["attack"]["lam"] == 1.0 and c3["filter"]["z_min"] == -math.inf
  # Without the z(U) filter every sample above the floor is kept; with it (main) only the unusual ones.
  for r in range(ROUNDS + 1):
    summary = json.loads((rdir / "C3" / "filter" / f"round_{r}" / "summary.json").read_text())
    assert summary["num_kept"] == summary["num_above_threshold"]
  main_filter = json.loads((rdir / "main" / "filter" / "round_0" / "summary.json").read_text())
  assert main_filter["num_kept"] <= min(main_filter["num_above_threshold"], main_filter["num_high_uncertainty"])
  # C3's round 0 is main's adversary; its filter kept at least what main's kept.
  assert (rdir / "C3/attack/round_0").resolve() == (rdir / "main/attack/round_0").resolve()
  c3_filter = json.loads((rdir / "C3" / "filter" / "round_0" / "summary.json").read_text())
  assert c3_filter["num_kept"] >= main_filter["num_kept"]
  # config.plots = False in studies: no run renders its metrics.png (`python -m advrm_jax.report` does).
  assert list(rdir.rglob("metrics.jsonl")) and not list(rdir.rglob("metrics.png"))
  study = json.loads((workdir / "study.json").read_text())
  assert study["realisations"]["count"] == 2 and (workdir / "STUDY.md").exists()


@pytest.mark.slow
def test_a_resumed_realisation_gives_the_same_record(tiny_study):
  workdir, records = tiny_study
  rdir = workdir / "realisations" / "s0_p1"
  (rdir / "realisation.json").unlink()
  for run_dir in [*(rdir / "main" / "rlhf").iterdir(), rdir / "C2" / "rlhf", rdir / "C3" / "rlhf"]:
    shutil.rmtree(run_dir)
  before = (workdir / "realisations" / "s0_p0" / "realisation.json").stat().st_mtime_ns
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  assert _records(workdir) == records
  # The finished realisation was skipped, not rewritten.
  assert (workdir / "realisations" / "s0_p0" / "realisation.json").stat().st_mtime_ns == before


def test_a_realisation_that_diverges_twice_is_recorded_as_an_error(tmp_path):
  # A real non-finite loss: the SFT stage with an absurd learning rate stops on it (FloatingPointError), is
  # resumed once (the protocol's rule 3), stops again, and the realisation gets an error record.
  config = load_config(f"{CONFIG}:tiny")
  config.sft.optimizer.learning_rate = 1e30
  record = study.attempt_realisation(config, tmp_path, 0, 0, None)
  assert record["status"] == "error" and record["name"] == "s0_p0"
  assert record["error"].startswith("FloatingPointError: [sft] non-finite") and "\n" not in record["error"]
  assert record["arms"] == {} and record["method_checks"] is None
  assert not (tmp_path / "realisations" / "s0_p0" / "main" / "sft" / "DONE").exists()
