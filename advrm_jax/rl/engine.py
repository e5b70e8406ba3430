"""One jitted RL iteration for language models: PPO, RLOO and GRPO.

``iteration(state, ref_params, reward_params, prompts, rng) -> (state, IterationOutput)``
does, inside a single ``jax.jit``:

1. repeat each prompt ``num_samples`` times (prompt-major rows) and sample
   responses with the KV-cache sampler;
2. score them with a pluggable reward source (+ missing-EOS penalty);
3. recompute policy log-probs, values and reference log-probs with full
   forwards (so PPO ratios start at exactly 1);
4. KL to the reference (k1/k3) folded into the reward or added to the loss;
5. advantages: GAE over tokens (PPO, needs a value head) or RLOO / GRPO over
   the samples of each prompt, broadcast to the response tokens;
6. ``ppo_epochs`` x ``num_minibatches`` clipped-surrogate updates as nested
   ``lax.scan``s;
7. adaptive KL coefficient update.

Steps 1, 2, 3-5 and 6 are the closures ``rollout_step``, ``score_step``,
``advantages_step`` and ``update_step`` of ``make_iteration``, which
``iteration`` composes; they are traced into the one program, not jitted apart.

Policy parameters are ``{"policy": transformer params, "value_head": ...}``,
plus ``"critic"`` (a separate transformer) when ``critic="separate"``. With
``critic="shared"`` the value head reads the policy's final hidden state.
The state is a pytree, so ``jax.vmap(iteration)`` over stacked states and
keys runs several seeds at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.models.lm import token_logprobs_from_logits
from advrm_jax.rl import advantages as adv
from advrm_jax.rl import losses
from advrm_jax.rl.rewards import Rollout
from advrm_jax.rl.sampler import SamplingConfig, concat_prompt_response, sample
from advrm_jax.train_state import opt_state_shardings

Array = jax.Array


class IterationOutput(NamedTuple):
  """What one RL iteration returns besides the new state (a pytree: vmapped seeds stack every leaf).

  metrics: scalars (losses, rewards, KL, ...), the only part written as metrics.
  samples: the first sample of every prompt, for sample tables: ``prompt_tokens`` [P, Lp],
    ``response_tokens`` [P, Lr], ``proxy_reward`` [P].
  rollout: every sampled row, prompt-major (``prompt_tokens``, ``prompt_mask``,
    ``response_tokens``, ``response_mask``: [B, ...]) when the iteration was built with
    ``emit_rollout``, else None.
  """

  metrics: dict[str, Array]
  samples: dict[str, Array]
  rollout: dict[str, Array] | None


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Static hyper-parameters of the RL iteration (config node ``rl``)."""

  algorithm: str = "rloo"  # "ppo" (GAE + value head) | "rloo" | "grpo"
  num_samples: int = 4  # responses per prompt (k); RLOO/GRPO need >= 2
  ppo_epochs: int = 1
  num_minibatches: int = 1
  clip_eps: float = 0.2
  clip_eps_high: float | None = None
  value_clip_eps: float = 0.2
  vf_coef: float = 0.5
  entropy_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  whiten_advantages: bool = True
  kl_coef: float = 0.05
  kl_estimator: str = "k1"  # "k1" | "k3" | "k2" | "abs"
  kl_in_reward: bool = True  # else added to the loss
  # How the per-token KL enters the reward: "sum" over the response (nats per sequence) or "mean" per
  # token (the Adv-RM authors' setting; a long exploit then pays no more KL than a short answer).
  kl_aggregate: str = "sum"
  adaptive_kl_target: float | None = None
  adaptive_kl_horizon: int = 10000
  missing_eos_penalty: float = 0.0
  loss_mode: str = "token_mean"  # "token_mean" | "sequence_mean"
  critic: str = "shared"  # "shared" | "separate"

  def __post_init__(self):
    if self.algorithm not in ("ppo", "rloo", "grpo"):
      raise ValueError(f"rl.algorithm: unknown {self.algorithm!r}; expected ppo, rloo or grpo")
    if self.algorithm in ("rloo", "grpo") and self.num_samples < 2:
      raise ValueError(f"rl.num_samples must be >= 2 for {self.algorithm}, got {self.num_samples}")
    if self.kl_aggregate not in ("sum", "mean"):
      raise ValueError(f"rl.kl_aggregate: unknown {self.kl_aggregate!r}; expected sum or mean")
    if self.critic not in ("shared", "separate"):
      raise ValueError(f"rl.critic: unknown {self.critic!r}; expected shared or separate")
    # The penalty is subtracted: a negative value would reward responses that never end.
    if self.missing_eos_penalty < 0:
      raise ValueError(
        f"rl.missing_eos_penalty must be >= 0 (it is subtracted from the reward of a "
        f"response without EOS), got {self.missing_eos_penalty}"
      )


