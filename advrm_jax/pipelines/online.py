"""Stage `online`: Adv-RM with the adversary and the ensemble trained together.

Beyond the paper: instead of `advrm.num_rounds` rounds of attack -> filter ->
advtrain, one jitted iteration (``adversarial.online``) updates the adversary
against the current ensemble, filters its samples into an on-device replay
buffer and takes Bradley-Terry steps on ordinary + buffered adversarial
pairs. It starts from the same artefacts as the rounds (the SFT reference,
the `prefs` data and reference samples, the conventional RM round 0), runs
through the shared resumable ``train_loop``, and is then judged the way the
round-based RM is:

* attack success (standard, strict) of a *fresh* adversary, trained with the
  `attack` stage's settings against the final online RM;
* in-distribution pair accuracy on the `prefs` held-out pairs (beside the
  conventional RM's);
* the compute used: adversary samples and RM pair updates (per member), next
  to the round-based schedule's from the same config, so the two can be
  compared at equal budget (``online.num_steps`` etc. are set to match).

Artefacts in WORKDIR/online/: checkpoints/ metrics.jsonl tb/ (the online
run), rm/ (the final ensemble in the `rm` stage's layout, so
``load_reward_model`` and `rlhf` read it: run entry ``{"source": "rm",
"rm_stage": "online/rm", "aggregate": "member", "member": 0}``), attack/ (the
fresh adversary), summary.json, DONE.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np

from advrm_jax import inference
from advrm_jax import sharding as shd
from advrm_jax.adversarial import online
from advrm_jax.adversarial.objective import member_standardization, per_prompt_threshold
from advrm_jax.adversarial.source import attack_inputs
from advrm_jax.checkpoints.orbax_io import Checkpointer
from advrm_jax.config_node import ConfigError, from_node
from advrm_jax.data import synthetic_world as world
from advrm_jax.data.batching import step_rows
from advrm_jax.pipelines import rm_training
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.loop import LoopConfig, train_loop
from advrm_jax.pipelines.nodes import PreferenceDataConfig
from advrm_jax.pipelines.rl_driver import policy_state_shardings, train_policy
from advrm_jax.reward import evaluation
from advrm_jax.rl.engine import RLConfig, init_policy_params, init_rl_state
from advrm_jax.rl.sampler import SamplingConfig
from advrm_jax.train_state import OptimizerConfig, TrainState, make_optimizer, opt_state_shardings

STAGE = "online"
RM_DIR = "rm"
# The rlhf run entry for the online RM (add it to config.rlhf.runs).
RLHF_RUN = {"source": "rm", "rm_stage": "online/rm", "aggregate": "member", "member": 0}


@dataclasses.dataclass(frozen=True)
class OnlineStageConfig:
  """The `online` config node (configs/synthetic.py); every key is required."""

  num_steps: int
  prompts_per_step: int
  log_every: int
  checkpoint_every: int
  rl: RLConfig
  optimizer: OptimizerConfig
  sampling: SamplingConfig
  rm_updates: int
  ordinary_pairs: int
  adversarial_pairs: int
  buffer_capacity: int
  bootstrap: bool
  rm_optimizer: OptimizerConfig

  def __post_init__(self):
    for key in ("num_steps", "prompts_per_step", "rm_updates", "ordinary_pairs", "buffer_capacity"):
      if getattr(self, key) < 1:
        raise ConfigError(f"config.online.{key} must be >= 1, got {getattr(self, key)}")


def online_config_from(config: Any) -> online.OnlineConfig:
  """The iteration's static options: the objective from `attack`, the filter from `filter`, BT from `rm`."""
  node = config.online
  return online.OnlineConfig(
    lam=config.attack.lam,
    penalty=config.attack.penalty,
    target=config.attack.target,
    r2_kind=config.attack.r2_kind,
    threshold=config.attack.threshold,
    standardized=bool(config.attack.get("standardize", False)),
    tau=float(config.attack.get("tau", 0.0)),
    uncertainty=config.filter.uncertainty,
    standardize=config.filter.standardize,
    z_min=config.filter.z_min,
    rm_updates=node.rm_updates,
    adversarial_pairs=node.adversarial_pairs,
    bootstrap=node.bootstrap,
    margin=config.rm.margin,
    centering_coef=config.rm.centering_coef,
  )


