"""The study's statistics against textbook and hand-computed values (advrm_jax/evaluation/statistics.py)."""

import numpy as np
import pytest
from scipy import stats

from advrm_jax.evaluation import statistics as st


def test_gold_at_matched_kl_and_difference_by_hand():
  # Seed A: KL 0,1,3,5,7 with gold 1.0,1.2,1.6,1.4,1.0. At 2 nats: between KL 1 and 3, halfway:
  # 1.2 + 0.5 (1.6 - 1.2) = 1.4; at 4: 1.6 + 0.5 (1.4 - 1.6) = 1.5; at 6: 1.4 + 0.5 (1.0 - 1.4) = 1.2.
  # Seed B: KL 0,2,4,5,5.5 with gold 1,2,3,4,5: exactly 2 at KL 2, 3 at KL 4, never reaches 6.
  kl = [[0, 1, 3, 5, 7], [0, 2, 4, 5, 5.5]]
  gold = [[1.0, 1.2, 1.6, 1.4, 1.0], [1, 2, 3, 4, 5]]
  # Means over the seeds that reach each target: (1.4 + 2)/2, (1.5 + 3)/2, and 1.2 (1 of 2 seeds).
  np.testing.assert_allclose(st.gold_at_matched_kl(kl, gold), [1.7, 2.25, 1.2])
  # 1 of 2 seeds is below a 75 % share: no value at 6 nats.
  np.testing.assert_allclose(st.gold_at_matched_kl(kl, gold, min_seed_share=0.75), [1.7, 2.25, np.nan])
  # Primary difference over the targets both arms reach: ((1.7 - 1.5) + (2.25 - 2.0)) / 2 = 0.225.
  assert st.matched_kl_difference([1.7, 2.25, 1.2], [1.5, 2.0, np.nan]) == pytest.approx(0.225)
  assert np.isnan(st.matched_kl_difference([np.nan, 1.0, np.nan], [1.0, np.nan, np.nan]))


def test_paired_t_test_by_hand():
  # The six paired final-gold differences (Adv-RM minus conventional RLHF).
  treatment = np.array([1.30, 1.39, 1.81, 0.30, 0.97, 0.91])
  control = np.ones(6)
  d = st.paired_differences(treatment, control)
  np.testing.assert_allclose(d, [0.30, 0.39, 0.81, -0.70, -0.03, -0.09])
  # sum d = 0.68, mean = 0.113333; sum d^2 = 0.09 + 0.1521 + 0.6561 + 0.49 + 0.0009 + 0.0081 = 1.3972;
  # SS = 1.3972 - 6 * 0.113333^2 = 1.320133; var = SS / 5 = 0.2640267, sd = 0.513835;
  # se = sd / sqrt(6) = 0.513835 / 2.449490 = 0.209772; t = 0.113333 / 0.209772 = 0.540268 on 5 df.
  result = st.paired_t_test(d)
  assert result["mean"] == pytest.approx(0.68 / 6)
  assert result["sd"] == pytest.approx(0.513835, abs=1e-6)
  assert result["se"] == pytest.approx(0.209772, abs=1e-6)
  assert result["t"] == pytest.approx(0.540268, abs=1e-6)
  assert result["df"] == 5 and result["n"] == 6
  # The p-value against scipy's independent paired t-test.
  reference = stats.ttest_rel(treatment, control)
  assert result["p"] == pytest.approx(reference.pvalue, rel=1e-10)
  assert result["t"] == pytest.approx(reference.statistic, rel=1e-10)


