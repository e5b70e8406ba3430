"""Stage `attack`: the Adv-RM adversary against RM round r.

The adversary is a policy initialised from the SFT reference and trained by
the one RL driver (``rl_driver.train_policy``: RLOO by default, PPO by config,
KL to the reference, several seeds vmapped) on

  r = R1 - lam * R2 * 1[R1 > T(x)] + penalty * 1[R1 <= T(x)]

(``rl.rewards.AdversarySource``), where R1 is ensemble member
``attack.target``, R2 the mean (or min/max) of the other members, and T(x)
the reference policy's mean R1 reward over its ``prefs.reference_samples``
samples of prompt x.

The product of an attack is its samples. Every sample the adversary draws
during the whole run is kept (the feasibility probe found that collecting
across the run, not just the final policy's samples, is what yields
thousands of usable adversarial examples), scored by every member and by
gold (for the report only), and handed to the `filter` stage. The final
adversaries also answer every attack prompt ``final_samples_per_prompt``
times: the attack success of the trained attacker.

Artefacts in WORKDIR/attack/round_<r>/: the RL run (checkpoints/,
metrics.jsonl, tb/, params), rollouts/step_<t>.npz (raw per-step samples,
so a resumed run keeps what it collected), collected.npz, final_samples.npz,
summary.json, DONE.

On a policy imported by the `sft` stage (your own model and data) the round
runs the same way, decoding with the policy's tokenizer; real text has no
gold, so gold columns are NaN and success rates None, and ``above_threshold``
(the share of answers with R1 > T(x)) says how far the attack got.
"""

from __future__ import annotations

from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np

from advrm_jax import inference
from advrm_jax import sharding as shd
from advrm_jax.adversarial.objective import per_prompt_threshold, split_target
from advrm_jax.adversarial.source import attack_inputs
from advrm_jax.config_node import from_node
from advrm_jax.evaluation.attack import pooled_within_prompt_std
from advrm_jax.metrics import read_metrics
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.nodes import AttackConfig
from advrm_jax.pipelines.rl_driver import train_policy

STAGE = wd.ATTACK


class RolloutCollector:
  """Writes each RL step's samples to rollouts/step_<t>.npz as they come.

  One small file per step: a resumed run rewrites the steps it repeats
  (they are reproduced exactly) and keeps every earlier one.
  """

  def __init__(self, directory: epath.Path):
    self.directory = epath.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)

  def path(self, step: int) -> epath.Path:
    """The file holding the samples of (1-based) step ``step``."""
    return self.directory / f"step_{step:05d}.npz"

  def __call__(self, step: int, rollout: dict[str, Any]) -> None:
    arrays = jax.device_get(rollout)
    wd.save_npz(self.path(step), **{k: np.asarray(v) for k, v in arrays.items()})

  def load(self, num_steps: int) -> dict[str, np.ndarray]:
    """All steps' samples flattened to rows, with their seed and step: [M, ...]."""
    missing = [s for s in range(1, num_steps + 1) if not self.path(s).exists()]
    if missing:
      raise FileNotFoundError(
        f"{self.directory}: no samples for steps {missing[:5]} (of {len(missing)} missing); "
        "delete the round's checkpoints/ to rerun the attack"
      )
    columns: dict[str, list[np.ndarray]] = {}
    for step in range(1, num_steps + 1):
      arrays = wd.load_npz(self.path(step), "the attack")
      num_seeds, rows = arrays["response_tokens"].shape[:2]
      for key, value in arrays.items():
        columns.setdefault(key, []).append(value.reshape((num_seeds * rows,) + value.shape[2:]))
      columns.setdefault("seed", []).append(np.repeat(np.arange(num_seeds), rows))
      columns.setdefault("step", []).append(np.full(num_seeds * rows, step))
    return {k: np.concatenate(v) for k, v in columns.items()}


def prompt_indices(
  prompt_tokens: np.ndarray, prompt_mask: np.ndarray, pool_tokens: np.ndarray, pool_mask: np.ndarray
) -> np.ndarray:
  """Index into the prompt pool of each row's prompt (matched by its real tokens)."""
  key = lambda tokens, mask: tuple(int(t) for t, m in zip(tokens, mask) if m)
  index: dict[tuple[int, ...], int] = {}
  for i, (tokens, mask) in enumerate(zip(pool_tokens, pool_mask)):
    index.setdefault(key(tokens, mask), i)
  out = np.empty(prompt_tokens.shape[0], np.int64)
  for row, (tokens, mask) in enumerate(zip(prompt_tokens, prompt_mask)):
    found = index.get(key(tokens, mask))
    if found is None:
      raise ValueError(f"sample {row}'s prompt is not in the attack prompt pool")
    out[row] = found
  return out


def attack_threshold(node: AttackConfig, reference_r1: np.ndarray) -> np.ndarray:
  """T(x) per attack prompt ([P]) from the reference samples' R1 ([P, n], in the adversary's units)."""
  return np.asarray(per_prompt_threshold(reference_r1, kind=node.threshold, constant=node.tau), np.float32)