def compute_budget(config: Any) -> dict[str, Any]:
  """Adversary samples and RM pair updates (per member) of the online run and of the round schedule."""
  node = config.online
  online_budget = {
    "adversary_samples": node.num_steps * node.prompts_per_step * node.rl.num_samples,
    "rm_pair_updates": node.num_steps * node.rm_updates * (node.ordinary_pairs + node.adversarial_pairs),
    "rm_steps": node.num_steps * node.rm_updates,
  }
  rounds = wd.num_rounds(config)
  # Rounds 0..N-1 train adversaries whose samples feed advtrain; the last
  # attack (on RM N) only evaluates, like the online stage's fresh attack.
  round_budget = {
    "adversary_samples": rounds
    * config.attack.num_steps
    * config.attack.prompts_per_step
    * config.attack.rl.num_samples
    * config.num_seeds,
    "rm_pair_updates": rounds * config.advtrain.num_steps * config.rm.batch_size,
    "rm_steps": rounds * config.advtrain.num_steps,
    "num_rounds": rounds,
  }
  return {"online": online_budget, "round_based": round_budget}


def _ordinary_pairs(config: Any, workdir: epath.Path, tokenizer: Any, path: epath.Path) -> dict[str, np.ndarray]:
  """A preference JSONL file tokenized the way the `rm` stage does."""
  data = from_node(PreferenceDataConfig, config.data, "config.data", source="jsonl", path=str(path), max_pairs=0)
  pairs, _ = rm_training.load_pairs(data, workdir)
  return rm_training.tokenize(data, pairs, tokenizer, path.name)


def pair_accuracy(
  graphdef: Any, params: Any, data: dict[str, np.ndarray], mesh: Any, batch_size: int
) -> dict[str, float]:
  """Held-out pair accuracy: the mean aggregate and each member."""
  scorer = functools.partial(evaluation.make_scorer(graphdef, mesh), params)
  chosen, rejected = evaluation.score_pairs(scorer, data, batch_size, mesh)
  return evaluation.evaluate_scores(chosen, rejected)["accuracy"]


def save_reward_model(
  out: epath.Path,
  rm_state: TrainState,
  base_meta: dict[str, Any],
  optimizer_values: dict[str, Any],
  extra: dict[str, Any],
) -> None:
  """Writes rm_meta.json + checkpoints/ exactly as the `rm` stage lays them out."""
  out.mkdir(parents=True, exist_ok=True)
  meta = {k: v for k, v in base_meta.items() if k != "step"}
  meta.update(optimizer=optimizer_values, num_steps=int(jax.device_get(rm_state.step)), data=extra)
  wd.write_json(out / "rm_meta.json", meta)
  checkpointer = Checkpointer(out / "checkpoints", max_to_keep=1)
  try:
    checkpointer.save(meta["num_steps"], rm_state, {"step": meta["num_steps"]}, force=True)
  finally:
    checkpointer.close()


def fresh_attack(
  config: Any, workdir: epath.Path, out: epath.Path, rm_graphdef: Any, rm_params: Any, reference: dict[str, np.ndarray]
) -> dict[str, Any]:
  """A new adversary (the `attack` stage's settings) against the final online RM; its attack success."""
  node = config.attack
  reference_scores = inference.reference_member_scores(workdir, rm_graphdef, rm_params, reference)  # [K, P, n]
  reference_r1 = reference_scores[node.target]
  units = None
  if node.get("standardize", False):
    loc, scale = member_standardization(reference_scores)
    units = {"loc": np.asarray(loc), "scale": np.asarray(scale)}
  threshold = np.asarray(
    per_prompt_threshold(
      inference.in_units(reference_scores, units)[node.target], kind=node.threshold, constant=node.get("tau", 0.0)
    ),
    np.float32,
  )
  prompts, source, source_params = attack_inputs(rm_graphdef, rm_params, node, reference, threshold, units)
  num_seeds = config.num_seeds
  # The attack stage's call of the one RL driver (pipelines/attack.py), here against the final online RM.
  state = train_policy(
    "online/attack",
    out,
    workdir / wd.SFT,
    config,
    node,
    source,
    source_params,
    prompts,
    num_seeds,
    where="config.attack",
  )
  _, policy_graphdef, _ = wd.load_policy(workdir / wd.SFT)
  final = inference.sample_final(
    config, policy_graphdef, state.params["policy"], reference, 7919 + 1000, rm_graphdef, rm_params, None
  )
  r1, gold, seeds, prompt_index = (
    final["member_scores"][node.target],
    final["gold"],
    final["seed"],
    final["prompt_index"],
  )
  success = inference.success_by_seed(r1, gold, seeds, prompt_index, reference_r1, reference["gold"])
  return dict(
    success,
    standard_mean=float(np.mean(success["standard"])),
    strict_mean=float(np.mean(success["strict"])),
    r1_mean=float(r1.mean()),
    gold_mean=float(gold.mean()),
    eos_fraction=float(final["has_eos"].mean()),
    num_steps=node.num_steps,
  )


