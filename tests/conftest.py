"""Test set-up shared by every test module.

Eight host CPU devices are forced before jax is imported so that mesh tests
(data, fsdp, tensor) = (2, 2, 2) run in the same process as everything else.

One persistent XLA compilation cache serves the whole test run: its directory
is made when the first process (pytest, or the xdist controller) loads this
file and is inherited through the environment by the xdist workers and by every
subprocess and notebook kernel a test starts. A stage run again (a resume, a
rerun, the same stage in another test) then loads its executables instead of
compiling them again. The cache is keyed by the program, the XLA flags and the
devices, and a cached executable is the same binary, so no result changes.
"""

import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One OpenMP thread for torch (and numpy's BLAS), here and in every subprocess: CI's two xdist workers share
# two cores, and torch's spinning OpenMP threads beside a JAX process slowed the gguf greedy test 4x (24 s
# against 9.5 s with one thread, next to a busy JAX process; 6 s alone).
os.environ.setdefault("OMP_NUM_THREADS", "1")
_OWN_COMPILE_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_COMPILE_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="advrm_jax_test_xla_cache_")
# Every compilation, however small or quick: the tiny test models compile in well under jax's default 1 s.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def hh_rlhf_path():
  """The HH-RLHF slice beside the checkout; skipped in a user's clone."""
  path = SHARED_DATA / "hh-rlhf" / "harmless-base-test-first600.jsonl.gz"
  if not path.exists():
    pytest.skip(f"shared HH-RLHF slice not found at {path} (only present in the dev workspace)")
  return path


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Test files with slow (end-to-end) tests first, the rest after, each group in file order.

  With the README's `-n 2 --dist loadfile --no-loadscope-reorder` the long files start first and
  the many short ones fill in at the end, so the two workers finish at about the same time
  (xdist's default order, most tests first, leaves the one-test end-to-end files for last).
  """
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)  # stable: each file's tests keep their order


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  if _OWN_COMPILE_CACHE:  # the process that made the cache removes it (xdist workers inherit it)
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
