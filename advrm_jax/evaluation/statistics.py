"""Statistics of a study over realisations (issue 17; the protocol is docs/study_protocol.md).

The unit of analysis is the realisation (an SFT seed and a preference/RM seed): RL seeds inside one
realisation share its SFT model, preferences and RM, so they are pseudo-replicates and are averaged
into one value per realisation and arm before any test. Paired arms share a realisation, so the
tests run on per-realisation differences d_i = treatment_i - control_i, i = 1..n.

Host-side numpy/scipy only (scipy.stats for the t, normal, chi-square and noncentral t
distributions; scipy.optimize for the REML fit). Matched-KL values come from
`advrm_jax.evaluation.attack.value_at_kl`, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from advrm_jax.evaluation.attack import KL_TARGETS, value_at_kl

# Equivalence margin of the protocol, in gold units: a CI inside +-0.15 is "equivalent".
EQUIVALENCE_MARGIN = 0.15
# Up to this many nonzero differences without ties the Wilcoxon p-value is exact (scipy's cut too).
WILCOXON_EXACT_MAX_N = 50


def _vector(x: ArrayLike, name: str, min_size: int = 1) -> np.ndarray:
  """A finite 1-D float64 array of at least `min_size` values, or a one-line error naming it."""
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
  if x.size < min_size:
    raise ValueError(f"{name} needs at least {min_size} values, got {x.size}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} has non-finite values at {np.flatnonzero(~np.isfinite(x)).tolist()}")
  return x


def gold_at_matched_kl(
  kl: ArrayLike, gold: ArrayLike, targets: tuple[float, ...] = KL_TARGETS, min_seed_share: float = 0.5
) -> np.ndarray:
  """One arm's gold at matched KL in one realisation: the mean over its RL seeds, per KL target.

  Each seed's curve is read at each target by `value_at_kl` (linear interpolation at the first
  crossing; NaN where the seed never reaches it). A target's value is the mean over the seeds that
  reach it, and NaN when fewer than `min_seed_share` of the seeds do (a mean of the few seeds that
  drift furthest is not the arm's behaviour at that KL).

  Args:
    kl: [S, T] KL per RL seed and logged step.
    gold: [S, T] gold reward, same shape.
    targets: KL values in nats.
    min_seed_share: Share of seeds that must reach a target for it to count.

  Returns:
    [len(targets)] float64.
  """
  if not 0 < min_seed_share <= 1:
    raise ValueError(f"min_seed_share must be in (0, 1], got {min_seed_share}")
  per_seed = value_at_kl(np.atleast_2d(kl), np.atleast_2d(gold), targets)
  reached = np.isfinite(per_seed)
  out = np.full(len(targets), np.nan)
  enough = reached.mean(axis=0) >= min_seed_share
  sums = np.where(reached, per_seed, 0.0).sum(axis=0)
  out[enough] = sums[enough] / reached.sum(axis=0)[enough]
  return out


def matched_kl_difference(treatment: ArrayLike, control: ArrayLike) -> float:
  """The primary endpoint of one realisation: mean over KL targets of treatment - control gold.

  d = (1/|K|) sum_{k in K} (g_T(k) - g_C(k)), K = the targets both arms reach (finite in both
  outputs of `gold_at_matched_kl`). NaN when K is empty (the realisation has no primary value).

  Args:
    treatment: [len(targets)] `gold_at_matched_kl` of the treatment arm.
    control: [len(targets)] of the control arm, same targets.
  """
  treatment, control = np.asarray(treatment, np.float64), np.asarray(control, np.float64)
  if treatment.shape != control.shape or treatment.ndim != 1:
    raise ValueError(f"treatment {treatment.shape} and control {control.shape} must be one 1-D shape")
  both = np.isfinite(treatment) & np.isfinite(control)
  return float(np.mean(treatment[both] - control[both])) if both.any() else float("nan")


def paired_differences(treatment: ArrayLike, control: ArrayLike) -> np.ndarray:
  """d_i = treatment_i - control_i over realisations i (both [R], realisation i in row i of each)."""
  treatment, control = _vector(treatment, "treatment"), _vector(control, "control")
  if treatment.shape != control.shape:
    raise ValueError(f"treatment has {treatment.size} realisations, control {control.size}: pairs must match")
  return treatment - control


def paired_t_test(d: ArrayLike) -> dict[str, float]:
  """Two-sided one-sample t-test of mean(d) = 0 (the paired t-test on differences d).

  mean = sum d_i / n, sd = sqrt(sum (d_i - mean)^2 / (n - 1)), se = sd / sqrt(n), t = mean / se,
  df = n - 1, p = 2 P(T_df > |t|). sd = 0 gives t = +-inf, p = 0 (or t = p = NaN when mean = 0 too).

  Returns:
    {"mean", "sd", "se", "t", "df", "p", "n"}.
  """
  d = _vector(d, "paired differences", min_size=2)
  n = d.size
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  se = sd / np.sqrt(n)
  if se > 0:
    t = mean / se
  else:
    t = float("nan") if mean == 0 else float(np.copysign(np.inf, mean))
  p = float(2 * stats.t.sf(abs(t), n - 1)) if np.isfinite(t) else (0.0 if np.isinf(t) else float("nan"))
  return {"mean": mean, "sd": sd, "se": float(se), "t": float(t), "df": n - 1, "p": p, "n": n}


def _exact_signed_rank_counts(n: int) -> np.ndarray:
  """counts[w] = number of subsets of {1..n} whose sum is w (the null distribution of W+ times 2^n)."""
  counts = np.zeros(n * (n + 1) // 2 + 1, dtype=object)  # object: exact integers beyond 2^63
  counts[0] = 1
  for rank in range(1, n + 1):
    counts[rank:] = counts[rank:] + counts[:-rank]  # the right side is built before the write
  return counts


def wilcoxon_signed_rank(d: ArrayLike) -> dict[str, Any]:
  """Two-sided Wilcoxon signed-rank test of "d is symmetric about 0".

  Zeros are dropped (Wilcoxon's rule); n = the number of nonzero d. |d| is ranked 1..n with average
  ranks for ties; W+ = sum of the ranks of positive d, W- = n(n+1)/2 - W+, statistic = min(W+, W-).

  * exact (n <= 50, no ties in |d|): under the null each sign is +/- with probability 1/2, so
    P(W+ = w) = #{subsets of {1..n} summing to w} / 2^n; p = min(1, 2 P(W+ <= statistic)).
  * normal approximation otherwise (ties or n > 50): z = (W+ - n(n+1)/4) / sqrt(var),
    var = n(n+1)(2n+1)/24 - sum_g (t_g^3 - t_g)/48 over tie groups g of size t_g; p = 2 P(Z > |z|),
    no continuity correction.
  These are scipy.stats.wilcoxon's choices with zero_method="wilcox", correction=False.

  Returns:
    {"statistic", "w_plus", "n", "p", "method": "exact" | "normal"}; n = 0 (all d zero) gives p = 1.
  """
  d = _vector(d, "paired differences")
  d = d[d != 0]
  n = d.size
  if n == 0:
    return {"statistic": 0.0, "w_plus": 0.0, "n": 0, "p": 1.0, "method": "exact"}
  ranks = stats.rankdata(np.abs(d))  # average ranks for ties
  w_plus = float(ranks[d > 0].sum())
  statistic = min(w_plus, n * (n + 1) / 2 - w_plus)
  _, tie_sizes = np.unique(np.abs(d), return_counts=True)
  if n <= WILCOXON_EXACT_MAX_N and np.all(tie_sizes == 1):
    counts = _exact_signed_rank_counts(n)
    # No ties: ranks are integers, so statistic is an integer.
    p = min(1.0, 2 * float(sum(counts[: int(statistic) + 1])) / float(2**n))
    method = "exact"
  else:
    var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(tie_sizes**3 - tie_sizes) / 48
    z = (w_plus - n * (n + 1) / 4) / np.sqrt(var)
    p = float(2 * stats.norm.sf(abs(z)))
    method = "normal"
  return {"statistic": statistic, "w_plus": w_plus, "n": n, "p": p, "method": method}


def holm(pvalues: ArrayLike) -> np.ndarray:
  """Holm-Bonferroni step-down adjusted p-values (family-wise error control over m tests).

  With p_(1) <= ... <= p_(m) sorted: adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); the running
  max keeps the adjusted values monotone in the raw ones. Rejecting adj < alpha is Holm's procedure.

  Returns:
    [m] adjusted p-values in the input's order.
  """
  p = _vector(pvalues, "p-values")
  if np.any((p < 0) | (p > 1)):
    raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
  m = p.size
  order = np.argsort(p, kind="stable")
  stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
  adjusted = np.empty(m)
  adjusted[order] = np.maximum.accumulate(stepped)
  return adjusted


def bootstrap_ci(d: ArrayLike, level: float = 0.95, num: int = 10000, seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap CI of mean(d), seeded.

  Draw `num` resamples of n values from d with replacement (numpy's default_rng(seed)), take each
  resample's mean m_b, and return the (1 - level)/2 and (1 + level)/2 empirical quantiles of the m_b
  (numpy's default linear interpolation between order statistics).

  Returns:
    (lo, hi).
  """
  d = _vector(d, "paired differences", min_size=2)
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  if num < 1:
    raise ValueError(f"num must be >= 1, got {num}")
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, d.size, size=(num, d.size))].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def equivalence_verdict(ci: tuple[float, float], margin: float = EQUIVALENCE_MARGIN) -> str:
  """What a CI of a difference says, read in this order:

  * "equivalent": -margin <= lo and hi <= margin (every difference the CI allows is smaller than
    the margin; this holds even when the CI excludes 0: a real but negligible difference);
  * "different": lo > 0 or hi < 0 (the CI excludes 0 and reaches beyond the margin);
  * "inconclusive": otherwise (the CI holds 0 and a value beyond the margin).
  With a 95 % CI, "equivalent" is the two one-sided tests (TOST) at 2.5 % each.
  """
  lo, hi = (float(v) for v in ci)
  if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
    raise ValueError(f"ci must be finite (lo, hi) with lo <= hi, got {ci}")
  if margin <= 0:
    raise ValueError(f"margin must be > 0, got {margin}")
  if -margin <= lo and hi <= margin:
    return "equivalent"
  if lo > 0 or hi < 0:
    return "different"
  return "inconclusive"