def init_sharded_state(
  model_config: Any,
  ref_params: Any,
  rm_params: Any,
  policy_optimizer: Any,
  rm_optimizer: Any,
  rl_config: Any,
  capacity: int,
  prompt_len: int,
  sampling: SamplingConfig,
  mesh: Any,
) -> tuple[online.OnlineState, online.OnlineState]:
  """A fresh online state on ``mesh`` and its shardings.

  The adversary is laid out as every RL policy (``policy_state_shardings``);
  the ensemble keeps the layout ``rm_params`` came in (``load_reward_model``
  on ``mesh``: split by logical axes), its optimizer moments following.
  """
  adversary_params = init_policy_params(ref_params, model_config.d_model)
  adversary_shardings = policy_state_shardings(model_config, adversary_params, policy_optimizer, mesh)
  rm_param_shardings = shd.shardings_on(rm_params, mesh)
  rm_shardings = TrainState(
    step=shd.replicated(mesh),
    params=rm_param_shardings,
    opt_state=opt_state_shardings(rm_optimizer, rm_params, rm_param_shardings, mesh),
  )
  shardings = online.online_state_shardings(adversary_shardings, rm_shardings, mesh)
  init = jax.jit(
    lambda adversary, rm: online.init_online_state(
      init_rl_state(adversary, policy_optimizer, rl_config),
      rm,
      rm_optimizer,
      capacity,
      prompt_len,
      sampling.max_new_tokens,
      pad_id=sampling.pad_id,
    ),
    out_shardings=shardings,
  )
  return init(
    jax.device_put(adversary_params, adversary_shardings.params), jax.device_put(rm_params, rm_param_shardings)
  ), shardings


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `online` (module doc): train, save the RM, evaluate, summarise."""
  workdir = epath.Path(workdir)
  wd.require_synthetic_policy(workdir, "online")
  out = workdir / STAGE
  if wd.skip_if_done(out, "online"):
    return
  if "online" not in config:
    raise ValueError("config has no `online` node; see configs/synthetic.py")
  node = from_node(OnlineStageConfig, config.online, "config.online")
  options = online_config_from(config)
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  shd.check_batch_divisible(node.prompts_per_step, mesh, "online.prompts_per_step")
  shd.check_batch_divisible(node.ordinary_pairs, mesh, "online.ordinary_pairs", factor=node.rm_updates)

  # Inputs: the same artefacts the round schedule starts from, split by their logical axes.
  model_config, policy_graphdef, ref_params = wd.load_policy(workdir / wd.SFT, mesh)
  rm_graphdef, rm_params, rm_meta = wd.load_reward_model(wd.rm_path(workdir, 0), mesh=mesh)
  if rm_meta["num_members"] < 2:
    raise ValueError(f"online: the RM has {rm_meta['num_members']} member; the adversary's R2 needs >= 2")
  reference = wd.load_reference(workdir)
  tokenizer = wd.load_tokenizer(rm_meta)
  train_pairs = _ordinary_pairs(config, workdir, tokenizer, workdir / wd.PREFS / wd.TRAIN_FILE)

  rl_config, sampling = node.rl, node.sampling
  if sampling.max_new_tokens != reference["response_tokens"].shape[-1]:
    raise ValueError(
      f"online.sampling.max_new_tokens={sampling.max_new_tokens} must equal the reference "
      f"samples' width {reference['response_tokens'].shape[-1]} (prefs/reference.npz)"
    )
  policy_optimizer = make_optimizer(node.optimizer, total_steps=node.num_steps)
  rm_optimizer_values = dict(config.online.rm_optimizer)  # the keys set, as rm_meta.json records them
  rm_optimizer = make_optimizer(node.rm_optimizer)
  state, state_shardings = init_sharded_state(
    model_config,
    ref_params,
    rm_params,
    policy_optimizer,
    rm_optimizer,
    rl_config,
    node.buffer_capacity,
    reference["prompt_tokens"].shape[1],
    sampling,
    mesh,
  )
  jitted = online.jit_online_iteration(
    online.make_online_iteration(
      policy_graphdef,
      rm_graphdef,
      policy_optimizer,
      rm_optimizer,
      rl_config,
      sampling,
      options,
      gold_fn=world.gold_reward,
    ),
    state_shardings,
    shd.shardings_on(ref_params, mesh),
    mesh,
  )
  # The reference policy is an argument of the jitted step (never a baked-in
  # constant); the loop's step signature is (state, batch, rng) -> (state, metrics, samples).

  def step_fn(state, batch, rng):
    state, out = jitted(state, ref_params, batch, rng)
    return state, out.metrics, out.samples

  num_prompts = reference["prompt_tokens"].shape[0]
  num_pairs = train_pairs["chosen_tokens"].shape[0]
  pairs_per_step = node.rm_updates * node.ordinary_pairs
  if num_prompts < node.prompts_per_step or num_pairs < pairs_per_step:
    raise ValueError(
      f"online: {num_prompts} attack prompts / {num_pairs} pairs cannot fill a step of "
      f"{node.prompts_per_step} prompts / {pairs_per_step} pairs"
    )
  pair_keys = ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask")

  def get_batch(step: int, share) -> dict[str, np.ndarray]:
    # Depends only on the step, so a resumed run replays the same batches; this process's rows only.
    rows = share(step_rows(num_prompts, node.prompts_per_step, config.seed + 17, step))
    pair_rows = share(step_rows(num_pairs, pairs_per_step, config.seed + 29, step))
    batch = {
      "prompt_tokens": reference["prompt_tokens"][rows],
      "prompt_mask": reference["prompt_mask"][rows].astype(np.int32),
      "reference_tokens": reference["response_tokens"][rows],
      "reference_mask": reference["response_mask"][rows].astype(bool),
    }
    batch.update({k: train_pairs[k][pair_rows] for k in pair_keys})
    return batch

  loop = LoopConfig(
    num_steps=node.num_steps, log_every=node.log_every, checkpoint_every=node.checkpoint_every, seed=config.seed
  )
  state = train_loop(
    STAGE,
    out,
    state,
    step_fn,
    get_batch,
    loop,
    mesh,
    text_fn=lambda samples, step: {"samples": world.sample_table(samples)},
  )
  buffer = jax.device_get(state.buffer)
  valid = np.asarray(buffer.valid)
  buffer_stats = {"inserted": int(buffer.count), "size": int(valid.sum()), "capacity": node.buffer_capacity}
  if valid.any():
    # How often the filter's premise held for what the RM trained on (gold: a measurement only).
    adv_gold = inference.gold_of(
      buffer.prompt_tokens[valid],
      buffer.prompt_mask[valid],
      buffer.adversarial_tokens[valid],
      buffer.adversarial_mask[valid],
    )
    chosen_gold = inference.gold_of(
      buffer.prompt_tokens[valid],
      buffer.prompt_mask[valid],
      buffer.reference_tokens[valid],
      buffer.reference_mask[valid],
    )
    buffer_stats.update(
      kept_worse_than_chosen=float(np.mean(adv_gold < chosen_gold)),
      kept_gold_mean=float(adv_gold.mean()),
      chosen_gold_mean=float(chosen_gold.mean()),
    )
  save_reward_model(
    out / RM_DIR,
    state.rm,
    rm_meta,
    rm_optimizer_values,
    {"online": str(out), "init_from": str(wd.rm_path(workdir, 0)), "buffer": buffer_stats},
  )
  final_rm_params = state.rm.params
  del state

  # Judge it as the rounds are judged.
  test_path = workdir / wd.PREFS / wd.TEST_FILE
  test_pairs = _ordinary_pairs(config, workdir, tokenizer, test_path)
  eval_batch = config.rm.eval_batch_size
  accuracy = {
    "online": pair_accuracy(rm_graphdef, final_rm_params, test_pairs, mesh, eval_batch),
    "conventional": pair_accuracy(rm_graphdef, rm_params, test_pairs, mesh, eval_batch),
  }
  attack = fresh_attack(config, workdir, out / "attack", rm_graphdef, final_rm_params, reference)
  last_metrics = {}
  jsonl = out / "metrics.jsonl"
  if jsonl.exists():
    lines = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    last_metrics = {k: v for k, v in (lines[-1] if lines else {}).items() if isinstance(v, (int, float))}
  summary = {
    "attack": attack,
    "in_distribution_accuracy": accuracy,
    "compute": compute_budget(config),
    "buffer": buffer_stats,
    "final_step_metrics": last_metrics,
    "rm": str(out / RM_DIR),
    "rlhf_run": RLHF_RUN,
  }
  # The round schedule's last attack, when it has run, for a side-by-side.
  round_summary = wd.round_dir(workdir, "attack", wd.num_rounds(config)) / "summary.json"
  if round_summary.exists():
    final = json.loads(round_summary.read_text()).get("final", {})
    summary["round_based_final_attack"] = {"standard": final.get("standard"), "strict": final.get("strict")}
  wd.write_json(out / "summary.json", summary)
  wd.mark_done(out)
  logging.info(
    "online: fresh attack success %.1f%% standard / %.1f%% strict; accuracy %.3f (conventional %.3f)",
    attack["standard_mean"],
    attack["strict_mean"],
    accuracy["online"]["mean"],
    accuracy["conventional"]["mean"],
  )
