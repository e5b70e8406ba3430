"""Report building blocks: statistics, JSON, markdown tables and PNG plots.

The evaluate stage assembles `WORKDIR/report.json` and `WORKDIR/REPORT.md`
from etils import epath
from these helpers. Plots use matplotlib's object API (`Figure` + Agg
canvas), never pyplot's global state, so they are safe in any process and
need no display.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
import numpy as np
from numpy.typing import ArrayLike

from advrm_jax.fileio import save_png, write_text_atomic

# Table 1 of Bukharin et al. (2025), synthetic setting: attack success in %
# (standard, strict).
PAPER_TABLE1: dict[str, tuple[float, float]] = {
  "Adv-RM": (99.31, 92.91),
  "RM over-optimisation": (8.31, 2.85),
  "TextFooler": (9.57, 0.0),
}

MISSING = "–"


# ----------------------------------------------------------------------------
# Statistics and JSON.
# ----------------------------------------------------------------------------


def mean_std(values: Sequence[float | None] | ArrayLike) -> dict[str, Any]:
  """Mean and std over seeds, skipping missing values.

  Args:
    values: Per-seed numbers; None, NaN and Inf count as missing.

  Returns:
    {"mean", "std", "n", "values"}: mean and sample std (ddof=1; 0.0 for a
    single value) over the n finite values, None for both when n = 0;
    "values" is the input as a JSON-safe list.
  """
  raw = [None if v is None else float(v) for v in np.asarray(values, dtype=object).reshape(-1)]
  finite = [v for v in raw if v is not None and math.isfinite(v)]
  if not finite:
    mean = std = None
  else:
    arr = np.asarray(finite)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return {"mean": mean, "std": std, "n": len(finite), "values": to_json_safe(raw)}


def format_mean_std(stat: Mapping[str, Any] | None, fmt: str = ".2f", scale: float = 1.0) -> str:
  """'1.23 ± 0.45' from a `mean_std` dict ('–' when missing).

  Args:
    stat: A `mean_std` result.
    fmt: Format spec of both numbers.
    scale: Multiplier, e.g. 100 for fractions shown in percent.
  """
  if not stat or stat.get("mean") is None:
    return MISSING
  text = f"{stat['mean'] * scale:{fmt}}"
  if stat.get("n", 0) > 1 and stat.get("std") is not None:
    text += f" ± {stat['std'] * scale:{fmt}}"
  return text


def to_json_safe(obj: Any) -> Any:
  """Recursively converts `obj` to plain JSON types.

  numpy/jax arrays -> (nested) lists, numpy scalars -> Python numbers,
  NaN/Inf -> None, tuples/sets -> lists, dataclasses and NamedTuples ->
  dicts, paths -> str, mapping keys -> str.
  """
  if obj is None or isinstance(obj, (bool, str)):
    return obj
  if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  if isinstance(obj, (float, np.floating)):
    value = float(obj)
    return value if math.isfinite(value) else None
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return to_json_safe(dataclasses.asdict(obj))
  if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
    return to_json_safe(obj._asdict())
  if isinstance(obj, Mapping):
    return {str(k): to_json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, set, frozenset)):
    return [to_json_safe(v) for v in obj]
  if hasattr(obj, "__array__") or isinstance(obj, np.ndarray):
    arr = np.asarray(obj)
    return to_json_safe(arr.item() if arr.ndim == 0 else arr.tolist())
  raise TypeError(f"cannot write {type(obj).__name__} {obj!r} to report JSON")


def write_report_json(path: epath.PathLike, report: Mapping[str, Any]) -> epath.Path:
  """Writes `report` as JSON (numpy-safe, NaN/Inf as null), atomically.

  An interrupted write never leaves a truncated report in place of a good
  one (``fileio.write_text_atomic``).

  Returns:
    The path written.
  """
  text = json.dumps(to_json_safe(report), indent=2, sort_keys=False, allow_nan=False)
  return write_text_atomic(path, text + "\n")


def read_report_json(path: epath.PathLike) -> dict[str, Any]:
  """Reads a report written by `write_report_json`."""
  return json.loads(epath.Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------
# Markdown.
# ----------------------------------------------------------------------------


def _cell(value: Any, float_fmt: str) -> str:
  if value is None:
    return MISSING
  if isinstance(value, (float, np.floating)):
    return MISSING if not math.isfinite(value) else f"{value:{float_fmt}}"
  if isinstance(value, (np.integer, np.bool_)):
    value = value.item()
  # A "|" would end the cell and a newline the row.
  return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], float_fmt: str = ".2f") -> str:
  """A GitHub-flavoured markdown table.

  Args:
    headers: Column titles.
    rows: Rows of cells; floats are formatted with `float_fmt`, None/NaN
      shown as '–', '|' escaped.
    float_fmt: Format spec of float cells.

  Returns:
    The table text, ending with a newline.
  """
  width = len(headers)
  for i, row in enumerate(rows):
    if len(row) != width:
      raise ValueError(f"row {i} has {len(row)} cells, expected {width}")
  lines = ["| " + " | ".join(_cell(h, float_fmt) for h in headers) + " |", "|" + "|".join(["---"] * width) + "|"]
  lines += ["| " + " | ".join(_cell(c, float_fmt) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def attack_table(
  ours: Mapping[str, Mapping[str, Any]],
  paper: Mapping[str, tuple[float, float]] = PAPER_TABLE1,
) -> str:
  """Attack success, ours beside the paper's Table 1 (all in %).

  Args:
    ours: Method name -> {"standard": value, "strict": value}, each a number
      in % or a `mean_std` dict of % values. Methods are listed in the
      paper's order first, then any others.
    paper: The paper's (standard, strict) % per method.

  Returns:
    A markdown table with columns method, ours standard / strict, paper
    standard / strict.
  """

  def show(value: Any) -> str:
    if isinstance(value, Mapping):
      return format_mean_std(value)
    return _cell(None if value is None else float(value), ".2f")

  names = [m for m in paper if m in ours] + [m for m in ours if m not in paper]
  names += [m for m in paper if m not in ours]
  rows = []
  for name in names:
    mine = ours.get(name, {})
    theirs = paper.get(name)
    rows.append(
      [
        name,
        show(mine.get("standard")),
        show(mine.get("strict")),
        MISSING if theirs is None else f"{theirs[0]:.2f}",
        MISSING if theirs is None else f"{theirs[1]:.2f}",
      ]
    )
  return markdown_table(
    ["Method", "Standard % (ours)", "Strict % (ours)", "Standard % (paper)", "Strict % (paper)"], rows
  )


# ----------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------


def figure(ncols: int = 1, width: float = 5.5, height: float = 4.0):
  # Imported lazily: matplotlib is slow to import and only plots need it.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  # deferred: slow to import, plots only

  # Constrained layout keeps a figure title clear of the panel titles.
  fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
  axes = fig.subplots(1, ncols, squeeze=False)[0]
  return fig, axes


def integer_ticks(ax) -> None:
  """Whole-number ticks on the x axis (steps, rounds)."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top  # deferred: plots only

  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig, path: epath.PathLike) -> epath.Path:
  """Writes a figure as PNG (creating the directory)."""
  return save_png(fig, path)


