"""Config faults end the run with one clear error naming the key, before anything compiles.

Through the entry point (a subprocess, as a user runs it): an unknown key, a
value of the wrong type, a batch that the data axes do not divide, a mesh
larger than the device count and sequence limits that cannot fit the prompt
each give exit code 2 and one ``error: ...`` line naming the config key, no
traceback, and (``JAX_LOG_COMPILES=1``) no XLA compilation at all.

In-process, more variants of the same checks run against the stages with
the model constructors replaced by tripwires, so "before anything compiles"
is checked directly rather than through jax's (shared) compilation caches.

``run_entry_point`` is also used by the other test_reliability_* modules.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from advrm_jax import sharding as shd
from advrm_jax.pipelines import rl_driver, run_stages, sft_driver

REPO = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "configs" / "synthetic.py"

# `python -m advrm_jax.main` with torch hidden. tensorboardX (the metrics
# writer) imports torch whenever it is installed -- here only because the
# test extras bring it for parity tests -- which costs ~10 s per launch on a
# shared CPU; a user without the test extras runs exactly this code path.
# torch is hidden by a meta-path finder (an ImportError, as on a machine
# without it), not by sys.modules['torch'] = None, which libraries such as
# scipy's array-API layer take for an installed torch.
_LAUNCH = """
import importlib.abc, runpy, sys
class _NoTorch(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("torch is hidden in this test subprocess")
sys.meta_path.insert(0, _NoTorch())
runpy.run_module("advrm_jax.main", run_name="__main__", alter_sys=True)
"""


def entry_point_env(
  devices: int = 1, compile_cache: str | os.PathLike | None = None, log_compiles: bool = False
) -> dict[str, str]:
  """Environment of a CPU subprocess with ``devices`` host devices."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    PYTHONUNBUFFERED="1",
  )
  env.pop("PYTEST_CURRENT_TEST", None)
  if compile_cache is not None:
    # Launches of the same stage reuse each other's executables (identical
    # HLO gives the identical executable, so results are unchanged).
    env.update(
      JAX_COMPILATION_CACHE_DIR=str(compile_cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
  if log_compiles:
    env["JAX_LOG_COMPILES"] = "1"
  return env


def entry_point_command(config: str, workdir: os.PathLike, *overrides: str) -> list[str]:
  return [sys.executable, "-c", _LAUNCH, f"--config={config}", f"--workdir={workdir}", *overrides]


def run_entry_point(
  config: str, workdir: os.PathLike, *overrides: str, timeout: float = 600, **env_kwargs
) -> subprocess.CompletedProcess:
  return subprocess.run(
    entry_point_command(config, workdir, *overrides),
    cwd=REPO,
    env=entry_point_env(**env_kwargs),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit code 2, no traceback, last stderr line ``error: ...`` containing ``fragments``."""
  assert result.returncode == 2, f"exit code {result.returncode}\n{result.stderr[-4000:]}"
  assert "Traceback" not in result.stderr, result.stderr[-4000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), last
  for fragment in fragments:
    assert fragment in last, f"{fragment!r} not in {last!r}"
  return last


# ---------------------------------------------------------------------------
# Through the entry point.
# ---------------------------------------------------------------------------

ENTRY_POINT_FAULTS = {
  "unknown_key": (
    1,
    ["--config.sft.bogus=1"],
    ["--config.sft.bogus: config.sft.bogus: unknown key; known: batch_size,"],
  ),
  "wrong_type": (1, ["--config.sft.batch_size=many"], ["--config.sft.batch_size=many", "invalid literal for int"]),
  "batch_not_divisible": (
    2,
    ["--config.mesh.shape=(2,1,1)", "--config.sft.batch_size=7"],
    ["sft.batch_size=7", "not divisible", "data-parallel mesh size 2"],
  ),
  "mesh_too_large": (1, ["--config.mesh.shape=(4,1,1)"], ["mesh.shape (4, 1, 1)", "needs 4 devices", "only 1"]),
  "prompt_does_not_fit": (1, ["--config.world.max_prompt_len=4"], ["world.max_prompt_len=4", "cannot fit"]),
}


@pytest.mark.parametrize("case", sorted(ENTRY_POINT_FAULTS))
def test_config_fault_through_entry_point_is_one_error_line_and_compiles_nothing(tmp_path, case):
  devices, overrides, fragments = ENTRY_POINT_FAULTS[case]
  result = run_entry_point(
    f"{SYNTHETIC}:small",
    tmp_path / "run",
    '--config.stages=("sft",)',
    *overrides,
    devices=devices,
    log_compiles=True,
    timeout=300,
  )
  assert_one_line_error(result, *fragments)
  # JAX_LOG_COMPILES=1 logs every XLA compilation; none may happen before the error.
  assert "Compiling " not in result.stderr, result.stderr[-3000:]
  # Nothing was trained or written for the stage.
  assert not (tmp_path / "run" / "sft" / "checkpoints").exists()


def test_sixteen_devices_stop_before_any_stage_then_finish_with_the_named_values(tmp_path):
  # The whole :small pipeline on 16 devices: 8 attack / rlhf prompts per step cannot be split 16 ways.
  result = run_entry_point(f"{SYNTHETIC}:small", tmp_path / "run", devices=16, timeout=300)
  last = assert_one_line_error(
    result,
    "attack.prompts_per_step=8",
    "set --config.attack.prompts_per_step=16",
    "rlhf.prompts_per_step=8",
    "set --config.rlhf.prompts_per_step=16",
    "data-parallel mesh size 16",
  )
  assert "sft" not in last  # 32 SFT rows (and the RM's 16 and 64) divide: only the keys to change are named
  assert sorted(os.listdir(tmp_path / "run")) == ["config.json"]  # no stage started


@pytest.mark.parametrize(
  "value, size, factor, expected",
  [
    (8, 16, 1, 16),  # nothing below divides: the next multiple
    (12, 8, 1, 16),  # 8 and 16 are equally near: the larger
    (10, 8, 1, 8),
    (24, 16, 1, 32),  # 16 and 32 equally near: the larger
    (20, 16, 1, 16),
    (3, 8, 2, 4),  # 2 x value must divide by 8: multiples of 4
    (5, 8, 4, 6),  # 4 x value divides by 8: even values; 4 and 6 equally near: 6
  ],
)
def test_nearest_working_batch_against_hand_counted_cases(value, size, factor, expected):
  assert shd.nearest_working_batch(value, size, factor) == expected
  assert factor * expected % size == 0


def test_config_file_errors_are_one_line(tmp_path):
  result = run_entry_point(f"{SYNTHETIC}:huge", tmp_path, timeout=120)
  assert_one_line_error(result, "configs/synthetic.py", "unknown argument 'huge'")
  result = run_entry_point(str(REPO / "configs" / "no_such_config.py"), tmp_path, timeout=120)
  assert_one_line_error(result, "no_such_config.py")


# ---------------------------------------------------------------------------
# In-process: more variants, with tripwires on everything that would compile.
# ---------------------------------------------------------------------------


def _synthetic_config() -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("synthetic_config", SYNTHETIC)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("small")
  # Only the stage under test, and an RLHF run that needs no reward model.
  config.rlhf.runs = ml_collections.ConfigDict({"oracle_gold": {"source": "gold"}})
  return config


@pytest.fixture
def tripwires(monkeypatch):
  """Fails the test if a stage gets as far as building or jitting a model."""

  def tripwire(*args, **kwargs):
    raise AssertionError("the stage reached model construction before rejecting its config")

  monkeypatch.setattr(sft_driver, "Transformer", tripwire)
  monkeypatch.setattr(sft_driver, "create_train_state", tripwire)
  monkeypatch.setattr(rl_driver, "load_policy", tripwire)
  monkeypatch.setattr(rl_driver, "make_iteration", tripwire)


IN_PROCESS_FAULTS = {
  # name: (stages, {dotted key: value}, expected error type, fragments)
  "sft_batch_vs_8_devices": (("sft",), {"sft.batch_size": 12}, shd.ShardingError, ["sft.batch_size=12", "8"]),
  "sft_batch_vs_fsdp": (
    ("sft",),
    {"mesh.shape": (2, 2, 2), "sft.batch_size": 6},
    shd.ShardingError,
    ["sft.batch_size=6", "fsdp=2"],
  ),
  "mesh_too_large": (("sft",), {"mesh.shape": (16, 1, 1)}, shd.ShardingError, ["mesh.shape", "16 devices"]),
  "mesh_not_dividing_devices": (("sft",), {"mesh.shape": (3, -1, 1)}, shd.ShardingError, ["mesh.shape"]),
  "mesh_wrong_rank": (("sft",), {"mesh.shape": (8, 1)}, shd.ShardingError, ["mesh.shape", "3 entries"]),
  "vocab_mismatch": (("sft",), {"model.vocab_size": 100}, ValueError, ["model.vocab_size=100"]),
  "sft_prompt_limit": (("sft",), {"world.max_prompt_len": 5}, ValueError, ["world.max_prompt_len=5"]),
  "sft_sequence_over_model": (("sft",), {"model.max_seq_len": 40}, ValueError, ["model.max_seq_len = 40"]),
  "rlhf_prompt_limit": (("rlhf",), {"world.max_prompt_len": 4}, ValueError, ["world.max_prompt_len=4"]),
  "rlhf_batch_vs_mesh": (
    ("rlhf",),
    {"rlhf.prompts_per_step": 3, "rlhf.rl.num_samples": 2},
    shd.ShardingError,
    ["prompts_per_step", "8"],
  ),
  "rlhf_minibatches": (
    ("rlhf",),
    {"mesh.shape": (1, 1, 1), "rlhf.rl.num_minibatches": 3},
    ValueError,
    ["num_minibatches=3"],
  ),
  "rlhf_unknown_rl_key": (("rlhf",), {"rlhf.rl.bogus": 1}, ValueError, ["rl", "unknown key", "bogus"]),
  "rlhf_unknown_source": (
    ("rlhf",),
    {"rlhf.runs.oracle_gold.source": "oracle"},
    ValueError,
    ["rlhf.runs.oracle_gold.source", "oracle"],
  ),
  "unknown_stage": (("sft", "typo"), {}, ValueError, ["config.stages", "typo"]),
  # 4 prompts x 4 samples = 16 rows divide over 8 devices, but the 4-prompt batch is what the loop splits.
  "attack_prompts_vs_8_devices": (
    ("sft", "prefs", "rm", "attack"),
    {"attack.prompts_per_step": 4},
    shd.ShardingError,
    ["attack.prompts_per_step=4", "set --config.attack.prompts_per_step=8"],
  ),
  "online_pairs_times_updates": (
    ("online",),
    {"online.ordinary_pairs": 3, "online.rm_updates": 2},
    shd.ShardingError,
    ["online.ordinary_pairs=3", "2 x 3 rows", "set --config.online.ordinary_pairs=4"],
  ),
  # Every key of every listed stage in the one error, before the first stage (sft) writes anything.
  "every_bad_batch_at_once": (
    ("sft", "rm", "rlhf"),
    {"sft.batch_size": 12, "rm.eval_batch_size": 10},
    shd.ShardingError,
    ["set --config.sft.batch_size=16", "set --config.rm.eval_batch_size=8"],
  ),
}


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value


@pytest.mark.parametrize("case", sorted(IN_PROCESS_FAULTS))
def test_config_fault_is_rejected_before_any_model_is_built(tmp_path, tripwires, case):
  del tripwires
  stages, overrides, error_type, fragments = IN_PROCESS_FAULTS[case]
  config = _synthetic_config()
  config.stages = stages
  for key, value in overrides.items():
    _set(config, key, value)
  with pytest.raises(error_type) as info:
    run_stages(config, tmp_path)
  message = str(info.value)
  for fragment in fragments:
    assert fragment in message, f"{fragment!r} not in {message!r}"
  assert not list(tmp_path.glob("**/checkpoints"))


def test_generated_configs_reference_is_current_and_every_key_has_a_meaning():
  # docs/configs.md lists every key of every config file; a key added without a comment, or a
  # config changed without regenerating the page, fails here rather than misleading a reader.
  repo = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
    [sys.executable, "docs/gen_config_reference.py", "--check"], cwd=repo, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
