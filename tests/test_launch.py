"""Launchers: XManager job specs of a sweep (dry run, no xmanager needed) and the multi-host env."""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from launch import multihost
from launch import tpu_vm
from launch import xm_launch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sweep_is_a_product_with_bracket_aware_values():
  points = xm_launch.expand_sweep(["rm.optimizer.learning_rate=1e-3,3e-3", "mesh.shape=(-1,1,1),(2,2,2)"])
  assert points == [
    {"rm.optimizer.learning_rate": "1e-3", "mesh.shape": "(-1,1,1)"},
    {"rm.optimizer.learning_rate": "1e-3", "mesh.shape": "(2,2,2)"},
    {"rm.optimizer.learning_rate": "3e-3", "mesh.shape": "(-1,1,1)"},
    {"rm.optimizer.learning_rate": "3e-3", "mesh.shape": "(2,2,2)"},
  ]
  assert xm_launch.expand_sweep(["name=a,b|c"]) == [{"name": "a,b"}, {"name": "c"}]
  assert xm_launch.expand_sweep([]) == [{}]


def test_tpu_sweep_specs_and_command_lines():
  specs = xm_launch.build_job_specs(
    "configs/synthetic.py:small",
    "/shared/runs/",
    sweep=["rm.optimizer.learning_rate=1e-3,3e-3", "num_seeds=1,2"],
    overrides=["config.rm.num_steps=50"],
    platform="tpu",
    accelerator="tpu_v4",
    accelerator_count=8,
    num_hosts=2,
    experiment_name="lr sweep",
  )
  assert len(specs) == 4
  assert len({s.name for s in specs}) == 4 and len({s.args["workdir"] for s in specs}) == 4
  first = specs[0]
  assert first.name == "lr_sweep-000-learning_rate=1e-3-num_seeds=1"
  # 8 v4 chips: the 2x2x2 slice v4-16, 2 hosts, through XManager on Cloud (GKE).
  assert first.requirements == {"tpu_v4": "2x2x2"} and first.platform == "tpu"
  assert (first.backend, first.num_hosts) == ("xm_cloud", 2)
  assert first.sweep_values == {"rm.optimizer.learning_rate": "1e-3", "num_seeds": "1"}
  assert first.argv() == [
    "python",
    "-m",
    "advrm_jax.main",
    "--config=configs/synthetic.py:small",
    f"--workdir=/shared/runs/{first.name}",
    "--config.rm.num_steps=50",
    "--config.distributed=True",
    "--config.rm.optimizer.learning_rate=1e-3",
    "--config.num_seeds=1",
  ]
  assert [s.args["config.num_seeds"] for s in specs] == ["1", "2", "1", "2"]  # first sweep flag slowest
  assert [s.args["config.rm.optimizer.learning_rate"] for s in specs] == ["1e-3", "1e-3", "3e-3", "3e-3"]
  # The command line is a valid shell line giving back the same argv.
  assert shlex.split(first.command_line()) == first.argv()


def test_local_and_gpu_environment():
  (local,) = xm_launch.build_job_specs("configs/rm_hh.py", "/tmp/x")
  assert local.env == {"JAX_PLATFORMS": "cpu"} and local.requirements == {}
  assert "distributed" not in " ".join(local.argv())
  assert local.command_line().startswith("JAX_PLATFORMS=cpu python -m advrm_jax.main --config=configs/rm_hh.py ")
  (gpu,) = xm_launch.build_job_specs(
    "configs/rm_hh.py", "/tmp/x", platform="gpu", accelerator="A100", accelerator_count=4
  )
  assert gpu.requirements == {"a100": 4} and gpu.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(platform="tpu"), "needs --accelerator"),
    (dict(platform="tpu", accelerator="a100", accelerator_count=1), "not a TPU type"),
    (dict(platform="local", accelerator="a100", accelerator_count=1), "takes no --accelerator"),
    (dict(sweep=["num_seeds=1,1"]), "distinct"),
    (dict(sweep=["num_seeds=1", "num_seeds=2"]), "swept twice"),
    (dict(sweep=["num_seeds=1,2"], overrides=["num_seeds=3"]), "both give"),
    (dict(sweep=["not a key=1"]), "--sweep=not a key=1"),
    (dict(platform="slurm"), "--platform=slurm"),
  ],
)
def test_bad_flags_are_named(kwargs, match):
  with pytest.raises(xm_launch.LaunchError, match=match):
    xm_launch.build_job_specs("configs/rm_hh.py", "/tmp/x", **kwargs)


