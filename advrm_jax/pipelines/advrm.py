"""Stage `advrm`: the Adv-RM rounds (the schedule of the `attack`, `filter` and `advtrain` stages).

Adv-RM (Bukharin et al. 2025, arXiv 2504.06141) alternates three steps for N rounds:

  attack (round r)   an adversary trained with RL against RM round r;
  filter (round r)   its samples with R1 > T(x) and z(U) > 1.96;
  advtrain (r + 1)   RM round r + 1 trained with those samples as rejected
                     responses against reference responses as chosen.

RM round 0 is the conventional ensemble of the `rm` stage. After the last
round, the hardened RM N is attacked once more (and filtered) so that the
report can say how the attack fares after N rounds. This stage runs that
schedule by calling the `attack`, `filter` and `advtrain` stages, each of
which does every round it can and skips rounds marked DONE, so the loop
resumes wherever it was stopped.

The layout of WORKDIR is described in ``pipelines/workdir.py``. This is the
one stage module that calls other stages: the round schedule is its job.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from etils import epath
from advrm_jax.pipelines import advtrain, attack, filter_stage
from advrm_jax.pipelines import workdir as wd

STAGE = "advrm"


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `advrm`: every round of the schedule, resuming at the first unfinished step."""
  workdir = epath.Path(workdir)
  rounds = wd.num_rounds(config)
  for r in range(rounds + 1):
    attack.run_round(config, workdir, r)
    filter_stage.run_round(config, workdir, r)
    if r < rounds:
      advtrain.run_rounds(config, workdir, r + 1)
  logging.info("advrm: %d rounds done; the hardened RM is %s", rounds, wd.rm_path(workdir, rounds))
