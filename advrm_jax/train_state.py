"""Train state, optimizer factory and sharded placement shared by every stage.

Parameters are plain nested dicts of arrays (``nnx.to_pure_dict`` of a
module's state); the module structure (``nnx.GraphDef``) is static and merged
back inside jitted steps with ``nnx.merge``. This keeps every step a pure
function ``(state, batch, rng) -> (state, metrics)`` that jit, vmap (ensemble
members, seeds) and orbax all treat as an ordinary pytree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.config_node import from_node


@flax.struct.dataclass
class TrainState:
  """What a gradient stage trains and checkpoints: step counter, parameters, optimizer state."""

  step: jax.Array
  params: Any
  opt_state: Any


# Shaped like models.config.ModelConfig only as two frozen config dataclasses (fields with defaults) are.
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """An ``optimizer`` config node: AdamW with gradient clipping, warm-up and a decay schedule."""

  learning_rate: float = 3e-4
  schedule: str = "cosine"
  warmup_steps: int = 0
  total_steps: int = 1000
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8


OPTIMIZER_DEFAULTS = dataclasses.asdict(OptimizerConfig())


def make_schedule(learning_rate: float, schedule: str, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Warm-up then constant / cosine / linear decay (config key ``optimizer.schedule``)."""
  if schedule == "constant":
    main = optax.constant_schedule(learning_rate)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1), alpha=0.1)
  elif schedule == "linear":
    main = optax.linear_schedule(learning_rate, 0.1 * learning_rate, max(total_steps - warmup_steps, 1))
  else:
    raise ValueError(f"optimizer.schedule: unknown schedule {schedule!r}; expected constant, cosine or linear")
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def _decays(path) -> bool:
  """Weight decay for weight matrices only, by parameter name.

  Names, not ranks: stacked layers and ensemble members give norm scales and
  biases a leading axis ([L, D], [K, D]) that a rank test would mistake for a
  matrix.
  """
  name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1]))) if path else ""
  return name.endswith("kernel") or name in ("embed", "pos_embed", "lm_head")


def make_optimizer(config: Any = None, where: str = "config.optimizer", **overrides) -> optax.GradientTransformation:
  """AdamW with gradient clipping and a schedule from an ``optimizer`` config node (or an OptimizerConfig).

  ``where`` is the node's path, named by the error on an unknown key; ``overrides`` set fields after the
  node's (a stage's ``total_steps``). Weight decay applies to weight matrices only (kernels, embeddings),
  never to norm scales or biases (see ``_decays``).
  """
  values = from_node(OptimizerConfig, config, where, **overrides)
  schedule = make_schedule(values.learning_rate, values.schedule, values.warmup_steps, values.total_steps)
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: _decays(path), params)
  chain = []
  if values.grad_clip:
    chain.append(optax.clip_by_global_norm(values.grad_clip))
  chain.append(
    optax.adamw(schedule, b1=values.b1, b2=values.b2, eps=values.eps, weight_decay=values.weight_decay, mask=decay_mask)
  )
  return optax.chain(*chain)


def split_module(module: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, params as a pure dict, logical axis names as a parallel dict)."""
  graphdef, state = nnx.split(module)
  return graphdef, nnx.to_pure_dict(state), shd.logical_axes(state)


def abstract_module(factory: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, Any, Any]:
  """Like split_module but without allocating parameters (``nnx.eval_shape``)."""
  module = nnx.eval_shape(factory)
  return split_module(module)


def opt_state_shardings(optimizer: optax.GradientTransformation, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings of ``optimizer.init(params)``: moments follow their parameters, the rest is replicated."""
  opt_shape = jax.eval_shape(optimizer.init, params)
  return optax.tree_map_params(
    optimizer,
    lambda _, sharding: sharding,
    opt_shape,
    param_shardings,
    transform_non_params=lambda _: shd.replicated(mesh),
  )


def state_shardings(
  optimizer: optax.GradientTransformation, params: Any, param_axes: Any, mesh: Mesh, rules=shd.DEFAULT_RULES
) -> TrainState:
  """Shardings of a TrainState: optimizer moments follow their parameters."""
  param_shardings = shd.tree_shardings(param_axes, params, mesh, rules)
  return TrainState(
    step=shd.replicated(mesh),
    params=param_shardings,
    opt_state=opt_state_shardings(optimizer, params, param_shardings, mesh),
  )


def create_train_state(
  params: Any, param_axes: Any, optimizer: optax.GradientTransformation, mesh: Mesh, rules=shd.DEFAULT_RULES
) -> tuple[TrainState, TrainState]:
  """Places params on the mesh and initialises the optimizer state sharded.

  Returns (state, shardings); pass ``shardings`` as in/out shardings of the
  jitted step so nothing is ever resharded implicitly.
  """
  shardings = state_shardings(optimizer, params, param_axes, mesh, rules)
  params = jax.device_put(params, shardings.params)
  init = jax.jit(
    lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)),
    in_shardings=(shardings.params,),
    out_shardings=shardings,
  )
  return init(params), shardings


def apply_gradients(
  state: TrainState, grads: Any, metrics: dict[str, jax.Array], optimizer: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update of ``state`` by ``grads`` (the tail of every gradient step); ``metrics`` gain
  the gradients' global norm as ``grad_norm``."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(state.step + 1, params, opt_state), dict(metrics, grad_norm=optax.global_norm(grads))
