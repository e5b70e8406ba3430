"""Stage `advtrain`: RM round r from RM round r - 1 and the adversarial pairs.

The training set of round r mixes the ordinary preference pairs (the
`prefs` stage's training file) with the adversarial pairs of the `filter`
stage (round r - 1's, or every earlier round's with
``advtrain.accumulate``) at a set share, ``advtrain.adversarial_fraction``
(``adversarial.filtering.mix_pairs``: the ordinary pairs once each, the
adversarial ones drawn to make up the share). The feasibility probe found
that retraining the ensemble from scratch on such data did not generalise,
so by default (``advtrain.init = "previous"``) training continues from RM
round r - 1 for ``advtrain.num_steps`` steps; ``"scratch"`` retrains.

Training itself is the `rm` stage's trainer (``rm_training.train_reward_model``) on that file with
``rm.init_from`` pointing at the previous round (``round_config``: the `rm` stage's typed nodes with
the round's fields replaced), so the hardened RM has the same artefacts and loader as the conventional one.

Artefacts in WORKDIR/advtrain/round_<r>/: pairs.jsonl, rm/ (the ensemble:
checkpoints, rm_meta.json, eval_summary.json, metrics), summary.json, DONE, and with
``advtrain.export_hf`` hf/member_<k>/ (the round's RM as Hugging Face ``*ForSequenceClassification``
directories, ``advrm_jax.export``). After the last round WORKDIR/advtrain/final links to it (what the `rlhf`
run of the Adv-RM RM names).

Dose. With ``advtrain.num_pairs`` > 0 (the default experiment: 1,000, about
what the paper added per round) a round adds exactly that many adversarial
pairs, drawn from the kept set (accumulated over rounds), to the ordinary
pairs; the summary reports how many of them are distinct. With 0 the share
rule above applies.

Control. With ``advtrain.control`` the same schedule runs a second time in
WORKDIR/advtrain_control/round_<r>/ (``arm="fresh_pairs"``): the same step
count, the same start (its own previous round), and ``num_pairs`` *fresh*
reference-policy pairs labelled by the same Bradley-Terry-on-gold rule as
the original preferences instead of adversarial ones. Whatever Adv-RM does
beyond the control is the adversarial pairs' doing, not the extra training's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
from etils import epath
import jax

from advrm_jax import inference
from advrm_jax import sharding as shd
from advrm_jax.adversarial.filtering import mix_pairs
from advrm_jax.export import export_reward_model
from advrm_jax.fileio import is_remote
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.nodes import PreferenceDataConfig, RMConfig, reward_model_nodes
from advrm_jax.pipelines.rm_training import check_paths_init, train_reward_model

STAGE = wd.ADVTRAIN
# Arm -> stage directory: Adv-RM's rounds, and the control's (the same schedule with fresh ordinary pairs).
ARMS = {"adversarial": STAGE, "fresh_pairs": wd.ADVTRAIN_CONTROL}
PAIRS_FILE = "pairs.jsonl"
INITS = ("previous", "scratch")


def mix_training_pairs(
  ordinary: list[Any], adversarial: list[Any], fraction: float, upsample: bool, seed: int
) -> list[Any]:
  """Ordinary pairs once each plus adversarial pairs making up ``fraction`` of the set.

  With ``upsample=False`` an adversarial pair is never repeated: when there
  are too few of them, the share is what they make up (repeating a few,
  partly mislabelled pairs many times taught the RM their noise).
  """
  if upsample or fraction >= 1.0:
    return mix_pairs(ordinary, adversarial, fraction, seed=seed)
  wanted = int(round(fraction / (1.0 - fraction) * len(ordinary)))
  num_adversarial = min(wanted, len(adversarial))
  total = len(ordinary) + num_adversarial
  return mix_pairs(ordinary, adversarial, num_adversarial / total, seed=seed, total=total)


def round_config(
  config: Any, pairs_file: epath.Path, init_from: str, workdir: epath.Path
) -> tuple[RMConfig, PreferenceDataConfig]:
  """The `rm` stage's typed nodes for one round: its pairs, its start, its budget; nothing else differs.

  The trainer runs with the round's dir as its work dir, so ``{workdir}``
  in the backbone path is resolved to the run's work dir here.
  """
  node = config.advtrain
  rm, data = reward_model_nodes(config)
  check_paths_init(rm, node.init)
  optimizer = dataclasses.replace(
    rm.optimizer,
    learning_rate=node.learning_rate,
    warmup_steps=min(rm.optimizer.warmup_steps, node.num_steps // 10),
    total_steps=node.num_steps,  # the schedule's length follows rm.num_steps (configs/common.py)
  )
  backbone = dataclasses.replace(rm.backbone, path=rm.backbone.path.replace("{workdir}", str(workdir)))
  rm = dataclasses.replace(rm, backbone=backbone, init_from=init_from, num_steps=node.num_steps, optimizer=optimizer)
  return rm, dataclasses.replace(data, path=str(pairs_file))


def link_final(workdir: epath.Path, round_index: int, stage: str = STAGE) -> None:
  """WORKDIR/<stage>/final -> round_<r> (relative, so the work dir can move)."""
  final = epath.Path(workdir) / stage / "final"
  if not wd.writes_artefacts():
    return  # process 0 links (two processes replacing one link race each other)
  if is_remote(final):
    return  # an object store has no links: the last round is round_<advrm.num_rounds>
  if os.path.lexists(final):
    os.unlink(final)
  os.symlink(f"round_{round_index}", final, target_is_directory=True)


def dosed_training_pairs(ordinary: list[Any], extra: list[Any], num_pairs: int, seed: int) -> list[Any]:
  """Every ordinary pair once plus exactly ``num_pairs`` of ``extra``, shuffled.

  ``extra`` is drawn by ``filtering.mix_pairs`` (each pair once before any repeats: resampling with
  replacement, balanced), so a round adds the same number of pairs whether the filter kept 50 or 5,000.
  """
  if not extra:
    raise ValueError("advtrain.num_pairs: nothing to draw the pairs from")
  total = len(ordinary) + num_pairs
  return mix_pairs(ordinary, extra, num_pairs / total, seed=seed, total=total)


def fresh_reference_pairs(config: Any, workdir: epath.Path, round_index: int, num_pairs: int) -> list[Any]:
  """The control's pairs: ``num_pairs`` new reference-policy pairs labelled as the `prefs` stage labels.

  New preference prompts (another seed of the same stream), new answers and new Bradley-Terry label noise;
  the same rule and the same policy as the original preferences, so the control adds ordinary data of the
  size the Adv-RM round adds adversarial data.
  """
  _, graphdef, params = wd.load_policy(workdir / "sft")
  salt = 100_003 * round_index
  # Ask for more prompts than needed: pairs whose two answers carry no preference are dropped.
  records, _ = inference.sample_labelled_pairs(
    config,
    graphdef,
    params,
    int(1.5 * num_pairs) + 8,
    config.seed + salt,
    jax.random.key(config.seed + salt + 1009),
    config.seed + salt,
  )
  if len(records) < num_pairs:
    raise ValueError(
      f"advtrain (fresh_pairs control): only {len(records)} usable fresh pairs for advtrain.num_pairs={num_pairs}"
    )
  return [
    {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "fresh": True}
    for r in records[:num_pairs]
  ]


def run_round(config: Any, workdir: epath.Path, round_index: int, arm: str = "adversarial") -> None:
  """Trains RM round r (r >= 1) on ordinary + adversarial pairs (``arm="fresh_pairs"``: + fresh pairs)."""
  workdir = epath.Path(workdir)
  if round_index < 1:
    raise ValueError(f"advtrain: round {round_index}; RM round 0 is the `rm` stage's")
  if arm not in ARMS:
    raise ValueError(f"advtrain: unknown arm {arm!r}; expected one of {ARMS}")
  stage = ARMS[arm]
  out = wd.round_dir(workdir, stage, round_index)
  if wd.skip_if_done(out, f"{stage}/round_{round_index}"):
    if round_index == wd.num_rounds(config):
      link_final(workdir, round_index, stage)
    return
  node = config.advtrain
  if node.init not in INITS:
    raise ValueError(f"advtrain.init: unknown {node.init!r}; expected one of {INITS}")
  num_pairs = int(node.get("num_pairs", 0))
  if arm == "fresh_pairs" and num_pairs <= 0:
    raise ValueError("advtrain.control needs advtrain.num_pairs > 0 (the control adds that many fresh pairs)")
  ordinary = wd.read_jsonl(workdir / wd.PREFS / wd.TRAIN_FILE, "the `prefs` stage")
  source_rounds = range(round_index) if node.accumulate else [round_index - 1]
  adversarial = []
  for r in source_rounds:
    filter_dir = wd.round_dir(workdir, wd.FILTER, r)
    if not wd.is_done(filter_dir):
      raise FileNotFoundError(f"advtrain: {filter_dir} is not finished; run the `filter` stage for round {r}")
    adversarial += wd.read_jsonl(wd.pairs_path(workdir, r), "the `filter` stage")
  seed = config.seed * 1000 + round_index
  if arm == "fresh_pairs":
    mixed = dosed_training_pairs(
      ordinary, fresh_reference_pairs(config, workdir, round_index, num_pairs), num_pairs, seed
    )
  elif adversarial and num_pairs > 0:
    mixed = dosed_training_pairs(ordinary, adversarial, num_pairs, seed)
  elif adversarial:
    mixed = mix_training_pairs(ordinary, adversarial, node.adversarial_fraction, node.upsample, seed=seed)
  else:
    logging.warning(
      "advtrain/round_%d: the filter kept no adversarial pairs; training on ordinary pairs only", round_index
    )
    mixed = list(ordinary)
  # Only the fields the RM reads, so the file is an ordinary preference file.
  wd.write_jsonl(
    out / PAIRS_FILE,
    [
      {
        "prompt": r["prompt"],
        "chosen": r["chosen"],
        "rejected": r["rejected"],
        "adversarial": "r1" in r,
        "fresh": bool(r.get("fresh")),
      }
      for r in mixed
    ],
  )
  wd.sync("advtrain pairs written")  # by process 0; every process trains on them next
  init_from = str(wd.rm_path(workdir, round_index - 1, arm)) if node.init == "previous" else ""
  rm, data = round_config(config, out / PAIRS_FILE, init_from, workdir)
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  train_reward_model(rm, data, out, mesh=mesh, seed=config.seed, name=f"{stage}/round_{round_index}/rm")
  wd.write_json(
    out / "summary.json",
    {
      "round": round_index,
      "arm": arm,
      "num_ordinary": len(ordinary),
      "num_adversarial_available": len(adversarial),
      "num_adversarial_used": sum(1 for r in mixed if "r1" in r),
      "num_adversarial_unique": len({(r["prompt"], r["rejected"]) for r in mixed if "r1" in r}),
      "num_fresh_used": sum(1 for r in mixed if r.get("fresh")),
      "num_pairs": len(mixed),
      "dose": num_pairs if num_pairs > 0 else None,
      "adversarial_fraction": None if num_pairs > 0 else node.adversarial_fraction,
      "init": node.init,
      "init_from": init_from,
      "num_steps": node.num_steps,
      "source_rounds": list(source_rounds),
    },
  )
  if node.get("export_hf", False):
    # The hardened RM in the format TRL / OpenRLHF-style stacks load (AutoModelForSequenceClassification).
    export_reward_model(out / "rm", out / "hf")
  wd.mark_done(out)
  if round_index == wd.num_rounds(config):
    link_final(workdir, round_index, stage)


def run_rounds(config: Any, workdir: epath.Path, round_index: int) -> None:
  """RM round r of the Adv-RM arm and, with ``advtrain.control``, of the fresh-pairs control arm."""
  if config.advtrain.get("export_hf", False) and is_remote(workdir):
    raise wd.ConfigError(
      f"advtrain.export_hf=True writes Hugging Face files locally but --workdir {workdir} is a "
      "bucket; set --config.advtrain.export_hf=False and run `python -m advrm_jax.export` on a "
      "local copy of the round's rm/"
    )
  run_round(config, workdir, round_index)
  if config.advtrain.get("control", False):
    run_round(config, workdir, round_index, arm="fresh_pairs")


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `advtrain`: every round whose filtered pairs exist and whose RM is not trained."""
  workdir = epath.Path(workdir)
  for r in range(1, wd.num_rounds(config) + 1):
    if not wd.is_done(wd.round_dir(workdir, wd.FILTER, r - 1)):
      if r == 1:
        raise FileNotFoundError("advtrain: the round-0 filter is not finished; run the `filter` stage")
      break
    run_rounds(config, workdir, r)
