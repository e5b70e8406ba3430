"""End-to-end: stages `empo` and `probes` on the `:small` config write their report."""

import importlib.util
import json
import pathlib

import pytest

from advrm_jax.pipelines import STAGES, run_stages


@pytest.mark.slow
def test_empo_and_probes_stages_small(tmp_path):
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "empo_reasoning.py"
  spec = importlib.util.spec_from_file_location("empo_reasoning_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert STAGES["empo"] == "advrm_jax.pipelines.empo" and STAGES["probes"] == "advrm_jax.pipelines.probes"
  config = module.get_config("small")
  run_stages(config, tmp_path)
  stage_dir = tmp_path / "empo"
  summary = json.loads((stage_dir / "summary.json").read_text())
  assert set(summary["runs"]) == {"empo", "correctness"}
  for entry in summary["runs"].values():
    final = entry["final"]["accuracy_sampled"]
    assert final["n"] == config.num_seeds and 0.0 <= final["mean"] <= 1.0
    curve = entry["curves"]["eval_accuracy_sampled"]
    assert curve["steps"][0] == 0 and len(curve["values"]) == config.num_seeds
  assert "semantic_entropy" in summary["runs"]["empo"]["curves"]
  probes = json.loads((stage_dir / "probes" / "summary.json").read_text())
  assert probes["early_exit"][-1]["threshold"] is None  # the "never exit" row
  assert probes["early_exit"][-1]["tokens_saved"] == pytest.approx(0.0)
  assert "ensemble disagreement (std)" in probes["filter_tie_in"]["signals"]
  report = (stage_dir / "REPORT.md").read_text()
  for text in ("## EMPO", "## Correctness probes", "Adv-RM's filter", "accuracy_curves.png"):
    assert text in report, text
  for png in ("accuracy_curves.png", "probes/reliability.png", "probes/early_exit.png"):
    assert (stage_dir / png).stat().st_size > 1000, png
  # Finished runs are skipped on a rerun (resumable stages).
  run_stages(config, tmp_path)
