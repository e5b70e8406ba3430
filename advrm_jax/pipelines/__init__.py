"""Stages a config strings together (``config.stages``), each resumable.

Stages hand over checkpoints and datasets on disk in WORKDIR/<stage>/, never
in-memory objects, so any stage can be rerun or resumed on its own.

From Python (a notebook, a test): ``config = load_config("configs/synthetic.py:small")``,
change fields, then ``run_stages(config, workdir)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import time

from absl import logging

# Importing JAX (loop does) initialises no backend: jax.distributed.initialize in main() still comes first.
from advrm_jax import sharding as shd
from advrm_jax.pipelines import loop
from advrm_jax.pipelines import workdir as wd

# Stage name -> module exposing ``run(config, workdir)``.
STAGES = {
  "sft": "advrm_jax.pipelines.sft",
  "rlhf": "advrm_jax.pipelines.rlhf",
  "rm": "advrm_jax.pipelines.rm",
  "empo": "advrm_jax.pipelines.empo",
  "probes": "advrm_jax.pipelines.probes",
  "prefs": "advrm_jax.pipelines.prefs",
  "attack": "advrm_jax.pipelines.attack",
  "filter": "advrm_jax.pipelines.filter_stage",
  "advtrain": "advrm_jax.pipelines.advtrain",
  "advrm": "advrm_jax.pipelines.advrm",
  "inspect": "advrm_jax.pipelines.inspect_stage",
  "online": "advrm_jax.pipelines.online",
  "evaluate": "advrm_jax.pipelines.evaluate",
  "study": "advrm_jax.pipelines.study",
}


# Stage name -> the config keys of the batches it splits over the mesh's data-parallel axes (data x fsdp).
# Each must divide into that many shards; ``check_batches`` checks them all before the first stage starts.
SPLIT_BATCHES = {
  "sft": ("sft.batch_size",),
  "rm": ("rm.batch_size", "rm.eval_batch_size"),
  "attack": ("attack.prompts_per_step",),
  "advtrain": ("rm.batch_size", "rm.eval_batch_size"),  # each round retrains the RM with rm.*
  "advrm": ("attack.prompts_per_step", "rm.batch_size", "rm.eval_batch_size"),
  "online": ("online.prompts_per_step", "online.ordinary_pairs", "rm.eval_batch_size"),
  "rlhf": ("rlhf.prompts_per_step",),
  "empo": ("reasoning_sft.batch_size", "empo.prompts_per_step"),
  "probes": ("reasoning_sft.batch_size",),
}
# A batch of factor x value rows: online splits rm_updates x ordinary_pairs pairs per step.
_BATCH_FACTORS = {"online.ordinary_pairs": "online.rm_updates"}


def _config_value(config, key: str):
  node = config
  for part in key.split("."):
    node = node.get(part) if node is not None else None
  return node


def check_batches(config, stages) -> None:
  """Stops before any stage runs when a batch of ``stages`` cannot be split over the mesh.

  One ShardingError (one line) lists every key to change with the nearest
  value that divides, e.g. ``attack.prompts_per_step=8 ... set
  --config.attack.prompts_per_step=16`` on 16 devices.
  """
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  keys = dict.fromkeys(key for stage in stages for key in SPLIT_BATCHES.get(stage, ()))
  errors = []
  for key in keys:
    value = _config_value(config, key)
    if value is None:
      continue
    factor = _config_value(config, _BATCH_FACTORS[key]) if key in _BATCH_FACTORS else 1
    try:
      shd.check_batch_divisible(int(value), mesh, key, factor=int(factor))
    except shd.ShardingError as e:
      errors.append(str(e))
  if errors:
    raise shd.ShardingError("; ".join(errors))


def load_config(spec: str | os.PathLike[str]):
  """Loads a config file as ``--config`` does, without absl flags.

  Args:
    spec: ``path/to/config.py`` or ``path/to/config.py:arg`` (``arg`` goes
      to its ``get_config``). A relative path is looked up in the current
      directory, then in the repository root (where ``configs/`` lives).

  Returns:
    The locked ``ml_collections.ConfigDict``: fields can be changed (with
    type checks) but not added, so a misspelt key is an error, as with
    ``--config.a.b=value``.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: from the file's ``get_config`` (e.g. an unknown ``arg``).
  """
  path, _, arg = os.fspath(spec).partition(":")
  candidate = pathlib.Path(path).expanduser()
  if not candidate.is_absolute() and not candidate.exists():
    candidate = pathlib.Path(__file__).resolve().parents[2] / candidate
  if not candidate.is_file():
    raise FileNotFoundError(f"config file {path} not found (looked in {pathlib.Path.cwd()} and the repository root)")
  module_spec = importlib.util.spec_from_file_location(f"advrm_config_{candidate.stem}", candidate)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config


def run_stages(config, workdir: pathlib.Path) -> None:
  """Runs the stages named in ``config.stages``, in order, each on WORKDIR.

  Raises ValueError naming the unknown stage(s), and ShardingError naming
  every batch that cannot be split over the mesh, before any stage runs.
  """
  stages = list(config.stages)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages: unknown stage(s) {unknown}; available: {sorted(STAGES)}")
  check_batches(config, stages)
  with loop.end_of_run_plots(config.get("plots", True)):
    for name in stages:
      start = time.time()
      logging.info("stage %s: starting", name)
      importlib.import_module(STAGES[name]).run(config, workdir)
      wd.sync(f"stage {name} done")  # the next stage, on every process, reads what process 0 wrote
      logging.info("stage %s: done in %.1fs", name, time.time() - start)