@flax.struct.dataclass
class RLState:
  """State of one RL run (one seed); ``jax.vmap`` over stacked states runs several seeds.

  Holds the step, the params ``{"policy", "value_head"[, "critic"]}``, the
  optimizer state and the current KL coefficient.
  """

  step: Array
  params: Any  # {"policy", "value_head", optional "critic"}
  opt_state: Any
  kl_coef: Array


def init_value_head(d_model: int) -> dict[str, Array]:
  """A zero-initialised value head ([D] kernel, scalar bias) on the final hidden state."""
  # Zero init: the first value estimates are 0 and the critic learns from there.
  return {"kernel": jnp.zeros((d_model,), jnp.float32), "bias": jnp.zeros((), jnp.float32)}


def init_policy_params(policy_params: Any, d_model: int, critic_params: Any | None = None) -> dict[str, Any]:
  """The RL parameter dict: the policy, a fresh value head, and optionally a separate critic."""
  params = {"policy": policy_params, "value_head": init_value_head(d_model)}
  if critic_params is not None:
    params["critic"] = critic_params
  return params


def policy_param_axes(policy_axes: Any, critic_axes: Any | None = None) -> dict[str, Any]:
  """Logical axis names parallel to ``init_policy_params`` (for sharded RL states)."""
  axes = {"policy": policy_axes, "value_head": {"kernel": ("embed",), "bias": ()}}
  if critic_axes is not None:
    axes["critic"] = critic_axes
  return axes


def rl_state_shardings(
  optimizer: optax.GradientTransformation, params: Any, param_shardings: Any, mesh: Mesh
) -> RLState:
  """Shardings of ``init_rl_state(params, ...)``: optimizer moments follow their parameters."""
  return RLState(
    step=shd.replicated(mesh),
    params=param_shardings,
    opt_state=opt_state_shardings(optimizer, params, param_shardings, mesh),
    kl_coef=shd.replicated(mesh),
  )


def init_rl_state(params: Any, optimizer: optax.GradientTransformation, config: RLConfig) -> RLState:
  """A fresh RLState with copies of ``params``, a new optimizer state and ``config.kl_coef``."""
  # Copy: the policy usually starts from the reference's own arrays, and the
  # iteration donates its state, which would free the reference too.
  params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  return RLState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    kl_coef=jnp.asarray(config.kl_coef, jnp.float32),
  )


def _response_logprobs_and_values(
  graphdef: nnx.GraphDef,
  params: Any,
  tokens: Array,
  mask: Array,
  prompt_len: int,
  temperature: float,
  with_values: bool,
  critic: str,
):
  """Log-probs [B, N], entropies [B, N] and values [B, N] of the response columns."""
  model = nnx.merge(graphdef, params["policy"])
  out = model(tokens, mask)
  # Position t predicts token t+1: response tokens P..P+N-1 come from P-1..P+N-2.
  logits = out.logits[:, prompt_len - 1 : -1]
  logprobs = token_logprobs_from_logits(logits, tokens[:, prompt_len:], temperature)
  entropy = losses.per_token_entropy(logits / temperature)
  values = None
  if with_values:
    if critic == "separate":
      hidden = nnx.merge(graphdef, params["critic"])(tokens, mask, compute_logits=False).hidden
    else:
      hidden = out.hidden
    head = params["value_head"]
    values = (hidden[:, prompt_len - 1 : -1].astype(jnp.float32) @ head["kernel"]) + head["bias"]
  return logprobs, entropy, values


