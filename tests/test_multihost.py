"""Real multi-process JAX on one machine: 2 processes x 4 CPU devices == 1 process x 8 devices.

Both runs execute launch/multihost_worker.py (an RM Bradley-Terry step and an
RL iteration on a global (2, 2, 2) mesh); the 2-process one joins through
launch/multihost.py (localhost coordinator, gloo collectives). Shards of the
batch and of the parameters then live in different processes, so every
all-reduce and all-gather in the steps crosses a process boundary.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from launch import multihost

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "launch" / "multihost_worker.py"
TIMEOUT_SECONDS = 900  # generous: the machine's 2 cores are shared; ~60 s CPU on a quiet one


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  # Both runs at once: their compiles overlap on the two cores.
  single_env = multihost.process_env(0, 1, 0, devices_per_process=8)
  for key in (multihost.ENV_COORDINATOR, multihost.ENV_NUM_PROCESSES, multihost.ENV_PROCESS_ID):
    single_env.pop(key)  # a plain single-process run, no jax.distributed
  single = subprocess.Popen(
    [sys.executable, str(WORKER), f"--out={one}"],
    env=single_env,
    stdout=open(tmp_path / "one.log", "w"),
    stderr=subprocess.STDOUT,
  )
  pair = multihost.launch(
    [sys.executable, str(WORKER), f"--out={two}"],
    num_processes=2,
    devices_per_process=4,
    log_prefix=str(tmp_path / "two"),
  )
  codes = multihost.wait(pair, TIMEOUT_SECONDS)
  single_code = single.wait(timeout=TIMEOUT_SECONDS)
  logs = {p.name: p.read_text()[-3000:] for p in sorted(tmp_path.glob("*.log"))}
  assert codes == [0, 0] and single_code == 0, logs

  a = json.loads((one / "results.json").read_text())
  b = json.loads((two / "results.json").read_text())
  assert (a["process_count"], a["local_devices"], a["global_devices"]) == (1, 8, 8)
  assert (b["process_count"], b["local_devices"], b["global_devices"]) == (2, 4, 8)
  # Each process built only its own rows; the global batches assembled from them are the whole batches.
  assert a["rm"]["batches_equal"] == b["rm"]["batches_equal"] == [True, True]
  np.testing.assert_allclose(b["rm"]["losses"], a["rm"]["losses"], atol=1e-5, rtol=0)
  for part in ("rm", "rl"):
    for key, value in a[part]["metrics"].items():
      np.testing.assert_allclose(b[part]["metrics"][key], value, atol=1e-5, rtol=1e-5, err_msg=f"{part} {key}")
    assert a[part]["checksums"].keys() == b[part]["checksums"].keys()
    for leaf, sums in a[part]["checksums"].items():
      for kind, value in sums.items():
        np.testing.assert_allclose(
          b[part]["checksums"][leaf][kind], value, atol=1e-5, rtol=1e-5, err_msg=f"{part} {leaf} {kind}"
        )
  # Sampling is exactly the same (same keys, same logits up to rounding).
  assert a["rl"]["response_tokens"] == b["rl"]["response_tokens"]
  # And every parameter, not just the checksums.
  pa, pb = np.load(one / "params.npz"), np.load(two / "params.npz")
  assert sorted(pa.files) == sorted(pb.files) and pa.files
  for name in pa.files:
    np.testing.assert_allclose(pb[name], pa[name], atol=1e-5, rtol=0, err_msg=name)