def band(ax, steps: np.ndarray, curves: np.ndarray, label: str, color: Any = None) -> None:
  """Mean line with a ± std band over the seed axis of [seeds, S] curves."""
  mean = np.nanmean(curves, axis=0)
  (line,) = ax.plot(steps, mean, label=label, color=color)
  if curves.shape[0] > 1:
    std = np.nanstd(curves, axis=0, ddof=1)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color())


def _as_seed_curves(values: ArrayLike, name: str) -> np.ndarray:
  arr = np.asarray(values, np.float64)
  if arr.ndim == 1:
    arr = arr[None]
  if arr.ndim != 2:
    raise ValueError(f"{name} must be [S] or [seeds, S], got {arr.shape}")
  return arr


def plot_reward_curves(path: epath.PathLike, *args, **kwargs) -> epath.Path:
  """Writes `reward_curves_figure(*args, **kwargs)` to `path` (PNG); returns the path."""
  return save_figure(reward_curves_figure(*args, **kwargs), path)


def reward_curves_figure(
  curves: Mapping[str, Mapping[str, ArrayLike]],
  steps: ArrayLike | None = None,
  onsets: Mapping[str, float | None] | None = None,
  title: str = "RLHF against each reward model",
):
  """Gold (left) and proxy (right) reward vs step, one line per RM.

  Args:
    curves: RM name -> {"gold": [seeds, S] or [S], "proxy": same shape};
      lines are seed means, bands ± one std over seeds.
    steps: [S] steps of the logged points (default 0 .. S-1).
    onsets: Optional RM name -> mean hacking onset step (None: none), drawn
      as dashed vertical lines on the gold panel.
    title: Figure title.

  Returns:
    The matplotlib Figure.
  """
  if not curves:
    raise ValueError("plot_reward_curves: no curves given")
  fig, (ax_gold, ax_proxy) = figure(ncols=2)
  for name, c in curves.items():
    gold = _as_seed_curves(c["gold"], f"curves[{name!r}]['gold']")
    proxy = _as_seed_curves(c["proxy"], f"curves[{name!r}]['proxy']")
    x = np.arange(gold.shape[1]) if steps is None else np.asarray(steps)
    band(ax_gold, x, gold, name)
    color = ax_gold.get_lines()[-1].get_color()
    band(ax_proxy, x, proxy, name, color)
    onset = (onsets or {}).get(name)
    if onset is not None:
      ax_gold.axvline(onset, color=color, linestyle="--", alpha=0.7)
  ax_gold.set(xlabel="RL step", ylabel="gold reward", title="gold")
  ax_proxy.set(xlabel="RL step", ylabel="proxy (RM) reward", title="proxy")
  ax_gold.legend(fontsize="small")
  integer_ticks(ax_gold)
  integer_ticks(ax_proxy)
  fig.suptitle(title)
  return fig


