"""The one metrics writer: JSON lines, TensorBoard events, a progress line, PNG plots.

Every stage logs through ``MetricWriter``. It writes

* ``WORKDIR/<stage>/metrics.jsonl``: one JSON object per logged step; a row
  that holds evaluation results lists their keys in ``"eval_keys"``,
* TensorBoard event files in ``WORKDIR/<stage>/tb`` (tensorboardX, so no
  TensorFlow is needed; evaluation results under ``eval/``),
* on process 0's stderr, one progress line per logged step (rate and ETA
  from the second logged step on, when there is a rate to measure) and one
  result line per evaluation,
* ``plot_metrics`` renders PNG curves from the JSON lines at the end (and can
  re-render them from any finished or interrupted run): training metrics in
  ``metrics.png``, evaluation results in ``metrics_eval.png``.

On resume the JSON lines past the restored step are dropped, so a resumed
run's log equals an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import time
from typing import Any, Iterable, Mapping

from etils import epath
import jax
import numpy as np

from advrm_jax.evaluation.report import integer_ticks
from advrm_jax.fileio import AppendedText, PathLike, is_remote, save_png


def _to_python(value: Any) -> Any:
  if hasattr(value, "tolist"):
    value = np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible as strings
  return value


class _EpathEventFile:
  """A TensorBoard event file in an object store: kept in memory, the whole object written at each flush."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathEventFiles:
  """tensorboardX's writer factory (``record_writer.register_writer_factory``) for remote log dirs."""

  def open(self, path: str) -> _EpathEventFile:
    return _EpathEventFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


class MetricWriter:
  """Writes scalars per step for one stage of a run."""

  def __init__(
    self,
    directory: PathLike,
    total_steps: int | None = None,
    name: str = "",
    tensorboard: bool = True,
    stream=sys.stderr,
  ):
    self.directory = epath.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.jsonl_path = self.directory / "metrics.jsonl"
    # Remote logs are written at ``flush``/``close`` (``AppendedText``); local rows at once.
    self.metrics_log = AppendedText(self.jsonl_path)
    self._samples_log = AppendedText(self.directory / "samples.jsonl")
    self.total_steps = total_steps
    self.name = name
    self.stream = stream
    # In a multi-host job every process runs the loop; process 0 alone writes the logs (one row per step)
    # and the console lines, the others only pass through.
    self._writes = jax.process_index() == 0
    self._tb = None
    if tensorboard and self._writes:
      from tensorboardX import SummaryWriter, record_writer  # pylint: disable=import-outside-toplevel  # optional writer

      if is_remote(self.directory):
        # Event files in a bucket go through epath like every other file
        # (tensorboardX's own gs:// writer needs google-cloud-storage).
        record_writer.register_writer_factory(os.fspath(self.directory).split(":")[0], _EpathEventFiles())
      self._tb = SummaryWriter(os.fspath(self.directory / "tb"))
    self._start_time = None
    self._start_step = None

  def truncate_after(self, step: int) -> None:
    """Drops records logged after ``step`` (used when resuming from a checkpoint).

    Both the scalars and the sample tables: the resumed run logs those steps
    again, and its logs must equal an uninterrupted run's.
    """
    for log in (self.metrics_log, self._samples_log):
      text = log.read() if self._writes else ""
      if not text:
        continue
      kept = []
      for line in text.splitlines():
        try:
          if json.loads(line).get("step", 0) <= step:
            kept.append(line)
        except json.JSONDecodeError:
          break  # a line cut by a kill: everything after it is unreliable
      log.rewrite("".join(l + "\n" for l in kept))

  def write_scalars(self, step: int, scalars: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None) -> None:
    """Logs one step: a metrics.jsonl row, TensorBoard scalars and the console lines.

    Args:
      step: the step just finished.
      scalars: training metrics of the step (may be empty).
      evaluation: evaluation results at this step, if any; they share the
        row (their keys listed under "eval_keys") and print as a result line.

    Non-finite floats are written to the JSON as strings ("nan", "inf").
    """
    if not self._writes:
      return
    evaluation = dict(evaluation or {})
    record = {"step": int(step), "time": time.time()}
    record.update({k: _to_python(v) for k, v in {**scalars, **evaluation}.items()})
    if evaluation:
      record[EVAL_KEYS] = sorted(evaluation)
    self.metrics_log.append(json.dumps(record) + "\n")
    if self._tb is not None:
      for prefix, values in (("", scalars), ("eval/", evaluation)):
        for key, value in values.items():
          value = np.asarray(value)
          if value.size == 1 and np.issubdtype(value.dtype, np.number):
            self._tb.add_scalar(prefix + key, float(value), int(step))
    if scalars:
      self._progress(step, scalars)
    if evaluation:
      print(
        f"[{self.name}] eval at step {self._of_total(step)}: {_headline(evaluation, 8)}", file=self.stream, flush=True
      )

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Sample tables and other text, for TensorBoard's text tab and a JSONL file."""
    if not self._writes:
      return
    self._samples_log.append(json.dumps({"step": int(step), **texts}) + "\n")
    if self._tb is not None:
      for key, value in texts.items():
        self._tb.add_text(key, value, int(step))

  def _of_total(self, step: int) -> str:
    return f"{step}/{self.total_steps}" if self.total_steps else str(step)

  def _progress(self, step: int, scalars: Mapping[str, Any]) -> None:
    # The rate is measured from the first logged step on, so it leaves out
    # the compilation of the first step; the first line has no rate yet.
    now = time.time()
    speed = ""
    if self._start_time is None:
      self._start_time, self._start_step = now, step
    elif step > self._start_step:
      rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
      speed = f" {rate:.3g} steps/s"
      if self.total_steps:
        speed += f" eta {_fmt_seconds((self.total_steps - step) / rate)}"
    print(f"[{self.name}] step {self._of_total(step)}{speed} {_headline(scalars, 6)}", file=self.stream, flush=True)

  def flush(self) -> None:
    """Writes the logs' rows not stored yet (remote work dirs) and flushes the TensorBoard writer."""
    self.metrics_log.flush()
    self._samples_log.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Writes the logs' rows not stored yet and closes the TensorBoard writer."""
    self.metrics_log.flush()
    self._samples_log.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


