r"""Re-renders a run's plots and REPORT.md from what is on disk.

  python -m advrm_jax.report WORKDIR

Works on any run, finished or interrupted, and needs no accelerator and no
checkpoint: it only reads the JSON written during the run.

* Every ``metrics.jsonl`` under WORKDIR (one per stage, or per run/seed inside
  a stage) gets its PNG curves re-rendered beside it as ``metrics.png``
  (training) and ``metrics_eval.png`` (evaluation results), exactly as the
  training loop renders them at the end of a stage (so a killed stage gets
  the plots it never wrote).
* ``WORKDIR/METRICS.md``: an index of those logs: steps logged, the last
  value of every scalar, the plots, the last sample table row.
* ``WORKDIR/REPORT.md``: when the evaluate stage has written
  ``report.json``, its markdown is rebuilt from that file with the evaluate
  stage's own renderer (``advrm_jax.pipelines.evaluate.write_markdown``, no
  re-evaluation) and the index is appended; otherwise (a run stopped before
  evaluate, or a config without it) REPORT.md is the index alone.

A study directory (one holding ``realisations/``, the workdir of
``configs/study.py``) instead gets study.json, STUDY.md and plots/ rebuilt from
its realisations' records (``advrm_jax.evaluation.study_report.write_study``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import os
from typing import Any, Callable, Iterator, Sequence

from etils import epath

from advrm_jax.metrics import EVAL_KEYS, plot_metrics, read_metrics
from advrm_jax.evaluation import study_report
from advrm_jax.pipelines import evaluate

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
PLOT_FILE = "metrics.png"
EVAL_PLOT_FILE = "metrics_eval.png"  # plot_metrics writes it beside PLOT_FILE
# Columns of the last-values table; a stage logs dozens of scalars, and the
# full set is in its plot, its JSON lines and TensorBoard.
MAX_SCALARS_IN_TABLE = 12
MAX_SAMPLE_CHARS = 400

MarkdownFn = Callable[[epath.Path, dict[str, Any]], None]


def find_metric_logs(workdir: epath.PathLike) -> list[epath.Path]:
  """Every metrics.jsonl under ``workdir``, in path order (stage, then run)."""
  return sorted(_files_named(epath.Path(workdir), METRICS_FILE))


def _files_named(directory: epath.Path, name: str) -> Iterator[epath.Path]:
  """Every file ``name`` under ``directory``, not entering linked directories (as pathlib's rglob).

  epath has no ``**`` glob (on GCS it would be thousands of requests at once); listing works everywhere.
  """
  for child in directory.iterdir():
    if child.is_dir():
      if not os.path.islink(child):  # advtrain/final links to a round already listed
        yield from _files_named(child, name)
    elif child.name == name:
      yield child


def render_plots(workdir: epath.PathLike) -> dict[epath.Path, epath.Path | None]:
  """Re-renders ``metrics.png`` beside every log; maps log -> PNG (None: nothing numeric to plot)."""
  workdir = epath.Path(workdir)
  plots = {}
  for log in find_metric_logs(workdir):
    title = str(log.parent.relative_to(workdir)) if log.parent != workdir else workdir.name
    plots[log] = plot_metrics(log, log.parent / PLOT_FILE, title=title)
  return plots


def _fmt(value: Any) -> str:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)  # e.g. "nan" kept as a string by MetricWriter
  if isinstance(value, int):
    return str(value)
  if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3) and math.isfinite(value):
    return f"{value:.3e}"
  return f"{value:.4g}"


def _last_sample(directory: epath.Path) -> dict[str, Any] | None:
  path = directory / SAMPLES_FILE
  if not path.exists():
    return None
  records = read_metrics(path)  # the same cut-line tolerant reader
  return records[-1] if records else None


def stage_section(workdir: epath.Path, log: epath.Path, plot: epath.Path | None) -> list[str]:
  """Markdown lines for one log: heading, step range, last values, plot, last sample."""
  name = str(log.parent.relative_to(workdir)) if log.parent != workdir else "."
  records = read_metrics(log)
  lines = [f"### {name}", ""]
  if not records:
    return lines + ["No records logged (the stage stopped before its first log step).", ""]
  first, last = records[0], records[-1]
  lines.append(
    f"{len(records)} records, steps {first.get('step')}..{last.get('step')}"
    + (f", {last['time'] - first['time']:.0f} s of logging" if "time" in first and "time" in last else "")
    + "."
  )
  lines.append("")
  # The last value of every metric, whichever row logged it (evaluation results and training
  # metrics are logged at different steps).
  latest = {}
  for record in records:
    latest.update((k, v) for k, v in record.items() if k not in ("step", "time", EVAL_KEYS))
  scalars = list(latest.items())
  # Aggregates before their per-seed/per-member breakdowns ("kl" before "kl/seed0").
  scalars.sort(key=lambda kv: "/" in kv[0])
  if scalars:
    shown = scalars[:MAX_SCALARS_IN_TABLE]
    lines.append("| metric | last value |")
    lines.append("|---|---|")
    lines += [f"| {k} | {_fmt(v)} |" for k, v in shown]
    if len(scalars) > len(shown):
      lines.append(f"| ... | {len(scalars) - len(shown)} more in the plot and `{log.relative_to(workdir)}` |")
    lines.append("")
  if plot is not None:
    for image in dict.fromkeys([plot, log.parent / EVAL_PLOT_FILE]):
      if image.exists():
        lines += [f"![{name}]({image.relative_to(workdir).as_posix()})", ""]
  sample = _last_sample(log.parent)
  if sample:
    lines.append(f"Last sample table (step {sample.get('step')}):")
    lines.append("")
    for key, value in sample.items():
      if key == "step":
        continue
      text = str(value)
      text = text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + " ..."
      # Indented block: sample text may hold markdown or HTML of its own.
      lines.append(f"- `{key}`:")
      lines.append("")
      lines += ["      " + l for l in text.splitlines() or [""]]
      lines.append("")
  return lines


def metrics_index(workdir: epath.PathLike, plots: dict[epath.Path, epath.Path | None]) -> str:
  """The METRICS.md text: one section per metrics log."""
  workdir = epath.Path(workdir)
  lines = ["## Training logs", ""]
  if not plots:
    lines += [f"No `{METRICS_FILE}` under `{workdir}`.", ""]
  for log, plot in plots.items():
    lines += stage_section(workdir, log, plot)
  return "\n".join(lines).rstrip() + "\n"


def evaluate_markdown_fn() -> MarkdownFn | None:
  """The evaluate stage's REPORT.md renderer."""
  return getattr(evaluate, "write_markdown", None)


def render_report(workdir: epath.PathLike, markdown_fn: MarkdownFn | None = None, plots: bool = True) -> epath.Path:
  """Re-renders plots, METRICS.md and REPORT.md; returns the REPORT.md path.

  Args:
    workdir: the run's WORKDIR.
    markdown_fn: ``fn(path, report_dict)`` writing the evaluate stage's
      markdown (default: ``evaluate_markdown_fn()``).
    plots: False skips the PNGs (and the image links).
  """
  workdir = epath.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f"WORKDIR {workdir} is not a directory")
  rendered = render_plots(workdir) if plots else {log: None for log in find_metric_logs(workdir)}
  index = metrics_index(workdir, rendered)
  (workdir / "METRICS.md").write_text(f"# Metrics of `{workdir.name}`\n\n" + index)

  report_md = workdir / "REPORT.md"
  report_json = workdir / "report.json"
  if markdown_fn is None and report_json.exists():
    # Imported only when needed: the evaluate stage pulls in jax and the models.
    markdown_fn = evaluate_markdown_fn()
  evaluate_note = None
  if report_json.exists() and markdown_fn is not None:
    try:
      markdown_fn(report_md, json.loads(report_json.read_text()))
      body = report_md.read_text()
    except (KeyError, TypeError, ValueError, IndexError) as e:
      # A report.json from an older or partial evaluate run: the index still
      # says what the run logged.
      body = f"# Report of `{workdir.name}`\n\n"
      evaluate_note = f"report.json could not be rendered by the evaluate stage ({type(e).__name__}: {e})."
  else:
    body = f"# Report of `{workdir.name}`\n\n"
    evaluate_note = (
      "No report.json: the evaluate stage has not run (or the run stopped before it); below are the training logs only."
      if not report_json.exists()
      else "report.json exists but the evaluate stage's renderer is not available."
    )
  if evaluate_note:
    body += f"_{evaluate_note}_\n\n"
  report_md.write_text(body.rstrip() + "\n\n" + index)
  return report_md


def main(argv: Sequence[str] | None = None) -> int:
  """Command line of ``python -m advrm_jax.report WORKDIR [--no_plots]``; returns the exit code."""
  parser = argparse.ArgumentParser(prog="python -m advrm_jax.report", description=__doc__.split("\n", 1)[0])
  parser.add_argument("workdir", help="the run's WORKDIR")
  parser.add_argument("--no_plots", action="store_true", help="skip re-rendering the PNG plots")
  args = parser.parse_args(argv)
  workdir = epath.Path(args.workdir)
  if (workdir / "realisations").is_dir():
    try:
      study_report.write_study(workdir, command=f"python -m advrm_jax.report {args.workdir}")
    except (FileNotFoundError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(workdir / study_report.STUDY_MD)
    return 0
  try:
    path = render_report(args.workdir, plots=not args.no_plots)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