def paired_t_power(n: int, sd: float, delta: float, alpha: float = 0.05) -> float:
  """Power of the two-sided paired t-test with n pairs, true mean difference delta, SD of d `sd`.

  t = mean/(sd/sqrt(n)) follows a noncentral t with df = n - 1 and noncentrality
  nc = (delta / sd) sqrt(n); with c = t_{1 - alpha/2, n-1}, power = P(T' > c) + P(T' < -c).
  """
  df, nc = n - 1, delta / sd * np.sqrt(n)
  crit = stats.t.ppf(1 - alpha / 2, df)
  return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def required_n(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 100000) -> int:
  """Smallest number of realisations n >= 2 whose paired t-test reaches `power` (see `paired_t_power`).

  Counts up from the normal-approximation n0 = ceil(((z_{1-alpha/2} + z_power) sd / delta)^2) - 1
  (the t-test needs at least about that many), evaluating the noncentral-t power at each n.
  """
  if not (sd > 0 and delta != 0 and 0 < alpha < 1 and 0 < power < 1):
    raise ValueError(
      f"required_n needs sd > 0, delta != 0, alpha and power in (0, 1); got sd={sd}, "
      f"delta={delta}, alpha={alpha}, power={power}"
    )
  z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
  n = max(2, int(np.ceil((z * sd / abs(delta)) ** 2)) - 1)
  while paired_t_power(n, sd, abs(delta), alpha) < power:
    n += 1
    if n > max_n:
      raise ValueError(f"required_n: more than {max_n} realisations needed (sd={sd}, delta={delta})")
  return n


