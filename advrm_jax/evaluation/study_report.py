"""The study's analysis: study.json, STUDY.md and plots from the realisations' records.

Implements docs/study_protocol.md exactly (one function per endpoint, named as there); the layout
and the record format are docs of the interface (realisation.json, written by the study runner):

  STUDY_DIR/realisations/<name>/realisation.json   read (one per realisation; its existence = done)
  STUDY_DIR/study.json, STUDY_DIR/STUDY.md, STUDY_DIR/plots/*.png   written here

The unit is the realisation: every per-seed quantity is reduced to one value per realisation and arm
first, and every test runs over realisations. The statistics are `evaluation.statistics`, the
matched-KL reading `attack.value_at_kl` (through `statistics.gold_at_matched_kl`), the onset of
hacking `hacking.hacking_onset` (through `hacking.steps_before_hacking`); nothing is re-derived here.

  python -m advrm_jax.report STUDY_DIR     re-renders all of it from the records on disk.

study.json (the protocol's "What study.json reports"): `protocol_commit`; `realisations` {count,
`included` (the primary analysis), `comparative` (pass the method checks: every other analysis),
`excluded` [{name, why, checks (the failing ones), excluded_from}]}; `method_checks_pass_rate`;
`primary` {n, mean, sd, se, t, df, p_t, p_wilcoxon, ci95, verdict, ci_verdict, per_realisation
[{name, d, targets}], sensitivity}; `secondary` (one key per protocol item, each comparison with its
per-realisation values, Holm-adjusted `p_holm` in the two families); `moderator`; `n_for_full_study`.
NaN is written as null.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from advrm_jax.evaluation import hacking, statistics
from advrm_jax.evaluation import report as rep
from advrm_jax.evaluation.attack import KL_TARGETS, uncertainty_gold_correlation

PROTOCOL_PATH = "docs/study_protocol.md"
REALISATIONS_DIR = "realisations"
RECORD_FILE = "realisation.json"
STUDY_JSON = "study.json"
STUDY_MD = "STUDY.md"
PLOTS_DIR = "plots"
PLOT_FILES = ("forest.png", "gold_vs_kl.png", "attack_success.png", "kaplan_meier.png", "uncertainty_shortfall.png")

TREATMENT, CONTROL = "T", "C0"
CONTROLS = ("C1", "C2", "C3")  # the Holm families of secondary items 1 and 2, in this order
ORACLE = "oracle"  # a reference line only; never tested
ALPHA = 0.05
# Bootstrap of every CI: 10,000 resamples, seed 0 (the protocol's choice, so study.json reproduces).
BOOTSTRAP_NUM, BOOTSTRAP_SEED = 10000, 0
# Non-inferiority margin of the in-distribution accuracy, percentage points.
ACCURACY_MARGIN = -1.0
# Choosing N: the smallest effect of interest (gold), power, the SD's upper confidence level, the
# default study's size and the preference seeds per SFT seed (N is a multiple of it).
SMALLEST_EFFECT = 0.3
POWER = 0.8
SD_LIMIT_LEVEL = 0.8
DEFAULT_STUDY_N = 32
PREF_SEEDS_PER_SFT_SEED = 4


# ----------------------------------------------------------------------------
# Inputs: the protocol's commit and the realisations' records.
# ----------------------------------------------------------------------------


def protocol_commit(repo_root: pathlib.Path | None = None) -> tuple[str | None, str | None]:
  """The commit that added docs/study_protocol.md: (sha, None), or (None, why it is unknown).

  Read from the git checkout the package runs from (`repo_root` overrides it). The oldest commit that
  added the page is the protocol's (an addendum later is an edit, not an addition).
  """
  root = pathlib.Path(repo_root) if repo_root else pathlib.Path(__file__).resolve().parents[2]
  try:
    out = subprocess.run(
      ["git", "-C", str(root), "log", "--diff-filter=A", "--format=%H", "--", PROTOCOL_PATH],
      capture_output=True,
      text=True,
      check=False,
    )
  except FileNotFoundError:
    return None, "git is not installed"
  if out.returncode:
    return None, f"{root} is not a git checkout ({(out.stderr.strip().splitlines() or ['git failed'])[0]})"
  commits = out.stdout.split()
  if not commits:
    return None, f"{PROTOCOL_PATH} is not committed in {root}"
  return commits[-1], None


def _require(record: dict[str, Any], path: str, where: str) -> Any:
  """record[a][b]... for path "a.b...", or a one-line error naming the record and the key."""
  value: Any = record
  for key in path.split("."):
    if not isinstance(value, dict) or key not in value:
      raise ValueError(f"{where}: missing key '{path}'")
    value = value[key]
  return value


def check_record(record: dict[str, Any], where: str) -> dict[str, Any]:
  """Validates the keys of realisation.json the analysis reads; returns the record."""
  for key in ("name", "sft_seed", "pref_seed", "status"):
    _require(record, key, where)
  if record["status"] not in ("ok", "error"):
    raise ValueError(f"{where}: status must be 'ok' or 'error', got {record['status']!r}")
  if record["status"] == "error":
    return record
  for key in ("method_checks.all_pass", "rl_budget", "hacking.margin", "hacking.window", "arms"):
    _require(record, key, where)
  for arm in (TREATMENT, CONTROL):
    for key in ("steps", "gold", "proxy", "kl"):
      _require(record, f"arms.{arm}.{key}", where)
  return record


def read_records(study_dir: pathlib.Path) -> list[dict[str, Any]]:
  """Every STUDY_DIR/realisations/*/realisation.json, checked."""
  records = []
  for path in sorted((pathlib.Path(study_dir) / REALISATIONS_DIR).glob(f"*/{RECORD_FILE}")):
    try:
      record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    records.append(check_record(record, str(path)))
  return records


