"""Stage `study`: the realisations and arms of docs/study_protocol.md, one record per realisation.

A realisation (SFT seed s, preference/RM seed p) is the default experiment run with the SFT seed s
(``sft.seed``) and ``config.seed = s + 1000 p``; every arm of it shares the SFT model, the preferences,
RM round 0, the RL seeds and the RL prompt order. Layout of STUDY_DIR/realisations/s<s>_p<p>/:

  main/        sft, prefs, rm, advrm (T's rounds, and C1's with advtrain.control), rlhf (the runs of
               C0 `conventional`, T `adv_rm`, C1 `fresh_pairs`, oracle `oracle_gold`), evaluate
               (report.json); sft/ links to the realisation with the same SFT seed that ran first
               (the SFT model depends on s alone: realisations are nested in SFT seeds)
  C2/          adversary lam = 0 with the z(U) filter: its own 2 rounds, then rlhf/adv_rm
  C3/          the adversary (lam = 1) without the z(U) filter (filter.z_min = -inf: only R1 > T(x)
               decides); attack/round_0 links to main's (the same adversary: the filter comes after it)
  probe_C1/, probe_C2/   a fresh standard adversary (lam = 1, the realisation's attack settings)
               against the arm's final RM, copied to advtrain/round_<N>/rm: attack round N only
  realisation.json       the record (its fields: docs/study.md), written last: its existence means done

C2 and C3 link main's sft, prefs and rm (their DONE markers make those stages skip). The fresh adversary
of the secondary endpoint is, per arm, the attack round N against the arm's final RM with the main
chain's attack settings: for T main's own attack/round_<N>, for C3 its chain's attack/round_<N> (the
chain's adversary is the standard one), for C1 and C2 the probes (the same round index N, so the same
sampling keys as T's); for C0 main's attack/round_0 (the adversary of RM round 0: the same training
keys, only the final samples' keys differ by the round index).

Resume: a realisation whose realisation.json exists is skipped; inside, every stage skips what its DONE
markers say is finished and resumes the rest from checkpoints, so a killed study resumes to the same
numbers. A realisation that stops on a non-finite loss (``FloatingPointError``) is resumed once from
its checkpoints; if it fails again its record says ``status: "error"`` and the study goes on
(protocol, exclusions rule 3). Other errors stop the study: they are bugs or input mistakes.

What is looped: everything. Realisations run one after another in a Python loop, and inside each the
stages run as in the default experiment (each trains its seeds vmapped). Realisations as a vmapped
batch axis (issue 17, item 1) are not built: the stages hand over files (ragged filtered pair sets, the
preference files), not arrays of one shape, so batching realisations needs fixed-size weighted buffers in
every stage first; how much a vmapped width would gain is benchmarked separately. JAX's persistent
compilation cache (``compilation_cache_dir``: STUDY_DIR/jax_cache) compiles each program once for all
realisations.

After the loop the study analysis (``advrm_jax.evaluation.study_report.write_study``) writes
study.json, STUDY.md and plots/.
"""

from __future__ import annotations

import copy
import os
import pathlib
import shlex
import shutil
import sys
from typing import Any

from absl import logging
import jax
import numpy as np

from advrm_jax import inference
from advrm_jax.adversarial import signals
from advrm_jax.adversarial.filtering import uncertainty
from advrm_jax.evaluation import study_report
from advrm_jax.evaluation.attack import uncertainty_gold_correlation
from advrm_jax.fileio import is_remote
from advrm_jax.pipelines import advrm, advtrain, attack, evaluate, filter_stage, rlhf, run_stages
from advrm_jax.pipelines import workdir as wd


STAGE = "study"
RECORD_FILE = "realisation.json"
# Arms trained by the main chain -> their RLHF run (config.rlhf.runs).
MAIN_RUNS = {"C0": "conventional", "T": "adv_rm", "C1": "fresh_pairs", "oracle": "oracle_gold"}
# Arms with a chain of their own; their RLHF run is that chain's `adv_rm`.
CHAIN_ARMS = ("C2", "C3")
ARMS = ("C0", "T", "C1", "C2", "C3", "oracle")
MAIN_STAGES = ("sft", "prefs", "rm", "advrm", "rlhf", "evaluate")


def realisation_name(sft_seed: int, pref_seed: int) -> str:
  """The realisation's directory name, ``s<sft seed>_p<preference seed>``."""
  return f"s{sft_seed}_p{pref_seed}"


