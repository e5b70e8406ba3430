"""The RL driver: trains S policies (vmapped seeds) from the SFT reference against a reward source.

One module used by every stage that runs RL (`rlhf`, `attack`, `online`,
`empo`): it builds the iteration of ``rl.engine``, jits the seed-vmapped step
once, and runs it under ``loop.train_loop`` (checkpoints, metrics, resume).
"""

from __future__ import annotations

from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.checkpoints.orbax_io import save_params
from advrm_jax.config_node import from_node
from advrm_jax.data import synthetic_world as world
from advrm_jax.data.batching import step_rows
from advrm_jax.pipelines.loop import LoopConfig, train_loop
from advrm_jax.pipelines.workdir import load_policy, policy_axes
from advrm_jax.rl.engine import (
  RLConfig,
  RLState,
  init_policy_params,
  init_rl_state,
  make_iteration,
  policy_param_axes,
  rl_state_shardings,
)
from advrm_jax.rl.sampler import SamplingConfig
from advrm_jax.train_state import make_optimizer


def snapshot_path(stage_dir: epath.Path, step: int) -> epath.Path:
  """Where ``train_policy`` saves the policies of ``step`` (``node.snapshot_every``)."""
  return epath.Path(stage_dir) / "snapshots" / f"step_{step:06d}"


def make_seeds_step(iteration: Callable, num_seeds: int) -> Callable:
  """The RL step of every stage: ``iteration`` vmapped over S stacked seed states and keys.

  ``(state [S], ref_params, reward_params, batch, rng) -> (state [S], IterationOutput)``: the weights and
  the prompts are shared by the seeds; every metric is logged as the seeds' mean and per seed; samples and
  rollout keep their leading seed axis.
  """

  def seeds_step(state, ref_params, reward_params, batch, rng):
    rngs = jax.random.split(rng, num_seeds)
    state, out = jax.vmap(iteration, in_axes=(0, None, None, None, 0))(state, ref_params, reward_params, batch, rngs)
    logged = {}
    for key, value in out.metrics.items():
      logged[key] = jnp.mean(value)
      for seed in range(num_seeds):
        logged[f"{key}/seed{seed}"] = value[seed]
    return state, out._replace(metrics=logged)

  return seeds_step


def policy_state_shardings(model_config: Any, rl_params: Any, optimizer: Any, mesh: Any) -> RLState:
  """Shardings of one policy's RL state: parameters split by their logical axes (fsdp x tensor, as in
  `sft` and `rm`), optimizer moments following them."""
  param_shardings = shd.tree_shardings(policy_param_axes(policy_axes(model_config)), rl_params, mesh)
  return rl_state_shardings(optimizer, rl_params, param_shardings, mesh)


def init_seed_states(
  rl_params: Any, shardings: RLState, optimizer: Any, rl_config: RLConfig, num_seeds: int
) -> tuple[RLState, RLState]:
  """``num_seeds`` fresh RL states stacked on a leading seed axis, and their shardings.

  Each seed is laid out as one policy is (``shardings``, from
  ``policy_state_shardings``). The seed axis itself is not split (each device
  holds its slice of every seed): the seeds share every prompt of the step,
  whose rows are already split over data x fsdp, and S (1-5) seldom divides
  the data axis, which would then have to carry the seeds instead of the batch.
  """
  stacked = shd.with_leading_axis(shardings)
  init = jax.jit(
    lambda p: jax.vmap(lambda _: init_rl_state(p, optimizer, rl_config))(jnp.arange(num_seeds)), out_shardings=stacked
  )
  return init(jax.device_put(rl_params, shardings.params)), stacked


def jit_seeds_step(
  iteration: Callable, num_seeds: int, state_shardings: RLState, ref_shardings: Any, reward_shardings: Any, mesh: Any
) -> Callable:
  """``make_seeds_step`` jitted once with explicit shardings, the state donated.

  Weights are arguments, not closure constants: runs that differ only in
  weights (another RM round, another aggregate mix) are the same program,
  which JAX's persistent compilation cache then compiles once. The whole
  output comes back replicated, readable on every host: metrics (scalars),
  sample tables and, when emitted, the rollout (the collector keeps every row).
  """
  return jax.jit(
    make_seeds_step(iteration, num_seeds),
    in_shardings=(state_shardings, ref_shardings, reward_shardings, shd.batch_sharding(mesh), shd.replicated(mesh)),
    out_shardings=(state_shardings, shd.replicated(mesh)),
    donate_argnums=(0,),
  )


