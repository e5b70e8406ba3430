"""Online Adv-RM: adversary and reward-model ensemble updated in one jitted step.

The paper (arXiv 2504.06141) alternates *rounds*: train an adversary to
convergence against a frozen ensemble, filter its samples, retrain the
ensemble on them, repeat. The online mode interleaves the two at the
granularity of one RL iteration, the way GAN-style training does, so the
ensemble is hardened against what the adversary finds *now* rather than
against what an adversary found a whole round ago:

  online_iteration(state, ref_params, batch, rng) -> (state, IterationOutput)

does, inside one ``jax.jit``:

1. score the batch's reference-policy samples with the *current* ensemble:
   the per-prompt threshold T(x) (their mean R1, or max/quantile), the
   reference population for z(U), and the chosen side of new pairs (the
   reference sample the ensemble mean likes best, as the `filter` stage);
2. one adversary RL iteration (``rl.engine.make_iteration``: RLOO or PPO,
   KL to the reference) on ``AdversarySource`` against the current ensemble
   params, which live in the online state;
3. filter the adversary's samples (scored by the same, pre-update ensemble,
   i.e. exactly what the adversary was rewarded with): keep R1 > T(x) and
   z(U) > z_min, and insert the kept ones into the fixed-size on-device ring
   buffer (``filtering.AdversarialBuffer``) as the rejected side, with the
   chosen reference sample of the same prompt as the chosen side;
4. ``rm_updates`` Bradley-Terry steps (``reward.losses.make_bt_step``) on
   ordinary preference pairs from the batch mixed with pairs drawn from the
   buffer (ring overwrite keeps it the freshest ``capacity`` items). Empty
   buffer rows get weight 0, so the first steps train on ordinary pairs only.

Everything (buffer included) is one pytree, so the step jits once and its
state is donated. Shapes are static: K members, Pb prompts per step, k
samples per prompt, n reference samples per prompt, R response width, Lp
prompt width, T ordinary pair width.

Batch (host arrays, leading axis the batch axis so the loop can shard it):
  prompt_tokens, prompt_mask: [Pb, Lp] attack prompts (left-padded or aligned).
  reference_tokens, reference_mask: [Pb, n, R] reference samples.
  chosen_tokens, chosen_mask, rejected_tokens, rejected_mask:
      [U * B, T] ordinary pairs, U = rm_updates rows of B pairs each.
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
from advrm_jax.adversarial import filtering
from advrm_jax.adversarial.objective import (
  member_standardization,
  per_prompt_threshold,
  split_target,
  standardize_members,
)
from advrm_jax.adversarial.source import adversary_source
from advrm_jax.reward.losses import make_bt_step
from advrm_jax.reward.model import reward_scores
from advrm_jax.rl.engine import IterationOutput, RLConfig, RLState, make_iteration
from advrm_jax.rl.sampler import SamplingConfig, concat_prompt_response
from advrm_jax.train_state import TrainState

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
  """Static options of the online iteration (config node ``online``, minus budgets).

  Attributes:
    lam, penalty, target, r2_kind: the adversary's objective (as ``attack``).
    threshold: T(x) from the reference samples' R1: mean, max, quantile, or
      constant (``tau`` for every prompt).
    standardized: members' rewards in z units of the step's reference
      samples under the current ensemble (as ``attack.standardize``); T(x),
      the penalty and U are then in those units.
    tau: the floor of threshold "constant".
    uncertainty: U for the filter: "r1_minus_r2" or "std".
    standardize: z(U) against "reference" (the step's reference samples'
      U under the current ensemble) or "collected" (the adversary batch).
    z_min: keep z(U) > z_min.
    rm_updates: BT steps per iteration (U).
    adversarial_pairs: buffer pairs per BT step (the ordinary ones come from
      the batch, B per step).
    bootstrap: Poisson(1) member weights on ordinary pairs, so members keep
      fitting different resamples and their disagreement (the adversary's and
      the filter's signal) does not collapse under shared updates.
    margin, centering_coef: BT loss options (as ``rm``).
  """

  lam: float = 1.0
  penalty: float = -25.0
  target: int = 0
  r2_kind: str = "mean"
  threshold: str = "mean"
  standardized: bool = False
  tau: float = 0.0
  uncertainty: str = "r1_minus_r2"
  standardize: str = "reference"
  z_min: float = filtering.DEFAULT_Z_MIN
  rm_updates: int = 1
  adversarial_pairs: int = 4
  bootstrap: bool = True
  margin: float = 0.0
  centering_coef: float = 0.0

  def __post_init__(self):
    if self.standardize not in ("reference", "collected"):
      raise ValueError(f"online.standardize: unknown {self.standardize!r}; expected reference or collected")
    if self.uncertainty not in filtering.UNCERTAINTY_KINDS:
      raise ValueError(
        f"online.uncertainty: unknown {self.uncertainty!r}; expected one of {filtering.UNCERTAINTY_KINDS}"
      )
    if self.rm_updates < 1:
      raise ValueError(f"online.rm_updates must be >= 1, got {self.rm_updates}")
    if self.adversarial_pairs < 0:
      raise ValueError(f"online.adversarial_pairs must be >= 0, got {self.adversarial_pairs}")


@flax.struct.dataclass
class OnlineState:
  """Everything the online loop carries (one pytree: checkpointed, donated).

  Attributes:
    step: [] int32 iterations done.
    adversary: the adversary's ``RLState``.
    rm: the ensemble's ``TrainState`` (params + optimizer state).
    buffer: the filtered adversarial samples.
  """

  step: Array
  adversary: RLState
  rm: TrainState
  buffer: filtering.AdversarialBuffer


def init_online_state(
  adversary: RLState,
  rm_params: Any,
  rm_optimizer: optax.GradientTransformation,
  capacity: int,
  prompt_len: int,
  response_len: int,
  pad_id: int = 0,
) -> OnlineState:
  """A fresh online state (the RM params are copied: the step donates its state)."""
  rm_params = jax.tree.map(lambda x: jnp.array(x, copy=True), rm_params)
  rm = TrainState(jnp.zeros((), jnp.int32), rm_params, rm_optimizer.init(rm_params))
  buffer = filtering.init_buffer(capacity, prompt_len, response_len, pad_id=pad_id)
  return OnlineState(step=jnp.zeros((), jnp.int32), adversary=adversary, rm=rm, buffer=buffer)


def _pad_width(x: Array, width: int) -> Array:
  """Right-pads [B, T] to [B, width] (pad id 0 / mask False): the RM reads the last real token."""
  return jnp.pad(x, ((0, 0), (0, width - x.shape[1])))


def make_online_iteration(
  policy_graphdef: nnx.GraphDef,
  rm_graphdef: nnx.GraphDef,
  policy_optimizer: optax.GradientTransformation,
  rm_optimizer: optax.GradientTransformation,
  rl_config: RLConfig,
  sampling: SamplingConfig,
  config: OnlineConfig,
  gold_fn: Callable[..., Array] | None = None,
):
  """Builds ``online_iteration(state, ref_params, batch, rng) -> (state, IterationOutput)`` (module doc).

  Args:
    policy_graphdef: the adversary's (= reference policy's) transformer.
    rm_graphdef: the ensemble's graphdef.
    policy_optimizer, rm_optimizer: optax transformations of the two parts.
    rl_config: the adversary's RL options.
    sampling: the adversary's sampling options.
    config: online options.
    gold_fn: optional exact gold ``fn(prompt_tokens, prompt_mask,
      response_tokens, response_mask) -> [B]``: metrics only (how often the
      kept samples are truly worse than their chosen side), never a signal.
  """
  source = adversary_source(rm_graphdef, config, config.standardized)
  adversary_step = make_iteration(
    policy_graphdef, policy_optimizer, rl_config, sampling, source, gold_fn=gold_fn, emit_rollout=True
  )
  bt_step = make_bt_step(rm_graphdef, rm_optimizer, config.margin, config.centering_coef)
  k = rl_config.num_samples

  def score(params, prompt_tokens, prompt_mask, response_tokens, response_mask):
    # The layout the RL iteration scores (prompt, then the response at column
    # Lp), so filter decisions use exactly the rewards the adversary saw.
    tokens, mask = concat_prompt_response(
      prompt_tokens, prompt_mask, response_tokens, response_mask, pad_id=sampling.pad_id, left_pad=False
    )
    return reward_scores(rm_graphdef, params, tokens, mask)

  def online_iteration(state: OnlineState, ref_params: Any, batch: dict[str, Array], rng: Array):
    adv_rng, rm_rng = jax.random.split(rng)
    rm_params = state.rm.params
    prompt_tokens, prompt_mask = batch["prompt_tokens"], batch["prompt_mask"]
    num_prompts, n, response_len = batch["reference_tokens"].shape

    # 1. Reference samples under the current ensemble: T(x), z(U)'s population, chosen sides.
    ref_prompt_tokens = jnp.repeat(prompt_tokens, n, axis=0)
    ref_prompt_mask = jnp.repeat(prompt_mask, n, axis=0)
    ref_scores = score(
      rm_params,
      ref_prompt_tokens,
      ref_prompt_mask,
      batch["reference_tokens"].reshape(num_prompts * n, response_len),
      batch["reference_mask"].reshape(num_prompts * n, response_len),
    )  # [K, Pb*n]
    ref_scores = jax.lax.stop_gradient(ref_scores)
    num_members = ref_scores.shape[0]
    if config.standardized:
      loc, scale = member_standardization(ref_scores)
      ref_scores = standardize_members(ref_scores, loc, scale)
      source_params = {"rm": rm_params, "loc": loc, "scale": scale}
    else:
      source_params = rm_params
    ref_by_prompt = ref_scores.reshape(num_members, num_prompts, n)
    threshold = per_prompt_threshold(ref_by_prompt[config.target], kind=config.threshold, constant=config.tau)  # [Pb]
    reference_u = filtering.uncertainty(ref_scores, config.uncertainty, config.target, config.r2_kind)
    # Never choose an empty reference sample (a response of zero tokens).
    ref_nonempty = batch["reference_mask"].astype(bool).any(axis=-1)  # [Pb, n]
    chosen_column = jnp.argmax(jnp.where(ref_nonempty, ref_by_prompt.mean(axis=0), -jnp.inf), axis=1)

    # 2. The adversary's RL iteration against the current (pre-update) ensemble.
    prompts = {"tokens": prompt_tokens, "mask": prompt_mask, "threshold": threshold}
    adversary, adv_out = adversary_step(state.adversary, ref_params, source_params, prompts, adv_rng)
    rollout = adv_out.rollout

    # 3. Filter its samples and push the kept ones into the ring buffer.
    sample_scores = jax.lax.stop_gradient(
      score(
        rm_params,
        rollout["prompt_tokens"],
        rollout["prompt_mask"],
        rollout["response_tokens"],
        rollout["response_mask"],
      )
    )
    if config.standardized:
      sample_scores = standardize_members(sample_scores, loc, scale)
    r1, _ = split_target(sample_scores, config.target, config.r2_kind)
    u = filtering.uncertainty(sample_scores, config.uncertainty, config.target, config.r2_kind)
    z = filtering.standardize(u, reference=reference_u if config.standardize == "reference" else None)
    row_prompt = jnp.arange(num_prompts * k) // k  # rows are prompt-major
    row_threshold = threshold[row_prompt]
    nonempty = rollout["response_mask"].astype(bool).any(axis=1)
    keep = filtering.filter_mask(r1, row_threshold, z, config.z_min) & nonempty
    chosen_tokens = batch["reference_tokens"][row_prompt, chosen_column[row_prompt]]
    chosen_mask = batch["reference_mask"][row_prompt, chosen_column[row_prompt]]
    buffer = filtering.buffer_add(
      state.buffer,
      {
        "prompt_tokens": rollout["prompt_tokens"],
        "prompt_mask": rollout["prompt_mask"],
        "adversarial_tokens": rollout["response_tokens"],
        "adversarial_mask": rollout["response_mask"],
        "reference_tokens": chosen_tokens,
        "reference_mask": chosen_mask,
      },
      keep,
    )

    filter_metrics = {
      "filter/kept": jnp.sum(keep.astype(jnp.float32)),
      "filter/above_threshold": jnp.mean((r1 > row_threshold).astype(jnp.float32)),
      "filter/high_uncertainty": jnp.mean((z > config.z_min).astype(jnp.float32)),
      "filter/z_mean": jnp.mean(z),
      "filter/threshold_mean": jnp.mean(threshold),
      "buffer/size": filtering.buffer_size(buffer).astype(jnp.float32),
      "buffer/inserted": buffer.count.astype(jnp.float32),
    }
    if gold_fn is not None:
      # Metric only: is the filter's premise (uncertain = worse) holding?
      adv_gold = gold_fn(
        rollout["prompt_tokens"], rollout["prompt_mask"], rollout["response_tokens"], rollout["response_mask"]
      )
      chosen_gold = gold_fn(rollout["prompt_tokens"], rollout["prompt_mask"], chosen_tokens, chosen_mask)
      kept = keep.astype(jnp.float32)
      filter_metrics["filter/kept_worse_than_chosen"] = jnp.sum(kept * (adv_gold < chosen_gold)) / jnp.maximum(
        jnp.sum(kept), 1.0
      )

    # 4. U Bradley-Terry updates on ordinary + buffered adversarial pairs.
    num_updates = config.rm_updates
    ordinary = {key: batch[key] for key in ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask")}
    pair_width = max(ordinary["chosen_tokens"].shape[1], prompt_tokens.shape[1] + response_len)
    ordinary = {
      key: _pad_width(value, pair_width).reshape((num_updates, -1, pair_width)) for key, value in ordinary.items()
    }
    pairs_per_update = ordinary["chosen_tokens"].shape[1]

    def rm_update(rm_state, xs):
      pairs, update_rng = xs
      boot_rng, sample_rng, step_rng = jax.random.split(update_rng, 3)
      if config.bootstrap:
        weights = jax.random.poisson(boot_rng, 1.0, (pairs_per_update, num_members)).astype(jnp.float32)
      else:
        weights = jnp.ones((pairs_per_update, num_members), jnp.float32)
      pairs = dict(pairs)
      if config.adversarial_pairs:
        items, valid = filtering.buffer_sample(buffer, sample_rng, config.adversarial_pairs)
        extra = {}  # the reference sample is the chosen side, the adversarial sample the rejected one
        for side, drawn in (("chosen", "reference"), ("rejected", "adversarial")):
          extra[f"{side}_tokens"], extra[f"{side}_mask"] = concat_prompt_response(
            items["prompt_tokens"],
            items["prompt_mask"],
            items[f"{drawn}_tokens"],
            items[f"{drawn}_mask"],
            pad_id=sampling.pad_id,
            left_pad=False,
          )
        for key, value in extra.items():
          pairs[key] = jnp.concatenate([pairs[key], _pad_width(value.astype(pairs[key].dtype), pair_width)])
        # Empty-buffer draws hold padding: weight 0 keeps them out of the loss.
        adv_weights = jnp.broadcast_to(valid.astype(jnp.float32)[:, None], (config.adversarial_pairs, num_members))
        weights = jnp.concatenate([weights, adv_weights])
      pairs["member_weights"] = weights
      rm_state, metrics = bt_step(rm_state, pairs, step_rng)
      metrics["adversarial_valid"] = jnp.mean(valid.astype(jnp.float32)) if config.adversarial_pairs else jnp.zeros(())
      return rm_state, metrics

    rm_state, rm_metrics = jax.lax.scan(rm_update, state.rm, (ordinary, jax.random.split(rm_rng, num_updates)))
    rm_metrics = jax.tree.map(jnp.mean, rm_metrics)

    metrics = {key if key.startswith("adv/") else f"adv/{key}": value for key, value in adv_out.metrics.items()}
    metrics.update({f"rm/{key}": value for key, value in rm_metrics.items()})
    metrics.update(filter_metrics)
    # The loop's NaN guard reads "loss": both halves must stay finite.
    metrics["loss"] = rm_metrics["loss"] + adv_out.metrics["loss"]
    new_state = OnlineState(step=state.step + 1, adversary=adversary, rm=rm_state, buffer=buffer)
    # The adversary's sample tables; its every-row rollout went into the buffer above.
    return new_state, IterationOutput(metrics=metrics, samples=adv_out.samples, rollout=None)

  return online_iteration


def online_state_shardings(adversary: RLState, rm: TrainState, mesh: Mesh) -> OnlineState:
  """Shardings of an OnlineState from its adversary's and ensemble's (split by their logical axes).

  The buffer is replicated: it is written at ring slots that follow no batch
  row, and it is small (capacity x (prompt + two responses) tokens).
  """
  return OnlineState(step=shd.replicated(mesh), adversary=adversary, rm=rm, buffer=shd.replicated(mesh))


def jit_online_iteration(
  online_iteration: Callable, state_shardings: OnlineState, ref_shardings: Any, mesh: Mesh
) -> Callable:
  """Jitted once with explicit shardings; the state is donated (it holds the buffer and both models'
  optimizer states). Metrics and sample tables come back replicated."""
  return jax.jit(
    online_iteration,
    in_shardings=(state_shardings, ref_shardings, shd.batch_sharding(mesh), shd.replicated(mesh)),
    out_shardings=(state_shardings, shd.replicated(mesh)),
    donate_argnums=(0,),
  )
