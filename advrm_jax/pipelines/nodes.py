"""Typed config nodes the adversarial stages share: ``attack`` and ``filter`` (``config_node.from_node``).

A stage builds its node once, ``from_node(AttackConfig, config.attack, "config.attack")``: a misspelt key is
an error naming its path, a key the code needs and the config lacks is named before anything runs, and
the keys only the synthetic world's config sets get their defaults here.
"""

from __future__ import annotations

import dataclasses

from advrm_jax.rl.engine import RLConfig
from advrm_jax.rl.sampler import SamplingConfig
from advrm_jax.train_state import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The `attack` node: the adversary's RL run and its objective R1 - lam * R2 above a floor T(x)."""

  rl: RLConfig
  optimizer: OptimizerConfig
  sampling: SamplingConfig
  num_steps: int
  prompts_per_step: int
  log_every: int
  checkpoint_every: int
  lam: float
  penalty: float
  target: int
  r2_kind: str
  threshold: str
  final_samples_per_prompt: int
  # Policies saved every this many steps (0: never).
  snapshot_every: int = 0
  # Members' rewards in reference z units.
  standardize: bool = False
  # The floor of threshold "constant".
  tau: float = 0.0


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """``filter.probe``: the verdict probe of uncertainty "probe" (configs/common.py's values)."""

  hidden: int = 0
  num_steps: int = 500
  learning_rate: float = 1e-2
  weight_decay: float = 1e-2


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """The `filter` node: which adversarial samples become rejected responses."""

  uncertainty: str
  compare_signals: bool
  standardize: str
  z_min: float
  max_pairs: int
  chosen: str
  probe: ProbeConfig = ProbeConfig()
