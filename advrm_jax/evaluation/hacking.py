"""Reward-hacking onset from per-step gold and proxy reward curves.

Reward hacking is the policy's proxy (RM) reward rising while its gold
reward falls (as the paper defines it). Definition used here, on curves of S logged
points:

1. Smooth both curves with a trailing moving average of `window` points
   (point t averages points max(0, t - window + 1) .. t). Trailing, not
   centred, so the onset at t never depends on later points, as a monitor
   watching a live run would see it; it lags a sudden change by up to
   window - 1 points, equally for every RM compared.
2. Track gold's running peak: peak_t = max_{s <= t} gold_s, reached first at
   point p_t.
3. The onset is the first t with
      gold_t <= peak_t - margin      (gold has fallen `margin` below its peak)
   and
      proxy_t > proxy_{p_t}           (the proxy has kept rising since then).
   None when no point qualifies (no hacking within the budget).

A gold drop with a falling proxy is ordinary degradation, not hacking, and
is not counted. `steps` maps curve points to training steps (curves are
often logged every few steps); onsets are reported in training steps.

Across seeds, runs that never hack are censored observations: the true
onset is beyond the budget. `aggregate_onsets` counts them separately and
gives (a) mean +- std over the seeds that hacked and (b) a lower bound on
the mean over all seeds with each censored run counted at the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def moving_average(x: ArrayLike, window: int = 1) -> np.ndarray:
  """Trailing moving average; the first points average what exists so far.

  Args:
    x: [S] values.
    window: Points per average, >= 1.

  Returns:
    [S] float64.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise ValueError(f"curve must be 1-D [S], got shape {x.shape}")
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  csum = np.concatenate([[0.0], np.cumsum(x)])
  idx = np.arange(1, x.size + 1)
  lo = np.maximum(idx - window, 0)
  return (csum[idx] - csum[lo]) / (idx - lo)


def gold_rise(gold: ArrayLike, reference_gold: float, window: int = 1) -> float:
  """How far an RL run's smoothed gold rose above the reference policy's before anything else.

  The peak of the trailing moving average of ``gold`` ([S] logged points, e.g. the mean over RL seeds)
  minus ``reference_gold``: the method check `conventional_rlhf_gold_rise` and the calibration's
  rule (a world where RLHF never helps cannot show hacking delayed).
  """
  return float(moving_average(gold, window).max() - reference_gold)


