"""Stages a config strings together (``config.stages``), each resumable.

Stages hand over checkpoints and datasets on disk in WORKDIR/<stage>/, never
in-memory objects, so any stage can be rerun or resumed on its own.
"""

from __future__ import annotations

import importlib
import pathlib
import time

from absl import logging

# Stage name -> module exposing ``run(config, workdir)``.
STAGES = {
    "sft": "advrm_jax.pipelines.sft",
    "rlhf": "advrm_jax.pipelines.rlhf",
    "rm": "advrm_jax.pipelines.rm",
    "empo": "advrm_jax.pipelines.empo",
    "probes": "advrm_jax.pipelines.probes",
    "prefs": "advrm_jax.pipelines.prefs",
    "attack": "advrm_jax.pipelines.attack",
    "filter": "advrm_jax.pipelines.filter",
    "advtrain": "advrm_jax.pipelines.advtrain",
    "advrm": "advrm_jax.pipelines.advrm",
    "online": "advrm_jax.pipelines.online",
    "evaluate": "advrm_jax.pipelines.evaluate",
}


def run_stages(config, workdir: pathlib.Path) -> None:
  """Runs the stages named in ``config.stages``, in order, each on WORKDIR.

  Raises ValueError naming the unknown stage(s) before any stage runs.
  """
  stages = list(config.stages)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages: unknown stage(s) {unknown}; available: {sorted(STAGES)}")
  for name in stages:
    start = time.time()
    logging.info("stage %s: starting", name)
    importlib.import_module(STAGES[name]).run(config, workdir)
    logging.info("stage %s: done in %.1fs", name, time.time() - start)
