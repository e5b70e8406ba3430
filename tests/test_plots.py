"""Every plot shows data: checked on the matplotlib Figures before they are saved.

The figures are built by the same functions the stages save (``metrics_figure``
for each stage's metrics.png / metrics_eval.png, and the evaluate stage's
reward-curve, attack-success and uncertainty figures) from inputs written
here, so the checks do not depend on a run. For each figure: every visible
axis holds at least one line, point or bar with finite values; the figure
title does not overlap a panel title once drawn; step axes have integer ticks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.ticker import MaxNLocator

from advrm_jax import metrics
from advrm_jax.evaluation import report


def _finite_points(ax) -> int:
  """Finite (x, y) points drawn on an axis: lines, scatter points, error-bar segments, bars."""
  count = 0
  for line in ax.get_lines():
    xy = np.asarray(line.get_xydata(), np.float64)
    count += int(np.all(np.isfinite(xy), axis=1).sum()) if xy.size else 0
  for collection in ax.collections:
    if isinstance(collection, PathCollection):
      xy = np.asarray(collection.get_offsets(), np.float64)
      count += int(np.all(np.isfinite(xy), axis=1).sum()) if xy.size else 0
    elif isinstance(collection, LineCollection):
      count += sum(int(np.all(np.isfinite(np.asarray(s)))) for s in collection.get_segments())
  count += sum(1 for p in ax.patches if np.isfinite(p.get_height()))
  return count


def _assert_every_axis_shows_data(fig) -> None:
  visible = [ax for ax in fig.axes if ax.axison]
  assert visible
  for ax in visible:
    assert _finite_points(ax) >= 1, f"panel {ax.get_title()!r} is empty"


def _assert_titles_do_not_overlap(fig) -> None:
  FigureCanvasAgg(fig).draw()
  renderer = fig.canvas.get_renderer()
  if fig._suptitle is None:  # pylint: disable=protected-access
    return
  top = fig._suptitle.get_window_extent(renderer)  # pylint: disable=protected-access
  for ax in fig.axes:
    if ax.axison and ax.get_title():
      assert not top.overlaps(ax.title.get_window_extent(renderer)), f"figure title overlaps {ax.get_title()!r}"


def _write_stage_log(path):
  """A stage's log as train_loop writes it: training rows, an evaluation at step 4 and a final one."""
  writer = metrics.MetricWriter(path, total_steps=8, name="rm", tensorboard=False, stream=open("/dev/null", "w"))
  for step in (2, 4, 6, 8):
    train = {"loss": 1.0 / step, "grad_norm": 0.5, "accuracy/seed0": 0.5}
    writer.write_scalars(step, train, evaluation={"test/accuracy": 0.6, "test/ece": 0.1} if step == 4 else None)
  writer.write_scalars(8, {}, evaluation={"test/accuracy": 0.7, "test/ece": 0.08})
  writer.stream.close()
  return writer.jsonl_path


def test_stage_metrics_come_from_every_row_and_split_training_from_evaluation(tmp_path):
  log = _write_stage_log(tmp_path)
  rows = [json.loads(l) for l in log.read_text().splitlines()]
  assert rows[-1]["eval_keys"] == ["test/accuracy", "test/ece"] and "loss" not in rows[-1]
  series = metrics.metric_series(rows)
  # The last row holds only evaluation results; the training keys come from the rows before it.
  assert series["training"] == {
    "loss": [(2, 0.5), (4, 0.25), (6, 1 / 6), (8, 0.125)],
    "grad_norm": [(2, 0.5), (4, 0.5), (6, 0.5), (8, 0.5)],
  }
  assert series["evaluation"] == {"test/accuracy": [(4, 0.6), (8, 0.7)], "test/ece": [(4, 0.1), (8, 0.08)]}
  for kind in ("training", "evaluation"):
    fig = metrics.metrics_figure(series[kind], f"rm: {kind}")
    _assert_every_axis_shows_data(fig)
    _assert_titles_do_not_overlap(fig)
    for ax in fig.axes:
      if ax.axison:
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer  # pylint: disable=protected-access
        assert all(float(t).is_integer() for t in ax.get_xticks())
  # What the loop saves: both PNGs, and a rerender replaces them.
  assert metrics.plot_metrics(log, tmp_path / "metrics.png", title="rm") == tmp_path / "metrics.png"
  assert (tmp_path / "metrics_eval.png").stat().st_size > 0


