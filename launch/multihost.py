r"""A plain multi-host launcher for ``jax.distributed`` (no cluster manager needed).

Starts N processes of one command on this machine, each told (through
environment variables) the coordinator address, the number of processes and
its own process id, with CPU collectives over gloo and a forced number of
host CPU devices per process. It is the single-machine rehearsal of a
multi-host TPU/GPU job: the same SPMD program, the same global mesh, the same
cross-process collectives, only slower.

  python -m launch.multihost --num_processes=2 --devices_per_process=4 -- \
      python -m advrm_jax.main --config configs/synthetic.py:small --workdir /tmp/mh --config.distributed=True

Each child sees

* ``JAX_COORDINATOR_ADDRESS=localhost:<port>`` (read by JAX itself),
* ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (not read by JAX: ``advrm_jax.main``
  passes them to ``jax.distributed.initialize`` under ``--config.distributed=True``),
* ``JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo`` (a JAX config option, read from
  the environment at import),
* ``XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>``
  and ``JAX_PLATFORMS=cpu`` unless ``--platform`` says otherwise.

On real multi-host hardware (TPU pods, SLURM) none of this is needed:
``jax.distributed.initialize()`` detects the cluster itself.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from typing import Mapping, Sequence

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def free_port() -> int:
  """A TCP port that was free a moment ago (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(
  process_id: int,
  num_processes: int,
  port: int,
  devices_per_process: int | None = 4,
  platform: str | None = "cpu",
  base_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
  """The environment of one child process (a pure function, for tests).

  Args:
    process_id: this process's index in [0, num_processes).
    num_processes: N.
    port: coordinator port on localhost (process 0 hosts the coordinator).
    devices_per_process: forced host CPU devices per process; None keeps
      the inherited XLA_FLAGS (e.g. on a machine with real accelerators).
    platform: JAX_PLATFORMS for the child; None keeps the inherited value.
    base_env: environment to extend (default: this process's).
  """
  env = dict(os.environ if base_env is None else base_env)
  env[ENV_COORDINATOR] = f"localhost:{port}"
  env[ENV_NUM_PROCESSES] = str(num_processes)
  env[ENV_PROCESS_ID] = str(process_id)
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
  if devices_per_process is not None:
    # Replace any inherited device count (pytest's conftest forces 8) but keep
    # other XLA flags.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env["XLA_FLAGS"] = " ".join(flags)
  if platform is not None:
    env["JAX_PLATFORMS"] = platform
  return env


def launch(
  command: Sequence[str],
  num_processes: int,
  devices_per_process: int | None = 4,
  port: int | None = None,
  platform: str | None = "cpu",
  cwd: str | None = None,
  log_prefix: str | None = None,
  base_env: Mapping[str, str] | None = None,
) -> list[subprocess.Popen]:
  """Starts ``num_processes`` copies of ``command``; returns their Popen handles.

  With ``log_prefix``, process i writes stdout and stderr to
  ``<log_prefix>.<i>.log``; otherwise they inherit this process's streams.
  """
  port = free_port() if port is None else port
  procs = []
  for i in range(num_processes):
    env = process_env(i, num_processes, port, devices_per_process, platform, base_env)
    out = open(f"{log_prefix}.{i}.log", "w") if log_prefix else None  # pylint: disable=consider-using-with
    procs.append(
      subprocess.Popen(list(command), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None)
    )
    if out:
      out.close()  # the child holds its own descriptor
  return procs


def wait(procs: Sequence[subprocess.Popen], timeout_seconds: float | None = None) -> list[int]:
  """Waits for every process; on the first failure or a timeout, ends the rest.

  A process that dies leaves the others blocked in a collective until their
  own timeout, so they are terminated at once instead.
  """
  deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
  pending = list(procs)
  while pending:
    for p in list(pending):
      if p.poll() is not None:
        pending.remove(p)
        if p.returncode != 0:
          _terminate(pending)
          pending = []
          break
    if deadline is not None and time.monotonic() > deadline:
      _terminate(pending)
      break
    time.sleep(0.1)
  return [p.wait() for p in procs]


def _terminate(procs: Sequence[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      p.terminate()
  for p in procs:
    try:
      p.wait(timeout=10)
    except subprocess.TimeoutExpired:
      p.kill()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n", 1)[0], usage="%(prog)s [options] -- command [args...]"
  )
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument(
    "--devices_per_process",
    type=int,
    default=4,
    help="forced host CPU devices per process; 0 keeps the inherited XLA_FLAGS",
  )
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS of the children ('' keeps the inherited)")
  parser.add_argument("--log_prefix", default=None, help="write process i's output to PREFIX.i.log")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before every process is ended")
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("no command given (put it after --)")
  procs = launch(
    command,
    args.num_processes,
    args.devices_per_process or None,
    args.port,
    args.platform or None,
    log_prefix=args.log_prefix,
  )
  codes = wait(procs, args.timeout)
  for i, code in enumerate(codes):
    if code:
      print(f"process {i} exited with code {code}", file=sys.stderr)
  return next((c for c in codes if c), 0)


if __name__ == "__main__":
  sys.exit(main())