def test_dry_run_cli_prints_the_sweep_without_xmanager(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "launch" / "xm_launch.py"),
      "--dry_run",
      "--config=configs/synthetic.py:small",
      f"--workdir={tmp_path}",
      "--set=num_seeds=1",
      "--sweep=rm.optimizer.learning_rate=1e-3,3e-3",
      "--platform=gpu",
      "--accelerator=h100",
      "--accelerator_count=8",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=60,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0] == "# 2 job(s)"
  assert lines[1] == "# advrm-000-learning_rate=1e-3 (gpu {'h100': 8} on vertex, 1 host(s))"
  assert lines[2] == (
    f"XLA_PYTHON_CLIENT_PREALLOCATE=false python -m advrm_jax.main "
    f"--config=configs/synthetic.py:small --workdir={tmp_path}/advrm-000-learning_rate=1e-3 "
    "--config.num_seeds=1 --config.rm.optimizer.learning_rate=1e-3"
  )
  assert lines[4].endswith("--config.rm.optimizer.learning_rate=3e-3")
  bad = subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "launch" / "xm_launch.py"),
      "--dry_run",
      "--config=c.py",
      "--workdir=/tmp/x",
      "--sweep=seeds",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=60,
    check=False,
  )
  assert (
    bad.returncode == 2 and bad.stderr.strip() == "error: --sweep=seeds: expected KEY=VALUE with a dotted config key"
  )


@pytest.mark.parametrize(
  "accelerator, chips, topology, hosts",
  [
    # GKE / Cloud TPU slice shapes: v4 and v5p 3-D (4 chips per host), v5e and v6e 2-D (one VM up to 8 chips).
    ("tpu_v4", 4, "2x2x1", 1),
    ("tpu_v5p", 32, "2x4x4", 8),
    ("tpu_v5e", 16, "4x4", 4),
    ("tpu_v5e", 8, "2x4", 1),
    ("tpu_v6e", 64, "8x8", 16),
  ],
)
def test_tpu_slices_go_to_xm_cloud_with_their_topology_and_hosts(accelerator, chips, topology, hosts):
  (spec,) = xm_launch.build_job_specs(
    "configs/synthetic.py", "gs://b/x", platform="tpu", accelerator=accelerator, accelerator_count=chips
  )
  assert spec.requirements == {accelerator: topology} and (spec.backend, spec.num_hosts) == ("xm_cloud", hosts)
  assert (spec.args.get("config.distributed") == "True") == (hosts > 1)
  # An explicit --num_hosts must agree with the slice.
  assert (
    xm_launch.build_job_specs(
      "c.py", "/x", platform="tpu", accelerator=accelerator, accelerator_count=chips, num_hosts=hosts
    )[0].num_hosts
    == hosts
  )
  with pytest.raises(xm_launch.LaunchError, match=f"has {hosts} host"):
    xm_launch.build_job_specs(
      "c.py", "/x", platform="tpu", accelerator=accelerator, accelerator_count=chips, num_hosts=hosts + 1
    )


