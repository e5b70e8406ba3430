"""Pluggable reward sources for the RL iteration.

A reward source turns sampled responses into one score per sequence. It is a
frozen (hashable) dataclass, so it is a static argument of the jitted
iteration, and its parameters (reward-model weights) travel separately as an
ordinary pytree argument: the iteration is compiled once and the weights are
never baked into the program as constants.

``source(reward_params, rollout) -> (scores [B], metrics)`` where
``rollout`` is a :class:`Rollout`. Sources:

* :class:`RewardModelSource`: an RM ensemble with an aggregate (mean,
  worst-case min, uncertainty-weighted mean - c*std / mean - c*var, one member).
* :class:`EnsembleMixSource`: the same aggregates with the choice in the
  parameters, so runs that differ only in the aggregate share one program.
* :class:`AdversarySource`: the Adv-RM adversary's objective
  ``R1 - lam*R2`` above a per-prompt threshold T(x), ``R1 + penalty`` below it.
* :class:`FunctionSource`: any JAX function of the token arrays (e.g. the
  synthetic world's exact gold reward; using it as the training reward is an
  *oracle* baseline and must be labelled as such).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from advrm_jax.adversarial.objective import adversary_reward, standardize_members
from advrm_jax.reward.model import ensemble_aggregate, reward_scores

Array = jax.Array


class Rollout(NamedTuple):
  """What a reward source may look at. B rows, P prompt, N response columns.

  prompt_tokens/prompt_mask: [B, P] left-aligned prompts.
  response_tokens/response_mask: [B, N] right-padded responses.
  tokens/mask: [B, P + N] prompt + response (response in columns P..P+N-1).
  threshold: [B] per-prompt threshold T(x) (zeros when unused).
  """

  prompt_tokens: Array
  prompt_mask: Array
  response_tokens: Array
  response_mask: Array
  tokens: Array
  mask: Array
  threshold: Array


@dataclasses.dataclass(frozen=True)
class RewardModelSource:
  """An RM ensemble scored at the last real token, aggregated over members."""

  graphdef: Any
  aggregate: str = "mean"
  coef: float = 1.0
  member: int = 0

  def __call__(self, reward_params: Any, rollout: Rollout) -> tuple[Array, dict[str, Array]]:
    scores = reward_scores(self.graphdef, reward_params, rollout.tokens, rollout.mask)  # [K, B]
    reward = ensemble_aggregate(scores, self.aggregate, self.coef, self.member)
    metrics = {"rm_member_mean": jnp.mean(scores), "ensemble_std": jnp.mean(jnp.std(scores, axis=0))}
    return reward, metrics


@dataclasses.dataclass(frozen=True)
class EnsembleMixSource:
  """An RM ensemble aggregate chosen by data instead of by the program.

  ``reward = w_mean * mean + w_min * min + w_std * std + w_var * var + sum_k w_k R_k``
  with the weights in ``reward_params["mix"]`` (see :func:`aggregate_mix`),
  so one compiled RL iteration serves the conventional RM (one member), the
  ensemble mean, worst-case min and uncertainty-weighted objectives alike:
  runs that differ only in the aggregate never recompile.
  ``reward_params = {"rm": ensemble params, "mix": aggregate_mix(...)}``.
  """

  graphdef: Any

  def __call__(self, reward_params: Any, rollout: Rollout) -> tuple[Array, dict[str, Array]]:
    scores = reward_scores(self.graphdef, reward_params["rm"], rollout.tokens, rollout.mask)  # [K, B]
    mix = reward_params["mix"]
    reward = (
      mix["mean"] * jnp.mean(scores, axis=0)
      + mix["min"] * jnp.min(scores, axis=0)
      + mix["std"] * jnp.std(scores, axis=0)
      + mix["var"] * jnp.var(scores, axis=0)
      + jnp.einsum("k,kb->b", mix["members"], scores)
    )
    metrics = {"rm_member_mean": jnp.mean(scores), "ensemble_std": jnp.mean(jnp.std(scores, axis=0))}
    return reward, metrics


def aggregate_mix(aggregate: str, num_members: int, coef: float = 1.0, member: int = 0) -> dict[str, Array]:
  """The weights of :class:`EnsembleMixSource` for an aggregate of ``reward.model.ensemble_aggregate``."""
  weights = {"mean": 0.0, "min": 0.0, "std": 0.0, "var": 0.0}
  members = [0.0] * num_members
  if aggregate == "mean":
    weights["mean"] = 1.0
  elif aggregate == "min":
    weights["min"] = 1.0
  elif aggregate == "mean_minus_std":
    weights.update(mean=1.0, std=-coef)
  elif aggregate == "mean_minus_var":
    weights.update(mean=1.0, var=-coef)
  elif aggregate == "member":
    if not 0 <= member < num_members:
      raise ValueError(f"ensemble member {member} out of range for K={num_members}")
    members[member] = 1.0
  else:
    raise ValueError(
      f"unknown ensemble aggregate {aggregate!r}; expected mean, min, mean_minus_std, mean_minus_var or member"
    )
  mix = {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}
  mix["members"] = jnp.asarray(members, jnp.float32)
  return mix


@dataclasses.dataclass(frozen=True)
class AdversarySource:
  """Adv-RM: the first author's ``r = R1 - lam*R2*1[R1 > T] + penalty*1[R1 <= T]``.

  R1 is ensemble member ``target``; R2 aggregates the other members
  (``r2_kind``: mean, min or max). See ``advrm_jax.adversarial.objective``.
  With ``standardized`` the members' rewards are first put in reference z
  units: ``reward_params = {"rm": ensemble params, "loc": [K], "scale": [K]}``
  (``objective.member_standardization`` of the reference samples), and T and
  the penalty are in those units too.
  """

  graphdef: Any
  lam: float = 1.0
  penalty: float = -25.0
  target: int = 0
  r2_kind: str = "mean"
  standardized: bool = False

  def __call__(self, reward_params: Any, rollout: Rollout) -> tuple[Array, dict[str, Array]]:
    if self.standardized:
      scores = standardize_members(
        reward_scores(self.graphdef, reward_params["rm"], rollout.tokens, rollout.mask),
        reward_params["loc"],
        reward_params["scale"],
      )  # [K, B] z units
    else:
      scores = reward_scores(self.graphdef, reward_params, rollout.tokens, rollout.mask)  # [K, B]
    reward, metrics = adversary_reward(scores, rollout.threshold, self.lam, self.penalty, self.target, self.r2_kind)
    return reward, {f"adv/{k}": v for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class FunctionSource:
  """Any JAX function ``fn(prompt_tokens, prompt_mask, response_tokens, response_mask) -> [B]``.

  ``fn`` must be hashable (a module-level function is).
  """

  fn: Callable[..., Array]

  def __call__(self, reward_params: Any, rollout: Rollout) -> tuple[Array, dict[str, Array]]:
    del reward_params
    return self.fn(rollout.prompt_tokens, rollout.prompt_mask, rollout.response_tokens, rollout.response_mask).astype(
      jnp.float32
    ), {}