def sd_upper_limit(sd: float, n: int, level: float = 0.8) -> float:
  """One-sided upper confidence limit of a population SD from a sample SD of n values.

  (n - 1) s^2 / sigma^2 ~ chi^2_{n-1}, so sigma <= s sqrt((n - 1) / chi^2_{1 - level, n-1}) with
  probability `level`. Sizing a study from a pilot's s with this limit instead of s itself makes
  the planned power hold with probability `level` despite the pilot's own noise (Browne, 1995).
  """
  if n < 2 or sd < 0 or not 0 < level < 1:
    raise ValueError(f"sd_upper_limit needs n >= 2, sd >= 0, level in (0, 1); got {n}, {sd}, {level}")
  return float(sd * np.sqrt((n - 1) / stats.chi2.ppf(1 - level, n - 1)))


def kaplan_meier(times: ArrayLike, events: ArrayLike) -> dict[str, Any]:
  """Product-limit (Kaplan-Meier) survival estimate, e.g. of RL steps to the onset of hacking.

  A run that never hacks is censored at its budget: its time is the budget and its event False.
  At each distinct event time t_j, n_j = runs with time >= t_j (at risk; a run censored at t_j is
  still at risk there) and d_j = events at t_j:
    S(t_j) = prod_{i <= j} (1 - d_i / n_i),
    Var S(t_j) = S(t_j)^2 sum_{i <= j} d_i / (n_i (n_i - d_i))   (Greenwood; NaN once S = 0).
  S is a step function: S(t) = 1 before the first event and S(t_j) on [t_j, t_{j+1}).
  The median is the smallest t_j with S(t_j) <= 0.5, None when S stays above 0.5 (too few events
  before the budget: the median is beyond it).

  Args:
    times: [N] event or censoring time per run, >= 0.
    events: [N] bool, True where the event (hacking) was observed.

  Returns:
    {"steps": [J] event times, "survival": [J], "variance": [J] Greenwood, "at_risk": [J],
     "events": [J], "median": float | None, "num_censored": int}.
  """
  times = _vector(times, "times")
  events = np.asarray(events)
  if events.shape != times.shape or events.dtype != bool:
    raise ValueError(
      f"events must be a bool array of the times' shape {times.shape}, got {events.dtype} {events.shape}"
    )
  if np.any(times < 0):
    raise ValueError("times must be >= 0")
  steps = np.unique(times[events])
  at_risk = np.array([np.sum(times >= t) for t in steps])
  num_events = np.array([np.sum(events & (times == t)) for t in steps])
  survival = np.cumprod(1 - num_events / at_risk)
  with np.errstate(divide="ignore"):
    greenwood = np.cumsum(num_events / (at_risk * (at_risk - num_events)))  # inf once n_j = d_j
  finite = np.isfinite(greenwood)
  variance = np.full(steps.size, np.nan)
  variance[finite] = survival[finite] ** 2 * greenwood[finite]
  below = np.flatnonzero(survival <= 0.5)
  return {
    "steps": steps,
    "survival": survival,
    "variance": variance,
    "at_risk": at_risk,
    "events": num_events,
    "median": float(steps[below[0]]) if below.size else None,
    "num_censored": int(np.sum(~events)),
  }


