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

  Raises ValueError naming the unknown stage(s) before any stage runs.
  """
  stages = list(config.stages)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages: unknown stage(s) {unknown}; available: {sorted(STAGES)}")
  with loop.end_of_run_plots(config.get("plots", True)):
    for name in stages:
      start = time.time()
      logging.info("stage %s: starting", name)
      importlib.import_module(STAGES[name]).run(config, workdir)
      wd.sync(f"stage {name} done")  # the next stage, on every process, reads what process 0 wrote
      logging.info("stage %s: done in %.1fs", name, time.time() - start)
