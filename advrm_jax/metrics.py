"""The one metrics writer: JSON lines, TensorBoard events, a progress line, PNG plots.

Every stage logs through ``MetricWriter``. It writes

* ``WORKDIR/<stage>/metrics.jsonl``: one JSON object per logged step,
* TensorBoard event files in ``WORKDIR/<stage>/tb`` (tensorboardX, so no
  TensorFlow is needed),
* a progress line on stderr with rate and ETA,
* ``plot_metrics`` renders PNG curves from the JSON lines at the end (and can
  re-render them from any finished or interrupted run).

On resume the JSON lines past the restored step are dropped, so a resumed
run's log equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Any, Iterable, Mapping

import numpy as np


def _to_python(value: Any) -> Any:
  if hasattr(value, "tolist"):
    value = np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible as strings
  return value


class MetricWriter:
  """Writes scalars per step for one stage of a run."""

  def __init__(self, directory: str | pathlib.Path, total_steps: int | None = None,
               name: str = "", tensorboard: bool = True, stream=sys.stderr):
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.jsonl_path = self.directory / "metrics.jsonl"
    self.total_steps = total_steps
    self.name = name
    self.stream = stream
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(str(self.directory / "tb"))
    self._start_time = None
    self._start_step = None

  def truncate_after(self, step: int) -> None:
    """Drops records logged after ``step`` (used when resuming from a checkpoint).

    Both the scalars and the sample tables: the resumed run logs those steps
    again, and its logs must equal an uninterrupted run's.
    """
    for path in (self.jsonl_path, self.directory / "samples.jsonl"):
      if not path.exists():
        continue
      kept = []
      for line in path.read_text().splitlines():
        try:
          if json.loads(line).get("step", 0) <= step:
            kept.append(line)
        except json.JSONDecodeError:
          break  # a line cut by a kill: everything after it is unreliable
      # Write-then-rename: a kill during the rewrite keeps the old log whole.
      tmp = path.with_name(path.name + ".tmp")
      tmp.write_text("".join(l + "\n" for l in kept))
      os.replace(tmp, path)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs one step's scalars: a metrics.jsonl row, TensorBoard scalars and the progress line.

    Non-finite floats are written to the JSON as strings ("nan", "inf").
    """
    record = {"step": int(step), "time": time.time()}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    with self.jsonl_path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in scalars.items():
        value = np.asarray(value)
        if value.size == 1 and np.issubdtype(value.dtype, np.number):
          self._tb.add_scalar(key, float(value), int(step))
    self._progress(step, scalars)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Sample tables and other text, for TensorBoard's text tab and a JSONL file."""
    with (self.directory / "samples.jsonl").open("a") as f:
      f.write(json.dumps({"step": int(step), **texts}) + "\n")
    if self._tb is not None:
      for key, value in texts.items():
        self._tb.add_text(key, value, int(step))

  def _progress(self, step: int, scalars: Mapping[str, Any]) -> None:
    now = time.time()
    if self._start_time is None:
      self._start_time, self._start_step = now, step
      rate = 0.0
    else:
      rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
    eta = ""
    if self.total_steps and rate > 0:
      eta = f" eta {_fmt_seconds((self.total_steps - step) / rate)}"
    # The headline quantities first; per-seed / per-member breakdowns stay in the logs.
    headline = ("loss", "proxy_reward", "gold_reward", "kl", "accuracy", "reward")
    aggregates = [(k, v) for k, v in scalars.items() if not is_breakdown(k)]
    aggregates.sort(key=lambda kv: headline.index(kv[0]) if kv[0] in headline else len(headline))
    shown = " ".join(f"{k}={_fmt_value(v)}" for k, v in aggregates[:6])
    total = f"/{self.total_steps}" if self.total_steps else ""
    print(f"[{self.name}] step {step}{total} {rate:.2f} steps/s{eta} {shown}", file=self.stream, flush=True)

  def flush(self) -> None:
    """Flushes the TensorBoard writer."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Closes the TensorBoard writer (each JSON line is already on disk when written)."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None


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


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file, ignoring a final line cut by a kill."""
  records = []
  for line in pathlib.Path(path).read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      break
  return records


def plot_metrics(jsonl_path: str | pathlib.Path, out_path: str | pathlib.Path,
                 keys: Iterable[str] | None = None, title: str = "") -> pathlib.Path | None:
  """Renders numeric metrics against step into one PNG with a panel per key."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  records = read_metrics(jsonl_path)
  if not records:
    return None
  if keys is None:
    # Aggregates only: per-seed / per-member copies (as in the progress line)
    # would multiply the panels, and the rendering time, by the seed count.
    keys = [k for k, v in records[-1].items()
            if k not in ("step", "time") and isinstance(v, (int, float)) and not is_breakdown(k)]
  keys = list(keys)
  if not keys:
    return None
  cols = min(3, len(keys))
  rows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
      ax.plot(*zip(*points))
    ax.set_title(key)
    ax.set_xlabel("step")
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  out_path = pathlib.Path(out_path)
  fig.savefig(out_path, dpi=80)
  plt.close(fig)
  return out_path
