"""Stage ``rm``: the conventional reward-model ensemble (RM round 0) in WORKDIR/rm/.

  python -m advrm_jax.main --config configs/rm_hh.py --workdir /tmp/rm_hh

What it trains, reads and writes is ``pipelines/rm_training.py`` (also what
the `advtrain` rounds and the `online` stage call); later stages load the
ensemble with ``workdir.load_reward_model``.
"""

from __future__ import annotations

from typing import Any

from etils import epath
from advrm_jax.pipelines.rm_training import train_reward_model


def run(config: Any, workdir: epath.PathLike) -> dict[str, Any]:
  """Trains (or imports, with ``rm.paths``) and evaluates RM round 0; returns the evaluation summary."""
  return train_reward_model(config, workdir)
