"""Hand-computed tests of attack success, hacking onset, reports and the
word-substitution attack."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advrm_jax.data import synthetic_world as sw
from advrm_jax.evaluation import attack
from advrm_jax.evaluation import hacking
from advrm_jax.evaluation import perturbation
from advrm_jax.evaluation import report

# ----------------------------------------------------------------------------
# Attack success.
# ----------------------------------------------------------------------------


def test_attack_success_standard_against_reference_mean():
  # Reference means: proxy [2, 1, 5], gold [3, 1, 1].
  ref_proxy = np.array([[1.0, 3.0], [0.0, 2.0], [5.0, 5.0]])
  ref_gold = np.array([[2.0, 4.0], [1.0, 1.0], [0.0, 2.0]])
  adv_proxy = np.array([2.5, 0.5, 6.0])
  adv_gold = np.array([2.0, 0.0, 1.0])
  out = attack.attack_success_standard(adv_proxy, ref_proxy, adv_gold, ref_gold)
  np.testing.assert_array_equal(out["proxy_win"], [True, False, True])
  # Prompt 2: gold 1 == mean 1 is not a loss (strict).
  np.testing.assert_array_equal(out["gold_loss"], [True, True, False])
  np.testing.assert_array_equal(out["success"], [True, False, False])
  np.testing.assert_allclose(out["rate"], 1 / 3, rtol=1e-6)
  # One reference sample per prompt, given as [P]: plain comparison with
  # proxy [1, 0, 5] (all beaten) and gold [2, 1, 0] (only prompt 1 lost).
  out = attack.attack_success_standard(adv_proxy, ref_proxy[:, 0], adv_gold, ref_gold[:, 0])
  np.testing.assert_array_equal(out["success"], [False, True, False])


# Strict example, n = 3 reference samples, sample std (ddof = 1):
#   proxy: [1,2,3] mean 2 std 1; [4,6,8] mean 6 std 2; [0,1,2] mean 1 std 1.
#   gold:  [2,3,4] mean 3 std 1; [1,1,1] std 0 (degenerate); [0,2,4] mean 2
#          std 2.
REF_PROXY = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 8.0], [0.0, 1.0, 2.0]])
REF_GOLD = np.array([[2.0, 3.0, 4.0], [1.0, 1.0, 1.0], [0.0, 2.0, 4.0]])
ADV_PROXY = np.array([2.5, 7.0, 3.0])  # z = [0.5, 0.5, 2]
ADV_GOLD = np.array([0.5, 0.9, -1.0])  # z = [-2.5, -0.1 / min_std, -1.5]


def test_attack_success_strict_hand_computed():
  out = attack.attack_success_strict(ADV_PROXY, REF_PROXY, ADV_GOLD, REF_GOLD)
  np.testing.assert_allclose(out["proxy_z"], [0.5, 0.5, 2.0], rtol=1e-6)
  np.testing.assert_allclose(out["gold_z"], [-2.5, -0.1 / 1e-6, -1.5], rtol=1e-4)
  np.testing.assert_array_equal(out["success"], [True, True, False])
  np.testing.assert_allclose(out["rate"], 2 / 3, rtol=1e-6)
  assert int(out["num_degenerate_gold"]) == 1
  # A larger std floor turns the degenerate prompt's -0.1 into z = -0.2.
  out = attack.attack_success_strict(ADV_PROXY, REF_PROXY, ADV_GOLD, REF_GOLD, min_std=0.5)
  np.testing.assert_array_equal(out["success"], [True, False, False])
  # Population std (ddof = 0): prompt 0's gold std is sqrt(2/3).
  out = attack.attack_success_strict(ADV_PROXY, REF_PROXY, ADV_GOLD, REF_GOLD, ddof=0)
  np.testing.assert_allclose(out["gold_z"][0], -2.5 / np.sqrt(2 / 3), rtol=1e-5)
  # Standard on the same data: every prompt succeeds (strict is stricter).
  std_out = attack.attack_success_standard(ADV_PROXY, REF_PROXY, ADV_GOLD, REF_GOLD)
  np.testing.assert_allclose(std_out["rate"], 1.0)


def test_attack_success_jit_and_multiple_adversarial_samples():
  strict = jax.jit(attack.attack_success_strict, static_argnames=("ddof",))
  out = strict(ADV_PROXY, REF_PROXY, ADV_GOLD, REF_GOLD)
  np.testing.assert_array_equal(out["success"], [True, True, False])
  # [P, m] adversarial scores: each column is tested like a [P] input.
  adv_proxy = np.stack([ADV_PROXY, ADV_PROXY - 10], axis=1)
  adv_gold = np.stack([ADV_GOLD, ADV_GOLD], axis=1)
  out = attack.attack_success_strict(adv_proxy, REF_PROXY, adv_gold, REF_GOLD)
  assert out["success"].shape == (3, 2)
  np.testing.assert_array_equal(out["success"][:, 0], [True, True, False])
  np.testing.assert_array_equal(out["success"][:, 1], [False] * 3)
  np.testing.assert_allclose(out["rate"], 2 / 6, rtol=1e-6)
  out = attack.attack_success_standard(adv_proxy, REF_PROXY, adv_gold, REF_GOLD)
  np.testing.assert_allclose(out["rate"], 3 / 6, rtol=1e-6)


def test_attack_success_summary_in_percent_and_errors():
  summary = attack.attack_success(ADV_PROXY, REF_PROXY, ADV_GOLD, REF_GOLD)
  assert summary["standard"] == pytest.approx(100.0)
  assert summary["strict"] == pytest.approx(200 / 3, rel=1e-5)
  assert summary["num_responses"] == 3
  assert summary["num_degenerate_gold"] == 1
  with pytest.raises(ValueError, match="more than ddof"):
    attack.attack_success_strict(ADV_PROXY, REF_PROXY[:, :1], ADV_GOLD, REF_GOLD[:, :1])
  with pytest.raises(ValueError, match="P=3"):
    attack.attack_success_standard(ADV_PROXY[:2], REF_PROXY, ADV_GOLD, REF_GOLD)


def test_pooled_within_prompt_std_hand_computed():
  # Variances (ddof=1): [1, 3] -> 2, [2, 2] -> 0; sqrt(mean) = 1.
  assert attack.pooled_within_prompt_std([[1.0, 3.0], [2.0, 2.0]]) == (pytest.approx(1.0))
  # [3,3,3,3] -> 0, [3,3,2,2] -> 1/3, [1,3,1,3] -> 4/3: sqrt(5/9).
  assert attack.pooled_within_prompt_std(DISCRETE_REF_GOLD) == pytest.approx(np.sqrt(5) / 3)
  with pytest.raises(ValueError, match="n >= 2"):
    attack.pooled_within_prompt_std([[1.0], [2.0]])


# Discrete gold (issue 16 item 6), n = 4 reference samples per prompt:
#   prompt 0: [3,3,3,3], std 0 (every reference sample agrees);
#   prompt 1: [3,3,2,2], mean 2.5, std sqrt(1/3) = 0.577;
#   prompt 2: [1,3,1,3], mean 2,   std sqrt(4/3) = 1.155.
# Pooled std sqrt((0 + 1/3 + 4/3) / 3) = sqrt(5)/3 = 0.745 floors prompts 0
# and 1. Two adversarial responses per prompt, each far above on the proxy.
DISCRETE_REF_GOLD = np.array([[3.0, 3, 3, 3], [3, 3, 2, 2], [1, 3, 1, 3]])
DISCRETE_REF_PROXY = np.array([[1.0, 1, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])
DISCRETE_ADV_GOLD = np.array([[2.0, 1.5], [1.0, 1.5], [0.0, -0.5]])
DISCRETE_ADV_PROXY = np.full((3, 2), 2.0)


def test_strict_criterion_with_pooled_gold_floor_on_discrete_gold():
  floor = attack.pooled_within_prompt_std(DISCRETE_REF_GOLD)
  # Gold z with the floor (gold - mean) / max(std, 0.745):
  #   prompt 0: -1/0.745 = -1.34 (no), -1.5/0.745 = -2.01 (yes);
  #   prompt 1: -1.5/0.745 = -2.01 (yes), -1/0.745 = -1.34 (no);
  #   prompt 2: -2/1.155 = -1.73 (no), -2.5/1.155 = -2.17 (yes).
  out = attack.attack_success_strict(
    DISCRETE_ADV_PROXY, DISCRETE_REF_PROXY, DISCRETE_ADV_GOLD, DISCRETE_REF_GOLD, gold_std_floor=floor
  )
  s5 = np.sqrt(5) / 3
  np.testing.assert_allclose(
    out["gold_z"], [[-1 / s5, -1.5 / s5], [-1.5 / s5, -1 / s5], [-2 / np.sqrt(4 / 3), -2.5 / np.sqrt(4 / 3)]], rtol=1e-5
  )
  np.testing.assert_array_equal(out["success"], [[False, True], [True, False], [False, True]])
  assert float(out["rate"]) == pytest.approx(3 / 6)
  # The floor is the gold's alone: prompt 0's proxy std 0 stays at min_std.
  np.testing.assert_allclose(out["proxy_z"][0], [1e6, 1e6], rtol=1e-4)
  # Without the floor, prompt 0 counts both (z = -1e6, -1.5e6) and prompt
  # 1 divides by 0.577: -2.60 (yes), -1.73 (no): 4 of 6.
  out = attack.attack_success_strict(DISCRETE_ADV_PROXY, DISCRETE_REF_PROXY, DISCRETE_ADV_GOLD, DISCRETE_REF_GOLD)
  np.testing.assert_array_equal(out["success"], [[True, True], [True, False], [False, True]])
  summary = attack.attack_success(
    DISCRETE_ADV_PROXY, DISCRETE_REF_PROXY, DISCRETE_ADV_GOLD, DISCRETE_REF_GOLD, gold_std_floor=floor
  )
  assert summary["strict"] == pytest.approx(50.0)
  assert summary["standard"] == pytest.approx(100.0)
  assert summary["num_degenerate_gold"] == 1


def test_value_at_kl_interpolates_at_first_crossing():
  # KL dips at step 3 (2.5 after 3): targets are read at the first crossing.
  kl = [0.0, 1.0, 3.0, 2.5, 5.0, 7.0]
  values = [10.0, 11.0, 13.0, 20.0, 15.0, 17.0]
  # 2: between (1, 11) and (3, 13) -> 12; 4: between (2.5, 20) and (5, 15)
  # -> 20 - 5 * 1.5 / 2.5 = 17; 6: between (5, 15) and (7, 17) -> 16;
  # 3: logged exactly -> 13; 8: never reached -> NaN.
  np.testing.assert_allclose(attack.value_at_kl(kl, values), [12, 17, 16])
  np.testing.assert_allclose(attack.value_at_kl(kl, values, (3.0, 8.0)), [13, np.nan])
  # A step with non-finite KL is not a logged point.
  np.testing.assert_allclose(attack.value_at_kl([0.0, np.nan, 4.0], [0.0, 100.0, 4.0], (2.0,)), [2])
  # Above the target from the first step: nothing to interpolate from.
  np.testing.assert_allclose(attack.value_at_kl([2.5, 3.0], [1.0, 2.0], (2.0, 2.5)), [np.nan, 1.0])
  # [S, T]: one row per seed.
  out = attack.value_at_kl([kl[:4] + [5.0, 7.0], [0.0, 2.0, 4.0, 6.0, 6, 6]], [values, [0.0, 1.0, 2.0, 3.0, 9, 9]])
  np.testing.assert_allclose(out, [[12, 17, 16], [1, 2, 3]])
  with pytest.raises(ValueError, match="one shape"):
    attack.value_at_kl([0.0, 1.0], [0.0])


def test_uncertainty_gold_correlation():
  x = np.arange(1.0, 6.0)
  out = attack.uncertainty_gold_correlation(x, 2 * x)
  assert out["pearson"] == pytest.approx(1.0)
  assert out["spearman"] == pytest.approx(1.0)
  assert out["n"] == 5
  # x vs x^2: sum dx dy = 60, sum dx^2 = 10, sum dy^2 = 374.
  out = attack.uncertainty_gold_correlation(x, x**2)
  assert out["pearson"] == pytest.approx(60 / math.sqrt(3740), rel=1e-9)
  assert out["spearman"] == pytest.approx(1.0)
  # Tied u: ranks [1.5, 1.5, 3, 4] vs [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5).
  out = attack.uncertainty_gold_correlation([1, 1, 2, 3], [1, 2, 3, 4])
  assert out["spearman"] == pytest.approx(4.5 / math.sqrt(22.5), rel=1e-9)
  # Undefined cases are NaN, non-finite pairs dropped.
  assert math.isnan(attack.uncertainty_gold_correlation([1, 1, 1], [1, 2, 3])["pearson"])
  out = attack.uncertainty_gold_correlation([1, 2, np.nan, 3], [2, 4, 0, 6])
  assert out["n"] == 3 and out["pearson"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------
# Hacking onset.
# ----------------------------------------------------------------------------


def test_gold_rise_is_the_smoothed_peak_above_the_reference():
  # Trailing means over 2 points of [1.0, 2.0, 3.0, 1.0]: 1.0, 1.5, 2.5, 2.0 -> peak 2.5; 2.5 - 1.8 = 0.7.
  assert hacking.gold_rise([1.0, 2.0, 3.0, 1.0], 1.8, window=2) == pytest.approx(0.7)
  # Without smoothing the single best point counts: 3.0 - 1.8.
  assert hacking.gold_rise([1.0, 2.0, 3.0, 1.0], 1.8, window=1) == pytest.approx(1.2)
  # A run that only falls rises by its first point minus the reference (negative here).
  assert hacking.gold_rise([1.0, 0.5], 1.8, window=3) == pytest.approx(-0.8)


def test_moving_average_is_trailing():
  np.testing.assert_allclose(hacking.moving_average([1, 2, 3, 4], 2), [1.0, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(hacking.moving_average([1, 2, 3], 1), [1, 2, 3])


def test_hacking_onset_known_step():
  gold = [0.0, 1.0, 2.0, 1.8, 1.4, 1.0]
  proxy = [0.0, 1.0, 2.0, 2.5, 3.0, 3.5]
  # Peak 2 at point 2; point 3 is only 0.2 below; point 4 is 0.6 below with
  # proxy 3 > 2.
  assert hacking.hacking_onset(gold, proxy, margin=0.5) == 4
  assert hacking.hacking_onset(gold, proxy, margin=0.5, steps=np.arange(6) * 10) == 40
  assert hacking.hacking_onset(gold, proxy, margin=1.5) is None
  # Window 2: gold [0, .5, 1.5, 1.9, 1.6, 1.2] peaks at point 3; point 5 is
  # 0.7 below with smoothed proxy 3.25 > 2.25.
  assert hacking.hacking_onset(gold, proxy, margin=0.5, window=2) == 5


def test_hacking_onset_never():
  rising = [0.0, 1.0, 2.0, 3.0, 4.0]
  assert hacking.hacking_onset(rising, rising, margin=0.1) is None
  # Gold falls but so does the proxy: degradation, not hacking.
  assert hacking.hacking_onset([0, 2, 1, 0], [0, 2, 1, 0], margin=0.5) is None
  # Proxy must exceed its value at the gold peak (3), not just rise again.
  assert hacking.hacking_onset([0, 2, 1, 0.5], [0, 3, 2.5, 2.9], margin=1.0) is None
  assert hacking.hacking_onset([0, 2, 1, 0.5], [0, 3, 2.5, 3.1], margin=1.0) == 3
  assert hacking.hacking_onset([], [], margin=1.0) is None


def test_smoothing_ignores_a_single_spike():
  gold = [1.0, 1.0, 3.0, 1.0, 1.0, 1.0]
  proxy = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
  assert hacking.hacking_onset(gold, proxy, margin=1.0) == 3
  # Window 3: gold [1, 1, 5/3, 5/3, 5/3, 1] never falls 1 below 5/3.
  assert hacking.hacking_onset(gold, proxy, margin=1.0, window=3) is None


def test_steps_before_hacking_and_errors():
  gold = [0.0, 1.0, 2.0, 1.8, 1.4, 1.0]
  proxy = [0.0, 1.0, 2.0, 2.5, 3.0, 3.5]
  assert hacking.steps_before_hacking(gold, proxy, 0.5) == (4, True)
  assert hacking.steps_before_hacking(gold, proxy, 1.5) == (5, False)
  assert hacking.steps_before_hacking(gold, proxy, 1.5, budget=100) == (100, False)
  assert hacking.steps_before_hacking(gold, proxy, 1.5, steps=np.arange(6) * 10) == (50, False)
  with pytest.raises(ValueError, match="same length"):
    hacking.hacking_onset([1, 2], [1], margin=1.0)
  with pytest.raises(ValueError, match="finite"):
    hacking.hacking_onset([1, np.nan], [1, 2], margin=1.0)
  with pytest.raises(ValueError, match="margin"):
    hacking.hacking_onset([1, 2], [1, 2], margin=0.0)
  onsets = hacking.onsets_over_seeds([gold, gold], [proxy, proxy[::-1]], 0.5)
  assert onsets == [4, None]


def test_aggregate_onsets_with_censored_seeds():
  summary = hacking.aggregate_onsets([10, 20, None], budget=50)
  assert summary["num_seeds"] == 3
  assert summary["num_hacked"] == 2 and summary["num_not_hacked"] == 1
  assert summary["hacked_mean"] == pytest.approx(15.0)
  assert summary["hacked_std"] == pytest.approx(math.sqrt(50.0))
  # Lower bound over [10, 20, 50]: mean 80/3, sample variance 1300/3.
  assert summary["lower_bound_mean"] == pytest.approx(80 / 3)
  assert summary["lower_bound_std"] == pytest.approx(math.sqrt(1300 / 3))
  assert hacking.format_onsets(summary) == (">= 27 ± 21 (1/3 no hacking within 50 steps)")

  none = hacking.aggregate_onsets([None, None], budget=50)
  assert none["hacked_mean"] is None and none["hacked_std"] is None
  assert none["lower_bound_mean"] == 50 and none["lower_bound_std"] == 0
  assert hacking.format_onsets(none) == "no hacking within 50 steps (2/2 seeds)"
  assert hacking.format_onsets(hacking.aggregate_onsets([4, 6], 50)) == ("5 ± 1")


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------


def test_mean_std():
  out = report.mean_std([1.0, 2.0, 3.0, None, float("nan")])
  assert out == {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 2.0, 3.0, None, None]}
  assert report.mean_std([]) == {"mean": None, "std": None, "n": 0, "values": []}
  assert report.mean_std(np.array([4.0]))["std"] == 0.0
  assert report.format_mean_std(report.mean_std([0.1, 0.3]), scale=100, fmt=".1f") == "20.0 ± 14.1"
  assert report.format_mean_std(report.mean_std([])) == "–"


Point = collections.namedtuple("Point", ["x", "y"])


def test_report_json_round_trip(tmp_path):
  data = {
    "attack": {"standard": np.float32(0.5), "per_seed": np.array([1, 2])},
    "nan": float("nan"),
    "inf": np.float64(np.inf),
    "jax": jnp.array([1.5, 2.5]),
    "scalar": jnp.float32(3.0),
    "flag": np.bool_(True),
    "count": np.int64(7),
    "tuple": (1, None),
    "point": Point(1, 2.0),
    3: "int key",
  }
  path = report.write_report_json(tmp_path / "sub" / "report.json", data)
  loaded = report.read_report_json(path)
  assert loaded == {
    "attack": {"standard": 0.5, "per_seed": [1, 2]},
    "nan": None,
    "inf": None,
    "jax": [1.5, 2.5],
    "scalar": 3.0,
    "flag": True,
    "count": 7,
    "tuple": [1, None],
    "point": {"x": 1, "y": 2.0},
    "3": "int key",
  }
  # Plain JSON (no NaN tokens) and no leftover temporary file.
  assert "NaN" not in path.read_text()
  assert [p.name for p in path.parent.iterdir()] == ["report.json"]
  with pytest.raises(TypeError, match="cannot write"):
    report.write_report_json(tmp_path / "bad.json", {"x": object()})
  assert not (tmp_path / "bad.json").exists()


def test_markdown_table():
  table = report.markdown_table(
    ["RM", "gold", "note"], [["conventional", 1.234, None], ["adv|rm", float("nan"), np.int64(3)]]
  )
  assert table == ("| RM | gold | note |\n|---|---|---|\n| conventional | 1.23 | – |\n| adv\\|rm | – | 3 |\n")
  with pytest.raises(ValueError, match="row 0 has 1 cells"):
    report.markdown_table(["a", "b"], [["x"]])


def test_attack_table_lists_paper_numbers():
  table = report.attack_table(
    {
      "Adv-RM": {"standard": report.mean_std([96.0, 98.0]), "strict": 90.0},
      "Online Adv-RM": {"standard": 50.0, "strict": None},
    }
  )
  lines = table.splitlines()
  assert lines[2] == "| Adv-RM | 97.00 ± 1.41 | 90.00 | 99.31 | 92.91 |"
  assert "| RM over-optimisation | – | – | 8.31 | 2.85 |" in lines
  assert "| TextFooler | – | – | 9.57 | 0.00 |" in lines
  assert "| Online Adv-RM | 50.00 | – | – | – |" in lines
  assert report.PAPER_TABLE1["Adv-RM"] == (99.31, 92.91)


def _is_png(path) -> bool:
  data = path.read_bytes()
  return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
  rng = np.random.default_rng(0)
  curves = {
    "conventional": {"gold": rng.normal(size=(3, 20)), "proxy": rng.normal(size=(3, 20))},
    "adv-rm": {"gold": rng.normal(size=20), "proxy": rng.normal(size=20)},
  }
  p1 = report.plot_reward_curves(
    tmp_path / "curves.png", curves, steps=np.arange(20) * 5, onsets={"conventional": 40.0, "adv-rm": None}
  )
  p2 = report.plot_attack_success_per_round(
    tmp_path / "plots" / "attack.png",
    {"standard": [[96.0, 40.0, 10.0], [98.0, 30.0, 12.0]], "strict": [90.0, 20.0, 5.0]},
  )
  u = rng.normal(size=50)
  gap = u + rng.normal(size=50)
  p3 = report.plot_uncertainty_vs_gold(
    tmp_path / "scatter.png", u, gap, correlation=attack.uncertainty_gold_correlation(u, gap)
  )
  for p in (p1, p2, p3):
    assert _is_png(p), p


# ----------------------------------------------------------------------------
# Word-substitution attack.
# ----------------------------------------------------------------------------

# A toy additive R1: the optimal substitutions are known by construction.
TOY_WEIGHTS = {"calm": -2.0, "bright": 1.0, "clearly": 2.0, "bridges": 5.0}


def _toy_score(tokens, mask, example_ids):
  weights = np.zeros(sw.VOCAB_SIZE)
  for word, w in TOY_WEIGHTS.items():
    weights[sw.WORD_TO_ID[word]] = w
  return (weights[tokens] * mask).sum(axis=1)


def _encode(responses, width=10):
  ids = [sw.TOKENIZER.encode(r) + [sw.EOS_ID] for r in responses]
  return sw.pad_sequences(ids, width)


def test_word_substitution_greedy_finds_optimum():
  tokens, mask = _encode(["rivers are truly calm .", "rivers are old ."], width=8)
  out = perturbation.word_substitution_attack(tokens, mask, _toy_score, budget=2, search="greedy")
  # Best single swaps: calm -> bright (+3), then truly -> clearly (+2).
  assert sw.TOKENIZER.decode_response(out.tokens[0]) == ("rivers are clearly bright .")
  np.testing.assert_allclose(out.initial_score, [-2.0, 0.0])
  np.testing.assert_allclose(out.final_score, [3.0, 1.0])
  # Row 1: old -> bright (+1), then nothing helps.
  assert sw.TOKENIZER.decode_response(out.tokens[1]) == "rivers are bright ."
  np.testing.assert_array_equal(out.num_substitutions, [2, 1])
  # Topics are not substituted by default; the EOS and padding stay.
  np.testing.assert_array_equal(out.tokens[:, 0], tokens[:, 0])
  np.testing.assert_array_equal(out.tokens[~mask], tokens[~mask])
  assert out.tokens[0, 5] == sw.EOS_ID


def test_word_substitution_importance_order_and_budget():
  tokens, mask = _encode(["rivers are truly calm ."], width=8)
  # "calm" holds the score down most (deleting it gains 2), so TextFooler
  # replaces it first; with budget 1 "truly" stays.
  out = perturbation.word_substitution_attack(tokens, mask, _toy_score, budget=1, search="importance")
  assert sw.TOKENIZER.decode_response(out.tokens[0]) == ("rivers are truly bright .")
  assert out.final_score[0] == pytest.approx(1.0)
  out = perturbation.word_substitution_attack(tokens, mask, _toy_score, budget=5)
  assert sw.TOKENIZER.decode_response(out.tokens[0]) == ("rivers are clearly bright .")
  assert out.num_substitutions[0] == 2
  # Budget 0 leaves the response alone; topics join when asked for.
  out = perturbation.word_substitution_attack(tokens, mask, _toy_score, budget=0)
  np.testing.assert_array_equal(out.tokens, tokens)
  out = perturbation.word_substitution_attack(
    tokens, mask, _toy_score, budget=1, search="greedy", classes=perturbation.SUBSTITUTABLE_CLASSES + ("topic",)
  )
  assert sw.TOKENIZER.decode_response(out.tokens[0]) == ("bridges are truly calm .")


def test_word_substitution_passes_example_ids():
  tokens, mask = _encode(["rivers are calm .", "birds are old ."], width=8)
  seen = []

  def score(batch, batch_mask, example_ids):
    # Each candidate differs from its own example in at most one position.
    for row, i in zip(batch, example_ids):
      assert np.sum(row != tokens[i]) <= 1
    seen.extend(example_ids.tolist())
    # Example 1 is scored by a different criterion: it wants "cold".
    base = _toy_score(batch, batch_mask, example_ids)
    cold = (batch == sw.WORD_TO_ID["cold"]).sum(axis=1) * 10.0
    return np.where(example_ids == 1, cold, base)

  out = perturbation.word_substitution_attack(tokens, mask, score, budget=1, search="greedy")
  assert set(seen) == {0, 1}
  assert sw.TOKENIZER.decode_response(out.tokens[0]) == "rivers are bright ."
  assert sw.TOKENIZER.decode_response(out.tokens[1]) == "birds are cold ."
  with pytest.raises(ValueError, match="search"):
    perturbation.word_substitution_attack(tokens, mask, score, search="beam")
  with pytest.raises(ValueError, match="word classes"):
    perturbation.substitution_table(("nouns",))