def make_iteration(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  config: RLConfig,
  sampling: SamplingConfig,
  reward_source: Any,
  gold_fn: Any = None,
  emit_rollout: bool = False,
):
  """Builds the pure iteration function (jit it once; see module docstring).

  Args:
    graphdef: the policy transformer's graphdef (also the reference's).
    optimizer: optax transformation over ``state.params``.
    config: RL hyper-parameters.
    sampling: sampling options (temperature also scales training log-probs).
    reward_source: a reward source from ``advrm_jax.rl.rewards``.
    gold_fn: optional exact gold ``fn(prompt_tokens, prompt_mask,
      response_tokens, response_mask) -> [B]`` -- tracked as a metric only,
      never seen by the policy.
    emit_rollout: also return every sampled row (``IterationOutput.rollout``),
      e.g. for the adversary, whose samples across the whole run are the product.
  """
  k = config.num_samples
  temperature = sampling.temperature if sampling.temperature > 0 else 1.0
  use_values = config.algorithm == "ppo"

  def rollout_step(policy_params: Any, prompts: dict[str, Array], rng: Array):
    """1. Repeat each prompt k times (prompt-major) and sample a response per row."""
    prompt_tokens = jnp.repeat(prompts["tokens"], k, axis=0)
    prompt_mask = jnp.repeat(prompts["mask"], k, axis=0)
    threshold = jnp.repeat(prompts.get("threshold", jnp.zeros(prompts["tokens"].shape[0])), k, axis=0)
    samples = sample(graphdef, policy_params, prompt_tokens, prompt_mask, rng, sampling)
    samples = jax.tree.map(jax.lax.stop_gradient, samples)
    tokens, mask = concat_prompt_response(
      samples.prompt_tokens,
      samples.prompt_mask,
      samples.tokens,
      samples.response_mask,
      pad_id=sampling.pad_id,
      left_pad=False,
    )
    rollout = Rollout(
      samples.prompt_tokens, samples.prompt_mask, samples.tokens, samples.response_mask, tokens, mask, threshold
    )
    return samples, rollout

  def score_step(reward_params: Any, rollout: Rollout, has_eos: Array):
    """2. Reward-source scores (the proxy reward) and the scores the policy is trained on."""
    proxy_scores, reward_metrics = reward_source(reward_params, rollout)
    scores = proxy_scores
    if config.missing_eos_penalty:
      scores = losses.missing_eos_penalty(scores, has_eos, config.missing_eos_penalty)
    return scores, proxy_scores, reward_metrics

  def advantages_step(params: Any, ref_params: Any, rollout: Rollout, scores: Array, kl_coef: Array):
    """3-5. Old policy / reference log-probs and values (no gradient), KL, rewards and advantages.

    Returns the update's data (one row per sample) and each response's KL to the reference (nats).
    """
    tokens, mask = rollout.tokens, rollout.mask
    prompt_len = rollout.prompt_tokens.shape[1]
    response_mask = rollout.response_mask.astype(jnp.float32)
    old_logprobs, _, old_values = _response_logprobs_and_values(
      graphdef, params, tokens, mask, prompt_len, temperature, use_values, config.critic
    )
    ref_logprobs, _, _ = _response_logprobs_and_values(
      graphdef, {"policy": ref_params}, tokens, mask, prompt_len, temperature, False, config.critic
    )
    token_kl = losses.kl_penalty(old_logprobs, ref_logprobs, config.kl_estimator) * response_mask
    sequence_kl = token_kl.sum(axis=1)  # nats per response: what `kl` reports whatever the aggregate
    token_kl_for_reward = losses.kl_for_reward(token_kl, response_mask, config.kl_aggregate)

    if use_values:
      kl_for_reward = token_kl_for_reward if config.kl_in_reward else None
      token_rewards = adv.per_token_rewards(
        scores, response_mask, kl_for_reward, kl_coef if config.kl_in_reward else 0.0
      )
      advantages, returns = adv.compute_gae(token_rewards, old_values, response_mask, config.gamma, config.lam)
    else:
      sequence_rewards = scores - kl_coef * token_kl_for_reward.sum(axis=1) if config.kl_in_reward else scores
      if config.algorithm == "rloo":
        seq_adv = adv.compute_rloo_advantages(sequence_rewards, k)
      else:
        seq_adv = adv.compute_grpo_advantages(sequence_rewards, k)
      advantages = seq_adv[:, None] * response_mask
      returns = jnp.zeros_like(advantages)
      old_values = jnp.zeros_like(advantages)
    if config.whiten_advantages:
      advantages = adv.masked_whiten(advantages, response_mask)
    advantages = jax.lax.stop_gradient(advantages)
    data = {
      "tokens": tokens,
      "mask": mask,
      "response_mask": response_mask,
      "old_logprobs": old_logprobs,
      "ref_logprobs": ref_logprobs,
      "advantages": advantages,
      "returns": returns,
      "old_values": old_values,
    }
    return data, sequence_kl

  def update_step(params: Any, opt_state: Any, data: dict[str, Array], kl_coef: Array, rng: Array):
    """6. ``ppo_epochs`` x ``num_minibatches`` clipped updates; the update metrics averaged over them."""
    batch = data["tokens"].shape[0]
    prompt_len = data["tokens"].shape[1] - data["response_mask"].shape[1]
    minibatch = batch // config.num_minibatches

    def loss_fn(params, mb):
      logprobs, entropy, values = _response_logprobs_and_values(
        graphdef, params, mb["tokens"], mb["mask"], prompt_len, temperature, use_values, config.critic
      )
      m = mb["response_mask"]
      pg_loss, pg_metrics = losses.ppo_policy_loss(
        logprobs, mb["old_logprobs"], mb["advantages"], m, config.clip_eps, config.clip_eps_high, mode=config.loss_mode
      )
      total = pg_loss
      metrics = {
        "policy_loss": pg_loss,
        "clip_fraction": pg_metrics["clip_fraction"],
        "approx_kl": pg_metrics["approx_kl"],
      }
      if use_values:
        v_loss, v_metrics = losses.ppo_value_loss(
          values, mb["old_values"], mb["returns"], m, config.value_clip_eps, mode=config.loss_mode
        )
        total = total + config.vf_coef * v_loss
        metrics.update(value_loss=v_loss, value_clip_fraction=v_metrics["value_clip_fraction"])
      entropy_mean = losses.aggregate_loss(entropy, m, config.loss_mode)
      total = total - config.entropy_coef * entropy_mean
      if not config.kl_in_reward:
        kl_term = losses.aggregate_loss(
          losses.kl_penalty(logprobs, mb["ref_logprobs"], config.kl_estimator), m, config.loss_mode
        )
        total = total + kl_coef * kl_term
      metrics.update(loss=total, entropy=entropy_mean)
      return total, metrics

    def epoch(carry, epoch_rng):
      def minibatch_step(carry, rows):
        params, opt_state = carry
        mb = jax.tree.map(lambda x: x[rows], data)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return (params, opt_state), metrics

      order = jax.random.permutation(epoch_rng, batch).reshape(config.num_minibatches, minibatch)
      return jax.lax.scan(minibatch_step, carry, order)

    (params, opt_state), update_metrics = jax.lax.scan(
      epoch, (params, opt_state), jax.random.split(rng, config.ppo_epochs)
    )
    return params, opt_state, jax.tree.map(jnp.mean, update_metrics)

  def iteration(state: RLState, ref_params: Any, reward_params: Any, prompts: dict[str, Array], rng: Array):
    sample_rng, shuffle_rng = jax.random.split(rng)
    samples, rollout = rollout_step(state.params["policy"], prompts, sample_rng)
    scores, proxy_scores, reward_metrics = score_step(reward_params, rollout, samples.has_eos)
    data, sequence_kl = advantages_step(state.params, ref_params, rollout, scores, state.kl_coef)
    params, opt_state, update_metrics = update_step(state.params, state.opt_state, data, state.kl_coef, shuffle_rng)

    # 7. Adaptive KL.
    kl_coef = state.kl_coef
    mean_kl = jnp.mean(sequence_kl)
    if config.adaptive_kl_target is not None:
      kl_coef = losses.adaptive_kl_update(
        kl_coef, mean_kl, data["tokens"].shape[0], config.adaptive_kl_target, config.adaptive_kl_horizon
      )

    metrics = dict(update_metrics)
    metrics.update(reward_metrics)
    metrics.update(
      proxy_reward=jnp.mean(proxy_scores),
      reward=jnp.mean(scores),
      kl=mean_kl,
      kl_coef=state.kl_coef,
      response_length=jnp.mean(samples.lengths.astype(jnp.float32)),
      eos_fraction=jnp.mean(samples.has_eos.astype(jnp.float32)),
    )
    if use_values:
      metrics["value_explained_variance"] = losses.explained_variance(
        data["old_values"], data["returns"], data["response_mask"]
      )
    if gold_fn is not None:
      gold = gold_fn(samples.prompt_tokens, samples.prompt_mask, samples.tokens, samples.response_mask)
      metrics["gold_reward"] = jnp.mean(gold)
    table = {
      "prompt_tokens": samples.prompt_tokens[::k],
      "response_tokens": samples.tokens[::k],
      "proxy_reward": proxy_scores[::k],
    }
    every_row = None
    if emit_rollout:
      every_row = {
        "prompt_tokens": samples.prompt_tokens,
        "prompt_mask": samples.prompt_mask,
        "response_tokens": samples.tokens,
        "response_mask": samples.response_mask,
      }
    new_state = RLState(step=state.step + 1, params=params, opt_state=opt_state, kl_coef=kl_coef)
    return new_state, IterationOutput(metrics=metrics, samples=table, rollout=every_row)

  return iteration