def restricted_mean_survival(times: ArrayLike, events: ArrayLike, budget: float) -> float:
  """Area under the Kaplan-Meier curve up to the budget tau: the mean time to the event, capped at tau.

  RMST = integral_0^tau S(t) dt = t_1 + sum_{j=1..J} S(t_j) (t_{j+1} - t_j), with t_{J+1} = tau and the
  event times t_1 < ... < t_J <= tau (S = 1 before t_1). Unlike the median it exists whatever share
  of the runs is censored, so it summarises one arm of one realisation in one number.
  """
  times = _vector(times, "times")
  if np.any(times > budget):
    raise ValueError(f"times must be <= the budget {budget}, got max {times.max()}")
  km = kaplan_meier(times, events)
  edges = np.concatenate([[0.0], km["steps"], [budget]])
  heights = np.concatenate([[1.0], km["survival"]])
  return float(np.sum(heights * np.diff(edges)))


def _reml_objective(
  theta: np.ndarray, y: np.ndarray, x: np.ndarray, grams: list[np.ndarray]
) -> tuple[float, np.ndarray]:
  """-2 x profiled REML log-likelihood (up to a constant) and its gradient in theta.

  V = sigma_e^2 H, H = I + sum_k theta_k Z_k Z_k^T; P = H^-1 - H^-1 X (X^T H^-1 X)^-1 X^T H^-1.
  With sigma_e^2 profiled out (its REML estimate y^T P y / (n - p)):
    f(theta) = log|H| + log|X^T H^-1 X| + (n - p) log(y^T P y),
    df/dtheta_k = tr(P G_k) - (n - p) y^T P G_k P y / y^T P y,  G_k = Z_k Z_k^T.
  """
  n, p = x.shape
  h = np.eye(n) + sum(t * g for t, g in zip(theta, grams))
  chol = np.linalg.cholesky(h)
  h_inv = np.linalg.inv(chol).T @ np.linalg.inv(chol)
  xtx = x.T @ h_inv @ x
  proj = h_inv - h_inv @ x @ np.linalg.solve(xtx, x.T @ h_inv)
  py = proj @ y
  ypy = float(y @ py)
  value = 2 * np.sum(np.log(np.diag(chol))) + np.linalg.slogdet(xtx)[1] + (n - p) * np.log(ypy)
  grad = np.array([np.sum(proj * g) - (n - p) * float(py @ g @ py) / ypy for g in grams])
  return float(value), grad