def test_wilcoxon_exact_on_the_textbook_sample():
  # Hollander & Wolfe (1973) p. 29, Hamilton depression scores before (x) and after (y) a
  # tranquilizer (R's ?wilcox.test example). |x - y| ranked: 0.01 (1), 0.08 (2), 0.147 (3),
  # 0.43 (4), 0.49 (5), 0.59 (6), 0.62 (7), 0.952 (8), 1.022 (9); the negative differences are
  # 0.147 and 0.08, so W- = 3 + 2 = 5, W+ = 45 - 5 = 40 (R: V = 40).
  # Exact null: subsets of {1..9} with sum <= 5: {}, {1}, {2}, {3}, {1,2}, {4}, {1,3}, {5}, {1,4},
  # {2,3} = 10 of 2^9 = 512; two-sided p = 2 * 10 / 512 = 0.0390625 (R: p-value = 0.03906).
  x = np.array([1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30])
  y = np.array([0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29])
  result = st.wilcoxon_signed_rank(st.paired_differences(x, y))
  assert result["method"] == "exact" and result["n"] == 9
  assert result["w_plus"] == 40 and result["statistic"] == 5
  assert result["p"] == pytest.approx(20 / 512, rel=1e-12)
  assert result["p"] == pytest.approx(stats.wilcoxon(x, y).pvalue, rel=1e-12)


def test_wilcoxon_normal_approximation_with_ties_and_a_zero():
  # The zero is dropped (n = 8). |d| ranks: 1 -> 1; 2, 2 -> 2.5; 3, 3, 3 -> 5; 4 -> 7; 5 -> 8.
  # W+ = 1 + 2.5 + 3 * 5 + 8 = 26.5. Null mean 8 * 9 / 4 = 18; variance
  # 8 * 9 * 17 / 24 - ((2^3 - 2) + (3^3 - 3)) / 48 = 51 - 0.625 = 50.375; z = 8.5 / sqrt(50.375).
  d = np.array([1, -2, 2, 3, 3, 3, -4, 5, 0], float)
  result = st.wilcoxon_signed_rank(d)
  assert result["method"] == "normal" and result["n"] == 8 and result["w_plus"] == 26.5
  assert result["p"] == pytest.approx(2 * stats.norm.sf(8.5 / np.sqrt(50.375)), rel=1e-12)
  scipy_p = stats.wilcoxon(d, zero_method="wilcox", correction=False, method="approx").pvalue
  assert result["p"] == pytest.approx(scipy_p, rel=1e-10)