def _json_value(value: Any) -> Any:
  """numpy scalars and arrays to Python, NaN and inf to None (study.json never holds NaN)."""
  if isinstance(value, dict):
    return {str(k): _json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_json_value(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def _finite(value: Any) -> bool:
  return value is not None and math.isfinite(value)


def _mean_of_finite(values: Sequence[float | None]) -> float | None:
  finite = [v for v in values if _finite(v)]
  return float(np.mean(finite)) if finite else None


# ----------------------------------------------------------------------------
# Per-realisation values.
# ----------------------------------------------------------------------------


def arm_gold_at_matched_kl(arm: dict[str, Any], targets: tuple[float, ...] = KL_TARGETS) -> np.ndarray:
  """One arm's gold at each KL target in one realisation (the mean over the RL seeds that reach it)."""
  return statistics.gold_at_matched_kl(np.asarray(arm["kl"], np.float64), np.asarray(arm["gold"], np.float64), targets)


def matched_kl_difference(record: dict[str, Any], treatment: str, control: str) -> dict[str, Any]:
  """d_r = mean over the KL targets both arms reach of gold_treatment - gold_control; None without one."""
  gold_t = arm_gold_at_matched_kl(record["arms"][treatment])
  gold_c = arm_gold_at_matched_kl(record["arms"][control])
  d = statistics.matched_kl_difference(gold_t, gold_c)
  targets = [k for k, a, b in zip(KL_TARGETS, gold_t, gold_c) if np.isfinite(a) and np.isfinite(b)]
  return {"name": record["name"], "d": d if np.isfinite(d) else None, "targets": targets}


def hacking_times(record: dict[str, Any], arm: str) -> tuple[np.ndarray, np.ndarray]:
  """Per RL seed of one arm: (onset step or the RL budget, whether hacking was observed)."""
  node, budget = record["hacking"], int(record["rl_budget"])
  entry = record["arms"][arm]
  steps = np.asarray(entry["steps"], np.float64)
  times, events = [], []
  for gold, proxy in zip(np.asarray(entry["gold"], np.float64), np.asarray(entry["proxy"], np.float64)):
    logged = np.isfinite(gold) & np.isfinite(proxy)  # null = not measured at that step
    time, hacked = hacking.steps_before_hacking(
      gold[logged], proxy[logged], node["margin"], int(node["window"]), steps[logged].astype(int), budget
    )
    times.append(time)
    events.append(hacked)
  return np.asarray(times, np.float64), np.asarray(events, bool)


# ----------------------------------------------------------------------------
# Tests over realisations.
# ----------------------------------------------------------------------------


def paired_comparison(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Paired t-test, Wilcoxon signed-rank test and bootstrap 95 % CI of the rows' finite differences `d`.

  Returns:
    {"n", "mean", "sd", "se", "t", "df", "p_t", "p_wilcoxon", "wilcoxon_method", "ci95",
     "per_realisation": rows}; tests are None (with a "note") below two realisations.
  """
  d = np.asarray([r["d"] for r in rows if _finite(r["d"])], np.float64)
  out: dict[str, Any] = {
    "n": int(d.size),
    "mean": float(d.mean()) if d.size else None,
    "sd": None,
    "se": None,
    "t": None,
    "df": None,
    "p_t": None,
    "p_wilcoxon": None,
    "wilcoxon_method": None,
    "ci95": None,
  }
  if d.size >= 2:
    t_test = statistics.paired_t_test(d)
    wilcoxon = statistics.wilcoxon_signed_rank(d)
    out.update(
      sd=t_test["sd"],
      se=t_test["se"],
      t=t_test["t"],
      df=t_test["df"],
      p_t=t_test["p"],
      p_wilcoxon=wilcoxon["p"],
      wilcoxon_method=wilcoxon["method"],
      ci95=list(statistics.bootstrap_ci(d, 0.95, BOOTSTRAP_NUM, BOOTSTRAP_SEED)),
    )
  else:
    out["note"] = f"{d.size} realisation(s) with a value: not tested"
  out["per_realisation"] = list(rows)
  return out


def holm_family(comparisons: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Adds `p_holm` (Holm over the family's finite p_t) and `significant` (p_holm < 0.05) to each comparison."""
  tested = [k for k, c in comparisons.items() if _finite(c["p_t"])]
  adjusted = statistics.holm([comparisons[k]["p_t"] for k in tested]) if tested else []
  for comparison in comparisons.values():
    comparison.update(p_holm=None, significant=None)
  for name, p in zip(tested, adjusted):
    comparisons[name]["p_holm"] = float(p)
    comparisons[name]["significant"] = bool(p < ALPHA)
  return comparisons


def primary_verdict(ci95: Sequence[float] | None, p_t: float | None) -> str:
  """`equivalence_verdict` of the CI; a "different" whose p_t is >= 0.05 (or undefined) is "inconclusive"."""
  if ci95 is None:
    return "not tested"
  verdict = statistics.equivalence_verdict(tuple(ci95))
  if verdict == "different" and not (_finite(p_t) and p_t < ALPHA):
    return "inconclusive"
  return verdict


def _primary_analysis(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  rows = [row for row in (matched_kl_difference(r, TREATMENT, CONTROL) for r in records) if row["d"] is not None]
  result = paired_comparison(rows)
  result["verdict"] = primary_verdict(result["ci95"], result["p_t"])
  result["ci_verdict"] = statistics.equivalence_verdict(tuple(result["ci95"])) if result["ci95"] else None
  return result


# ----------------------------------------------------------------------------
# Exclusions (protocol: "Method checks and exclusions").
# ----------------------------------------------------------------------------


def method_check_failures(record: dict[str, Any]) -> dict[str, Any]:
  """The failing method checks: {check: {"value", "rule"}}."""
  return {
    name: {"value": check.get("value"), "rule": check.get("rule")}
    for name, check in record["method_checks"].items()
    if isinstance(check, dict) and not check.get("pass")
  }


def realisations_realising_the_method(
  records: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """Rules 1 and 3: (realisations in the comparative analyses, exclusions from all analyses)."""
  passing, excluded = [], []
  for record in records:
    if record["status"] != "ok":
      excluded.append(
        {
          "name": record["name"],
          "why": f"run error: {record.get('error')}",
          "checks": {},
          "excluded_from": "all analyses",
        }
      )
    elif not record["method_checks"]["all_pass"]:
      failures = method_check_failures(record)
      text = ", ".join(f"{k} = {v['value']} (needs {v['rule']})" for k, v in failures.items())
      excluded.append(
        {
          "name": record["name"],
          "why": f"method checks failed: {text}",
          "checks": failures,
          "excluded_from": "all analyses",
        }
      )
    else:
      passing.append(record)
  return passing, excluded


# ----------------------------------------------------------------------------
# Endpoints.
# ----------------------------------------------------------------------------


def primary_endpoint(passing: Sequence[dict[str, Any]], ok: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Gold at matched KL, T - C0, over the realisations that pass; the sensitivity analysis over all `ok`."""
  result = _primary_analysis(passing)
  result["sensitivity"] = {
    "label": "sensitivity: every realisation with a primary value, method checks ignored; never the verdict",
    **_primary_analysis(ok),
  }
  return result


def controls_on_primary(passing: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Secondary 1: d_r for T - C1, T - C2, T - C3 (those the study ran); one Holm family over their p_t."""
  comparisons = {}
  for control in CONTROLS:
    having = [r for r in passing if control in r["arms"]]
    if having:
      comparisons[f"T-{control}"] = paired_comparison([matched_kl_difference(r, TREATMENT, control) for r in having])
  return {"family": "Holm over the p_t of the comparisons below", "comparisons": holm_family(comparisons)}


def attack_success_after_two_rounds(passing: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Secondary 2: a fresh adversary's standard success (%) against each arm's final RM; T - C1/C2/C3, Holm.

  The strict rate is reported per arm beside it, not tested.
  """

  def rate(record: dict[str, Any], arm: str, kind: str) -> float | None:
    after = record["arms"].get(arm, {}).get("attack_after")
    return None if after is None else after.get(kind)

  arms = [a for a in (CONTROL, TREATMENT, *CONTROLS) if any(a in r["arms"] for r in passing)]
  per_arm = {}
  for arm in arms:
    standard = [rate(r, arm, "standard") for r in passing]
    strict = [rate(r, arm, "strict") for r in passing]
    per_arm[arm] = {
      "standard_mean": _mean_of_finite(standard),
      "strict_mean": _mean_of_finite(strict),
      "per_realisation": [
        {"name": r["name"], "standard": s, "strict": t} for r, s, t in zip(passing, standard, strict)
      ],
    }
  comparisons = {}
  for control in CONTROLS:
    if control in arms:
      rows = []
      for r in passing:
        treated, controlled = rate(r, TREATMENT, "standard"), rate(r, control, "standard")
        d = treated - controlled if _finite(treated) and _finite(controlled) else None
        rows.append({"name": r["name"], "d": d})
      comparisons[f"T-{control}"] = paired_comparison(rows)
  return {
    "family": "Holm over the p_t of the comparisons below",
    "per_arm": per_arm,
    "comparisons": holm_family(comparisons),
  }


def uncertainty_predicts_shortfall(passing: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Secondary 3: per realisation r(adversarial) - r(in-distribution) of Pearson(U, gold shortfall), against 0."""
  rows = []
  for record in passing:
    node = record.get("uncertainty_shortfall") or {}
    adversarial = (node.get("adversarial") or {}).get("r")
    in_distribution = (node.get("in_distribution") or {}).get("r")
    d = adversarial - in_distribution if _finite(adversarial) and _finite(in_distribution) else None
    rows.append({"name": record["name"], "adversarial": adversarial, "in_distribution": in_distribution, "d": d})
  return {"multiplicity": "not adjusted", **paired_comparison(rows)}


def steps_to_hacking(passing: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Secondary 4: Kaplan-Meier per arm over all runs (descriptive); restricted mean time to hacking, T - C0."""
  arms = [a for a in (CONTROL, TREATMENT, *CONTROLS) if any(a in r["arms"] for r in passing)]
  times = {(r["name"], arm): hacking_times(r, arm) for r in passing for arm in arms if arm in r["arms"]}
  kaplan_meier = {}
  for arm in arms:
    runs = [times[key] for key in times if key[1] == arm]
    pooled_times = np.concatenate([t for t, _ in runs])
    pooled_events = np.concatenate([e for _, e in runs])
    km = statistics.kaplan_meier(pooled_times, pooled_events)
    kaplan_meier[arm] = {
      "median": km["median"],
      "num_runs": int(pooled_times.size),
      "num_events": int(pooled_events.sum()),
      "num_censored": km["num_censored"],
      "steps": km["steps"],
      "survival": km["survival"],
      "variance": km["variance"],
    }
  rows = []
  for record in passing:
    rmst = {
      arm: statistics.restricted_mean_survival(*times[record["name"], arm], budget=int(record["rl_budget"]))
      for arm in (TREATMENT, CONTROL)
    }
    rows.append(
      {"name": record["name"], TREATMENT: rmst[TREATMENT], CONTROL: rmst[CONTROL], "d": rmst[TREATMENT] - rmst[CONTROL]}
    )
  budgets = sorted({int(r["rl_budget"]) for r in passing})
  return {
    "multiplicity": "not adjusted",
    "budgets": budgets,
    "kaplan_meier": kaplan_meier,
    "restricted_mean": paired_comparison(rows),
  }


def in_distribution_accuracy(passing: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Secondary 5: held-out pair accuracy (points), T - C0; non-inferior when the CI's lower end is above -1."""
  rows = []
  for record in passing:
    treated = record["arms"][TREATMENT].get("accuracy")
    controlled = record["arms"][CONTROL].get("accuracy")
    d = treated - controlled if _finite(treated) and _finite(controlled) else None
    rows.append({"name": record["name"], TREATMENT: treated, CONTROL: controlled, "d": d})
  result = {"multiplicity": "not adjusted", "margin": ACCURACY_MARGIN, **paired_comparison(rows)}
  result["non_inferior"] = None if result["ci95"] is None else bool(result["ci95"][0] > ACCURACY_MARGIN)
  return result


def mixed_model(included: Sequence[dict[str, Any]], primary_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Secondary 6: y = C0's and T's gold averaged over the targets counted in d_r, random intercepts by REML.

  Realisations nest in SFT seeds; where each SFT seed has one realisation (the screen) only the
  realisation intercept is fitted (the two would be the same factor).
  """
  targets_of = {row["name"]: row["targets"] for row in primary_rows}
  y, arm, sft_seed, realisation = [], [], [], []
  for record in included:
    counted = [KL_TARGETS.index(k) for k in targets_of[record["name"]]]
    for name in (CONTROL, TREATMENT):
      y.append(float(np.mean(arm_gold_at_matched_kl(record["arms"][name])[counted])))
      arm.append(name)
      sft_seed.append(record["sft_seed"])
      realisation.append(record["name"])
  groups = {"realisation": realisation}
  if len(set(sft_seed)) < len(set(realisation)):
    groups = {"sft_seed": sft_seed, "realisation": realisation}
  try:
    fit = statistics.mixed_model_random_intercepts(y, groups, arm, reference=CONTROL)
  except ValueError as e:
    return {"note": f"not fitted: {e}", "n": len(y)}
  return {
    "beta_T": fit["arm_effects"][TREATMENT],
    "beta_T_se": fit["arm_se"][TREATMENT],
    "intercept": fit["intercept"],
    "variance_components": fit["variance_components"],
    "num_groups": fit["num_groups"],
    "n": fit["n"],
    "multiplicity": "not adjusted",
  }


def moderator(included: Sequence[dict[str, Any]], primary_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Does d_r grow with exploits.disagreement_share? Pearson, Spearman (with p) and the least-squares slope."""
  d_of = {row["name"]: row["d"] for row in primary_rows}
  rows = [
    {"name": r["name"], "disagreement_share": r.get("disagreement_share"), "d": d_of[r["name"]]} for r in included
  ]
  usable = [row for row in rows if _finite(row["disagreement_share"])]
  share = np.asarray([row["disagreement_share"] for row in usable], np.float64)
  d = np.asarray([row["d"] for row in usable], np.float64)
  # Pearson and Spearman of two paired vectors with their p-values (the function is named for its first use).
  correlation = uncertainty_gold_correlation(share, d)
  out = {
    "n": len(usable),
    "pearson": correlation["pearson"],
    "pearson_p": correlation["pearson_p"],
    "spearman": correlation["spearman"],
    "spearman_p": correlation["spearman_p"],
    "slope": None,
    "intercept": None,
    "left_out": [row["name"] for row in rows if row not in usable],
    "per_realisation": usable,
  }
  if share.size >= 2 and np.ptp(share) > 0:
    line = statistics.least_squares_line(share, d)
    out.update(slope=line["slope"], intercept=line["intercept"])
  return out


def n_for_full_study(d: Sequence[float]) -> dict[str, Any]:
  """Choosing N: s, s_plan = 80 % upper limit of s, N = required_n at delta 0.3 rounded up to x4, >= 32.

  Also the expected 95 % CI half-width at N, t_{0.975, N-1} s_plan / sqrt(N), and whether it fits in the
  equivalence margin (an equivalence verdict is reachable only then).
  """
  d = np.asarray(d, np.float64)
  if d.size < 2 or np.ptp(d) == 0:
    return {"n": int(d.size), "note": "needs two or more differing primary values"}
  s = float(d.std(ddof=1))
  s_plan = statistics.sd_upper_limit(s, d.size, SD_LIMIT_LEVEL)
  required = statistics.required_n(s_plan, SMALLEST_EFFECT, ALPHA, POWER)
  n_full = max(DEFAULT_STUDY_N, -(-required // PREF_SEEDS_PER_SFT_SEED) * PREF_SEEDS_PER_SFT_SEED)
  half_width = statistics.expected_ci_half_width(s_plan, n_full)
  return {
    "n": int(d.size),
    "s": s,
    "s_plan": s_plan,
    "required_n": required,
    "N": n_full,
    "ci95_half_width_at_N": half_width,
    "equivalence_reachable": bool(half_width <= statistics.EQUIVALENCE_MARGIN),
  }


def analyse(
  records: Sequence[dict[str, Any]], protocol_commit: str | None, protocol_commit_missing: str | None = None
) -> dict[str, Any]:
  """The study.json content of the protocol's analyses over the realisations' records."""
  records = [check_record(r, f"realisation {r.get('name', i)}") for i, r in enumerate(records)]
  names = [r["name"] for r in records]
  if len(set(names)) < len(names):
    raise ValueError(f"realisation names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
  # One order whatever order the records came in, so study.json is the same for the same records.
  records.sort(key=lambda r: (r["sft_seed"], r["pref_seed"]))
  passing, excluded = realisations_realising_the_method(records)
  ok = [r for r in records if r["status"] == "ok"]
  primary = primary_endpoint(passing, ok)
  with_value = {row["name"] for row in primary["per_realisation"]}
  included = [r for r in passing if r["name"] in with_value]
  excluded += [
    {
      "name": r["name"],
      "why": "no matched KL: no KL target reached by both C0 and T",
      "checks": {},
      "excluded_from": "primary analysis",
    }
    for r in passing
    if r["name"] not in with_value
  ]
  # Over every realisation: one stopped by an error did not realise the method either.
  pass_rate = len(passing) / len(records) if records else None
  study = {
    "protocol_commit": protocol_commit,
    "realisations": {
      "count": len(records),
      "included": [r["name"] for r in included],
      "comparative": [r["name"] for r in passing],
      "excluded": excluded,
    },
    "method_checks_pass_rate": pass_rate,
    "method_not_realised_in_most": pass_rate is not None and pass_rate < 0.5,
    "primary": primary,
    "secondary": {
      "controls_on_primary": controls_on_primary(passing),
      "attack_success_after_two_rounds": attack_success_after_two_rounds(passing),
      "uncertainty_predicts_shortfall": uncertainty_predicts_shortfall(passing),
      "steps_to_hacking": steps_to_hacking(passing),
      "in_distribution_accuracy": in_distribution_accuracy(passing),
      "mixed_model": mixed_model(included, primary["per_realisation"]),
    },
    "moderator": moderator(included, primary["per_realisation"]),
    "n_for_full_study": n_for_full_study([row["d"] for row in primary["per_realisation"]]),
  }
  if protocol_commit is None:
    study["protocol_commit_missing"] = protocol_commit_missing or "not given"
  return _json_value(study)


# ----------------------------------------------------------------------------
# STUDY.md.
# ----------------------------------------------------------------------------


def _num(value: Any, fmt: str = ".3f") -> str:
  return "n/a" if value is None else f"{value:{fmt}}"


def _p(value: Any) -> str:
  return "n/a" if value is None else (f"{value:.2e}" if value < 1e-3 else f"{value:.3f}")


def _ci(ci: Sequence[float] | None) -> str:
  return "n/a" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def verdict_text(primary: dict[str, Any]) -> str:
  """The protocol's wording of the primary verdict."""
  margin = statistics.EQUIVALENCE_MARGIN
  verdict, ci = primary["verdict"], primary["ci95"]
  if verdict == "not tested":
    return f"**not tested**: {primary.get('note', 'fewer than two realisations')}."
  if verdict == "equivalent":
    return (
      f"**equivalent**: the 95 % CI {_ci(ci)} lies within +-{margin} gold; any difference between T and C0 "
      "at matched KL is negligible (a result as much as a difference is)."
    )
  if verdict == "different":
    side = "higher" if ci[0] > 0 else "lower"
    return (
      f"**different**: the 95 % CI {_ci(ci)} excludes 0 and reaches beyond +-{margin} gold, p_t = "
      f"{_p(primary['p_t'])}: T reaches {side} gold than C0 at matched KL."
    )
  if primary["ci_verdict"] == "different":
    return (
      f"**inconclusive**: the bootstrap CI {_ci(ci)} excludes 0 but p_t = {_p(primary['p_t'])} >= {ALPHA} "
      "(the bootstrap and the t-test disagree, as they can at small n)."
    )
  return f"**inconclusive**: the 95 % CI {_ci(ci)} holds 0 and differences beyond +-{margin} gold."


def _comparison_table(comparisons: dict[str, dict[str, Any]], unit: str, holm: bool) -> list[str]:
  columns = (
    ["comparison", "n", f"mean ({unit})", "95 % CI", "p (t)"] + (["p (Holm)"] if holm else []) + ["p (Wilcoxon)"]
  )
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for name, c in comparisons.items():
    cells = [name, str(c["n"]), _num(c["mean"], "+.3f"), _ci(c["ci95"]), _p(c["p_t"])]
    cells += [_p(c["p_holm"])] if holm else []
    lines.append("| " + " | ".join(cells + [_p(c["p_wilcoxon"])]) + " |")
  return lines + [""]


def render_markdown(study: dict[str, Any], title: str, command: str | None = None) -> str:
  """STUDY.md from study.json alone (so it can be re-rendered from the file)."""
  lines = [
    f"Produced by `{command}`." if command else "Produced by `advrm_jax.evaluation.study_report.write_study`.",
    "",
    f"# Study `{title}`",
    "",
  ]
  realisations, primary = study["realisations"], study["primary"]
  commit = study["protocol_commit"]
  lines += [
    f"Protocol: `{PROTOCOL_PATH}` as of commit `{commit}`."
    if commit
    else f"Protocol: `{PROTOCOL_PATH}`; its commit is unknown ({study.get('protocol_commit_missing')}).",
    "",
  ]
  passing = len(realisations["comparative"])
  if study["method_not_realised_in_most"]:
    lines += [
      f"**The method was not realised in most of this world's realisations**: {passing} of "
      f"{realisations['count']} pass the method checks; the analyses below are still reported.",
      "",
    ]
  lines += [
    f"{realisations['count']} realisations; {passing} pass the method checks (pass rate "
    f"{_num(study['method_checks_pass_rate'], '.2f')}); {len(realisations['included'])} in the primary "
    "analysis.",
    "",
  ]

  lines += [
    "## Primary endpoint: gold at matched KL (2, 4, 6 nats), T - C0",
    "",
    "| n | mean d | 95 % CI (bootstrap) | p (t) | p (Wilcoxon) | verdict |",
    "|---|---|---|---|---|---|",
    f"| {primary['n']} | {_num(primary['mean'], '+.3f')} | {_ci(primary['ci95'])} | {_p(primary['p_t'])} | "
    f"{_p(primary['p_wilcoxon'])} | {primary['verdict']} |",
    "",
    "Verdict: " + verdict_text(primary),
    "",
    "| realisation | d_r (gold) | KL targets counted |",
    "|---|---|---|",
  ]
  lines += [
    f"| {row['name']} | {row['d']:+.3f} | {', '.join(f'{k:g}' for k in row['targets'])} |"
    for row in primary["per_realisation"]
  ]
  sensitivity = primary["sensitivity"]
  lines += [
    "",
    f"Sensitivity analysis (method checks ignored; never the verdict): n = {sensitivity['n']}, mean "
    f"{_num(sensitivity['mean'], '+.3f')}, 95 % CI {_ci(sensitivity['ci95'])}, p (t) {_p(sensitivity['p_t'])},"
    f" p (Wilcoxon) {_p(sensitivity['p_wilcoxon'])}, {sensitivity['verdict']}.",
    "",
  ]

  secondary = study["secondary"]
  lines += [
    "## Secondary endpoints",
    "",
    "Items 1 and 2 are Holm families (the adjusted p-values decide); the others are not adjusted for multiplicity.",
    "",
    "### 1. T vs the controls at matched KL (gold, Holm family)",
    "",
  ]
  lines += _comparison_table(secondary["controls_on_primary"]["comparisons"], "gold", holm=True)
  attack = secondary["attack_success_after_two_rounds"]
  lines += [
    "### 2. Fresh-adversary attack success after 2 rounds (%, Holm family on the standard rate)",
    "",
    "| arm | standard (mean) | strict (mean, not tested) |",
    "|---|---|---|",
  ]
  lines += [
    f"| {arm} | {_num(v['standard_mean'], '.1f')} | {_num(v['strict_mean'], '.1f')} |"
    for arm, v in attack["per_arm"].items()
  ]
  lines += [""] + _comparison_table(attack["comparisons"], "points", holm=True)
  uncertainty = secondary["uncertainty_predicts_shortfall"]
  lines += [
    "### 3. Uncertainty predicts the gold shortfall (not adjusted for multiplicity)",
    "",
    "Per realisation: Pearson r of (U, gold shortfall) on adversarial minus on in-distribution samples.",
    "",
  ]
  lines += _comparison_table({"adversarial - in-distribution": uncertainty}, "r", holm=False)
  hacking_result = secondary["steps_to_hacking"]
  lines += [
    "### 4. Steps to hacking (not adjusted for multiplicity)",
    "",
    f"RL budget(s): {hacking_result['budgets']}. Kaplan-Meier over all runs (descriptive):",
    "",
    "| arm | runs | hacked | censored | median steps |",
    "|---|---|---|---|---|",
  ]
  lines += [
    f"| {arm} | {km['num_runs']} | {km['num_events']} | {km['num_censored']} | "
    f"{'beyond the budget' if km['median'] is None else _num(km['median'], '.0f')} |"
    for arm, km in hacking_result["kaplan_meier"].items()
  ]
  lines += ["", "Restricted mean steps to hacking (up to the budget), T - C0:", ""]
  lines += _comparison_table({"T-C0": hacking_result["restricted_mean"]}, "steps", holm=False)
  accuracy = secondary["in_distribution_accuracy"]
  non_inferior = {True: "non-inferior", False: "not shown non-inferior", None: "not tested"}[accuracy["non_inferior"]]
  lines += ["### 5. In-distribution accuracy of the final RM (points, not adjusted for multiplicity)", ""]
  lines += _comparison_table({"T-C0": accuracy}, "points", holm=False)
  lines += [
    f"Non-inferiority (margin {accuracy['margin']:g} point: the CI's lower end must be above it): **{non_inferior}**.",
    "",
  ]
  mixed = secondary["mixed_model"]
  lines += ["### 6. Mixed model (random intercepts, REML; beside the paired t-test, not instead of it)", ""]
  if "note" in mixed:
    lines += [mixed["note"], ""]
  else:
    components = ", ".join(f"{k} {v:.4f}" for k, v in mixed["variance_components"].items())
    lines += [
      f"beta_T = {mixed['beta_T']:+.3f} (SE {mixed['beta_T_se']:.3f}) over {mixed['n']} arm values; "
      f"variance components: {components}.",
      "",
    ]

  mod = study["moderator"]
  lines += [
    "## Moderator: exploits.disagreement_share",
    "",
    f"n = {mod['n']}: Pearson {_num(mod['pearson'])} (p {_p(mod['pearson_p'])}), Spearman "
    f"{_num(mod['spearman'])} (p {_p(mod['spearman_p'])}), least-squares slope of d_r on the share "
    f"{_num(mod['slope'], '+.3f')}."
    + (f" Left out (share undefined): {', '.join(mod['left_out'])}." if mod["left_out"] else ""),
    "",
  ]

  plan = study["n_for_full_study"]
  lines += ["## N for the full study", ""]
  if "note" in plan:
    lines += [f"Not computed: {plan['note']} (n = {plan['n']}).", ""]
  else:
    reachable = "reachable" if plan["equivalence_reachable"] else "not reachable"
    lines += [
      f"s = {plan['s']:.3f} (SD of d_r over n = {plan['n']}), s_plan = {plan['s_plan']:.3f} (80 % upper "
      f"limit), required n = {plan['required_n']} (delta {SMALLEST_EFFECT}, alpha {ALPHA}, power {POWER}), "
      f"**N = {plan['N']}** (a multiple of {PREF_SEEDS_PER_SFT_SEED}, at least {DEFAULT_STUDY_N}); expected "
      f"95 % CI half-width at N: {plan['ci95_half_width_at_N']:.3f} gold, so an equivalence verdict "
      f"(+-{statistics.EQUIVALENCE_MARGIN}) is {reachable}.",
      "",
    ]

  lines += ["## Exclusions", ""]
  if realisations["excluded"]:
    lines += ["| realisation | excluded from | why |", "|---|---|---|"]
    lines += [f"| {e['name']} | {e['excluded_from']} | {e['why']} |" for e in realisations["excluded"]]
  else:
    lines += ["None."]
  lines += ["", "## Plots", ""] + [f"![{name}]({PLOTS_DIR}/{name})" for name in PLOT_FILES]
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Plots and the study directory.
# ----------------------------------------------------------------------------

# Step of the KL grid the gold-vs-KL curves are read on (nats).
KL_GRID_STEP = 0.25


def _empty(ax, what: str) -> None:
  ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def write_plots(
  study: dict[str, Any], records: Sequence[dict[str, Any]], plots_dir: pathlib.Path
) -> list[pathlib.Path]:
  """forest, gold-vs-KL, attack success, Kaplan-Meier and uncertainty-vs-shortfall PNGs under plots_dir."""
  plots_dir = pathlib.Path(plots_dir)
  primary, secondary = study["primary"], study["secondary"]
  paths = []

  fig, (ax,) = rep.figure(height=1.5 + 0.3 * max(1, primary["n"]))
  rows = primary["per_realisation"]
  ax.scatter([r["d"] for r in rows], range(len(rows), 0, -1), color="C0", zorder=3)
  if primary["ci95"] is not None:
    ax.errorbar(
      [primary["mean"]],
      [0],
      xerr=[[primary["mean"] - primary["ci95"][0]], [primary["ci95"][1] - primary["mean"]]],
      fmt="D",
      color="k",
      capsize=4,
      label=f"mean, 95 % CI ({primary['verdict']})",
    )
    ax.legend(loc="best", fontsize="small")
  for x, style in ((0, "-"), (-statistics.EQUIVALENCE_MARGIN, ":"), (statistics.EQUIVALENCE_MARGIN, ":")):
    ax.axvline(x, color="grey", linestyle=style, linewidth=1)
  ax.set_yticks(range(len(rows), -1, -1), [r["name"] for r in rows] + ["pooled"])
  ax.set_xlabel("d_r: gold at matched KL, T - C0")
  ax.set_title("Primary difference per realisation")
  paths.append(rep.save_figure(fig, plots_dir / "forest.png"))

  fig, (ax,) = rep.figure()
  passing = [r for r in records if r["name"] in set(study["realisations"]["comparative"])]
  max_kl = max(
    (
      np.nanmax(np.asarray(a["kl"], np.float64))
      for r in passing
      for a in r["arms"].values()
      if np.isfinite(np.asarray(a["kl"], np.float64)).any()
    ),
    default=0.0,
  )
  grid = tuple(np.arange(1, int(max_kl / KL_GRID_STEP) + 1) * KL_GRID_STEP)
  arms = [a for a in (CONTROL, TREATMENT, *CONTROLS, ORACLE) if any(a in r["arms"] for r in passing)]
  if grid and arms:
    for arm in arms:
      curves = np.stack([arm_gold_at_matched_kl(r["arms"][arm], grid) for r in passing if arm in r["arms"]])
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: a KL no realisation reached
        rep.band(ax, np.asarray(grid), curves, label=arm)
    ax.legend(fontsize="small")
  else:
    _empty(ax, "realisation passing the method checks")
  ax.set_xlabel("KL to the reference (nats)")
  ax.set_ylabel("gold reward (mean +- SD over realisations)")
  ax.set_title("Gold vs KL per arm")
  paths.append(rep.save_figure(fig, plots_dir / "gold_vs_kl.png"))

  fig, (ax,) = rep.figure()
  per_arm = secondary["attack_success_after_two_rounds"]["per_arm"]
  for i, (arm, values) in enumerate(per_arm.items()):
    points = [r["standard"] for r in values["per_realisation"] if r["standard"] is not None]
    ax.scatter(np.full(len(points), i), points, color="C0", alpha=0.5, s=12)
    if values["standard_mean"] is not None:
      ax.bar(i, values["standard_mean"], color="C0", alpha=0.3)
  ax.set_xticks(range(len(per_arm)), list(per_arm))
  ax.set_ylabel("standard attack success (%)")
  ax.set_title("Fresh adversary vs each arm's final RM (after 2 rounds)")
  paths.append(rep.save_figure(fig, plots_dir / "attack_success.png"))

  fig, (ax,) = rep.figure()
  hacking_result = secondary["steps_to_hacking"]
  budget = max(hacking_result["budgets"], default=0)
  for arm, km in hacking_result["kaplan_meier"].items():
    steps = [0.0] + km["steps"] + [budget]
    survival = [1.0] + km["survival"] + [km["survival"][-1] if km["survival"] else 1.0]
    ax.step(steps, survival, where="post", label=f"{arm} ({km['num_events']}/{km['num_runs']} hacked)")
  if hacking_result["kaplan_meier"]:
    ax.legend(fontsize="small")
  else:
    _empty(ax, "runs")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("RL step")
  ax.set_ylabel("share of runs not yet hacked")
  ax.set_title("Kaplan-Meier: steps to hacking")
  paths.append(rep.save_figure(fig, plots_dir / "kaplan_meier.png"))

  fig, (ax,) = rep.figure()
  rows = [r for r in secondary["uncertainty_predicts_shortfall"]["per_realisation"] if r["d"] is not None]
  ax.scatter([r["in_distribution"] for r in rows], [r["adversarial"] for r in rows])
  for r in rows:
    ax.annotate(r["name"], (r["in_distribution"], r["adversarial"]), fontsize="x-small")
  ax.axline((0, 0), slope=1, color="grey", linestyle=":", linewidth=1)
  ax.set_xlabel("r(U, gold shortfall), in-distribution")
  ax.set_ylabel("r(U, gold shortfall), adversarial")
  ax.set_title("Uncertainty vs gold shortfall per realisation")
  paths.append(rep.save_figure(fig, plots_dir / "uncertainty_shortfall.png"))
  return paths


def write_study(study_dir: pathlib.Path, command: str | None = None) -> dict[str, Any]:
  """Reads STUDY_DIR/realisations/*/realisation.json; writes study.json, STUDY.md and plots/; returns study.json."""
  study_dir = pathlib.Path(study_dir)
  if not (study_dir / REALISATIONS_DIR).is_dir():
    raise FileNotFoundError(f"{study_dir / REALISATIONS_DIR} is not a directory")
  records = read_records(study_dir)
  if not records:
    raise ValueError(f"{study_dir / REALISATIONS_DIR}: no */{RECORD_FILE} (no realisation has finished)")
  commit, missing = protocol_commit()
  study = analyse(records, commit, missing)
  (study_dir / STUDY_JSON).write_text(json.dumps(study, indent=1, allow_nan=False) + "\n")
  (study_dir / STUDY_MD).write_text(render_markdown(study, study_dir.name, command))
  write_plots(study, records, study_dir / PLOTS_DIR)
  return study