def plot_attack_success_per_round(path: epath.PathLike, *args, **kwargs) -> epath.Path:
  """Writes `attack_success_figure(*args, **kwargs)` to `path` (PNG); returns the path."""
  return save_figure(attack_success_figure(*args, **kwargs), path)


def _errorbar_series(ax, values: ArrayLike, label: str, **style) -> None:
  """Seed mean per round with ± one std over seeds (no bar for a single seed)."""
  arr = _as_seed_curves(values, label)
  rounds = np.arange(arr.shape[1])
  with warnings.catch_warnings():  # a round without values is a gap, one value has no spread
    warnings.simplefilter("ignore", RuntimeWarning)
    mean, std = np.nanmean(arr, axis=0), np.nanstd(arr, axis=0, ddof=1)
  err = np.nan_to_num(std) if arr.shape[0] > 1 else None
  ax.errorbar(rounds, mean, yerr=err, capsize=3, label=label, **style)
  ax.set_xticks(rounds)


def attack_success_figure(
  rates: Mapping[str, ArrayLike], floors: Mapping[str, ArrayLike] | None = None, title: str = "Attack success per round"
):
  """Attack success (%) per adversarial-training round, seed mean ± std.

  Args:
    rates: Series name (e.g. "standard", "strict", "online") -> [rounds] or
      [seeds, rounds] success in %; round 0 is the conventional RM. NaN is
      a missing point.
    floors: Optional series drawn dashed, in the same form: what the same
      criteria give for answers nobody optimised (the reference policy's
      own fresh samples), the level an attack has to beat.
    title: Figure title.

  Returns:
    The matplotlib Figure.
  """
  if not rates:
    raise ValueError("plot_attack_success_per_round: no rates given")
  fig, (ax,) = figure()
  for name, values in rates.items():
    _errorbar_series(ax, values, name, marker="o")
  for name, values in (floors or {}).items():
    _errorbar_series(ax, values, name, marker="x", linestyle="--", color="grey")
  ax.set(xlabel="adversarial training round", ylabel="attack success (%)", ylim=(-2, 102), title=title)
  ax.legend(fontsize="small")
  return fig


def plot_uncertainty_vs_gold(path: epath.PathLike, *args, **kwargs) -> epath.Path:
  """Writes `uncertainty_figure(*args, **kwargs)` to `path` (PNG); returns the path."""
  return save_figure(uncertainty_figure(*args, **kwargs), path)


def uncertainty_figure(
  u: ArrayLike,
  gold_gap: ArrayLike,
  correlation: Mapping[str, Any] | None = None,
  xlabel: str = "ensemble uncertainty U",
  ylabel: str = "gold(y_ref) - gold(y)",
  threshold: float | None = None,
):
  """Scatter of uncertainty against the gold shortfall.

  Args:
    u: [N] uncertainties (e.g. the filter's z(U)).
    gold_gap: [N] gold shortfall against the reference.
    correlation: Optional `attack.uncertainty_gold_correlation` output,
      shown in the title.
    xlabel, ylabel: Axis labels.
    threshold: Optional filter threshold on the x axis (e.g. z(U) > 1.96),
      drawn as a vertical line; the samples right of it are the kept ones.

  Returns:
    The matplotlib Figure.
  """
  u = np.asarray(u, np.float64).reshape(-1)
  gap = np.asarray(gold_gap, np.float64).reshape(-1)
  if u.shape != gap.shape:
    raise ValueError(f"u has {u.size} values, gold_gap {gap.size}")
  fig, (ax,) = figure()
  ax.scatter(u, gap, s=8, alpha=0.5)
  title = "uncertainty vs gold shortfall"
  if correlation:

    def num(k):
      v = correlation.get(k)
      return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"

    title += f"\nPearson {num('pearson')}, Spearman {num('spearman')}, n={correlation.get('n', u.size)}"
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.axhline(0.0, color="grey", linewidth=0.8)
  if threshold is not None:
    kept = int(np.sum(u > threshold))
    ax.axvline(
      threshold,
      color="tab:red",
      linestyle="--",
      label=f"filter threshold {threshold:g} ({kept} of {u.size} right of it)",
    )
    ax.legend(fontsize="small")
  return fig
