"""`python -m advrm_jax.report WORKDIR` on a tiny fake run written by the real MetricWriter."""

import io
import json
import os
import pathlib
import subprocess
import sys

from advrm_jax import report
from advrm_jax.metrics import MetricWriter

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fake_run(workdir: pathlib.Path) -> None:
  """A finished rm stage, a two-seed rlhf stage, and an attack stage killed mid-write."""
  quiet = io.StringIO()  # the progress line is not under test
  rm = MetricWriter(workdir / "rm", total_steps=4, name="rm", stream=quiet)
  for step in range(1, 5):
    rm.write_scalars(step, {"loss": 1.0 / step, "accuracy": 0.5 + 0.1 * step, "nonfinite": float("nan")})
  rm.close()
  for seed in range(2):
    rl = MetricWriter(workdir / "rlhf" / f"seed_{seed}", name="rlhf", tensorboard=False, stream=quiet)
    for step in (10, 20):
      rl.write_scalars(step, {"proxy_reward": step * 0.1 + seed, "kl": 0.01 * step})
    rl.write_texts(20, {"samples": "| prompt | response |\n|---|---|\n| 2+2 | four |"})
    rl.close()
  attack = MetricWriter(workdir / "attack", name="attack", tensorboard=False, stream=quiet)
  attack.write_scalars(1, {"adversary_reward": 0.3})
  attack.close()
  with (workdir / "attack" / "metrics.jsonl").open("a") as f:
    f.write('{"step": 2, "adversary_rew')  # a line cut by a kill


def test_cli_rerenders_plots_and_report_of_an_interrupted_run(tmp_path):
  _fake_run(tmp_path)
  assert (tmp_path / "rm" / "tb").is_dir()  # the real writer, TensorBoard events included
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run(
    [sys.executable, "-m", "advrm_jax.report", str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(tmp_path / "REPORT.md")
  for stage in ("rm", "rlhf/seed_0", "rlhf/seed_1", "attack"):
    png = tmp_path / stage / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stage
  text = (tmp_path / "REPORT.md").read_text()
  assert "No report.json" in text  # no evaluate stage in this run
  for stage in ("### rm", "### rlhf/seed_0", "### rlhf/seed_1", "### attack"):
    assert stage in text
  assert "4 records, steps 1..4" in text
  assert "| loss | 0.25 |" in text and "| nonfinite | nan |" in text
  assert "1 records, steps 1..1" in text  # the cut line is ignored, not an error
  assert "![rm](rm/metrics.png)" in text
  assert "| 2+2 | four |" in text  # the last sample table
  assert (tmp_path / "METRICS.md").read_text().count("###") == 4


def test_report_json_goes_through_the_evaluate_renderer(tmp_path):
  _fake_run(tmp_path)
  (tmp_path / "report.json").write_text(json.dumps({"headline": 42.0}))
  seen = {}

  def fake_markdown(path, data):
    seen.update(data)
    path.write_text("# Adv-RM report\n\nheadline 42\n")

  path = report.render_report(tmp_path, markdown_fn=fake_markdown, plots=False)
  text = path.read_text()
  assert seen == {"headline": 42.0}
  assert text.startswith("# Adv-RM report") and "### rm" in text  # the index is appended
  assert "metrics.png" not in text  # plots=False: no image links

  def broken_markdown(path, data):
    raise KeyError("targets")

  text = report.render_report(tmp_path, markdown_fn=broken_markdown, plots=False).read_text()
  assert "could not be rendered" in text and "### rm" in text


def test_missing_workdir_is_a_one_line_error(tmp_path, capsys):
  assert report.main([str(tmp_path / "nope")]) == 2
  assert "is not a directory" in capsys.readouterr().err


def test_metrics_plot_draws_aggregates_not_per_seed_or_member_copies(tmp_path, monkeypatch):
  from advrm_jax import metrics  # pylint: disable=import-outside-toplevel

  writer = MetricWriter(tmp_path, name="rm", tensorboard=False, stream=io.StringIO())
  writer.write_scalars(
    1,
    {"loss": 1.0, "accuracy": 0.5, "accuracy_member_0": 0.4, "gold/seed1": 2.0, "reward/member3": 0.1, "seed_count": 3},
  )
  writer.close()
  titles = []
  import matplotlib.axes  # pylint: disable=import-outside-toplevel

  real_set_title = matplotlib.axes.Axes.set_title
  monkeypatch.setattr(
    matplotlib.axes.Axes,
    "set_title",
    lambda self, label, *a, **k: (titles.append(label), real_set_title(self, label, *a, **k))[1],
  )
  assert metrics.plot_metrics(writer.jsonl_path, tmp_path / "metrics.png") is not None
  assert titles == ["loss", "accuracy", "seed_count"]
