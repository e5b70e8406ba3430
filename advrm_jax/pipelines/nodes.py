"""Typed config nodes several stages share: ``rm`` and ``data``, ``attack``, ``filter`` (``config_node.from_node``).

A stage builds its node once, ``from_node(AttackConfig, config.attack, "config.attack")``: a misspelt key is
an error naming its path, a key the code needs and the config lacks is named before anything runs, and
the keys only the synthetic world's config sets get their defaults here. The nodes are frozen: a stage that
needs other values (an `advtrain` round's pairs, start and budget) makes them with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from advrm_jax.config_node import ConfigError, from_node
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


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """``rm.backbone``: where the reward models' transformer comes from (``rm_training.build_backbone``)."""

  source: str
  path: str
  dtype: str
  param_dtype: str
  # ModelConfig fields of a "scratch" backbone (vocab_size 0: the tokenizer's); a copy, read by no other source.
  model: Mapping[str, Any] | None = None

  def __post_init__(self):
    if self.model is not None:
      object.__setattr__(self, "model", dict(self.model))


@dataclasses.dataclass(frozen=True)
class RMEvalConfig:
  """``rm.eval``: the aggregate and calibration of ``reward.evaluation.evaluate_scores``."""

  std_coef: float
  ece_bins: int


@dataclasses.dataclass(frozen=True)
class RMConfig:
  """The ``rm`` node: a Bradley-Terry reward-model ensemble and its training run (configs/common.py)."""

  ensemble: str
  num_members: int
  member_data: str
  data_seed: int
  init_seed: int
  head_seed: int
  backbone: BackboneConfig
  tokenizer: str
  batch_size: int
  margin: float
  centering_coef: float
  optimizer: OptimizerConfig
  num_steps: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  eval_every: int
  eval_batch_size: int
  eval_train_pairs: int
  eval: RMEvalConfig
  # A trained ensemble to continue from ("" = fresh; an advtrain round sets it).
  init_from: str = ""
  # Your own Hugging Face reward models as RM round 0 (() = train one).
  paths: tuple[str, ...] = ()

  def __post_init__(self):
    counts = (
      "num_members",
      "batch_size",
      "num_steps",
      "log_every",
      "checkpoint_every",
      "keep_checkpoints",
      "eval_batch_size",
    )
    for key in counts:
      if getattr(self, key) < 1:
        raise ConfigError(f"rm.{key} must be >= 1, got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True)
class SyntheticPairsConfig:
  """``data.synthetic``: the synthetic world's preference pairs (``data.source = "synthetic"``)."""

  num_pairs: int
  beta: float
  seed: int


@dataclasses.dataclass(frozen=True)
class PreferenceDataConfig:
  """The ``data`` node: the preference pairs the RM trains on and how they become rows."""

  source: str
  path: str
  format: str
  on_error: str
  max_pairs: int
  test_fraction: float
  split_seed: int
  max_prompt_len: int
  max_response_len: int
  padding_side: str
  on_overlength: str
  use_chat_template: bool
  add_bos: bool
  synthetic: SyntheticPairsConfig | None = None


def reward_model_nodes(config: Any) -> tuple[RMConfig, PreferenceDataConfig]:
  """The typed ``rm`` and ``data`` nodes of a run's config: what ``rm_training.train_reward_model`` reads."""
  return from_node(RMConfig, config.rm, "config.rm"), from_node(PreferenceDataConfig, config.data, "config.data")
