"""The over-optimisation baseline at the peak of gold, on hand-made curves and snapshots."""

import pytest

from advrm_jax.pipelines import evaluate


def test_peak_snapshot_is_nearest_the_seed_mean_smoothed_peak_ties_to_the_earlier():
  # Seed-mean gold [1, 2, 4, 1]; trailing mean over 2 points: [1, 1.5, 3, 2.5] -> peak at step 15.
  run = {"steps": [5, 10, 15, 20], "gold": [[1.0, 2.0, 3.0, 1.0], [1.0, 2.0, 5.0, 1.0]]}
  # Snapshots at 0, 10, 20: 10 and 20 are both 5 steps away; the earlier wins.
  snapshots = {
    "steps": [0, 10, 20],
    "standard": [[10.0, 40.0, 90.0], [20.0, 60.0, 70.0]],
    "strict": [[0.0, 5.0, 30.0], [0.0, 15.0, 10.0]],
    "kl": [[0.0, 1.5, 4.0], [0.0, 2.5, 6.0]],
  }
  peak = evaluate.peak_gold_snapshot(snapshots, run, window=2)
  assert (peak["peak_step"], peak["snapshot_step"]) == (15, 10)
  assert peak["standard"]["mean"] == pytest.approx(50.0) and peak["strict"]["mean"] == pytest.approx(10.0)
  assert peak["kl"]["mean"] == pytest.approx(2.0)
  # Without smoothing the peak is the raw maximum at step 15 still; with the last point highest it moves.
  run["gold"] = [[1.0, 2.0, 3.0, 9.0], [1.0, 2.0, 5.0, 9.0]]
  assert evaluate.peak_gold_snapshot(snapshots, run, window=1)["snapshot_step"] == 20