def _check_curves(
  gold: ArrayLike, proxy: ArrayLike, steps: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  gold = np.asarray(gold, np.float64)
  proxy = np.asarray(proxy, np.float64)
  if gold.ndim != 1 or gold.shape != proxy.shape:
    raise ValueError(f"gold {gold.shape} and proxy {proxy.shape} must be 1-D curves of the same length")
  if not (np.all(np.isfinite(gold)) and np.all(np.isfinite(proxy))):
    raise ValueError("gold and proxy curves must be finite (got NaN or Inf)")
  if steps is None:
    steps = np.arange(gold.size)
  else:
    steps = np.asarray(steps)
    if steps.shape != gold.shape:
      raise ValueError(f"steps {steps.shape} must match the curves {gold.shape}")
  return gold, proxy, steps


def hacking_onset(
  gold: ArrayLike, proxy: ArrayLike, margin: float, window: int = 1, steps: ArrayLike | None = None
) -> int | None:
  """The first step where gold fell `margin` below its peak while proxy rose.

  Args:
    gold: [S] gold reward per logged point.
    proxy: [S] proxy (RM) reward per logged point.
    margin: How far below its running peak smoothed gold must fall (> 0).
    window: Trailing moving-average width applied to both curves first.
    steps: [S] training step of each point (default 0 .. S-1).

  Returns:
    The training step of the onset, or None if hacking never starts.
  """
  if margin <= 0:
    raise ValueError(f"margin must be > 0, got {margin}")
  gold, proxy, steps = _check_curves(gold, proxy, steps)
  if gold.size == 0:
    return None
  gold = moving_average(gold, window)
  proxy = moving_average(proxy, window)
  peak = np.maximum.accumulate(gold)
  # Index of the first point that reached the running peak: it changes only
  # when gold sets a new strict maximum.
  new_peak = np.concatenate([[True], gold[1:] > peak[:-1]])
  peak_at = np.maximum.accumulate(np.where(new_peak, np.arange(gold.size), 0))
  hacked = (gold <= peak - margin) & (proxy > proxy[peak_at])
  hits = np.flatnonzero(hacked)
  return int(steps[hits[0]]) if hits.size else None


def steps_before_hacking(
  gold: ArrayLike,
  proxy: ArrayLike,
  margin: float,
  window: int = 1,
  steps: ArrayLike | None = None,
  budget: int | None = None,
) -> tuple[int, bool]:
  """Steps of safe training: the onset, or the budget when none is found.

  Args:
    gold, proxy, margin, window, steps: As `hacking_onset`.
    budget: The run's step budget (default: the last logged step).

  Returns:
    (steps, hacked): the onset step and True, or (budget, False), in which
    case `budget` is a lower bound on the true onset.
  """
  onset = hacking_onset(gold, proxy, margin, window, steps)
  if onset is not None:
    return onset, True
  if budget is None:
    _, _, steps_arr = _check_curves(gold, proxy, steps)
    budget = int(steps_arr[-1]) if steps_arr.size else 0
  return int(budget), False


def onsets_over_seeds(
  gold: ArrayLike, proxy: ArrayLike, margin: float, window: int = 1, steps: ArrayLike | None = None
) -> list[int | None]:
  """`hacking_onset` for each row of [seeds, S] curves."""
  gold = np.asarray(gold, np.float64)
  proxy = np.asarray(proxy, np.float64)
  if gold.ndim != 2 or gold.shape != proxy.shape:
    raise ValueError(f"gold {gold.shape} and proxy {proxy.shape} must be [seeds, S] of the same shape")
  return [hacking_onset(g, p, margin, window, steps) for g, p in zip(gold, proxy)]


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  if not values:
    return None, None
  arr = np.asarray(values, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return float(arr.mean()), std


def aggregate_onsets(onsets: Sequence[int | None], budget: int) -> dict[str, Any]:
  """Mean +- std of hacking onsets over seeds, with censored runs.

  Args:
    onsets: Per-seed onset step, None for "no hacking within the budget".
    budget: The step budget of every run.

  Returns:
    onsets: the input as a list.
    num_seeds, num_hacked, num_not_hacked: counts.
    hacked_mean, hacked_std: over seeds that hacked (None if none did).
    lower_bound_mean, lower_bound_std: over all seeds, a censored seed
      counting as `budget`; the true mean is at least lower_bound_mean (an
      exact mean when num_not_hacked == 0). Std is the sample std (ddof=1;
      0 for one seed).
    budget: as given.
  """
  onsets = [None if o is None else int(o) for o in onsets]
  hacked = [o for o in onsets if o is not None]
  filled = [budget if o is None else o for o in onsets]
  hacked_mean, hacked_std = _mean_std(hacked)
  lb_mean, lb_std = _mean_std(filled)
  return {
    "onsets": onsets,
    "num_seeds": len(onsets),
    "num_hacked": len(hacked),
    "num_not_hacked": len(onsets) - len(hacked),
    "hacked_mean": hacked_mean,
    "hacked_std": hacked_std,
    "lower_bound_mean": lb_mean,
    "lower_bound_std": lb_std,
    "budget": int(budget),
  }


def format_onsets(summary: dict[str, Any], fmt: str = ".0f") -> str:
  """A one-line text of `aggregate_onsets`, e.g. '>= 120 ± 35 (1/3 no
  hacking within 150 steps)' or '42 ± 3' or 'no hacking within 150 steps'."""
  n, not_hacked = summary["num_seeds"], summary["num_not_hacked"]
  budget = summary["budget"]
  if n == 0:
    return "no runs"
  if not_hacked == n:
    return f"no hacking within {budget} steps ({n}/{n} seeds)"
  text = f"{summary['lower_bound_mean']:{fmt}} ± {summary['lower_bound_std']:{fmt}}"
  if not_hacked:
    text = f">= {text} ({not_hacked}/{n} no hacking within {budget} steps)"
  return text