def train_policy(
  name: str,
  stage_dir: epath.Path,
  sft_dir: epath.Path,
  config: Any,
  node: Any,
  reward_source: Any,
  reward_params: Any,
  prompts: dict[str, np.ndarray],
  num_seeds: int,
  gold_fn: Callable | None = world.gold_reward,
  text_fn: Callable[[dict[str, np.ndarray], int], dict[str, str]] | None = None,
  eval_fn: Callable[[RLState, int], dict[str, Any]] | None = None,
  eval_every: int = 0,
  collect_fn: Callable[[int, dict[str, Any]], None] | None = None,
  where: str = "",
) -> RLState:
  """Trains ``num_seeds`` policies (vmapped) from the SFT reference.

  Args:
    name: run name (progress line, sample tables).
    stage_dir: where checkpoints/metrics go.
    sft_dir: the finished `sft` stage (reference policy and initialisation).
    config: the whole experiment config (model, world, mesh, seed).
    node: the stage's config node: ``rl`` (RLConfig fields), ``optimizer``,
      ``sampling`` (SamplingConfig fields), ``num_steps``,
      ``prompts_per_step``, ``log_every``, ``checkpoint_every``, optional
      ``snapshot_every`` (0: none): the policies (seed axis) are saved to
      ``stage_dir/snapshots/step_NNNNNN`` at step 0 and every that many steps,
      a multiple of ``log_every`` so each snapshot has its logged KL (the
      evaluation samples them: attack success at matched KL, the
      over-optimisation baseline at the peak of gold).
    reward_source: a reward source (static; its params in ``reward_params``).
    prompts: {"tokens", "mask"[, "threshold"]} [N, P] prompt pool.
    num_seeds: policies trained at once (vmapped).
    gold_fn: tracked gold reward (metric only).
    text_fn: sample tables from ``IterationOutput.samples`` (default: the
      synthetic world's decoder; other tasks pass their own tokenizer's).
    eval_fn: optional ``(state, step) -> scalars`` (state with the seed
      axis), run every ``eval_every`` steps and at the end (see train_loop).
    eval_every: steps between evaluations (0: only at the end).
    collect_fn: optional ``(step, rollout)`` called after every step with
      every sampled row of every seed (``prompt_tokens``, ``prompt_mask``,
      ``response_tokens``, ``response_mask``: device arrays [S, B, ...],
      prompt-major); ``step`` counts completed steps. The adversary's
      `attack` stage keeps all of them.
    where: ``node``'s path in the config (``config.rlhf``), which errors name; "" = ``config.<stage>`` of
      ``name`` ("<stage>/<run>").
  Returns the final state (leading seed axis).
  """
  stage_dir = epath.Path(stage_dir)
  where = where or "config." + name.split("/")[0]
  rl_config = from_node(RLConfig, node.rl, f"{where}.rl")
  sampling = from_node(SamplingConfig, node.sampling, f"{where}.sampling")
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  shd.check_batch_divisible(node.prompts_per_step * rl_config.num_samples, mesh, f"{name}.prompts_per_step")
  if node.prompts_per_step * rl_config.num_samples % rl_config.num_minibatches:
    raise ValueError(
      f"{name}.num_minibatches={rl_config.num_minibatches} must divide prompts_per_step x "
      f"num_samples = {node.prompts_per_step * rl_config.num_samples}"
    )
  # The reference policy is read straight into its shards; the reward weights keep the layout their loader
  # gave them (``load_reward_model(..., mesh)``: split by logical axes), anything else is replicated.
  model_config, graphdef, ref_params = load_policy(sft_dir, mesh)
  reward_params, reward_shardings = shd.place(reward_params, mesh)
  optimizer = make_optimizer(node.optimizer, f"{where}.optimizer", total_steps=node.num_steps)
  iteration = make_iteration(
    graphdef, optimizer, rl_config, sampling, reward_source, gold_fn=gold_fn, emit_rollout=collect_fn is not None
  )
  rl_params = init_policy_params(ref_params, model_config.d_model)
  state, state_shardings = init_seed_states(
    rl_params, policy_state_shardings(model_config, rl_params, optimizer, mesh), optimizer, rl_config, num_seeds
  )
  jitted_step = jit_seeds_step(
    iteration, num_seeds, state_shardings, shd.shardings_on(ref_params, mesh), reward_shardings, mesh
  )

  snapshot_every = int(getattr(node, "snapshot_every", 0))  # a config node or a typed one (AttackConfig)
  if snapshot_every and (snapshot_every < 0 or snapshot_every % node.log_every):
    raise ValueError(
      f"{name}.snapshot_every={snapshot_every} must be a positive multiple of "
      f"{name}.log_every={node.log_every} (each snapshot is read with its logged KL)"
    )

  def snapshot(state, step):
    path = snapshot_path(stage_dir, step)
    if snapshot_every and step % snapshot_every == 0 and not path.exists():
      save_params(path, state.params["policy"])

  snapshot(state, 0)

  def step_fn(state, batch, rng):
    state, out = jitted_step(state, ref_params, reward_params, batch, rng)
    # The rollout goes to the collector only; train_loop logs the metrics and tables the samples.
    if snapshot_every or collect_fn:  # else no host sync on the step counter
      step = int(jax.device_get(state.step)[0])
      snapshot(state, step)
      if collect_fn is not None:
        collect_fn(step, out.rollout)
    return state, out.metrics, out.samples

  num_prompts = prompts["tokens"].shape[0]
  per_step = node.prompts_per_step
  if num_prompts < per_step:
    raise ValueError(f"{name}.prompts_per_step={per_step} exceeds the {num_prompts} prompts available")

  def get_batch(step: int, share) -> dict[str, np.ndarray]:
    rows = share(step_rows(num_prompts, per_step, config.seed + 17, step))
    return {k: v[rows] for k, v in prompts.items()}

  loop = LoopConfig(
    num_steps=node.num_steps, log_every=node.log_every, checkpoint_every=node.checkpoint_every, seed=config.seed
  )
  if text_fn is None:
    text_fn = lambda samples, step: {"samples": world.sample_table(samples)}
  state = train_loop(
    name, stage_dir, state, step_fn, get_batch, loop, mesh, eval_fn=eval_fn, eval_every=eval_every, text_fn=text_fn
  )
  save_params(stage_dir / "params", state.params["policy"])
  return state
