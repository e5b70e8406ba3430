"""Stage ``rm``: the conventional reward-model ensemble (RM round 0) in WORKDIR/rm/.

  python -m advrm_jax.main --config configs/rm_hh.py --workdir /tmp/rm_hh

What it trains, reads and writes is ``pipelines/rm_training.py`` (also what
the `advtrain` rounds and the `online` stage call), given the typed ``rm`` and
``data`` nodes (``nodes.RMConfig``, ``nodes.PreferenceDataConfig``); later
stages load the ensemble with ``workdir.load_reward_model``.
"""

from __future__ import annotations

from typing import Any

from etils import epath

from advrm_jax import sharding as shd
from advrm_jax.pipelines.nodes import reward_model_nodes
from advrm_jax.pipelines.rm_training import check_paths_init, train_reward_model


def run(config: Any, workdir: epath.PathLike) -> dict[str, Any]:
  """Trains (or imports, with ``rm.paths``) and evaluates RM round 0; returns the evaluation summary."""
  rm, data = reward_model_nodes(config)
  advtrain = config.get("advtrain")
  check_paths_init(rm, None if advtrain is None else advtrain.get("init"))
  return train_reward_model(rm, data, workdir, mesh=shd.make_mesh(tuple(config.mesh.shape)), seed=config.seed)