def mixed_model_random_intercepts(
  y: ArrayLike, groups: Mapping[str, Sequence[Any]], arm: Sequence[Any] | None = None, reference: Any = None
) -> dict[str, Any]:
  """Linear mixed model with random intercepts, fitted by REML.

    y_i = mu + beta_{arm(i)} + sum_k u^k_{g_k(i)} + e_i,  u^k_g ~ N(0, sigma_k^2), e_i ~ N(0, sigma_e^2),

  all independent; beta_reference = 0. Each entry of `groups` is one random-intercept factor, given
  as a label per observation. Nesting is in the labels: for realisations nested in SFT seeds
  (realisation = (SFT seed, preference seed), the preference set drawn from that SFT model) give
  {"sft_seed": s_i, "realisation": (s_i, p_i)}; preference seeds crossed with SFT seeds would be
  {"sft_seed": s_i, "pref_seed": p_i}.

  REML (restricted maximum likelihood, chosen over ML because its variance components are unbiased
  in balanced designs and equal the ANOVA estimators there when those are positive): maximise the
  likelihood of the error contrasts, with sigma_e^2 profiled out and theta_k = sigma_k^2 / sigma_e^2
  >= 0 found by L-BFGS-B on the analytic gradient (see `_reml_objective`); a component on the
  boundary (theta_k = 0) is reported as 0. Fixed effects are the GLS estimate
  beta = (X^T V^-1 X)^-1 X^T V^-1 y with covariance (X^T V^-1 X)^-1 at the REML V (no small-sample
  df correction: p-values come from the paired tests, the model gives effects, SEs and the split of
  the variance).

  Args:
    y: [N] observations (e.g. per-realisation means of each arm).
    groups: name -> [N] labels, one random intercept per distinct label.
    arm: [N] arm labels (fixed effect), or None for an intercept-only model.
    reference: the arm label absorbed into the intercept; the first in sorted order when None.

  Returns:
    {"intercept", "intercept_se", "arm_effects": {arm: estimate vs reference}, "arm_se": {arm: se},
     "variance_components": {name: sigma_k^2, ..., "residual": sigma_e^2}, "num_groups": {name: count},
     "n": N, "reml_neg2_loglik": -2 x the REML log-likelihood (constants included)}.
  """
  y = _vector(y, "y", min_size=3)
  if np.ptp(y) == 0:
    raise ValueError("y is constant: there is no variance to split")
  n = y.size
  columns, names = [np.ones(n)], []
  if arm is not None:
    arm_labels = np.asarray([str(a) for a in arm])
    if arm_labels.shape != (n,):
      raise ValueError(f"arm has {arm_labels.size} labels for {n} observations")
    levels = sorted(set(arm_labels.tolist()))
    reference = levels[0] if reference is None else str(reference)
    if reference not in levels:
      raise ValueError(f"reference arm {reference!r} is not among the arms {levels}")
    names = [a for a in levels if a != reference]
    columns += [(arm_labels == a).astype(np.float64) for a in names]
  x = np.stack(columns, axis=1)
  if np.linalg.matrix_rank(x) < x.shape[1] or n <= x.shape[1]:
    raise ValueError("the fixed effects are not estimable (fewer observations than effects)")
  if not groups:
    raise ValueError("mixed model needs at least one random-intercept factor in `groups`")
  grams, num_groups = [], {}
  for name, labels in groups.items():
    labels = [repr(v) if isinstance(v, tuple) else str(v) for v in labels]
    if len(labels) != n:
      raise ValueError(f"groups[{name!r}] has {len(labels)} labels for {n} observations")
    _, index = np.unique(labels, return_inverse=True)
    z = np.eye(index.max() + 1)[index]
    grams.append(z @ z.T)
    num_groups[name] = int(index.max() + 1)
  best = None
  for start in (0.1, 1.0, 10.0):
    fit = optimize.minimize(
      _reml_objective,
      np.full(len(grams), start),
      args=(y, x, grams),
      jac=True,
      method="L-BFGS-B",
      bounds=[(0.0, None)] * len(grams),
      options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 1000},
    )
    if best is None or fit.fun < best.fun:
      best = fit
  theta = best.x
  p = x.shape[1]
  h = np.eye(n) + sum(t * g for t, g in zip(theta, grams))
  h_inv_x = np.linalg.solve(h, x)
  xtx = x.T @ h_inv_x
  beta = np.linalg.solve(xtx, h_inv_x.T @ y)
  resid = y - x @ beta
  sigma_e2 = float(resid @ np.linalg.solve(h, resid)) / (n - p)
  cov = sigma_e2 * np.linalg.inv(xtx)
  se = np.sqrt(np.diag(cov))
  # f(theta) + (n - p)(1 + log(2 pi)) - (n - p) log(n - p) is -2 l_R with sigma_e^2 at its REML value.
  neg2 = best.fun + (n - p) * (1 + np.log(2 * np.pi) - np.log(n - p))
  return {
    "intercept": float(beta[0]),
    "intercept_se": float(se[0]),
    "arm_effects": {a: float(b) for a, b in zip(names, beta[1:])},
    "arm_se": {a: float(s) for a, s in zip(names, se[1:])},
    "variance_components": {**{k: float(t * sigma_e2) for k, t in zip(groups, theta)}, "residual": sigma_e2},
    "num_groups": num_groups,
    "n": n,
    "reml_neg2_loglik": float(neg2),
  }