def check_study(config: Any) -> list[tuple[int, int]]:
  """The (SFT seed, preference seed) list of ``config.study``; a bad value is an error naming its key."""
  arms = tuple(config.study.arms)
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    raise ValueError(f"study.arms: unknown arm(s) {unknown}; the arms are {ARMS}")
  if not {"C0", "T"} <= set(arms):
    raise ValueError(f"study.arms={arms} must contain C0 and T (the primary endpoint compares them)")
  if config.prefs.num_heldout_prompts <= 0:
    raise ValueError("prefs.num_heldout_prompts must be > 0: the study reads attack success on held-out prompts")
  if config.filter.uncertainty not in signals.ENSEMBLE_KINDS:
    raise ValueError(
      f"filter.uncertainty={config.filter.uncertainty!r}: the study's uncertainty endpoint needs an "
      f"ensemble signal {signals.ENSEMBLE_KINDS}"
    )
  realisations = []
  for entry in config.study.realisations:
    if len(entry) != 2 or any(not isinstance(v, int) or v < 0 for v in entry):
      raise ValueError(f"study.realisations: {list(entry)} is not [sft_seed, pref_seed] (non-negative ints)")
    realisations.append((int(entry[0]), int(entry[1])))
  if len(set(realisations)) != len(realisations):
    raise ValueError(f"study.realisations: repeated realisation(s) in {realisations}")
  return realisations


def realisation_config(config: Any, sft_seed: int, pref_seed: int) -> Any:
  """The main chain's config of realisation (s, p): SFT seed s, config.seed = s + 1000 p, the arms' runs."""
  arms = tuple(config.study.arms)
  out = copy.deepcopy(config)
  out.seed = sft_seed + 1000 * pref_seed
  out.sft.seed = sft_seed
  out.stages = MAIN_STAGES
  out.advtrain.control = "C1" in arms
  out.rlhf.only = tuple(MAIN_RUNS[a] for a in arms if a in MAIN_RUNS)
  return out


def chain_config(main_config: Any, arm: str) -> Any:
  """The config of arm C2 (adversary lam = 0) or C3 (no z(U) filter): the main chain's, one change each."""
  out = copy.deepcopy(main_config)
  if arm == "C2":
    out.attack.lam = 0.0
  else:
    out.filter.z_min = float("-inf")
  out.advtrain.control = False
  out.rlhf.only = ("adv_rm",)
  return out


def _write_config(directory: pathlib.Path, config: Any) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (directory / "config.json").write_text(config.to_json_best_effort(indent=2))


def link_dir(source: pathlib.Path, link: pathlib.Path) -> None:
  """``link`` -> ``source`` (relative, so STUDY_DIR can move); kept as it is when it exists (a resume)."""
  # Work-dir helpers return epath paths; links are local-only (``run`` refuses a remote study dir).
  source, link = pathlib.Path(source), pathlib.Path(link)
  if link.is_symlink() or link.exists():
    return
  link.parent.mkdir(parents=True, exist_ok=True)
  os.symlink(os.path.relpath(source, link.parent), link, target_is_directory=True)


def run_chain(config: Any, chain_dir: pathlib.Path, main_dir: pathlib.Path, arm: str) -> None:
  """C2 or C3 on the main chain's SFT model, preferences and RM round 0: the rounds, then RLHF."""
  _write_config(chain_dir, config)
  for stage in (wd.SFT, wd.PREFS, wd.RM):
    link_dir(main_dir / stage, chain_dir / stage)
  rounds = wd.num_rounds(config)
  if arm == "C3":
    # Round 0's adversary is main's (lam = 1 against the same RM, the same keys); only the filter differs.
    link_dir(wd.round_dir(main_dir, wd.ATTACK, 0), wd.round_dir(chain_dir, wd.ATTACK, 0))
    # Its last attack (lam = 1 against its final RM) is the arm's fresh standard adversary.
    advrm.run(config, chain_dir)
  else:
    # C2's own adversary has lam = 0: its last attack would not be the standard one (the probe is).
    for r in range(rounds):
      attack.run_round(config, chain_dir, r)
      filter_stage.run_round(config, chain_dir, r)
      advtrain.run_rounds(config, chain_dir, r + 1)
  rlhf.run(config, chain_dir)


def run_probe(main_config: Any, probe_dir: pathlib.Path, main_dir: pathlib.Path, final_rm: pathlib.Path) -> None:
  """A fresh standard adversary (main's attack settings, round N) against the RM in ``final_rm``."""
  _write_config(probe_dir, main_config)
  for stage in (wd.SFT, wd.PREFS):
    link_dir(main_dir / stage, probe_dir / stage)
  rounds = wd.num_rounds(main_config)
  if wd.is_done(wd.round_dir(probe_dir, wd.ATTACK, rounds)):
    return
  # A copy, so the arm's own directory stays as its chain wrote it (the attack stores its z units here).
  shutil.copytree(final_rm, wd.rm_path(probe_dir, rounds), dirs_exist_ok=True)
  attack.run_round(main_config, probe_dir, rounds)