EVAL_KEYS = "eval_keys"  # the metrics.jsonl field listing a row's evaluation results
_HEADLINE = ("loss", "proxy_reward", "gold_reward", "kl", "accuracy", "reward")


def _headline(scalars: Mapping[str, Any], count: int) -> str:
  """``key=value`` of the first ``count`` aggregates, headline quantities first (breakdowns stay in the logs)."""
  aggregates = [(k, v) for k, v in scalars.items() if not is_breakdown(k)]
  aggregates.sort(key=lambda kv: _HEADLINE.index(kv[0]) if kv[0] in _HEADLINE else len(_HEADLINE))
  return " ".join(f"{k}={_fmt_value(v)}" for k, v in aggregates[:count])


def _fmt_value(value: Any) -> str:
  value = np.asarray(value)
  if value.size != 1:
    return f"<{value.shape}>"
  return f"{float(value):.4g}"


def _fmt_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


_BREAKDOWN = re.compile(r"[/_](seed|member)_?\d")


def is_breakdown(key: str) -> bool:
  """Whether a metric is a per-seed / per-member copy of an aggregate (``gold/seed1``, ``accuracy_member_0``)."""
  return _BREAKDOWN.search(key) is not None


def read_metrics(path: PathLike) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file, ignoring a final line cut by a kill."""
  return parse_metrics(epath.Path(path).read_text())


def parse_metrics(text: str) -> list[dict[str, Any]]:
  """The rows of metrics.jsonl text, ignoring a final line cut by a kill."""
  records = []
  for line in text.splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      break
  return records


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_series(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """Aggregate metrics of a log as {"training": {key: [(step, value)]}, "evaluation": {...}}.

  Keys come from every row (a stage logs training metrics at its log steps
  and evaluation results at others), in first-seen order; a value belongs to
  "evaluation" when its row lists the key under "eval_keys". Per-seed /
  per-member breakdowns are left out (as in the progress line): they would
  multiply the panels, and the rendering time, by the seed count. Values
  logged as "nan"/"inf" strings are gaps.
  """
  series = {"training": {}, "evaluation": {}}
  for record in records:
    evaluated = set(record.get(EVAL_KEYS, ()))
    for key, value in record.items():
      if key in ("step", "time", EVAL_KEYS) or is_breakdown(key) or not _is_number(value):
        continue
      kind = "evaluation" if key in evaluated else "training"
      series[kind].setdefault(key, []).append((int(record["step"]), float(value)))
  return series


def metrics_figure(points: Mapping[str, list[tuple[int, float]]], title: str = ""):
  """One panel per metric against step; a matplotlib Figure (None without metrics)."""
  if not points:
    return None
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel  # slow; plots only

  cols = min(3, len(points))
  rows = math.ceil(len(points) / cols)
  # Constrained layout keeps the figure title clear of the panel titles.
  fig = Figure(figsize=(4 * cols, 3 * rows), dpi=80, layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, (key, xy) in zip(axes.flat, points.items()):
    # Markers when there are few points: a metric logged once is a dot, not an invisible line.
    ax.plot(*zip(*xy), marker="o" if len(xy) <= 20 else None)
    ax.set_title(key)
    ax.set_xlabel("step")
    integer_ticks(ax)
  for ax in list(axes.flat)[len(points) :]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  return fig


def plot_metrics(
  jsonl_path: PathLike, out_path: PathLike, keys: Iterable[str] | None = None, title: str = ""
) -> epath.Path | None:
  """Renders a log's metrics against step: training metrics to ``out_path``, evaluation beside it.

  The evaluation results go to ``<out_path stem>_eval.png`` (e.g.
  ``metrics_eval.png``). ``keys`` limits the panels to those metrics.
  Returns ``out_path``, or the evaluation figure's path when the log has
  only evaluation results, or None when there is nothing numeric to plot.
  """
  out_path = epath.Path(out_path)
  series = metric_series(read_metrics(jsonl_path))
  wanted = None if keys is None else set(keys)
  written = []
  for kind, path in (("training", out_path), ("evaluation", out_path.with_name(f"{out_path.stem}_eval.png"))):
    points = {k: v for k, v in series[kind].items() if wanted is None or k in wanted}
    fig = metrics_figure(points, f"{title}: {kind}" if title else kind)
    if fig is not None:
      save_png(fig, path)
      written.append(path)
    elif path.exists():
      path.unlink()  # a stale plot of an earlier run in the same directory
  return written[0] if written else None
