r"""advrm_jax entry point.

  python -m advrm_jax.main --config configs/synthetic.py --workdir /tmp/advrm
  python -m advrm_jax.main --config configs/synthetic.py:small --workdir /tmp/advrm_small \
      --config.seeds=1 --config.rm.num_steps=50

``--config`` is an ml_collections config file defining ``get_config(arg)``;
``:arg`` after the path is passed to it (e.g. ``small`` shrinks every budget
for tests). ``--config.a.b=value`` overrides one field; an unknown key or a
value of the wrong type is an error naming the key. ``config.stages`` lists
the stages to run, in order; each one resumes from its artefacts in WORKDIR.
"""

from __future__ import annotations

import json
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<name>.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.get("distributed", False):
    # Multi-host: JAX's own SPMD runtime; coordinator and process ids come
    # from the cluster environment (TPU pods, SLURM) or JAX_* variables.
    jax.distributed.initialize()
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  logging.info("devices: %s", jax.devices())
  from advrm_jax.pipelines import run_stages  # pylint: disable=import-outside-toplevel
  run_stages(config, workdir)


if __name__ == "__main__":
  app.run(main)