def attack_after(attack_dir: pathlib.Path) -> dict[str, float]:
  """Seed-mean standard and strict success (%) of a finished attack round on the held-out prompts."""
  heldout = wd.read_json(attack_dir / "summary.json", "the `attack` stage")["final_heldout"]
  return {kind: float(np.mean(heldout[kind])) for kind in ("standard", "strict")}


def in_distribution_shortfall(config: Any, main_dir: pathlib.Path) -> dict[str, Any]:
  """Pearson(U, gold(y_ref) - gold(y)) of the reference policy's samples under RM round 0.

  U is the filter's (``filter.uncertainty``, an ensemble signal) in the adversary's units, and the gold
  shortfall is against the prompt's mean reference gold: as the filter computes it for round 0's
  adversary samples (filter/round_0/summary.json ``uncertainty_gold``), on reference samples instead.
  """
  graphdef, params, _ = wd.load_reward_model(wd.rm_path(main_dir, 0))
  reference = wd.load_reference(main_dir)
  scores = inference.reference_member_scores(main_dir, graphdef, params, reference)  # [K, P, n]
  units = inference.in_units(scores, inference.reward_units(config, main_dir, 0, scores))
  u = uncertainty(
    units.reshape(units.shape[0], -1), config.filter.uncertainty, config.attack.target, config.attack.r2_kind
  )
  gold = reference["gold"]
  return correlation(uncertainty_gold_correlation(u, (gold.mean(axis=1, keepdims=True) - gold).reshape(-1)))


def correlation(value: dict[str, Any]) -> dict[str, Any]:
  """{"r", "n"} of an ``uncertainty_gold_correlation`` result (r None where undefined)."""
  r = value["pearson"]
  return {"r": None if r is None or not np.isfinite(r) else float(r), "n": int(value["n"])}


def arm_record(run: dict[str, Any], attack: dict[str, float] | None, accuracy: float | None) -> dict[str, Any]:
  """One arm's entry: its RLHF curves (an ``evaluate.rlhf_curves`` run), fresh-attack success, accuracy (%)."""
  return {
    "steps": [int(s) for s in run["steps"]],
    "gold": run["gold"],
    "proxy": run["proxy"],
    "kl": run["kl"],
    "attack_after": attack,
    "accuracy": None if accuracy is None else 100.0 * accuracy,
  }


def realisation_record(
  config: Any, main_config: Any, rdir: pathlib.Path, sft_seed: int, pref_seed: int
) -> dict[str, Any]:
  """realisation.json from the finished chains (see the module doc for where each number comes from)."""
  arms = tuple(config.study.arms)
  main_dir = rdir / "main"
  rounds = wd.num_rounds(main_config)
  report = wd.read_json(main_dir / "report.json", "the `evaluate` stage")
  accuracy = report["in_distribution_accuracy"]
  target = main_config.attack.target
  final_attack = {
    "C0": wd.round_dir(main_dir, wd.ATTACK, 0),
    "T": wd.round_dir(main_dir, wd.ATTACK, rounds),
    "C1": wd.round_dir(rdir / "probe_C1", wd.ATTACK, rounds),
    "C2": wd.round_dir(rdir / "probe_C2", wd.ATTACK, rounds),
    "C3": wd.round_dir(rdir / "C3", wd.ATTACK, rounds),
  }
  main_accuracy = {"C0": "round_0", "T": f"round_{rounds}", "C1": f"fresh_pairs_round_{rounds}"}
  records = {}
  for arm in arms:
    if arm in MAIN_RUNS:
      run = report["rlhf"][MAIN_RUNS[arm]]
      acc = accuracy[main_accuracy[arm]]["target_member"] if arm in main_accuracy else None
    else:
      chain_dir = rdir / arm
      run = evaluate.rlhf_curves(chain_config(main_config, arm), chain_dir)["adv_rm"]
      graphdef, params, meta = wd.load_reward_model(wd.rm_path(chain_dir, rounds))
      acc = evaluate.in_distribution_accuracy(chain_dir, graphdef, params, meta, target)["target_member"]
    records[arm] = arm_record(run, attack_after(final_attack[arm]) if arm in final_attack else None, acc)
  adversarial = wd.read_json(wd.round_dir(main_dir, wd.FILTER, 0) / "summary.json", "the `filter` stage")
  return {
    "name": realisation_name(sft_seed, pref_seed),
    "sft_seed": sft_seed,
    "pref_seed": pref_seed,
    "status": "ok",
    "error": None,
    "method_checks": report["method_checks"],
    "disagreement_share": (report.get("exploits") or {}).get("disagreement_share"),
    "reference_gold": report["prefs"]["reference_gold_mean"],
    "rl_budget": int(main_config.rlhf.num_steps),
    "hacking": {"margin": float(main_config.evaluate.hacking_margin), "window": int(report["hacking_window"])},
    "arms": records,
    "uncertainty_shortfall": {
      "adversarial": correlation(adversarial["uncertainty_gold"]),
      "in_distribution": in_distribution_shortfall(main_config, main_dir),
    },
  }


