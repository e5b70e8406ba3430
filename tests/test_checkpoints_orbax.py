"""Orbax round trips: sharded restore, keep-N, mismatch and corruption handling."""

import jax
import numpy as np
import pytest
from flax import nnx

from advrm_jax import sharding as shd
from advrm_jax.checkpoints.orbax_io import CheckpointMismatchError, Checkpointer
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.train_state import create_train_state, make_optimizer, split_module

CFG = ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, d_ff=32)


def _state(cfg=CFG, seed=0, mesh=None):
  mesh = mesh or shd.make_mesh((1, 1, 1), jax.devices()[:1])
  _, params, axes = split_module(Transformer(cfg, rngs=nnx.Rngs(seed)))
  return create_train_state(params, axes, make_optimizer(), mesh)


def test_round_trip_onto_a_mesh(tmp_path):
  state, _ = _state()
  ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, state, {"data_epoch": step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]  # keep-N
  # Restore onto a (2, 2, 2) mesh from a single-device save: abstract targets
  # carry the new shardings.
  target, shardings = _state(seed=1, mesh=shd.make_mesh((2, 2, 2)))
  step, restored, meta = ckpt.restore(target)
  assert step == 3 and meta == {"data_epoch": 3}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state)
  q = restored.params["layers"]["q_kernel"]
  assert q.sharding == shardings.params["layers"]["q_kernel"]


def test_mismatched_model_names_the_parameter(tmp_path):
  state, _ = _state()
  ckpt = Checkpointer(tmp_path / "ckpt")
  ckpt.save(1, state)
  ckpt.wait()
  other, _ = _state(CFG.replace(d_ff=48))
  with pytest.raises(
    CheckpointMismatchError,
    match=r"parameter params/layers/down_kernel has shape \(1, 32, 16\), the model expects \(1, 48, 16\)",
  ):
    ckpt.restore(other)


def test_corrupted_latest_falls_back_to_previous(tmp_path, caplog):
  state, _ = _state()
  ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=3)
  ckpt.save(1, state, {"n": 1})
  ckpt.save(2, state, {"n": 2})
  ckpt.wait()
  ckpt.close()
  # Wreck step 2's array data.
  for path in (tmp_path / "ckpt" / "2" / "state").rglob("*"):
    if path.is_file() and "metadata" not in path.name:
      path.write_bytes(b"garbage")
  ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=3)
  step, _, meta = ckpt.restore(state)
  assert step == 1 and meta == {"n": 1}
  assert str(tmp_path / "ckpt" / "2") in caplog.text