def test_holm_by_hand():
  # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06.
  np.testing.assert_allclose(st.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  # Capped at 1 and kept monotone: 0.5 * 2 = 1.0, then max(1.0, 0.6) = 1.0.
  np.testing.assert_allclose(st.holm([0.6, 0.5]), [1.0, 1.0])
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    st.holm([0.2, 1.5])


def test_kaplan_meier_by_hand():
  # Runs: hacked at 3, 5, 8, 12; censored (no hacking) at 5 and at the budget 10.
  # t=3:  at risk 6, 1 event: S = 5/6;               Greenwood sum 1/(6*5) = 1/30
  # t=5:  at risk 5 (the run censored at 5 counts), 1 event: S = 5/6 * 4/5 = 2/3;  sum 1/30 + 1/20 = 1/12
  # t=8:  at risk 3 (8, 10, 12), 1 event: S = 2/3 * 2/3 = 4/9;  sum 1/12 + 1/6 = 1/4
  # t=12: at risk 1, 1 event: S = 0; Greenwood undefined (n = d).
  # Var: (5/6)^2/30 = 5/216, (2/3)^2/12 = 1/27, (4/9)^2/4 = 4/81. Median: first S <= 0.5 is 4/9 at t=8.
  times = np.array([3, 5, 5, 8, 10, 12])
  events = np.array([True, True, False, True, False, True])
  km = st.kaplan_meier(times, events)
  np.testing.assert_array_equal(km["steps"], [3, 5, 8, 12])
  np.testing.assert_array_equal(km["at_risk"], [6, 5, 3, 1])
  np.testing.assert_allclose(km["survival"], [5 / 6, 2 / 3, 4 / 9, 0.0])
  np.testing.assert_allclose(km["variance"], [5 / 216, 1 / 27, 4 / 81, np.nan])
  assert km["median"] == 8 and km["num_censored"] == 2
  # Too few events before the budget: S stays above 0.5, no median.
  assert st.kaplan_meier([4, 10, 10], np.array([True, False, False]))["median"] is None
  with pytest.raises(ValueError, match="bool"):
    st.kaplan_meier([1, 2], [1, 0])


def test_restricted_mean_survival_by_hand():
  # The runs above with budget 12: S = 1 on [0, 3), 5/6 on [3, 5), 2/3 on [5, 8), 4/9 on [8, 12):
  # 3 + 2 * 5/6 + 3 * 2/3 + 4 * 4/9 = (27 + 15 + 18 + 16) / 9 = 76/9.
  times = np.array([3, 5, 5, 8, 10, 12])
  events = np.array([True, True, False, True, False, True])
  assert st.restricted_mean_survival(times, events, budget=12) == pytest.approx(76 / 9)
  # No run hacks: every run reaches the budget.
  assert st.restricted_mean_survival([12, 12], np.array([False, False]), budget=12) == 12
  with pytest.raises(ValueError, match="budget 10"):
    st.restricted_mean_survival(times, events, budget=10)


def test_required_n_matches_the_power_tables():
  # Paired / one-sample t, two-sided alpha 5 %, power 80 % (Cohen 1988; G*Power): d = 0.5 -> 34,
  # d = 0.2 -> 199, d = 0.8 -> 15. Independently, Guenther's (1981) approximation
  # n = ((z_.975 + z_.8) / d)^2 + z_.975^2 / 2, rounded up, gives the same three numbers.
  z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
  for d, expected in ((0.5, 34), (0.2, 199), (0.8, 15)):
    assert int(np.ceil(((z_a + z_b) / d) ** 2 + z_a**2 / 2)) == expected
    assert st.required_n(sd=1.0, delta=d) == expected
    assert st.required_n(sd=0.51, delta=0.51 * d) == expected  # only delta / sd matters


def test_paired_t_power_against_simulation():
  # 20,000 seeded paired t-tests with n = 10, delta / sd = 1: the rejection rate estimates the power
  # (binomial SE about 0.003).
  rng = np.random.default_rng(0)
  d = rng.normal(1.0, 1.0, size=(20000, 10))
  rejected = stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
  assert st.paired_t_power(10, sd=1.0, delta=1.0) == pytest.approx(rejected.mean(), abs=0.01)


def test_sd_upper_limit_by_hand():
  # s = 0.51 from n = 8: chi^2_{0.2, 7} = 3.8223, so 0.51 * sqrt(7 / 3.8223) = 0.6902.
  assert st.sd_upper_limit(0.51, 8) == pytest.approx(0.51 * np.sqrt(7 / stats.chi2.ppf(0.2, 7)))
  assert st.sd_upper_limit(0.51, 8) == pytest.approx(0.6902, abs=1e-4)


def test_mixed_model_on_the_rail_data():
  # Pinheiro & Bates (2000) section 1.1, nlme's Rail data: 6 rails x 3 travel times.
  # Balanced one-way: group means 54, 31.67, 84.67, 96, 50, 82.67, grand mean 66.5;
  # SSW = 2 + 60.67 + 84.67 + 32 + 2 + 12.67 = 194, MSW = 194 / 12 = 16.1667;
  # SSB = 3 * 3103.5 = 9310.5, MSB = 9310.5 / 5 = 1862.1.
  # REML = ANOVA here: sigma_e^2 = MSW, sigma_rail^2 = (MSB - MSW) / 3 = 615.311,
  # SE(intercept) = sqrt(MSB / 18) = 10.17104. nlme: sd 24.80547 and 4.020779, logLik -61.08846.
  rail = np.array([[55, 53, 54], [26, 37, 32], [78, 91, 85], [92, 100, 96], [49, 51, 50], [80, 85, 83]], float)
  fit = st.mixed_model_random_intercepts(rail.reshape(-1), {"rail": np.repeat(np.arange(6), 3)})
  assert fit["intercept"] == pytest.approx(66.5)
  assert fit["intercept_se"] == pytest.approx(np.sqrt(1862.1 / 18), rel=1e-6)
  assert fit["variance_components"]["residual"] == pytest.approx(194 / 12, rel=1e-6)
  assert fit["variance_components"]["rail"] == pytest.approx((1862.1 - 194 / 12) / 3, rel=1e-6)
  assert np.sqrt(fit["variance_components"]["rail"]) == pytest.approx(24.80547, abs=1e-5)
  assert fit["reml_neg2_loglik"] == pytest.approx(2 * 61.08846, abs=1e-4)


def test_mixed_model_puts_a_negative_anova_component_at_zero():
  # Groups [1, 5, 3] and [2, 4, 3] share the mean 3: MSB = 0 < MSW, so REML sets sigma_g^2 = 0 and
  # sigma_e^2 = SST / (N - 1) = (4 + 4 + 0 + 1 + 1 + 0) / 5 = 2; SE(intercept) = sqrt(2 / 6).
  fit = st.mixed_model_random_intercepts([1, 5, 3, 2, 4, 3], {"g": [0, 0, 0, 1, 1, 1]})
  assert fit["variance_components"]["g"] == pytest.approx(0.0, abs=1e-8)
  assert fit["variance_components"]["residual"] == pytest.approx(2.0, rel=1e-6)
  assert fit["intercept_se"] == pytest.approx(np.sqrt(2 / 6), rel=1e-6)


def test_mixed_model_nested_design_matches_anova():
  # Balanced nested design of the study: 8 SFT seeds x 4 realisations each x 2 observations.
  # ANOVA estimators (equal to REML when positive): MSA = b n sum (ybar_i - ybar)^2 / (a - 1),
  # MSB(A) = n sum (ybar_ij - ybar_i)^2 / (a (b - 1)), MSE = sum (y - ybar_ij)^2 / (a b (n - 1));
  # sigma_e^2 = MSE, sigma_real^2 = (MSB(A) - MSE) / n, sigma_sft^2 = (MSA - MSB(A)) / (b n).
  a, b, n = 8, 4, 2
  rng = np.random.default_rng(3)
  y = rng.normal(0, 1.0, (a, 1, 1)) + rng.normal(0, 0.7, (a, b, 1)) + rng.normal(0, 0.5, (a, b, n)) + 2.0
  cell, seed_mean, grand = y.mean(2), y.mean((1, 2)), y.mean()
  msa = b * n * np.sum((seed_mean - grand) ** 2) / (a - 1)
  msb = n * np.sum((cell - seed_mean[:, None]) ** 2) / (a * (b - 1))
  mse = np.sum((y - cell[:, :, None]) ** 2) / (a * b * (n - 1))
  assert msa > msb > mse  # all three ANOVA components positive: REML equals them
  sft = np.repeat(np.arange(a), b * n)
  pref = np.tile(np.repeat(np.arange(b), n), a)
  fit = st.mixed_model_random_intercepts(y.reshape(-1), {"sft_seed": sft, "realisation": list(zip(sft, pref))})
  assert fit["num_groups"] == {"sft_seed": 8, "realisation": 32}
  vc = fit["variance_components"]
  assert vc["residual"] == pytest.approx(mse, rel=1e-5)
  assert vc["realisation"] == pytest.approx((msb - mse) / n, rel=1e-5)
  assert vc["sft_seed"] == pytest.approx((msa - msb) / (b * n), rel=1e-5)
  # Balanced: the GLS intercept is the grand mean, with variance MSA / (a b n).
  assert fit["intercept"] == pytest.approx(grand)
  assert fit["intercept_se"] == pytest.approx(np.sqrt(msa / (a * b * n)), rel=1e-5)


def test_mixed_model_arm_effect_equals_the_paired_t_test():
  # One value per realisation and arm: y = mu + beta [arm = T] + u_sft + v_realisation + e.
  # The arm contrast lies within realisations, so the intercepts cancel: beta = mean(d) and
  # Var(beta) = 2 sigma_e^2 / R with REML sigma_e^2 = s_d^2 / 2, i.e. the paired t-test's mean and SE.
  rng = np.random.default_rng(5)
  sft_effect = rng.normal(0, 1.0, 8).repeat(4)
  realisation = rng.normal(0, 0.8, 32)
  control = 2.0 + sft_effect + realisation + rng.normal(0, 0.3, 32)
  treatment = 2.2 + sft_effect + realisation + rng.normal(0, 0.3, 32)
  sft = np.arange(8).repeat(4)
  labels = [(s, p) for s, p in zip(sft, np.tile(np.arange(4), 8))]
  fit = st.mixed_model_random_intercepts(
    np.concatenate([control, treatment]),
    {"sft_seed": np.concatenate([sft, sft]), "realisation": labels * 2},
    arm=["C0"] * 32 + ["T"] * 32,
    reference="C0",
  )
  assert fit["variance_components"]["realisation"] > 0
  t = st.paired_t_test(st.paired_differences(treatment, control))
  assert fit["arm_effects"]["T"] == pytest.approx(t["mean"], rel=1e-8)
  assert fit["arm_se"]["T"] == pytest.approx(t["se"], rel=1e-5)
  assert fit["variance_components"]["residual"] == pytest.approx(t["sd"] ** 2 / 2, rel=1e-5)
  with pytest.raises(ValueError, match="reference arm 'C9'"):
    st.mixed_model_random_intercepts([1.0, 2, 3, 4], {"g": [0, 0, 1, 1]}, arm=["a", "b"] * 2, reference="C9")


def test_bootstrap_ci_coverage_on_normal_samples():
  # 400 seeded samples of n = 30 from N(0.3, 1): the percentile CI should cover 0.3 about `level` of the
  # time (it runs a little short at small n); binomial SE of the rate about 0.011 (95 %), 0.02 (80 %).
  rng = np.random.default_rng(1)
  samples = rng.normal(0.3, 1.0, size=(400, 30))
  for level, lo_bound, hi_bound in ((0.95, 0.91, 0.98), (0.80, 0.74, 0.86)):
    cis = [st.bootstrap_ci(x, level=level, num=2000, seed=i) for i, x in enumerate(samples)]
    covered = np.mean([lo <= 0.3 <= hi for lo, hi in cis])
    assert lo_bound <= covered <= hi_bound, (level, covered)
  assert st.bootstrap_ci(samples[0], seed=7) == st.bootstrap_ci(samples[0], seed=7)


def test_equivalence_verdicts():
  assert st.equivalence_verdict((-0.10, 0.12)) == "equivalent"
  assert st.equivalence_verdict((-0.15, 0.15)) == "equivalent"  # the bounds are inside
  assert st.equivalence_verdict((0.02, 0.10)) == "equivalent"  # real but smaller than the margin
  assert st.equivalence_verdict((0.05, 0.40)) == "different"
  assert st.equivalence_verdict((-0.60, -0.20)) == "different"
  assert st.equivalence_verdict((-0.10, 0.30)) == "inconclusive"
  assert st.equivalence_verdict((-0.20, 0.30), margin=0.5) == "equivalent"
  with pytest.raises(ValueError, match="lo <= hi"):
    st.equivalence_verdict((0.3, -0.3))


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="control 5: pairs must match"):
    st.paired_differences([1, 2, 3, 4], [1, 2, 3, 4, 5])
  with pytest.raises(ValueError, match="non-finite values at \\[1\\]"):
    st.paired_t_test([0.1, np.nan, 0.3])
  with pytest.raises(ValueError, match="at least 2"):
    st.paired_t_test([0.1])