def run_realisation(
  config: Any, study_dir: pathlib.Path, sft_seed: int, pref_seed: int, sft_owner: pathlib.Path | None
) -> dict[str, Any]:
  """Every chain of realisation (s, p), each resuming from its DONE markers; returns its record."""
  arms = tuple(config.study.arms)
  rdir = study_dir / "realisations" / realisation_name(sft_seed, pref_seed)
  main_dir = rdir / "main"
  main_config = realisation_config(config, sft_seed, pref_seed)
  _write_config(main_dir, main_config)
  if sft_owner is not None and wd.is_done(sft_owner):
    link_dir(sft_owner, main_dir / wd.SFT)
  run_stages(main_config, main_dir)
  rounds = wd.num_rounds(main_config)
  for arm in CHAIN_ARMS:
    if arm in arms:
      run_chain(chain_config(main_config, arm), rdir / arm, main_dir, arm)
  final_rm = {"C1": wd.rm_path(main_dir, rounds, "fresh_pairs"), "C2": wd.rm_path(rdir / "C2", rounds)}
  for arm, rm_dir in final_rm.items():
    if arm in arms:
      run_probe(main_config, rdir / f"probe_{arm}", main_dir, rm_dir)
  return realisation_record(config, main_config, rdir, sft_seed, pref_seed)


def error_record(config: Any, sft_seed: int, pref_seed: int, error: BaseException) -> dict[str, Any]:
  """The record of a realisation that failed twice: what it is and why, no measurements."""
  message = " ".join(str(error).split()) or type(error).__name__
  return {
    "name": realisation_name(sft_seed, pref_seed),
    "sft_seed": sft_seed,
    "pref_seed": pref_seed,
    "status": "error",
    "error": f"{type(error).__name__}: {message}",
    "method_checks": None,
    "disagreement_share": None,
    "reference_gold": None,
    "rl_budget": int(config.rlhf.num_steps),
    "hacking": {"margin": float(config.evaluate.hacking_margin), "window": int(config.evaluate.hacking_window)},
    "arms": {},
    "uncertainty_shortfall": None,
  }


def attempt_realisation(
  config: Any, study_dir: pathlib.Path, sft_seed: int, pref_seed: int, sft_owner: pathlib.Path | None
) -> dict[str, Any]:
  """``run_realisation``, resumed once after a non-finite loss; the error record if it stops again.

  The protocol's exclusion rule 3. Other errors propagate: they are bugs or input mistakes.
  """
  try:
    return run_realisation(config, study_dir, sft_seed, pref_seed, sft_owner)
  except FloatingPointError as first:
    logging.warning("study: %s stopped (%s); resuming it once", realisation_name(sft_seed, pref_seed), first)
  try:
    return run_realisation(config, study_dir, sft_seed, pref_seed, sft_owner)
  except FloatingPointError as second:
    return error_record(config, sft_seed, pref_seed, second)


def command_line() -> str | None:
  """The command that started this process when it is the entry point (STUDY.md's first line)."""
  if pathlib.Path(sys.argv[0]).resolve() == pathlib.Path(__file__).resolve().parents[1] / "main.py":
    return "python -m advrm_jax.main " + shlex.join(sys.argv[1:])
  return None


def run(config: Any, workdir: pathlib.Path) -> None:
  """Stage `study`: every realisation without a record, then the study analysis (module doc)."""
  if is_remote(workdir):
    raise wd.ConfigError(
      f"--workdir {workdir}: the study needs a local work dir (its realisations share sft "
      "stages through directory links, which an object store cannot hold); run it on a local "
      "disk and copy the study directory to the bucket afterwards"
    )
  study_dir = pathlib.Path(workdir)
  realisations = check_study(config)
  sft_owners: dict[int, pathlib.Path] = {}
  for index, (sft_seed, pref_seed) in enumerate(realisations):
    name = realisation_name(sft_seed, pref_seed)
    rdir = study_dir / "realisations" / name
    sft_owners.setdefault(sft_seed, rdir / "main" / wd.SFT)
    owner = sft_owners[sft_seed] if sft_owners[sft_seed] != rdir / "main" / wd.SFT else None
    if (rdir / RECORD_FILE).exists():
      logging.info("study: %s done, skipping", name)
      continue
    logging.warning("study: realisation %s (%d of %d)", name, index + 1, len(realisations))
    record = attempt_realisation(config, study_dir, sft_seed, pref_seed, owner)
    wd.write_json(rdir / RECORD_FILE, record)
  study_report.write_study(study_dir, command_line())
