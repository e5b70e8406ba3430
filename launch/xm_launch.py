r"""XManager launcher: one ``advrm_jax.main`` job per point of a config-override sweep.

  # Print the job specs and command lines, launch nothing (no xmanager needed):
  python launch/xm_launch.py --dry_run --config=configs/synthetic.py:small \
      --workdir=/tmp/xm --set=num_seeds=1 --sweep=rm.optimizer.learning_rate=1e-3,3e-3 \
      --sweep=rm.num_members=2,4

  # TPU v5e, 16 chips = a 4x4 slice of 4 hosts, through XManager on Cloud (GKE)
  # (pip install -e '.[xmanager]', an XManager on Cloud deployment):
  xmanager launch launch/xm_launch.py -- --config=configs/synthetic.py \
      --workdir=gs://bucket/advrm --platform=tpu --accelerator=tpu_v5e --accelerator_count=16 \
      --sweep=advrm.num_rounds=1,2,3

  # GPUs on Vertex AI, 2 hosts x 8 H100:
  xmanager launch launch/xm_launch.py -- --config=configs/synthetic.py \
      --workdir=gs://bucket/advrm --platform=gpu --accelerator=h100 --accelerator_count=8 --num_hosts=2

Sweep syntax: ``--sweep=KEY=V1,V2,...`` (repeatable; the jobs are the
Cartesian product, first flag slowest). Commas inside brackets belong to the
value (``--sweep=mesh.shape=(-1,1,1),(2,2,2)``); ``|`` separates values
instead of commas when present (``--sweep=name=a,b|c``). ``--set=KEY=V`` is
a fixed override for every job. Keys are config paths as for ``main.py``'s
``--config.KEY=V``; unknown keys fail there, at job start, with a one-line
error naming the key.

``--workdir`` is a bucket (``gs://...``) or a path every job's hosts share:
each job writes ``<workdir>/<job name>``.

Where the jobs run (``JobSpec.backend``), as xmanager 0.8.5 supports it:

* ``local``: docker on this machine (``xm_local.Local``);
* ``vertex``: CPU and GPU jobs, and TPU v2/v3, on Vertex AI
  (``xm_local.Vertex``; xmanager's Vertex client maps only TPU_V2/TPU_V3 to
  Vertex machine types). ``--num_hosts`` > 1 (GPU/CPU) is a chief pool and a
  worker pool of ``num_hosts - 1`` replicas; ``advrm_jax.main`` joins them
  into one ``jax.distributed`` job from Vertex's ``CLUSTER_SPEC``;
* ``xm_cloud``: TPU v4, v5e, v5p and v6e slices on GKE through XManager on
  Cloud (``xm_cloud.KubernetesJobExecutor``; xmanager maps them to the GKE
  accelerators tpu-v4-podslice, tpu-v5-lite-podslice, tpu-v5p-slice,
  tpu-v6e-slice with the slice's topology). ``--accelerator_count`` is the
  slice's chips; its hosts follow from the topology (``--num_hosts``, when
  given, must agree). Without an XManager on Cloud deployment, use the plain
  recipe ``launch/tpu_vm.py`` on a TPU VM slice.

Structure: ``build_job_specs`` is a pure function from flags to ``JobSpec``s
(command line, flags, environment, accelerator requirements); only
``launch_with_xmanager`` imports xmanager, so the specs (and ``--dry_run``)
work and are tested without it (xmanager pins protobuf<7 and pulls cloud
clients, hence the optional ``xmanager`` extra).
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re
import shlex
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

try:
  from launch import tpu_vm  # imported as launch.xm_launch (tests, the repository root on the path)
except ImportError:
  import tpu_vm  # run as a script: launch/ itself is on the path

PLATFORMS = ("local", "cpu", "gpu", "tpu")
# TPU generation (xm resource name) -> slice topology per chip count, as GKE / Cloud TPU name them
# (v4/v5p: 3-D tori; v5e/v6e: 2-D). xmanager's JobRequirements takes the topology string.
_TOPOLOGIES_3D = {
  4: "2x2x1",
  8: "2x2x2",
  16: "2x2x4",
  32: "2x4x4",
  64: "4x4x4",
  128: "4x4x8",
  256: "4x8x8",
  512: "8x8x8",
}
_TOPOLOGIES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TPU_TOPOLOGIES = {
  "tpu_v4": _TOPOLOGIES_3D,
  "tpu_v5p": _TOPOLOGIES_3D,
  "tpu_v5e": _TOPOLOGIES_2D,
  "tpu_v6e": _TOPOLOGIES_2D,
}
# TPUs xmanager's Vertex client maps (xmanager/cloud/vertex.py: TPU_V2, TPU_V3 -> machine type cloud-tpu).
VERTEX_TPUS = ("tpu_v2", "tpu_v3")
BACKENDS = ("local", "vertex", "xm_cloud")
ENTRYPOINT_MODULE = "advrm_jax.main"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Environment per platform. Local/CPU runs pin JAX to the host so a stray GPU
# plugin cannot change the numbers; GPU jobs stop XLA from grabbing 75% of
# memory up front (the sampler's KV cache grows during RL).
PLATFORM_ENV: dict[str, dict[str, str]] = {
  "local": {"JAX_PLATFORMS": "cpu"},
  "cpu": {"JAX_PLATFORMS": "cpu"},
  "gpu": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
  "tpu": {},
}
# pip extras of jax per platform for the container image.
PLATFORM_JAX = {"local": "jax", "cpu": "jax", "gpu": "jax[cuda12]", "tpu": "jax[tpu]"}


class LaunchError(ValueError):
  """A sweep or flag combination that cannot make jobs, named by flag."""


@dataclasses.dataclass(frozen=True)
class JobSpec:
  """Everything needed to start one job, independent of any launcher.

  Attributes:
    name: unique job name (experiment name, index and swept values).
    args: flags of ``advrm_jax.main`` in order, without the leading ``--``
      (``{"config": ..., "workdir": ..., "config.rm.optimizer.learning_rate": "0.001"}``).
    env: environment variables of the job.
    platform: one of PLATFORMS.
    requirements: accelerator requirements, the keyword arguments of
      ``xm.JobRequirements``: a count for GPUs (``{"a100": 4}``), the slice
      topology for TPUs (``{"tpu_v5e": "4x4"}``); empty for CPU jobs.
    sweep_values: the swept overrides of this job (a subset of ``args``).
    backend: one of BACKENDS (module doc).
    num_hosts: hosts of the job (TPU: of the slice).
  """

  name: str
  args: dict[str, str]
  env: dict[str, str]
  platform: str
  requirements: dict[str, int | str]
  sweep_values: dict[str, str]
  backend: str = "local"
  num_hosts: int = 1

  def argv(self, python: str = "python") -> list[str]:
    """The command as an argv list (``python -m advrm_jax.main --k=v ...``)."""
    return [python, "-m", ENTRYPOINT_MODULE] + [f"--{k}={v}" for k, v in self.args.items()]

  def command_line(self, python: str = "python") -> str:
    """A shell command line with the environment, e.g. for running by hand."""
    env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
    return " ".join(env + [shlex.join(self.argv(python))])


def split_values(text: str) -> list[str]:
  """Splits ``V1,V2`` on top-level commas (or on ``|`` when present)."""
  if "|" in text:
    return text.split("|")
  values, depth, current = [], 0, []
  for char in text:
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    if char == "," and depth == 0:
      values.append("".join(current))
      current = []
    else:
      current.append(char)
  values.append("".join(current))
  return values


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _key_value(item: str, flag: str) -> tuple[str, str]:
  key, sep, value = item.partition("=")
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config.") :]  # accept main.py's spelling too
  if not sep or not _KEY.match(key):
    raise LaunchError(f"--{flag}={item}: expected KEY=VALUE with a dotted config key")
  return key, value


def parse_sweep(items: Sequence[str]) -> list[tuple[str, list[str]]]:
  """``["a.b=1,2", "c=x"]`` -> ``[("a.b", ["1", "2"]), ("c", ["x"])]``."""
  axes, seen = [], set()
  for item in items:
    key, text = _key_value(item, "sweep")
    values = split_values(text)
    if key in seen:
      raise LaunchError(f"--sweep: key {key!r} swept twice")
    if any(v == "" for v in values) or len(set(values)) != len(values):
      raise LaunchError(f"--sweep={item}: values must be non-empty and distinct, got {values}")
    seen.add(key)
    axes.append((key, values))
  return axes


def expand_sweep(items: Sequence[str]) -> list[dict[str, str]]:
  """The Cartesian product of the sweep axes, first axis slowest; [{}] without a sweep."""
  axes = parse_sweep(items)
  keys = [k for k, _ in axes]
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def tpu_slice(accelerator: str, chips: int) -> tuple[str, int]:
  """(topology, hosts) of a TPU slice of ``chips`` chips of ``accelerator`` (tpu_v4, tpu_v5e, tpu_v5p, tpu_v6e).

  Raises LaunchError naming the supported generations and chip counts.
  """
  generation = accelerator.lower()
  if generation in VERTEX_TPUS:
    raise LaunchError(f"--accelerator={accelerator}: Vertex AI TPU v2/v3 jobs take a core count, not a slice")
  if generation not in TPU_TOPOLOGIES:
    raise LaunchError(
      f"--accelerator={accelerator}: supported TPUs are {sorted(TPU_TOPOLOGIES)} (GKE slices "
      f"through xm_cloud) and {list(VERTEX_TPUS)} (Vertex AI)"
    )
  topologies = TPU_TOPOLOGIES[generation]
  if chips not in topologies:
    raise LaunchError(f"--accelerator_count={chips}: a {generation} slice has one of {sorted(topologies)} chips")
  # The accelerator type of the same slice as Cloud TPU names it (v4/v5p count TensorCores, 2 per chip).
  size = chips * 2 if generation in ("tpu_v4", "tpu_v5p") else chips
  return topologies[chips], tpu_vm.slice_shape(f"{generation[len('tpu_') :]}-{size}").hosts


def build_job_specs(
  config: str,
  workdir: str,
  sweep: Sequence[str] = (),
  overrides: Sequence[str] = (),
  platform: str = "local",
  accelerator: str | None = None,
  accelerator_count: int = 0,
  num_hosts: int = 0,
  experiment_name: str = "advrm",
) -> list[JobSpec]:
  """Job specs of a sweep (pure: no xmanager, no file system, no JAX).

  Args:
    config: ``configs/<name>.py[:arg]`` as for ``main.py --config``.
    workdir: base directory; job i writes to ``<workdir>/<job name>``.
    sweep: ``KEY=V1,V2`` items (see module doc).
    overrides: ``KEY=V`` items applied to every job.
    platform: local | cpu | gpu | tpu (cpu/gpu/tpu are cloud jobs).
    accelerator: xm resource name for gpu/tpu (``a100``, ``h100``, ``tpu_v5e``...).
    accelerator_count: accelerators per host for GPUs; chips of the slice
      for TPUs (the slice's topology and hosts follow from it).
    num_hosts: hosts per job (0: one, or the TPU slice's). > 1 turns on
      ``config.distributed`` so every host joins one ``jax.distributed`` job.
    experiment_name: prefix of the job names.
  """
  if platform not in PLATFORMS:
    raise LaunchError(f"--platform={platform}: expected one of {PLATFORMS}")
  if platform in ("gpu", "tpu"):
    if not accelerator or accelerator_count < 1:
      raise LaunchError(f"--platform={platform} needs --accelerator and --accelerator_count >= 1")
    if platform == "tpu" and not accelerator.lower().startswith("tpu"):
      raise LaunchError(f"--platform=tpu: --accelerator={accelerator} is not a TPU type (tpu_v4, tpu_v5e...)")
    if platform == "gpu" and accelerator.lower().startswith("tpu"):
      raise LaunchError(f"--platform=gpu: --accelerator={accelerator} is a TPU type")
  elif accelerator:
    raise LaunchError(f"--platform={platform} takes no --accelerator (got {accelerator})")
  if num_hosts < 0:
    raise LaunchError(f"--num_hosts={num_hosts}: must be >= 1 (or 0: derived)")
  requirements: dict[str, int | str] = {accelerator.lower(): int(accelerator_count)} if accelerator else {}
  backend = "local" if platform == "local" else "vertex"
  hosts = num_hosts or 1
  if platform == "tpu" and accelerator.lower() not in VERTEX_TPUS:
    topology, hosts = tpu_slice(accelerator, accelerator_count)
    if num_hosts and num_hosts != hosts:
      raise LaunchError(
        f"--num_hosts={num_hosts}: a {accelerator} slice of {accelerator_count} chips ({topology}) has {hosts} host(s)"
      )
    requirements, backend = {accelerator.lower(): topology}, "xm_cloud"
  elif platform == "tpu" and hosts > 1:
    raise LaunchError(
      f"--num_hosts={num_hosts}: xmanager runs {accelerator} on Vertex AI as one replica; "
      f"multi-host TPUs are {sorted(TPU_TOPOLOGIES)} slices"
    )
  elif platform == "local" and hosts > 1:
    raise LaunchError(f"--num_hosts={num_hosts}: a local job is one host; rehearse several with launch/multihost.py")
  fixed = dict(_key_value(item, "set") for item in overrides)
  points = expand_sweep(sweep)
  clash = sorted(set(fixed) & set(points[0]))
  if clash:
    raise LaunchError(f"--set and --sweep both give {clash}")
  if hosts > 1:
    fixed.setdefault("distributed", "True")
  specs = []
  for index, point in enumerate(points):
    suffix = "-".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())
    name = _slug(f"{experiment_name}-{index:03d}" + (f"-{suffix}" if suffix else ""))
    args = {"config": config, "workdir": f"{workdir.rstrip('/')}/{name}"}
    # Fixed overrides first, then swept ones, so a job's distinguishing flags
    # are at the end of its command line.
    args.update({f"config.{k}": v for k, v in fixed.items()})
    args.update({f"config.{k}": v for k, v in point.items()})
    specs.append(
      JobSpec(
        name=name,
        args=args,
        env=dict(PLATFORM_ENV[platform]),
        platform=platform,
        requirements=dict(requirements),
        sweep_values=dict(point),
        backend=backend,
        num_hosts=hosts,
      )
    )
  return specs


def format_dry_run(specs: Sequence[JobSpec], python: str = "python") -> str:
  """What ``--dry_run`` prints: a comment per job, then its command line."""
  lines = [f"# {len(specs)} job(s)"]
  for spec in specs:
    where = spec.platform + (f" {spec.requirements}" if spec.requirements else "")
    if spec.backend != "local":
      where += f" on {spec.backend}, {spec.num_hosts} host(s)"
    lines.append(f"# {spec.name} ({where})")
    lines.append(spec.command_line(python))
  return "\n".join(lines)


def docker_instructions(platform: str, repo_dir_name: str) -> list[str]:
  """Image recipe: the repository copied in and installed with the platform's jax."""
  return [
    f"COPY {repo_dir_name}/ /workdir/{repo_dir_name}",
    f"WORKDIR /workdir/{repo_dir_name}",
    f"RUN python -m pip install --no-cache-dir -e . '{PLATFORM_JAX[platform]}'",
  ]


def launch_with_xmanager(
  specs: Sequence[JobSpec],
  experiment_title: str,
  repo_root: str | pathlib.Path = REPO_ROOT,
  base_image: str = "python:3.11",
  experiment: Any = None,
) -> Any:
  """Turns specs into xm objects and adds them to an experiment (imports xmanager).

  Args:
    specs: from ``build_job_specs``; all of one platform and backend.
    experiment_title: title of a new experiment.
    repo_root: directory packaged into the container.
    base_image: container base image.
    experiment: an existing experiment to add to (tests pass a recorder);
      default: a new one of the backend (``xm_local`` or ``xm_cloud``).

  Returns:
    The experiment.
  """
  from xmanager import xm  # pylint: disable=import-outside-toplevel

  kinds = {(s.platform, s.backend) for s in specs}
  if len(kinds) != 1:
    raise LaunchError(f"one platform and backend per experiment, got {sorted(kinds)}")
  platform, backend = kinds.pop()
  if backend == "xm_cloud":
    try:
      from xmanager import xm_cloud  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise LaunchError(
        f"TPU slices ({sorted(TPU_TOPOLOGIES)}) run through xmanager's XManager on Cloud backend "
        f"(xmanager >= 0.8.5, xmanager.xm_cloud), which cannot be imported here ({e}); without it, "
        "use launch/tpu_vm.py on a TPU VM slice"
      ) from e
    executor_spec = xm_cloud.KubernetesJobExecutor.Spec()
    make_executor = lambda requirements: xm_cloud.KubernetesJobExecutor(requirements=requirements)
    create_experiment = xm_cloud.create_experiment
  else:
    from xmanager import xm_local  # pylint: disable=import-outside-toplevel

    local = backend == "local"
    executor_spec = xm_local.Local.Spec() if local else xm_local.Vertex.Spec()
    make_executor = lambda requirements: xm_local.Local() if local else xm_local.Vertex(requirements=requirements)
    create_experiment = xm_local.create_experiment
  repo_root = pathlib.Path(repo_root)
  executable_spec = xm.PythonContainer(
    path=str(repo_root),
    base_image=base_image,
    entrypoint=xm.ModuleName(ENTRYPOINT_MODULE),
    docker_instructions=docker_instructions(platform, repo_root.name),
  )

  def job(executable, spec, replicas=None):
    requirements = xm.JobRequirements(**spec.requirements, **({"replicas": replicas} if replicas else {}))
    return xm.Job(
      executable=executable,
      executor=make_executor(requirements),
      args=dict(spec.args),
      env_vars=dict(spec.env),
      name=spec.name,
    )

  def add_all(exp):
    [executable] = exp.package([xm.Packageable(executable_spec=executable_spec, executor_spec=executor_spec)])
    for spec in specs:
      if backend == "vertex" and spec.num_hosts > 1:
        # Vertex AI: the first worker pool is one chief replica, the second the other hosts; each replica
        # finds the others in CLUSTER_SPEC, from which advrm_jax.main joins one jax.distributed job.
        exp.add(xm.JobGroup(chief=job(executable, spec), workers=job(executable, spec, spec.num_hosts - 1)))
      else:
        # A TPU slice's hosts come with its topology (xm_cloud starts one pod per host).
        exp.add(job(executable, spec))
    return exp

  if experiment is not None:
    return add_all(experiment)
  with create_experiment(experiment_title=experiment_title) as exp:
    return add_all(exp)


_CONFIG = flags.DEFINE_string("config", None, "Config file for advrm_jax.main (configs/<name>.py[:arg]).")
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Base work directory, gs://BUCKET/DIR or a path all hosts share; each job writes to <workdir>/<job name>.",
)
_SWEEP = flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,... swept config override (repeatable: product).")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every job (repeatable).")
_PLATFORM = flags.DEFINE_enum("platform", "local", PLATFORMS, "local (docker on this machine) or cloud cpu/gpu/tpu.")
_ACCELERATOR = flags.DEFINE_string("accelerator", None, "xm resource name: a100, h100, v100, t4, tpu_v4, tpu_v5e...")
_ACCELERATOR_COUNT = flags.DEFINE_integer("accelerator_count", 0, "GPUs per host, or the TPU slice's chips.")
_NUM_HOSTS = flags.DEFINE_integer(
  "num_hosts", 0, "Hosts per job (0: one, or the TPU slice's); > 1 sets config.distributed=True."
)
_NAME = flags.DEFINE_string("experiment_name", "advrm", "Experiment title and job-name prefix.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the job specs' command lines; launch nothing.")
_PYTHON = flags.DEFINE_string("python", "python", "Interpreter shown in dry-run command lines.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  try:
    specs = build_job_specs(
      _CONFIG.value,
      _WORKDIR.value,
      _SWEEP.value,
      _SET.value,
      _PLATFORM.value,
      _ACCELERATOR.value,
      _ACCELERATOR_COUNT.value,
      _NUM_HOSTS.value,
      _NAME.value,
    )
  except LaunchError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  if _DRY_RUN.value:
    print(format_dry_run(specs, _PYTHON.value))
    return
  launch_with_xmanager(specs, _NAME.value)


if __name__ == "__main__":
  app.run(main)
