r"""The powered, paired study of Adv-RM (docs/study_protocol.md; how to run it: docs/study.md).

  python -m advrm_jax.main --config configs/study.py:tiny --workdir /tmp/study_tiny      # tests, minutes
  python -m advrm_jax.main --config configs/study.py:screen --workdir /tmp/study_screen  # 8 realisations
  python -m advrm_jax.main --config configs/study.py --workdir /tmp/study                # 32 realisations

One stage, `study` (advrm_jax/pipelines/study.py): every realisation (SFT seed s, preference/RM seed p)
runs the default experiment (configs/synthetic.py; its `:small` sizes for `:tiny`) with the SFT seed s
and ``config.seed = s + 1000 p`` (p = 0: exactly ``configs/synthetic.py --config.seed=s`` but for the
seed count, the RLHF runs and the filter's signal comparison below), plus the extra chains of the arms C2 and C3, then writes
realisations/s<s>_p<p>/realisation.json.

Sizes (the protocol's table):

  :tiny    2 realisations (SFT seed 0, preference seeds 0 and 1), `:small` model and budgets, 2 RL seeds,
           every arm: the machinery's test, never evidence
  :screen  8 realisations (SFT seeds 0..7, preference seed 0), arms C0, T, C1, C2, 8 RL seeds
  default  32 realisations (SFT seeds 0..7 x preference seeds 0..3), every arm, 8 RL seeds
"""

import pathlib
import runpy
import types

import ml_collections

# Arms of the protocol, in its order; "oracle" is the gold reference line (never tested).
ALL_ARMS = ("C0", "T", "C1", "C2", "C3", "oracle")
SCREEN_ARMS = ("C0", "T", "C1", "C2")
NUM_SFT_SEEDS, NUM_PREF_SEEDS = 8, 4

# Config files are loaded by path (configs/ is no package): the default experiment this study repeats.
synthetic = types.SimpleNamespace(**runpy.run_path(str(pathlib.Path(__file__).resolve().with_name("synthetic.py"))))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = (arg or "").strip()
  if size not in ("tiny", "screen", ""):
    raise ValueError(f"configs/study.py: unknown argument {size!r}; expected nothing, 'tiny' or 'screen'")
  tiny = size == "tiny"
  config = synthetic.get_config("small" if tiny else "")
  config.stages = ("study",)
  # RL seeds per arm per realisation (RLHF and adversary policies, vmapped).
  config.num_seeds = 2 if tiny else 8
  # Adv-RM rounds of T, C1, C2 and C3.
  config.advrm.num_rounds = 2
  # C1's fresh-pairs schedule (the runner turns it off when C1 is not an arm).
  config.advtrain.control = True
  # Only the arms' RLHF runs (the ensemble baselines are not in the study).
  runs = config.rlhf.runs
  config.rlhf.runs = ml_collections.ConfigDict(
    {name: dict(runs[name]) for name in ("conventional", "adv_rm", "fresh_pairs", "oracle_gold")}
  )
  # The filter's comparison of every uncertainty signal (summary.json only; the filter decides by
  # filter.uncertainty alone) is no endpoint of the study: it trains a verdict probe per round.
  config.filter.compare_signals = False
  # No metrics.png at the end of each of a realisation's ~24 training runs (`python -m advrm_jax.report
  # STUDY_DIR` renders them); the study's own plots are written by the analysis.
  config.plots = False
  if tiny:
    # As small as every stage still runs: fewer prompts, one checkpoint per run (the tiny runs' cost is
    # per run, not per step), a one-word substitution baseline.
    config.prefs.num_prompts = 128
    config.sft.num_examples = 1000
    config.rlhf.num_prompts = 64
    for node in (config.sft, config.rm, config.attack, config.rlhf):
      node.checkpoint_every = node.num_steps
    config.evaluate.substitution_budget = 1

  config.study = ml_collections.ConfigDict()
  # [SFT seed, preference/RM seed] of each realisation, in the order they run (the protocol fixes them).
  if tiny:
    config.study.realisations = [[0, 0], [0, 1]]
  elif size == "screen":
    config.study.realisations = [[s, 0] for s in range(NUM_SFT_SEEDS)]
  else:
    config.study.realisations = [[s, p] for s in range(NUM_SFT_SEEDS) for p in range(NUM_PREF_SEEDS)]
  # Arms run in every realisation (C0 and T always: the primary endpoint's).
  config.study.arms = SCREEN_ARMS if size == "screen" else ALL_ARMS
  return config