def kl_curve(stage_dir: epath.Path) -> tuple[np.ndarray, np.ndarray]:
  """(steps, seed-mean KL to the reference in nats) of a training run's logged rows."""
  rows = [r for r in read_metrics(stage_dir / "metrics.jsonl") if "kl" in r]
  return np.array([r["step"] for r in rows], np.int64), np.array([r["kl"] for r in rows], np.float64)


def run_round(config: Any, workdir: epath.Path, round_index: int) -> None:
  """Trains the round's adversaries and writes its artefacts (see module doc)."""
  workdir = epath.Path(workdir)
  out = wd.round_dir(workdir, STAGE, round_index)
  if wd.skip_if_done(out, f"attack/round_{round_index}"):
    return
  node = from_node(AttackConfig, config.attack, "config.attack")
  # On the RL mesh, split by the ensemble's logical axes (as the `rm` stage trained it).
  rm_graphdef, rm_params, rm_meta = wd.load_reward_model(
    wd.rm_path(workdir, round_index), mesh=shd.make_mesh(tuple(config.mesh.shape))
  )
  num_members = rm_meta["num_members"]
  if num_members < 2:
    raise ValueError(
      f"attack: RM round {round_index} has {num_members} member; the adversary's R2 needs rm.num_members >= 2"
    )
  if not 0 <= node.target < num_members:
    raise ValueError(f"attack.target={node.target} is not a member of the {num_members}-member ensemble")
  # None: the synthetic world's policy; else an imported policy's (its samples have no gold).
  tokenizer = wd.policy_tokenizer(workdir)
  if tokenizer is not None:
    rm_tokens = {k: rm_meta["tokenizer"].get(k) for k in ("vocab_size", "eos_id")}
    if rm_tokens != {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id}:
      raise ValueError(
        f"attack: RM round {round_index} reads tokens {rm_tokens} but the policy in "
        f"{workdir / 'sft'} writes vocab_size={tokenizer.vocab_size}, eos_id={tokenizer.eos_id}; "
        "give rm.backbone.path the policy's checkpoint (model.path)"
      )
  reference = wd.load_reference(workdir)
  reference_scores = inference.reference_member_scores(workdir, rm_graphdef, rm_params, reference)  # [K, P, n]
  units = inference.reward_units(config, workdir, round_index, reference_scores)
  reference_units = inference.in_units(reference_scores, units)
  reference_r1 = reference_scores[node.target]
  threshold = attack_threshold(node, reference_units[node.target])
  prompts, source, source_params = attack_inputs(rm_graphdef, rm_params, node, reference, threshold, units)
  num_seeds = config.num_seeds
  collector = RolloutCollector(out / "rollouts")
  policy_text = (
    {}
    if tokenizer is None
    else {"gold_fn": None, "text_fn": lambda samples, step: {"samples": inference.sample_table(samples, tokenizer)}}
  )
  state = train_policy(
    f"attack/round_{round_index}",
    out,
    workdir / "sft",
    config,
    node,
    source,
    source_params,
    prompts,
    num_seeds,
    collect_fn=collector,
    **policy_text,
  )

  # Every sample of the run, scored by every member and by gold.
  wd.sync("attack rollouts written")  # by process 0; every process reads them all next
  collected = collector.load(node.num_steps)
  collected["prompt_index"] = prompt_indices(
    collected["prompt_tokens"], collected["prompt_mask"], reference["prompt_tokens"], reference["prompt_mask"]
  )
  collected["member_scores"] = inference.score_members(
    rm_graphdef,
    rm_params,
    collected["prompt_tokens"],
    collected["prompt_mask"],
    collected["response_tokens"],
    collected["response_mask"],
  )
  collected["gold"] = inference.gold_of(
    collected["prompt_tokens"],
    collected["prompt_mask"],
    collected["response_tokens"],
    collected["response_mask"],
    tokenizer,
  )
  collected["threshold"] = threshold[collected["prompt_index"]]
  wd.save_npz(out / "collected.npz", **collected)

  # The trained attackers answer every attack prompt m times (what they learned where they trained)...
  _, policy_graphdef, _ = wd.load_policy(workdir / wd.SFT)
  final = inference.sample_final(
    config, policy_graphdef, state.params["policy"], reference, 7919 + round_index, rm_graphdef, rm_params, tokenizer
  )
  wd.save_npz(out / "final_samples.npz", **final)

  r1 = collected["member_scores"][node.target]
  collected_units = inference.in_units(collected["member_scores"], units)
  steps, kl = kl_curve(out)
  summary = {
    "round": round_index,
    "rm": str(wd.rm_path(workdir, round_index)),
    "num_seeds": num_seeds,
    "num_steps": node.num_steps,
    "algorithm": node.rl.algorithm,
    "units": "reference z" if units is not None else "raw",
    "threshold_kind": node.threshold,
    "threshold_mean": float(threshold.mean()),
    "reference": {"r1_mean": float(reference_r1.mean()), "gold_mean": float(reference["gold"].mean())},
    "final": dict(
      inference.success_by_seed(
        final["member_scores"][node.target],
        final["gold"],
        final["seed"],
        final["prompt_index"],
        reference_r1,
        reference["gold"],
      ),
      r1_mean=float(final["member_scores"][node.target].mean()),
      gold_mean=float(final["gold"].mean()),
      above_threshold=float(
        np.mean(inference.in_units(final["member_scores"], units)[node.target] > threshold[final["prompt_index"]])
      ),
      eos_fraction=float(final["has_eos"].mean()),
    ),
    "collected": dict(
      inference.success_by_seed(
        r1, collected["gold"], collected["seed"], collected["prompt_index"], reference_r1, reference["gold"]
      ),
      num_samples=int(r1.size),
      above_threshold=float(np.mean(collected_units[node.target] > collected["threshold"])),
      gold_mean=float(collected["gold"].mean()),
    ),
    # Did the adversary seek disagreement? How alike the members judge its samples (Pearson over every
    # collected sample), and the seed-mean KL it ended at (to compare with RLHF's).
    "member_reward_corr": float(
      np.corrcoef(*split_target(collected["member_scores"], node.target, node.r2_kind))[0, 1]
    ),
    "final_kl": float(kl[-1]) if kl.size else None,
    "kl_curve": {"step": steps.tolist(), "kl": kl.tolist()},
  }
  # ... and, when `prefs` made one, on held-out prompts it never trained on: where attack success is read.
  if wd.has_heldout_reference(workdir):
    heldout = wd.load_reference(workdir, heldout=True)
    heldout_final = inference.sample_final(
      config,
      policy_graphdef,
      state.params["policy"],
      heldout,
      7919 + 100 + round_index,
      rm_graphdef,
      rm_params,
      tokenizer,
    )
    wd.save_npz(out / "final_heldout.npz", **heldout_final)
    heldout_scores = inference.reference_member_scores(workdir, rm_graphdef, rm_params, heldout)  # [K, Ph, m]
    final_units = inference.in_units(heldout_final["member_scores"], units)
    above = (
      final_units[node.target]
      > attack_threshold(node, inference.in_units(heldout_scores, units)[node.target])[heldout_final["prompt_index"]]
    )
    z_u = inference.disagreement_z(final_units, reference_units, node.target, node.r2_kind)
    summary["final_heldout"] = dict(
      inference.success_by_seed(
        heldout_final["member_scores"][node.target],
        heldout_final["gold"],
        heldout_final["seed"],
        heldout_final["prompt_index"],
        heldout_scores[node.target],
        heldout["gold"],
        gold_std_floor=pooled_within_prompt_std(heldout["gold"]),
      ),
      num_prompts=int(heldout["prompt_tokens"].shape[0]),
      reference_samples=int(heldout["gold"].shape[1]),
      gold_std_floor=pooled_within_prompt_std(heldout["gold"]),
      gold_mean=float(heldout_final["gold"].mean()),
      reference_gold_mean=float(heldout["gold"].mean()),
      above_threshold=float(above.mean()),
      # The method check: mean z(U) of the final adversary's answers above the floor.
      mean_z_u_above_floor=float(z_u[above].mean()) if above.any() else None,
      mean_z_u=float(z_u.mean()),
    )
  # Standard attack success of the adversary's samples step by step, against the KL it had then.
  success_by_step = []
  for step in steps:
    rows = collected["step"] == step
    success_by_step.append(
      float(
        np.mean(
          inference.success_by_seed(
            r1[rows],
            collected["gold"][rows],
            collected["seed"][rows],
            collected["prompt_index"][rows],
            reference_r1,
            reference["gold"],
          )["standard"]
        )
      )
      if rows.any() and np.isfinite(collected["gold"]).any()
      else None
    )
  summary["kl_curve"]["standard_success"] = success_by_step
  wd.write_json(out / "summary.json", summary)
  wd.mark_done(out)
  headline = summary.get("final_heldout", summary["final"])
  if tokenizer is None:
    logging.info(
      "attack/round_%d: final attacker success %s%% standard, %s%% strict (%s prompts); %d samples collected",
      round_index,
      np.round(headline["standard"], 1),
      np.round(headline["strict"], 1),
      "held-out" if "final_heldout" in summary else "training",
      r1.size,
    )
  else:
    logging.info(
      "attack/round_%d: the final attacker beats T(x) on %.0f%% of its answers (no gold: attack "
      "success needs the synthetic world); %d samples collected",
      round_index,
      100 * summary["final"]["above_threshold"],
      r1.size,
    )


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `attack`: every round whose RM exists and whose attack is not done."""
  workdir = epath.Path(workdir)
  for r in range(wd.num_rounds(config) + 1):
    meta = wd.rm_path(workdir, r) / "rm_meta.json"
    if not meta.exists() or (r > 0 and not wd.is_done(wd.round_dir(workdir, "advtrain", r))):
      if r == 0:
        raise FileNotFoundError(f"attack: no conventional RM at {wd.rm_path(workdir, 0)}; run the `rm` stage")
      break
    run_round(config, workdir, r)
