"""Stage `filter`: the adversarial samples that become training pairs.

Adv-RM keeps an adversary sample (x, y) when the target member likes it,
``R1(x, y) > T(x)``, and the ensemble is unusually unsure about it,
``z(U) > filter.z_min`` (1.96), with U = R1 - R2 (or the ensemble std, or a
signal of ``adversarial.signals``: semantic entropy of the adversary's
samples, a verdict probe on the RM's hidden states) standardised against
the uncertainty of the reference policy's own samples
(``filter.standardize = "reference"``: "unusual" means unusual for ordinary
responses) or against all collected samples. No gold is used to decide: the
filter's premise is the paper's "high uncertainty means low quality", and
gold only measures afterwards how often that held.

Each kept sample (deduplicated per prompt) becomes the *rejected* side of a
pair whose *chosen* side is a reference-policy sample for the same prompt:
the one the ensemble mean scores highest (``filter.chosen =
"best_by_ensemble"``), so the pair does not hinge on a flawed reference
sample, or a random one.

Artefacts in WORKDIR/filter/round_<r>/: adversarial_pairs.jsonl
({prompt, chosen, rejected} + r1, uncertainty, z, gold columns for
analysis), scores.npz (U, z(U) and the decision for every collected sample;
``top_samples`` reads it), summary.json, DONE. With gold (the synthetic
world) and ``filter.compare_signals``, summary.json also compares every
signal: how well each finds the samples truly worse than the reference's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np

from advrm_jax import inference
from advrm_jax.adversarial import signals
from advrm_jax.adversarial.filtering import build_adversarial_pairs, filter_mask, standardize, uncertainty
from advrm_jax.config_node import from_node
from advrm_jax.data import synthetic_world
from advrm_jax.evaluation.attack import uncertainty_gold_correlation
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.nodes import FilterConfig
from advrm_jax.rl.sampler import concat_prompt_response

STAGE = wd.FILTER
STANDARDIZE = ("reference", "collected")
CHOSEN = ("best_by_ensemble", "random")


@dataclasses.dataclass
class _SignalInputs:
  """What the uncertainty signals of one round read (``_signal``)."""

  config: Any
  workdir: epath.Path
  round_index: int
  collected: dict[str, np.ndarray]
  texts: list[str]
  reference: dict[str, np.ndarray]
  reference_texts: np.ndarray  # [P, n] object
  reference_scores: np.ndarray  # [K, P, n]
  best_reference: np.ndarray  # [P] column of the reference sample the ensemble mean likes best
  tokenizer: Any
  rm_graphdef: Any
  rm_params: Any
  rm_meta: dict[str, Any]
  units: dict[str, np.ndarray] | None  # the adversary's reward units (``inference.reward_units``)


def _signal(kind: str, s: _SignalInputs) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
  """For ``filter.uncertainty`` = kind: (U of every collected sample [B], U of every reference sample
  [P * n], the verdict probe's own metrics for "probe" else None)."""
  target, r2_kind = s.config.attack.target, s.config.attack.r2_kind
  scores = s.collected["member_scores"]
  num_members, num_prompts, n = s.reference_scores.shape
  if kind in signals.ENSEMBLE_KINDS:
    # In the adversary's units: with standardised members, U = z1 - z2 (one scale for every member).
    return (
      np.asarray(uncertainty(inference.in_units(scores, s.units), kind, target, r2_kind)),
      np.asarray(
        uncertainty(inference.in_units(s.reference_scores, s.units).reshape(num_members, -1), kind, target, r2_kind)
      ),
      None,
    )
  if kind in signals.SEMANTIC_KINDS:
    key_fn = synthetic_world.meaning_key if s.tokenizer is None else signals.text_meaning_key
    group = s.config.attack.rl.num_samples
    signals.group_size_check(
      group, seed=s.collected["seed"], step=s.collected["step"], prompt=s.collected["prompt_index"]
    )
    if n % group:
      raise ValueError(
        f"filter.uncertainty={kind!r}: the {n} reference samples per prompt do not split into groups "
        f"of attack.rl.num_samples={group}; set prefs.reference_samples to a multiple of it"
      )
    # Reference groups of the adversary's size G: entropy over G samples is on one scale (at most log G).
    return (
      signals.semantic(s.texts, group, kind, key_fn),
      signals.semantic(list(s.reference_texts.reshape(-1)), group, kind, key_fn),
      None,
    )
  # The verdict probe: trained on the held-out labelled pairs, applied to (sample, best reference sample).
  node = s.config.filter.probe
  pairs = wd.held_out_pairs(s.workdir, s.rm_meta)
  (chosen_scores, chosen_hidden), (rejected_scores, rejected_hidden) = (
    inference.scores_and_hidden(
      s.rm_graphdef, s.rm_params, pairs[f"{side}_tokens"], pairs[f"{side}_mask"], member=target
    )
    for side in ("chosen", "rejected")
  )
  key = jax.random.fold_in(jax.random.PRNGKey(s.config.seed), 1000 + s.round_index)
  params, info = signals.train_verdict_probe(
    key,
    chosen_hidden,
    rejected_hidden,
    chosen_scores[target],
    rejected_scores[target],
    hidden=node.hidden,
    num_steps=node.num_steps,
    learning_rate=node.learning_rate,
    weight_decay=node.weight_decay,
  )
  logging.info(
    "filter/round_%d: verdict probe on %d held-out pairs, held-out ROC-AUC %.3f",
    s.round_index,
    info["num_pairs"],
    info["holdout"]["roc_auc"],
  )

  def sample_hidden(prompt_tokens, prompt_mask, response_tokens, response_mask):
    # Their rewards are known already (collected / reference scores): only the hidden states are new.
    tokens, mask = concat_prompt_response(prompt_tokens, prompt_mask, response_tokens, response_mask, left_pad=False)
    return inference.scores_and_hidden(s.rm_graphdef, s.rm_params, np.asarray(tokens), np.asarray(mask), member=target)[
      1
    ]

  width = s.reference["response_tokens"].shape[-1]
  reference_hidden = sample_hidden(
    np.repeat(s.reference["prompt_tokens"], n, axis=0),
    np.repeat(s.reference["prompt_mask"], n, axis=0),
    s.reference["response_tokens"].reshape(-1, width),
    s.reference["response_mask"].reshape(-1, width),
  ).reshape(num_prompts, n, -1)
  reference_r1 = s.reference_scores[target]  # [P, n]
  best_hidden = reference_hidden[np.arange(num_prompts), s.best_reference]  # [P, D]
  best_r1 = reference_r1[np.arange(num_prompts), s.best_reference]  # [P]
  c = s.collected
  prompt = c["prompt_index"]
  u = signals.verdict_uncertainty(
    params,
    sample_hidden(c["prompt_tokens"], c["prompt_mask"], c["response_tokens"], c["response_mask"]),
    best_hidden[prompt],
    scores[target],
    best_r1[prompt],
  )
  reference_u = signals.verdict_uncertainty(
    params,
    reference_hidden.reshape(num_prompts * n, -1),
    np.repeat(best_hidden, n, axis=0),
    reference_r1.reshape(-1),
    np.repeat(best_r1, n),
  )
  return u, reference_u, info


def run_round(config: Any, workdir: epath.Path, round_index: int) -> None:
  """Filters round r's collected adversary samples into preference pairs."""
  workdir = epath.Path(workdir)
  out = wd.round_dir(workdir, STAGE, round_index)
  if wd.skip_if_done(out, f"filter/round_{round_index}"):
    return
  node, target = from_node(FilterConfig, config.filter, "config.filter"), config.attack.target
  if node.standardize not in STANDARDIZE:
    raise ValueError(f"filter.standardize: unknown {node.standardize!r}; expected one of {STANDARDIZE}")
  if node.uncertainty not in signals.KINDS:
    raise ValueError(f"filter.uncertainty: unknown {node.uncertainty!r}; expected one of {signals.KINDS}")
  if node.chosen not in CHOSEN:
    raise ValueError(f"filter.chosen: unknown {node.chosen!r}; expected one of {CHOSEN}")
  attack_dir = wd.round_dir(workdir, "attack", round_index)
  if not wd.is_done(attack_dir):
    raise FileNotFoundError(f"filter: {attack_dir} is not finished; run the `attack` stage for round {round_index}")
  collected = wd.load_npz(attack_dir / "collected.npz", "the `attack` stage")
  reference = wd.load_reference(workdir)
  tokenizer = wd.policy_tokenizer(workdir)  # None: the synthetic world
  rm_graphdef, rm_params, rm_meta = wd.load_reward_model(wd.rm_path(workdir, round_index))
  reference_scores = inference.reference_member_scores(workdir, rm_graphdef, rm_params, reference)  # [K, P, n]
  num_members, num_prompts, n = reference_scores.shape
  # R1 > T(x) is decided in the units the adversary's threshold was set in (collected["threshold"]).
  units = inference.reward_units(config, workdir, round_index, reference_scores)

  scores = collected["member_scores"]
  r1 = inference.in_units(scores, units)[target]
  texts = inference.decode_responses(collected["response_tokens"], collected["response_mask"], tokenizer)
  reference_texts = np.array(
    inference.decode_responses(
      reference["response_tokens"].reshape(num_prompts * n, -1),
      reference["response_mask"].reshape(num_prompts * n, -1),
      tokenizer,
    ),
    dtype=object,
  ).reshape(num_prompts, n)
  ensemble_mean = inference.in_units(reference_scores, units).mean(axis=0)  # [P, n]
  ensemble_mean = np.where(reference_texts != "", ensemble_mean, -np.inf)
  best_reference = np.argmax(ensemble_mean, axis=1)  # [P]
  has_gold = bool(np.isfinite(collected["gold"]).any())
  # With gold (the synthetic world) every signal is computed and compared; otherwise only the one in use.
  kinds = signals.KINDS if (has_gold and node.compare_signals) else (node.uncertainty,)
  inputs = _SignalInputs(
    config,
    workdir,
    round_index,
    collected,
    texts,
    reference,
    reference_texts,
    reference_scores,
    best_reference,
    tokenizer,
    rm_graphdef,
    rm_params,
    rm_meta,
    units,
  )
  computed, probe_info = {}, None
  for kind in kinds:
    try:
      kind_u, kind_reference_u, info = _signal(kind, inputs)
    except ValueError as e:
      if kind == node.uncertainty:
        raise
      # A comparison-only signal that cannot be computed here (e.g. too few held-out pairs) is left out.
      logging.warning("filter/round_%d: signal %s left out of the comparison: %s", round_index, kind, e)
      continue
    computed[kind] = (kind_u, kind_reference_u)
    if info is not None:
      probe_info = info
  u, reference_u = computed[node.uncertainty]
  z = np.asarray(standardize(u, reference=reference_u if node.standardize == "reference" else None))
  keep = np.asarray(filter_mask(r1, collected["threshold"], z, node.z_min))
  wd.save_npz(out / wd.FILTER_SCORES_FILE, uncertainty=u, z=z, keep=keep, target=np.int32(target), r1=r1)

  # One pair per distinct (prompt, response): the adversary repeats itself.
  seen: set[tuple[int, str]] = set()
  kept_rows = []
  for row in np.flatnonzero(keep):
    key = (int(collected["prompt_index"][row]), texts[row])
    if key not in seen and texts[row]:
      seen.add(key)
      kept_rows.append(row)
  kept_rows = np.asarray(kept_rows, np.int64)
  rng = np.random.default_rng([config.seed, 31, round_index])
  if kept_rows.size > node.max_pairs:
    kept_rows = np.sort(rng.choice(kept_rows, node.max_pairs, replace=False))

  # Chosen side: a reference sample of the same prompt (never judged by gold).
  if node.chosen == "best_by_ensemble":
    chosen_column = best_reference
  else:
    chosen_column = rng.integers(0, n, size=num_prompts)
  prompt_index = collected["prompt_index"][kept_rows]
  chosen_texts = [reference_texts[p, chosen_column[p]] for p in prompt_index]
  chosen_gold = reference["gold"][prompt_index, chosen_column[prompt_index]]
  pool_prompts = wd.reference_prompts(reference)
  prompts = [pool_prompts[p] for p in prompt_index]
  records = build_adversarial_pairs(
    prompts,
    [texts[row] for row in kept_rows],
    chosen_texts,
    extra={
      "round": [round_index] * kept_rows.size,
      "seed": collected["seed"][kept_rows],
      "step": collected["step"][kept_rows],
      "r1": r1[kept_rows],
      "uncertainty": u[kept_rows],
      "z": z[kept_rows],
      "rejected_gold": collected["gold"][kept_rows],
      "chosen_gold": chosen_gold,
    },
  )
  wd.write_jsonl(out / wd.FILTER_PAIRS_FILE, records)

  # How often the filter's premise held (gold, for the report only).
  gold = collected["gold"]
  reference_gold_mean = reference["gold"].mean(axis=1)[collected["prompt_index"]]
  kept_gold = gold[kept_rows]
  # Real text (an imported policy) has no gold: the gold statistics are None.
  kept_with_gold = has_gold and kept_rows.size > 0
  summary = {
    "round": round_index,
    "num_collected": int(r1.size),
    "num_above_threshold": int(np.sum(r1 > collected["threshold"])),
    "num_high_uncertainty": int(np.sum(z > node.z_min)),
    "num_kept": int(keep.sum()),
    "num_unique_kept": len(seen),
    "num_pairs": len(records),
    "kept_fraction": float(keep.mean()) if keep.size else 0.0,
    # Kept samples truly worse than the chosen response / than the reference's mean, by gold.
    "kept_worse_than_chosen": float(np.mean(kept_gold < chosen_gold)) if kept_with_gold else None,
    "kept_worse_than_reference_mean": (
      float(np.mean(kept_gold < reference_gold_mean[kept_rows])) if kept_with_gold else None
    ),
    "kept_gold_mean": float(kept_gold.mean()) if kept_with_gold else None,
    "chosen_gold_mean": float(chosen_gold.mean()) if kept_with_gold else None,
    "collected_gold_mean": float(gold.mean()),
    # Does uncertainty predict a gold shortfall across all collected samples?
    "uncertainty_gold": uncertainty_gold_correlation(u, reference_gold_mean - gold),
    "uncertainty": node.uncertainty,
    "standardize": node.standardize,
    "z_min": node.z_min,
  }
  if probe_info is not None:
    summary["probe"] = probe_info
  if len(computed) > 1:
    # Which signal would have found the truly worse samples (gold below the reference mean)?
    summary["signals"] = signals.compare(
      {k: v[0] for k, v in computed.items()},
      r1 > collected["threshold"],
      gold < reference_gold_mean,
      budget=int(keep.sum()),
    )
  wd.write_json(out / "summary.json", summary)
  wd.mark_done(out)
  worse = summary["kept_worse_than_chosen"]
  logging.info(
    "filter/round_%d: kept %d of %d samples (%d pairs)%s",
    round_index,
    summary["num_kept"],
    summary["num_collected"],
    len(records),
    "" if worse is None else f"; {100 * worse:.0f}% of them worse than the chosen response by gold",
  )


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `filter`: every round whose attack is done and whose filter is not."""
  workdir = epath.Path(workdir)
  for r in range(wd.num_rounds(config) + 1):
    if not wd.is_done(wd.round_dir(workdir, "attack", r)):
      if r == 0:
        raise FileNotFoundError("filter: the round-0 attack is not finished; run the `attack` stage")
      break
    run_round(config, workdir, r)


def top_samples(workdir: epath.PathLike, round_index: int = 0, limit: int = 10) -> list[dict[str, Any]]:
  """What the attack of round r found: its distinct samples that R1 scores highest.

  Reads the round's attack (collected.npz) and filter (scores.npz) artefacts,
  so it needs both stages, and decodes with the run's policy tokenizer.

  Returns:
    Up to ``limit`` rows, highest R1 first, each {"prompt", "response",
    "r1" (the attacked member's reward, in T(x)'s units), "threshold" (T(x)),
    "above_threshold", "uncertainty" (the filter's U), "z" (z(U)), "kept"
    (the filter kept it), "members" (every member's reward), "gold" (None
    without gold), "seed", "step"}.
  """
  workdir = epath.Path(workdir)
  collected = wd.load_npz(wd.round_dir(workdir, "attack", round_index) / "collected.npz", "the `attack` stage")
  scores = wd.load_npz(wd.round_dir(workdir, STAGE, round_index) / wd.FILTER_SCORES_FILE, "the `filter` stage")
  tokenizer = wd.policy_tokenizer(workdir)
  pool_prompts = wd.reference_prompts(wd.load_reference(workdir))
  members = collected["member_scores"]
  r1 = scores["r1"]  # in the units of the threshold (reference z when attack.standardize)
  rows, seen = [], set()
  for row in np.argsort(-r1, kind="stable"):
    response = inference.decode_responses(
      collected["response_tokens"][row : row + 1], collected["response_mask"][row : row + 1], tokenizer
    )[0]
    key = (int(collected["prompt_index"][row]), response)
    if key in seen:
      continue
    seen.add(key)
    gold = float(collected["gold"][row])
    rows.append(
      {
        "prompt": pool_prompts[collected["prompt_index"][row]],
        "response": response,
        "r1": float(r1[row]),
        "threshold": float(collected["threshold"][row]),
        "above_threshold": bool(r1[row] > collected["threshold"][row]),
        "uncertainty": float(scores["uncertainty"][row]),
        "z": float(scores["z"][row]),
        "kept": bool(scores["keep"][row]),
        "members": [float(m) for m in members[:, row]],
        "gold": gold if np.isfinite(gold) else None,
        "seed": int(collected["seed"][row]),
        "step": int(collected["step"][row]),
      }
    )
    if len(rows) >= limit:
      break
  return rows
