"""The study analysis (advrm_jax/evaluation/study_report.py) on hand-made realisation records.

Every expected number is worked out here, by hand or with numpy/scipy, from the curves the helper
builds; none is read back from the code under test.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from advrm_jax.evaluation import statistics as st
from advrm_jax.evaluation import study_report as sr

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SEEDS = 8
# Seed s's gold is the arm's curve + 0.1 (s - 3.5): the offsets average to 0 over all 8 seeds, so an
# arm whose seeds all reach a target has the offset-free curve's value there.
OFFSETS = 0.1 * (np.arange(SEEDS) - 3.5)
STEPS = [0, 10, 20, 30, 40]
KL = [0.0, 1.0, 3.0, 5.0, 7.0]
# Read at 2 nats: halfway from KL 1 to 3, 1.2 + 0.5 (1.6 - 1.2) = 1.4; at 4: 1.6 + 0.5 (1.4 - 1.6) = 1.5;
# at 6: 1.4 + 0.5 (1.0 - 1.4) = 1.2.
C0_GOLD = [1.0, 1.2, 1.6, 1.4, 1.0]
C0_AT_TARGETS = np.array([1.4, 1.5, 1.2])


def arm(gold, kl=KL, steps=STEPS, proxy=None, standard=30.0, accuracy=75.0):
  """One arm: every seed shares `kl` (a [T] list) or has its own ([8][T]); gold = curve + seed offset."""
  kl = np.broadcast_to(np.asarray(kl, float), (SEEDS, len(steps)))
  gold = np.asarray(gold, float)[None] + OFFSETS[:, None]
  proxy = gold if proxy is None else np.broadcast_to(np.asarray(proxy, float), gold.shape)
  return {
    "steps": list(steps),
    "gold": gold.tolist(),
    "proxy": proxy.tolist(),
    "kl": kl.tolist(),
    "attack_after": {"standard": standard, "strict": standard / 2},
    "accuracy": accuracy,
  }


def shifted(**shifts):
  """Arms on the C0 curve, each shifted by a constant: T - C1 at matched KL is then shift_T - shift_C1."""
  return {name: arm(np.asarray(C0_GOLD) + shift) for name, shift in shifts.items()}


def checks(failing=None):
  """report.json's method_checks with every check passing but `failing` ({name: value})."""
  rules = {
    "adversary_final_mean_zU": (2.5, ">= 1.96"),
    "kept_unique_per_round": ([800, 600], "round 0 >= 500"),
    "member_reward_corr_adversary": (0.6, "<= 0.9"),
    "conventional_rlhf_gold_rise": (0.5, ">= 0.3"),
  }
  out = {name: {"value": value, "rule": rule, "pass": True} for name, (value, rule) in rules.items()}
  for name, value in (failing or {}).items():
    out[name] = {"value": value, "rule": rules[name][1], "pass": False}
  out["all_pass"] = not failing
  return out


def realisation(sft_seed, arms, pref_seed=0, failing=None, share=0.5, r_adv=0.6, r_in=0.2, budget=40):
  return {
    "name": f"s{sft_seed}_p{pref_seed}",
    "sft_seed": sft_seed,
    "pref_seed": pref_seed,
    "status": "ok",
    "error": None,
    "method_checks": checks(failing),
    "disagreement_share": share,
    "reference_gold": 1.0,
    "rl_budget": budget,
    "hacking": {"margin": 0.5, "window": 1},
    "arms": arms,
    "uncertainty_shortfall": {"adversarial": {"r": r_adv, "n": 100}, "in_distribution": {"r": r_in, "n": 100}},
  }


def failed_run(sft_seed):
  return {
    "name": f"s{sft_seed}_p0",
    "sft_seed": sft_seed,
    "pref_seed": 0,
    "status": "error",
    "error": "NaN stop at RL step 12 (after one resume)",
  }


