"""The adversary's reward source from an attack's settings: Adv-RM on an RM ensemble (``rl.rewards.AdversarySource``).

One place that reads the settings (``lam``, ``penalty``, ``target``, ``r2_kind``) into the source and lays out
its params and prompt rows, for the attack stage, the online stage's fresh attack and the online step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from advrm_jax.rl.rewards import AdversarySource


def adversary_source(rm_graphdef: Any, setting: Any, standardized: bool) -> AdversarySource:
  """The Adv-RM source of ``setting`` (the ``attack`` node, an ``AttackConfig`` or an ``OnlineConfig``).

  ``standardized``: the members' rewards in reference z units (params ``{"rm", "loc", "scale"}``).
  """
  return AdversarySource(
    rm_graphdef,
    lam=setting.lam,
    penalty=setting.penalty,
    target=setting.target,
    r2_kind=setting.r2_kind,
    standardized=standardized,
  )


def attack_inputs(
  rm_graphdef: Any,
  rm_params: Any,
  setting: Any,
  reference: dict[str, np.ndarray],
  threshold: np.ndarray,
  units: dict[str, np.ndarray] | None,
) -> tuple[dict[str, np.ndarray], AdversarySource, Any]:
  """(prompts, source, source params) of an attack on the RM ``rm_params`` from the reference samples' prompts.

  ``threshold`` [P]: T per prompt, in the units of ``units`` (reference z units ``{"loc", "scale"}`` [K],
  or None for raw rewards).
  """
  prompts = {
    "tokens": reference["prompt_tokens"],
    "mask": reference["prompt_mask"].astype(np.int32),
    "threshold": threshold,
  }
  source = adversary_source(rm_graphdef, setting, standardized=units is not None)
  source_params = rm_params if units is None else {"rm": rm_params, "loc": units["loc"], "scale": units["scale"]}
  return prompts, source, source_params