def test_gpu_hosts_and_refusals_name_what_is_supported():
  (gpu,) = xm_launch.build_job_specs(
    "c.py", "gs://b/x", platform="gpu", accelerator="h100", accelerator_count=8, num_hosts=2
  )
  assert (gpu.backend, gpu.num_hosts, gpu.requirements) == ("vertex", 2, {"h100": 8})
  assert gpu.args["config.distributed"] == "True"
  (v3,) = xm_launch.build_job_specs("c.py", "/x", platform="tpu", accelerator="tpu_v3", accelerator_count=8)
  assert (v3.backend, v3.requirements) == ("vertex", {"tpu_v3": 8})  # xmanager's Vertex client maps v2/v3 only
  for kwargs, match in [
    (dict(platform="tpu", accelerator="tpu_v7x", accelerator_count=8), r"supported TPUs are \['tpu_v4', 'tpu_v5e'"),
    (dict(platform="tpu", accelerator="tpu_v5e", accelerator_count=12), r"one of \[1, 4, 8, 16"),
    (dict(platform="tpu", accelerator="tpu_v3", accelerator_count=8, num_hosts=2), "multi-host TPUs are"),
    (dict(num_hosts=2), "launch/multihost.py"),
  ]:
    with pytest.raises(xm_launch.LaunchError, match=match):
      xm_launch.build_job_specs("c.py", "/x", **kwargs)


def test_vertex_cluster_spec_becomes_jax_distributed_arguments():
  spec = {
    "cluster": {
      "workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
      "workerpool1": ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"],
    },
    "environment": "cloud",
    "task": {"type": "workerpool1", "index": 1},
  }
  chief = dict(spec, task={"type": "workerpool0", "index": 0})
  # In a subprocess: advrm_jax.main defines absl flags (--config) that xm_launch defines too.
  code = (
    "import json, sys; from advrm_jax.main import vertex_cluster; "
    "print(json.dumps([vertex_cluster(s) for s in sys.argv[1:]]))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code, json.dumps(spec), json.dumps(chief)],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  )
  worker_args, chief_args = json.loads(result.stdout)
  # Pool 0 (1 replica) then pool 1: the second replica of pool 1 is process 2 of 3.
  assert worker_args == {
    "coordinator_address": "cmle-training-workerpool0-ab-0:8476",
    "num_processes": 3,
    "process_id": 2,
  }
  assert chief_args["process_id"] == 0


class _RecordingExperiment:
  """Stands in for an xm experiment: records what would be packaged and added."""

  def __init__(self):
    self.packaged, self.jobs = [], []

  def package(self, packageables):
    self.packaged.extend(packageables)
    return ["executable"] * len(packageables)

  def add(self, job):
    self.jobs.append(job)


def test_specs_become_xm_jobs():
  pytest.importorskip(
    "xmanager",
    reason="xmanager is an optional extra (pip install -e '.[xmanager]'); "
    "the dry-run tests above cover the job specs without it",
  )
  specs = xm_launch.build_job_specs(
    "configs/synthetic.py", "/tmp/x", sweep=["num_seeds=1,2"], platform="tpu", accelerator="tpu_v4", accelerator_count=8
  )
  experiment = xm_launch.launch_with_xmanager(specs, "test", experiment=_RecordingExperiment())
  assert len(experiment.packaged) == 1 and len(experiment.jobs) == 2
  job = experiment.jobs[1]
  # xm.Job converts the dict to xm.SequentialArgs.
  args = job.args.to_dict() if hasattr(job.args, "to_dict") else dict(job.args)
  assert args["config.num_seeds"] == "2" and job.name == specs[1].name
  assert job.env_vars == {}  # TPU jobs need no extra environment
  assert "tpu_v4" in str(job.executor.requirements).lower()


def test_multihost_child_environment():
  env = multihost.process_env(
    1, 2, 12345, devices_per_process=4, base_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1"}
  )
  assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:12345"
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
  assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo" and env["JAX_PLATFORMS"] == "cpu"
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
  with pytest.raises(SystemExit):
    multihost.main(["--num_processes=2"])  # no command after --


# ---------------------------------------------------------------------------
# launch/tpu_vm.py: the gcloud recipe for a TPU VM slice.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "accelerator_type, chips, hosts",
  [
    # Google's accelerator-type tables: v4 and v5p count TensorCores (2 per chip), v5e/v6e count chips;
    # multi-host slices have 4 chips per TPU VM.
    ("v4-8", 4, 1),
    ("v4-32", 16, 4),
    ("v5litepod-16", 16, 4),
    ("v5e-16", 16, 4),
    ("v5litepod-8", 8, 1),
    ("v5litepod-4", 4, 1),
    ("v5p-8", 4, 1),
    ("v5p-16", 8, 2),
    ("v5p-64", 32, 8),
    ("v6e-8", 8, 1),
    ("v6e-16", 16, 4),
    ("v6e-256", 256, 64),
  ],
)
def test_slice_shapes_against_the_published_tables(accelerator_type, chips, hosts):
  shape = tpu_vm.slice_shape(accelerator_type)
  assert (shape.chips, shape.hosts) == (chips, hosts)