def expected_ci_half_width(sd: float, n: int, level: float = 0.95) -> float:
  """Half-width of the t confidence interval of a mean of n values with SD `sd`: t_{(1+level)/2, n-1} sd / sqrt(n).

  What a study of n realisations should expect its CI of mean(d) to span, e.g. whether a CI inside the
  equivalence margin is reachable at all.
  """
  if n < 2 or sd < 0 or not 0 < level < 1:
    raise ValueError(f"expected_ci_half_width needs n >= 2, sd >= 0, level in (0, 1); got {n}, {sd}, {level}")
  return float(stats.t.ppf((1 + level) / 2, n - 1) * sd / np.sqrt(n))


def least_squares_line(x: ArrayLike, y: ArrayLike) -> dict[str, float]:
  """Ordinary least-squares line y = intercept + slope x over paired values.

  slope = sum (x_i - mean x)(y_i - mean y) / sum (x_i - mean x)^2, intercept = mean y - slope mean x.

  Returns:
    {"slope", "intercept", "n"}.
  """
  x, y = _vector(x, "x", min_size=2), _vector(y, "y", min_size=2)
  if x.shape != y.shape:
    raise ValueError(f"x has {x.size} values, y {y.size}: pairs must match")
  if np.ptp(x) == 0:
    raise ValueError("x is constant: the slope is undefined")
  dx = x - x.mean()
  slope = float(dx @ (y - y.mean()) / (dx @ dx))
  return {"slope": slope, "intercept": float(y.mean() - slope * x.mean()), "n": int(x.size)}
