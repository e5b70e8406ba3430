"""Test set-up shared by every test module.

Eight host CPU devices are forced before jax is imported so that mesh tests
(data, fsdp, tensor) = (2, 2, 2) run in the same process as everything else.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