def test_primary_difference_from_hand_made_curves():
  # s0: T on its own piecewise-linear curve, KL 0, 2.5, 5, 7.5 with gold 1, 2, 2.5, 2: at 2 nats
  # 1 + (2/2.5)(2 - 1) = 1.8; at 4: 2 + (1.5/2.5)(2.5 - 2) = 2.3; at 6: 2.5 + (1/2.5)(2 - 2.5) = 2.3.
  # d = ((1.8 - 1.4) + (2.3 - 1.5) + (2.3 - 1.2)) / 3 = 2.3 / 3.
  s0 = realisation(0, {"C0": arm(C0_GOLD), "T": arm([1.0, 2.0, 2.5, 2.0], kl=[0, 2.5, 5, 7.5], steps=STEPS[:4])})
  # s1: T = C0 + 0.5, but seeds 4..7 stop at KL 5.5: 4 of 8 seeds (exactly half) still count at 6 nats,
  # their offsets average 0.1 (-3.5 - 2.5 - 1.5 - 0.5) / 4 = -0.2, so T(6) = 1.2 + 0.5 - 0.2 = 1.5;
  # d = (0.5 + 0.5 + (1.5 - 1.2)) / 3 = 1.3 / 3.
  kl_s1 = [KL if s < 4 else [0, 1, 3, 5, 5.5] for s in range(SEEDS)]
  s1 = realisation(1, {"C0": arm(C0_GOLD), "T": arm(np.asarray(C0_GOLD) + 0.5, kl=kl_s1)})
  # s2: only 3 of 8 T seeds reach 6 nats: that target does not count; d = 0.25 over 2 and 4 nats.
  kl_s2 = [KL if s < 3 else [0, 1, 3, 5, 5.5] for s in range(SEEDS)]
  s2 = realisation(2, {"C0": arm(C0_GOLD), "T": arm(np.asarray(C0_GOLD) + 0.25, kl=kl_s2)})
  study = sr.analyse([s0, s1, s2], "abc")
  rows = {row["name"]: row for row in study["primary"]["per_realisation"]}
  assert rows["s0_p0"]["d"] == pytest.approx(2.3 / 3)
  assert rows["s0_p0"]["targets"] == [2.0, 4.0, 6.0]
  assert rows["s1_p0"]["d"] == pytest.approx(1.3 / 3)
  assert rows["s2_p0"]["d"] == pytest.approx(0.25)
  assert rows["s2_p0"]["targets"] == [2.0, 4.0]
  d = np.array([2.3 / 3, 1.3 / 3, 0.25])
  primary = study["primary"]
  assert primary["n"] == 3 and primary["mean"] == pytest.approx(d.mean())
  assert primary["p_t"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
  assert primary["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)  # 2/8 = 0.25
  # Percentile bootstrap of the mean, 10,000 resamples with numpy's default_rng(0).
  means = d[np.random.default_rng(0).integers(0, 3, size=(10000, 3))].mean(axis=1)
  assert primary["ci95"] == pytest.approx(list(np.quantile(means, [0.025, 0.975])))
  assert study["protocol_commit"] == "abc" and study["realisations"]["included"] == ["s0_p0", "s1_p0", "s2_p0"]
  assert sr.analyse([s2, s0, s1], "abc") == study  # the records' order does not matter


def test_exclusions_name_their_reasons():
  records = [
    realisation(0, shifted(C0=0.0, T=0.3, C1=0.1)),
    realisation(1, shifted(C0=0.0, T=0.5, C1=0.2)),
    realisation(2, shifted(C0=0.0, T=0.4, C1=0.0)),
    # T never reaches 2 nats: no primary value, but it realised the method (secondary analyses keep it).
    realisation(3, {**shifted(C0=0.0, C1=0.0), "T": arm(C0_GOLD, kl=[0, 0.5, 1.0, 1.5, 1.9])}),
    realisation(4, shifted(C0=0.0, T=5.0, C1=0.0), failing={"kept_unique_per_round": [320, 410]}),
    failed_run(5),
  ]
  study = sr.analyse(records, "abc")
  excluded = {e["name"]: e for e in study["realisations"]["excluded"]}
  assert set(excluded) == {"s3_p0", "s4_p0", "s5_p0"}
  assert (
    excluded["s3_p0"]["why"].startswith("no matched KL") and excluded["s3_p0"]["excluded_from"] == "primary analysis"
  )
  assert excluded["s4_p0"]["checks"] == {"kept_unique_per_round": {"value": [320, 410], "rule": "round 0 >= 500"}}
  assert "kept_unique_per_round = [320, 410]" in excluded["s4_p0"]["why"]
  assert excluded["s4_p0"]["excluded_from"] == "all analyses"
  assert "NaN stop" in excluded["s5_p0"]["why"] and excluded["s5_p0"]["excluded_from"] == "all analyses"
  assert study["realisations"]["count"] == 6
  assert study["realisations"]["included"] == ["s0_p0", "s1_p0", "s2_p0"]
  assert study["method_checks_pass_rate"] == pytest.approx(4 / 6)
  assert not study["method_not_realised_in_most"]
  assert study["primary"]["mean"] == pytest.approx(0.4)  # (0.3 + 0.5 + 0.4) / 3: s4's 5.0 is out
  # The sensitivity analysis ignores the method checks: s4 comes back, s3 (no value) and s5 (error) do not.
  assert study["primary"]["sensitivity"]["n"] == 4
  assert study["primary"]["sensitivity"]["mean"] == pytest.approx((0.3 + 0.5 + 0.4 + 5.0) / 4)
  # s3 is out of the primary analysis only: T - C1 at matched KL has no value there either, but the
  # attack-success comparison counts it (4 realisations pass the checks).
  assert study["secondary"]["controls_on_primary"]["comparisons"]["T-C1"]["n"] == 3
  assert study["secondary"]["attack_success_after_two_rounds"]["comparisons"]["T-C1"]["n"] == 4


def test_verdict_rule():
  assert sr.primary_verdict((0.2, 0.5), 0.01) == "different"
  assert sr.primary_verdict((0.2, 0.5), 0.08) == "inconclusive"  # the bootstrap and the t-test disagree
  assert sr.primary_verdict((-0.1, 0.12), 0.5) == "equivalent"
  assert sr.primary_verdict((0.02, 0.14), 0.001) == "equivalent"  # real but negligible
  assert sr.primary_verdict((-0.1, 0.4), 0.3) == "inconclusive"
  # Through the analysis: d = 0.05, 0.1, 2.0. Every resample is drawn from these, so its mean is >= 0.05:
  # the bootstrap CI excludes 0 and reaches past 0.15; the t-test (mean 0.717, SD 1.11, t = 1.12 on 2 df)
  # gives p = 0.38.
  records = [realisation(i, shifted(C0=0.0, T=shift)) for i, shift in enumerate((0.05, 0.1, 2.0))]
  study = sr.analyse(records, "abc")
  primary = study["primary"]
  assert primary["ci95"][0] >= 0.05 and primary["ci95"][1] > 0.15
  assert primary["p_t"] == pytest.approx(stats.ttest_1samp([0.05, 0.1, 2.0], 0.0).pvalue)
  assert primary["p_t"] > 0.05
  assert primary["ci_verdict"] == "different" and primary["verdict"] == "inconclusive"
  assert "the bootstrap and the t-test disagree" in sr.render_markdown(study, "x")


def test_holm_over_the_controls():
  # Per realisation T - C1, T - C2, T - C3 at matched KL = the shift differences.
  shifts = [
    dict(C0=0.0, T=0.6, C1=0.1, C2=0.5, C3=0.0),
    dict(C0=0.0, T=0.4, C1=0.0, C2=0.5, C3=0.1),
    dict(C0=0.0, T=0.7, C1=0.3, C2=0.6, C3=0.2),
    dict(C0=0.0, T=0.5, C1=0.0, C2=0.6, C3=0.4),
  ]
  study = sr.analyse([realisation(i, shifted(**s)) for i, s in enumerate(shifts)], "abc")
  comparisons = study["secondary"]["controls_on_primary"]["comparisons"]
  raw = {c: stats.ttest_1samp([s["T"] - s[c] for s in shifts], 0.0).pvalue for c in ("C1", "C2", "C3")}
  # Holm by hand: sort ascending, multiply by 3, 2, 1, keep the running maximum, cap at 1.
  order = sorted(raw, key=raw.get)
  adjusted, running = {}, 0.0
  for i, c in enumerate(order):
    running = max(running, min(1.0, (3 - i) * raw[c]))
    adjusted[c] = running
  for c in ("C1", "C2", "C3"):
    assert comparisons[f"T-{c}"]["p_t"] == pytest.approx(raw[c])
    assert comparisons[f"T-{c}"]["p_holm"] == pytest.approx(adjusted[c])
    assert comparisons[f"T-{c}"]["significant"] == (adjusted[c] < 0.05)
  assert comparisons["T-C1"]["mean"] == pytest.approx(np.mean([0.5, 0.4, 0.4, 0.5]))


def test_restricted_mean_time_to_hacking():
  # With margin 0.5 and window 1: gold 0, 1, 2, 1.4, 1 under a rising proxy falls 0.6 below its peak
  # (2 at step 20) at step 30: onset 30. Gold 0, 1, 0.4, ... falls 0.6 below its peak at step 20: onset 20.
  # Gold that never falls: censored at the budget, 40.
  rising = [0, 1, 2, 3, 4]
  curves = {30: [0, 1, 2, 1.4, 1.0], 20: [0, 1, 0.4, 0.4, 0.4], None: [0, 1, 2, 2, 2]}

  def hacking_arm(onsets):
    entry = arm(C0_GOLD, proxy=rising)
    entry["gold"] = [curves[o] for o in onsets]  # no seed offsets: the onsets are exact
    return entry

  # s0: T hacks at 30 in 4 seeds, never in 4: S = 1 up to 30, then 1/2: RMST = 30 + 0.5 * 10 = 35.
  #     C0 hacks at 20 in all 8: RMST = 20. d = 15.
  # s1: T: 2 at 20, 2 at 30, 4 never: S(20) = 6/8, S(30) = 6/8 * 4/6 = 1/2:
  #     RMST = 20 + 0.75 * 10 + 0.5 * 10 = 32.5. C0: 4 at 20, 4 at 30: S(20) = 1/2, S(30) = 0:
  #     RMST = 20 + 0.5 * 10 = 25. d = 7.5.
  records = [
    realisation(0, {"C0": hacking_arm([20] * 8), "T": hacking_arm([30] * 4 + [None] * 4)}),
    realisation(1, {"C0": hacking_arm([20] * 4 + [30] * 4), "T": hacking_arm([20] * 2 + [30] * 2 + [None] * 4)}),
  ]
  result = sr.analyse(records, "abc")["secondary"]["steps_to_hacking"]
  rows = {row["name"]: row for row in result["restricted_mean"]["per_realisation"]}
  assert (rows["s0_p0"]["T"], rows["s0_p0"]["C0"], rows["s0_p0"]["d"]) == pytest.approx((35, 20, 15))
  assert (rows["s1_p0"]["T"], rows["s1_p0"]["C0"], rows["s1_p0"]["d"]) == pytest.approx((32.5, 25, 7.5))
  assert result["restricted_mean"]["mean"] == pytest.approx(11.25)
  # Kaplan-Meier over T's 16 runs: 2 events at 20 (16 at risk), 6 at 30 (14 at risk), 8 censored:
  # S(20) = 14/16, S(30) = 14/16 * 8/14 = 1/2, so the median is 30.
  km = result["kaplan_meier"]["T"]
  assert km["steps"] == [20, 30] and km["survival"] == pytest.approx([14 / 16, 0.5])
  assert km["median"] == 30 and km["num_censored"] == 8 and km["num_runs"] == 16


def test_n_for_the_full_study_reproduces_the_protocols_example():
  # Eight primary differences with SD exactly 0.51 (the protocol's "for scale" example): s_plan =
  # 0.51 sqrt(7 / chi^2_{0.2, 7}) = 0.69 and N = 44.
  z = np.arange(8) - 3.5
  d = 0.1 + 0.51 * z / z.std(ddof=1)
  plan = sr.n_for_full_study(d)
  assert plan["s"] == pytest.approx(0.51)
  assert plan["s_plan"] == pytest.approx(0.51 * np.sqrt(7 / stats.chi2.ppf(0.2, 7)))
  assert round(plan["s_plan"], 2) == 0.69
  assert plan["N"] == 44 and plan["N"] % 4 == 0
  assert plan["ci95_half_width_at_N"] == pytest.approx(stats.t.ppf(0.975, 43) * plan["s_plan"] / np.sqrt(44))
  assert not plan["equivalence_reachable"]  # 2.017 * 0.690 / 6.633 = 0.210 > 0.15
  # A small spread still asks for the default 32: s = 0.1 from 8 gives s_plan 0.135, required n 4 or so.
  assert sr.n_for_full_study(0.1 * z / z.std(ddof=1))["N"] == 32
  # The protocol's "the default 32 would give a 95 % CI half-width of about 0.18 at SD 0.51":
  # t_{0.975, 31} = 2.0395, 2.0395 * 0.51 / sqrt(32) = 0.1839.
  assert st.expected_ci_half_width(0.51, 32) == pytest.approx(0.1839, abs=1e-4)


def test_least_squares_line_and_the_moderator_by_hand():
  # x 0, 1, 2, 3; y 1, 3, 2, 6: Sxy = (-1.5)(-2) + (-0.5)(0) + (0.5)(-1) + (1.5)(3) = 7, Sxx = 5:
  # slope 1.4, intercept 3 - 1.4 * 1.5 = 0.9.
  line = st.least_squares_line([0, 1, 2, 3], [1, 3, 2, 6])
  assert (line["slope"], line["intercept"]) == pytest.approx((1.4, 0.9))
  # d_r = 0.1 + 2 share exactly: slope 2, Pearson and Spearman 1; an undefined share is left out.
  shares = [0.1, 0.2, 0.4, None]
  records = [realisation(i, shifted(C0=0.0, T=0.1 + 2 * (s or 0)), share=s) for i, s in enumerate(shares)]
  mod = sr.analyse(records, "abc")["moderator"]
  assert mod["n"] == 3 and mod["left_out"] == ["s3_p0"]
  assert mod["slope"] == pytest.approx(2.0) and mod["intercept"] == pytest.approx(0.1)
  assert mod["pearson"] == pytest.approx(1.0) and mod["spearman"] == pytest.approx(1.0)


def _study_dir(tmp_path, records):
  for record in records:
    path = tmp_path / "realisations" / record["name"] / "realisation.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
  return tmp_path


def test_write_study_and_the_report_command_render_the_same_study(tmp_path):
  records = [
    realisation(
      i // 2,
      shifted(C0=0.0, T=0.1 * i, C1=0.05, C2=0.02),
      pref_seed=i % 2,
      failing={"conventional_rlhf_gold_rise": 0.1} if i < 3 else None,
    )
    for i in range(5)
  ]
  study_dir = _study_dir(tmp_path, records)
  study = sr.write_study(study_dir, command="python -m advrm_jax.main --config configs/study.py:screen")
  for name in sr.PLOT_FILES:
    assert (study_dir / "plots" / name).stat().st_size > 0
  text = (study_dir / "STUDY.md").read_text()
  assert text.splitlines()[0] == "Produced by `python -m advrm_jax.main --config configs/study.py:screen`."
  # The protocol's commit: the one that added docs/study_protocol.md in this checkout.
  added = subprocess.run(
    ["git", "-C", str(REPO_ROOT), "log", "--diff-filter=A", "--format=%H", "--", "docs/study_protocol.md"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.split()[-1]
  assert study["protocol_commit"] == added and added in text
  # 2 of 5 pass the checks: the report says so before the primary table.
  assert study["method_checks_pass_rate"] == pytest.approx(0.4)
  assert text.index("not realised in most") < text.index("## Primary endpoint")
  for section in (
    "s1_p1",
    "Holm",
    "Kaplan-Meier",
    "Non-inferiority",
    "## Moderator",
    "## N for the full study",
    "conventional_rlhf_gold_rise = 0.1 (needs >= 0.3)",
  ):
    assert section in text
  first = (study_dir / "study.json").read_text()
  assert json.loads(first) == study
  for name in sr.PLOT_FILES:
    (study_dir / "plots" / name).unlink()
  (study_dir / "study.json").unlink()
  out = subprocess.run(
    [sys.executable, "-m", "advrm_jax.report", str(study_dir)], cwd=REPO_ROOT, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr
  assert (study_dir / "study.json").read_text() == first
  assert all((study_dir / "plots" / name).exists() for name in sr.PLOT_FILES)
  assert (study_dir / "STUDY.md").read_text().splitlines()[
    0
  ] == f"Produced by `python -m advrm_jax.report {study_dir}`."


def test_write_study_takes_the_runners_error_record(tmp_path):
  # The record advrm_jax.pipelines.study writes for a realisation that stopped twice: arms {}, null measurements.
  from advrm_jax.pipelines import load_config  # pylint: disable=g-import-not-at-top  # the runner pulls in JAX
  from advrm_jax.pipelines import study as runner  # pylint: disable=g-import-not-at-top

  error = runner.error_record(
    load_config(str(REPO_ROOT / "configs" / "study.py:tiny")),
    3,
    0,
    FloatingPointError("[rlhf] non-finite loss at step 2"),
  )
  assert error["arms"] == {} and error["method_checks"] is None and error["uncertainty_shortfall"] is None
  records = [realisation(i, shifted(C0=0.0, T=0.1 * (i + 1), C1=0.05, C2=0.02)) for i in range(3)] + [error]
  study_dir = _study_dir(tmp_path, records)
  study = sr.write_study(study_dir)
  assert study["realisations"]["count"] == 4 and study["realisations"]["included"] == ["s0_p0", "s1_p0", "s2_p0"]
  assert study["realisations"]["excluded"] == [
    {
      "name": "s3_p0",
      "checks": {},
      "excluded_from": "all analyses",
      "why": "run error: FloatingPointError: [rlhf] non-finite loss at step 2",
    }
  ]
  assert study["method_checks_pass_rate"] == pytest.approx(3 / 4)
  assert study["primary"]["n"] == 3 and study["primary"]["mean"] == pytest.approx(0.2)  # (0.1 + 0.2 + 0.3) / 3
  assert "s3_p0" in (study_dir / "STUDY.md").read_text()
  assert json.loads((study_dir / "study.json").read_text()) == study
  for name in sr.PLOT_FILES:
    assert (study_dir / "plots" / name).stat().st_size > 0


def test_bad_records_are_named(tmp_path):
  record = realisation(0, shifted(C0=0.0, T=0.1))
  del record["arms"]["T"]["kl"]
  study_dir = _study_dir(tmp_path, [record])
  with pytest.raises(ValueError, match=r"s0_p0/realisation.json: missing key 'arms.T.kl'"):
    sr.write_study(study_dir)
  (study_dir / "realisations" / "s0_p0" / "realisation.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"realisation.json: not valid JSON \(line 1"):
    sr.write_study(study_dir)


def test_protocol_commit_outside_a_checkout_says_why(tmp_path):
  commit, why = sr.protocol_commit(tmp_path)
  assert commit is None and "is not a git checkout" in why
  study = sr.analyse([realisation(0, shifted(C0=0.0, T=0.1))], commit, why)
  assert study["protocol_commit"] is None and study["protocol_commit_missing"] == why
  assert "its commit is unknown" in sr.render_markdown(study, "x")
