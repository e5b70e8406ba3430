r"""A plain TPU VM pod-slice recipe: the gcloud commands that install advrm_jax on every host and start one run.

  # Print the commands (nothing runs; no gcloud needed):
  python launch/tpu_vm.py --name=my-slice --zone=us-west4-a --accelerator_type=v5litepod-16 \
      --config=configs/synthetic.py --workdir=gs://my-bucket/advrm -- --config.num_seeds=1

  # Run them (gcloud installed and logged in, the slice created with
  # `gcloud compute tpus tpu-vm create NAME --zone=Z --accelerator-type=T --version=...`):
  python launch/tpu_vm.py ... --run

Three commands, each on every host of the slice (``--worker=all``): copy this
checkout to the home directory (``~/<checkout name>``), install it with ``jax[tpu]`` and the ``gcs``
extra, then ``python -m advrm_jax.main``. Every host runs the same SPMD
program; on a slice of several hosts ``--config.distributed=True`` makes them
one ``jax.distributed`` job (JAX finds the TPU coordinator itself), and the
work dir must be a bucket (``gs://...``): a pod slice has no disk that all
hosts share, and orbax writes checkpoints collectively.

Hosts per slice (``slice_shape``), from Google's accelerator-type tables:
v2/v3/v4/v5p names count TensorCores (2 per chip), v5e (``v5litepod-N``) and
v6e names count chips; a TPU VM of a multi-host slice holds 4 chips, so
v4-8 is 4 chips on 1 host, v5litepod-16 is 16 chips on 4 hosts, v5p-64 is
32 chips on 8 hosts. Single-host v5e/v6e slices hold up to 8 chips in one VM.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHIPS_PER_MULTI_HOST_VM = 4
# Generation -> (whether the accelerator-type number counts TensorCores (2 per chip) rather than chips,
# the largest slice one VM holds, in chips).
GENERATIONS = {
  "v2": (True, 4),
  "v3": (True, 4),
  "v4": (True, 4),
  "v5p": (True, 4),
  "v5e": (False, 8),
  "v6e": (False, 8),
}
_ALIASES = {"v5litepod": "v5e"}


class SliceError(ValueError):
  """An accelerator type or flag combination that names no slice, named by flag."""


@dataclasses.dataclass(frozen=True)
class SliceShape:
  """A TPU slice: generation (``v5e``...), chips, hosts (TPU VMs) and chips per host."""

  generation: str
  chips: int
  hosts: int

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts


def slice_shape(accelerator_type: str) -> SliceShape:
  """The shape of a Cloud TPU accelerator type: ``v4-8``, ``v5litepod-16`` (or ``v5e-16``), ``v5p-64``, ``v6e-8``."""
  match = re.fullmatch(r"(v\d+[a-z]*|v5litepod)-(\d+)", accelerator_type.strip().lower())
  generation = _ALIASES.get(match.group(1), match.group(1)) if match else None
  if generation not in GENERATIONS:
    raise SliceError(
      f"--accelerator_type={accelerator_type}: expected <generation>-<size> with generation one of "
      f"{sorted(GENERATIONS)} or v5litepod (e.g. v4-8, v5litepod-16, v5p-64, v6e-8)"
    )
  size = int(match.group(2))
  counts_cores, single_vm_chips = GENERATIONS[generation]
  chips = size // 2 if counts_cores else size
  if counts_cores and (size < 8 or size % 8):
    raise SliceError(
      f"--accelerator_type={accelerator_type}: {generation} sizes count TensorCores (2 per chip) "
      "in multiples of 8 (v4-8 = 4 chips on one host)"
    )
  if chips <= single_vm_chips:
    if chips not in (1, 4, 8):
      raise SliceError(f"--accelerator_type={accelerator_type}: a single-host slice has 1, 4 or 8 chips")
    return SliceShape(generation, chips, 1)
  if chips % CHIPS_PER_MULTI_HOST_VM:
    raise SliceError(
      f"--accelerator_type={accelerator_type}: a multi-host slice has a multiple of {CHIPS_PER_MULTI_HOST_VM} chips"
    )
  return SliceShape(generation, chips, chips // CHIPS_PER_MULTI_HOST_VM)


def _gcloud_ssh(name: str, zone: str, project: str | None, command: str) -> list[str]:
  argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--zone", zone, "--worker=all"]
  if project:
    argv += ["--project", project]
  return argv + ["--command", command]


def slice_commands(
  name: str,
  zone: str,
  accelerator_type: str,
  config: str,
  workdir: str,
  overrides: Sequence[str] = (),
  project: str | None = None,
  repo_root: str | pathlib.Path = REPO_ROOT,
) -> list[list[str]]:
  """The argv lists that copy this checkout to every host, install it and start the run (pure: runs nothing).

  Raises SliceError for an unknown accelerator type, or a multi-host slice
  with a local work dir (its hosts share no disk).
  """
  shape = slice_shape(accelerator_type)
  if shape.hosts > 1 and "://" not in workdir:
    raise SliceError(
      f"--workdir={workdir}: {accelerator_type} has {shape.hosts} hosts and no disk they share; "
      "use a bucket, e.g. --workdir=gs://BUCKET/advrm"
    )
  # Into the home directory under the checkout's own name: copying again updates the files in place.
  remote_dir = f"~/{pathlib.Path(repo_root).name}"
  copy = [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "scp",
    "--recurse",
    str(repo_root),
    f"{name}:~",
    "--zone",
    zone,
    "--worker=all",
  ] + (["--project", project] if project else [])
  install = f'cd {remote_dir} && python3 -m pip install -U "jax[tpu]" && python3 -m pip install -e ".[gcs]"'
  main = ["python3", "-m", "advrm_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  if shape.hosts > 1:
    main.append("--config.distributed=True")  # one jax.distributed job; a single host needs no coordinator
  run = f"cd {remote_dir} && {shlex.join(main)}"
  return [copy, _gcloud_ssh(name, zone, project, install), _gcloud_ssh(name, zone, project, run)]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--name", required=True, help="TPU VM (slice) name, as created with gcloud.")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument("--accelerator_type", required=True, help="v4-8, v5litepod-16 (v5e-16), v5p-64, v6e-8...")
  parser.add_argument("--config", required=True, help="configs/<name>.py[:arg], as for advrm_jax.main.")
  parser.add_argument("--workdir", required=True, help="gs://BUCKET/DIR (required on a multi-host slice).")
  parser.add_argument("--run", action="store_true", help="Run the commands (default: print them).")
  parser.add_argument("overrides", nargs="*", help="After --: --config.KEY=VALUE flags for advrm_jax.main.")
  args = parser.parse_args(argv)
  try:
    commands = slice_commands(
      args.name, args.zone, args.accelerator_type, args.config, args.workdir, args.overrides, args.project
    )
  except SliceError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  shape = slice_shape(args.accelerator_type)
  print(f"# {args.accelerator_type}: {shape.chips} chips on {shape.hosts} host(s), {shape.chips_per_host} per host")
  for command in commands:
    print(shlex.join(command))
    if args.run:
      subprocess.run(command, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
