r"""advrm_jax entry point.

  python -m advrm_jax.main --config configs/synthetic.py --workdir /tmp/advrm
  python -m advrm_jax.main --config configs/synthetic.py:small --workdir /tmp/advrm_small \
      --config.num_seeds=1 --config.rm.num_steps=50

``--config`` is an ml_collections config file defining ``get_config(arg)``;
``:arg`` after the path is passed to it (e.g. ``small`` shrinks every budget
for tests). ``--config.a.b=value`` overrides one field; an unknown key or a
value of the wrong type is an error naming the key. ``config.stages`` lists
the stages to run, in order; each one resumes from its artefacts in WORKDIR.

Problems with the input (a config key, a data file, a checkpoint, a mesh, a
diverging loss, a file that cannot be read) end the run with one line
``error: <what and where>`` on stderr and exit code 2, not a traceback
(``--verbosity=1`` logs the traceback too). SIGTERM writes a checkpoint and
exits with code 0.

The console shows warnings, each stage's progress lines and its results;
``--verbosity=0`` adds the INFO log (devices, data sizes, every checkpoint
save of orbax), ``--verbosity=1`` the debug log.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import traceback
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import ml_collections
from ml_collections import config_flags

# Importing the stages initialises no JAX backend, so jax.distributed.initialize in main() still comes first.
from advrm_jax.config_node import ConfigError, check_keys
from advrm_jax.fileio import write_text_atomic
from advrm_jax.pipelines import load_config, run_stages
from advrm_jax.pipelines.loop import Preempted

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/<name>.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and reports: a local path or a bucket (gs://BUCKET/DIR)."
)
flags.mark_flags_as_required(["config", "workdir"])

# Exit code of a run stopped by bad input (argparse's convention for usage errors).
EXIT_BAD_INPUT = 2
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


# Port of the jax.distributed coordinator on a Vertex AI chief replica (JAX's own default port).
VERTEX_COORDINATOR_PORT = 8476


def vertex_cluster(cluster_spec: str) -> dict[str, Any]:
  """``jax.distributed.initialize`` arguments of a Vertex AI replica, from its ``CLUSTER_SPEC`` (JSON).

  Vertex AI lists every worker pool's replicas (``{"cluster": {"workerpool0":
  ["host:port"], "workerpool1": [...]}, "task": {"type": "workerpool1",
  "index": 0}}``); JAX does not read it. Process ids count pool 0's replicas
  first, then pool 1's...; the coordinator runs on pool 0's (the chief's) host.
  """
  spec = json.loads(cluster_spec)
  pools = [spec["cluster"][name] for name in sorted(spec["cluster"], key=lambda n: int(n[len("workerpool") :]))]
  task = spec["task"]
  before = sum(len(pool) for pool in pools[: int(task["type"][len("workerpool") :])])
  chief_host = pools[0][0].rsplit(":", 1)[0]
  return {
    "coordinator_address": f"{chief_host}:{VERTEX_COORDINATOR_PORT}",
    "num_processes": sum(len(pool) for pool in pools),
    "process_id": before + int(task["index"]),
  }


def _fail(message: str) -> None:
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(EXIT_BAD_INPUT)


def _unknown_override(argv: list[str], config: Any) -> str | None:
  """``--config.a.b: config.a.b: unknown key; known: ...`` for the first override naming a key ``config`` lacks.

  The message after the flag is ``config_node.check_keys``'s, the one every config node's check gives.
  """
  for flag in (a.split("=", 1)[0] for a in argv if a.startswith("--config.")):
    node, parts = config, flag[len("--config.") :].split(".")
    for i, part in enumerate(parts):
      known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      if part not in known:
        try:
          check_keys([part], known, ".".join(["config", *parts[:i]]))
        except ConfigError as e:
          return f"{flag}: {e}"
      node = node[part]
  return None


def _override_with_key(argv: list[str], error: Exception) -> str:
  """Names the ``--config.a.b=v`` override an unknown-key error came from.

  ml_collections reports only the last path component ("'bogus'", maybe with
  a did-you-mean hint), wrapped in an AttributeError around a KeyError; the
  override that used it is what the user typed. The config file, loaded
  again without the overrides, gives the message the config nodes' own check
  gives (the known keys, a close match).
  """
  # absl has not parsed --config when an override fails: its value is read from argv.
  specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  specs += [b for a, b in zip(argv, argv[1:]) if a == "--config"]
  try:
    message = _unknown_override(argv, load_config(specs[-1])) if specs else None
  except Exception:  # pylint: disable=broad-except  # a broken config file: ml_collections' words below
    message = None
  if message:
    return message
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  message = str(error.args[0]) if error.args else str(error)
  match = re.match(r"\s*'([^']*)'\s*(.*)", message, re.S)
  key, hint = (match.group(1), match.group(2).strip()) if match else (message, "")
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  culprits = [o for o in overrides if key in o[len("--config.") :].split(".")]
  where = ", ".join(culprits or overrides) or "--config"
  return f"{where}: unknown config key {key!r}" + (f" ({hint})" if hint else "")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config-override mistakes as one-line errors.

  absl turns its own flag errors into a message, but ml_collections raises
  KeyError/AttributeError for an override of an unknown key, which would
  otherwise escape as a traceback through absl's internals.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:
      # ml_collections embeds the config file's traceback in the flag error;
      # its first line (which flag) and last line (what went wrong) say it all.
      lines = [l for l in message.splitlines() if l.strip()]
      message = f"{lines[0].rstrip(':')}: {lines[-1]}"
    _fail(message)
  except (KeyError, AttributeError) as e:
    _fail(_override_with_key(argv, e))
  except (TypeError, ValueError) as e:
    _fail(f"could not apply the config or its overrides: {e}")
  raise AssertionError("unreachable")


def _is_input_error(error: BaseException) -> bool:
  """True for errors this package raises on purpose about its input.

  Those are ValueErrors (DataError, ShardingError, CheckpointMismatchError,
  config checks, UnicodeErrors of reading a file) and the loop's
  FloatingPointError (non-finite loss), raised by advrm_jax code, and any
  OSError that names its file (missing, a directory, no permission, disk
  full): that is the machine's state, not a bug. The other errors of those
  types raised inside jax/orbax are bugs and keep their traceback.
  """
  if isinstance(error, OSError) and error.filename is not None:
    return True
  if type(error).__module__.startswith("advrm_jax."):
    return True
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and pathlib.Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR)


def main(argv):
  """Loads the config, joins a multi-host job if ``config.distributed``, and runs the stages.

  Input errors end the process with ``error: ...`` on stderr and exit code 2.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Quiet by default: absl's INFO log (a line per orbax save) would drown
    # the progress lines; --verbosity=0 brings it back. (Set here: absl
    # resets the flag's default while parsing.)
    logging.set_verbosity(logging.WARNING)
  try:
    # The config file is executed here, on first access; a ValueError from its
    # get_config (e.g. an unknown ":arg") is a config mistake, not a bug.
    config = _CONFIG.value
    config.get("stages")  # a config file that failed to load raises on first use
  except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
    _fail("--config: " + " ".join(l.strip() for l in str(e).splitlines() if l.strip()))
  if config.get("distributed", False):
    # Multi-host: JAX's own SPMD runtime. Cluster environments (TPU pods,
    # SLURM) are detected by JAX itself; a plain machine gets its coordinator
    # and ids from the variables launch/multihost.py sets.
    if "JAX_NUM_PROCESSES" in os.environ:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
      )
    elif "CLUSTER_SPEC" in os.environ:  # Vertex AI worker pools (launch/xm_launch.py --num_hosts)
      jax.distributed.initialize(**vertex_cluster(os.environ["CLUSTER_SPEC"]))
    else:
      jax.distributed.initialize()
  # A local directory or a bucket (gs://...): every stage writes through epath.
  workdir = epath.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  cache_dir = config.get("compilation_cache_dir", "")
  if cache_dir:
    # Stages and rounds rebuild the same programs (an RL iteration per
    # adversary round, a BT step per RM); JAX's persistent cache, keyed by
    # the program itself, compiles each of them once.
    jax.config.update("jax_compilation_cache_dir", cache_dir.replace("{workdir}", str(workdir)))
    # Every program, not only those compiling for over a second (JAX's default): a run's many small ones
    # (sampling, scoring, evaluation) are rebuilt by every run and round too.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if jax.process_index() == 0:
    write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))
  logging.info("devices: %s", jax.devices())
  try:
    run_stages(config, workdir)
  except Preempted as e:
    logging.warning(
      "preempted by SIGTERM after step %d: checkpoint written, exiting cleanly; rerun the same command to resume",
      e.step,
    )
    raise
  except (ValueError, OSError, FloatingPointError) as e:
    if not _is_input_error(e):
      raise
    logging.debug("%s", "".join(traceback.format_exception(e)))
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