def test_a_log_of_evaluation_results_only_plots_them(tmp_path):
  log = tmp_path / "metrics.jsonl"
  log.write_text(json.dumps({"step": 5, "time": 0.0, "gold": 1.5, "eval_keys": ["gold"]}) + "\n")
  assert metrics.plot_metrics(log, tmp_path / "metrics.png") == tmp_path / "metrics_eval.png"
  assert not (tmp_path / "metrics.png").exists()
  # A single point is drawn with a marker, so it is visible.
  fig = metrics.metrics_figure(metrics.metric_series(metrics.read_metrics(log))["evaluation"])
  assert fig.axes[0].get_lines()[0].get_marker() == "o"


def test_reward_curves_show_every_run_with_integer_steps():
  rng = np.random.default_rng(0)
  curves = {
    "conventional": {"gold": rng.normal(size=(3, 5)), "proxy": rng.normal(size=(3, 5))},
    "adv_rm": {"gold": rng.normal(size=5), "proxy": rng.normal(size=5)},
  }
  fig = report.reward_curves_figure(curves, steps=np.arange(5) * 2, onsets={"conventional": 4.0})
  _assert_every_axis_shows_data(fig)
  _assert_titles_do_not_overlap(fig)
  for ax in fig.axes:
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_attack_success_has_error_bars_over_seeds_and_the_reference_floor():
  # [seeds, rounds]: seed 2 misses round 2 (NaN); the floor is the reference policy's own answers.
  adv = np.array([[90.0, 40.0, 10.0], [98.0, 30.0, np.nan]])
  floor = np.array([[5.0, 4.0, 6.0], [7.0, 6.0, 4.0]])
  fig = report.attack_success_figure(
    {"Adv-RM standard": adv, "TextFooler": [[9.0, 8.0, 7.0]]}, floors={"reference policy standard (floor)": floor}
  )
  _assert_every_axis_shows_data(fig)
  (ax,) = fig.axes
  containers = {c.get_label(): c for c in ax.containers}
  adv_bars = containers["Adv-RM standard"]
  mean_line, _, (bars,) = adv_bars.lines
  assert np.allclose(mean_line.get_ydata(), [94.0, 35.0, 10.0])
  # Error bars: sample std over seeds (ddof=1): 5.657 and 7.071 for rounds 0 and 1; 0 with one seed.
  half = [abs(s[1][1] - s[0][1]) / 2 for s in bars.get_segments()]
  assert np.allclose(half, [np.std([90, 98], ddof=1), np.std([40, 30], ddof=1), 0.0])
  floor_line = containers["reference policy standard (floor)"].lines[0]
  assert floor_line.get_linestyle() == "--" and np.allclose(floor_line.get_ydata(), [6.0, 5.0, 5.0])
  assert [int(t) for t in ax.get_xticks()] == [0, 1, 2]


@pytest.mark.parametrize("threshold", [1.96, 2.5])
def test_uncertainty_scatter_draws_the_filter_threshold(threshold):
  rng = np.random.default_rng(0)
  z = rng.normal(size=200)
  fig = report.uncertainty_figure(z, z + rng.normal(size=200), threshold=threshold)
  _assert_every_axis_shows_data(fig)
  (ax,) = fig.axes
  vertical = [l for l in ax.get_lines() if np.allclose(l.get_xdata(), threshold)]
  assert len(vertical) == 1
  assert f"{int(np.sum(z > threshold))} of 200" in vertical[0].get_label()