@pytest.mark.parametrize(
  "accelerator_type, match",
  [
    ("v4-6", "multiples of 8"),
    ("v5litepod-2", "1, 4 or 8 chips"),
    ("v5litepod-18", "multiple of 4"),
    ("v7-8", "generation one of"),
    ("tpu_v4", "expected <generation>-<size>"),
  ],
)
def test_unknown_slices_are_named(accelerator_type, match):
  with pytest.raises(tpu_vm.SliceError, match=match):
    tpu_vm.slice_shape(accelerator_type)


def _ssh(name, zone, command):
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--zone", zone, "--worker=all", "--command", command]


def test_tpu_vm_commands_for_v4_8_v5e_16_and_v5p_64():
  install = 'cd ~/repo && python3 -m pip install -U "jax[tpu]" && python3 -m pip install -e ".[gcs]"'
  # v4-8: one host, so no jax.distributed job; a local work dir is allowed.
  copy, setup, run = tpu_vm.slice_commands(
    "v4",
    "us-central2-b",
    "v4-8",
    "configs/synthetic.py:small",
    "/tmp/advrm",
    ["--config.num_seeds=1"],
    repo_root="/src/repo",
  )
  assert copy == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "scp",
    "--recurse",
    "/src/repo",
    "v4:~",
    "--zone",
    "us-central2-b",
    "--worker=all",
  ]
  assert setup == _ssh("v4", "us-central2-b", install)
  assert run == _ssh(
    "v4",
    "us-central2-b",
    "cd ~/repo && python3 -m advrm_jax.main "
    "--config=configs/synthetic.py:small --workdir=/tmp/advrm --config.num_seeds=1",
  )
  # v5e-16 (4 hosts) and v5p-64 (8 hosts): every host joins one job writing to the bucket.
  for accelerator_type in ("v5litepod-16", "v5p-64"):
    *_, run = tpu_vm.slice_commands(
      "pod",
      "us-east5-a",
      accelerator_type,
      "configs/synthetic.py",
      "gs://bucket/advrm",
      project="proj",
      repo_root="/src/repo",
    )
    assert run == [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      "pod",
      "--zone",
      "us-east5-a",
      "--worker=all",
      "--project",
      "proj",
      "--command",
      "cd ~/repo && python3 -m advrm_jax.main --config=configs/synthetic.py "
      "--workdir=gs://bucket/advrm --config.distributed=True",
    ]
  with pytest.raises(tpu_vm.SliceError, match="8 hosts and no disk they share"):
    tpu_vm.slice_commands("pod", "z", "v5p-64", "configs/synthetic.py", "/tmp/advrm")


def test_tpu_vm_cli_prints_the_recipe(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "launch" / "tpu_vm.py"),
      "--name=pod",
      "--zone=us-west4-a",
      "--accelerator_type=v5litepod-16",
      "--config=configs/synthetic.py",
      "--workdir=gs://b/run",
      "--",
      "--config.num_seeds=1",
    ],
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0] == "# v5litepod-16: 16 chips on 4 host(s), 4 per host"
  assert shlex.split(lines[3])[-1].endswith("--config.num_seeds=1 --config.distributed=True")
  bad = subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "launch" / "tpu_vm.py"),
      "--name=pod",
      "--zone=z",
      "--accelerator_type=v5p-64",
      "--config=c.py",
      "--workdir=/tmp/x",
    ],
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert bad.returncode == 2 and bad.stderr.startswith("error: --workdir=/tmp/x: v5p-64 has 8 hosts")
