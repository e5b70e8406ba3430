"""Sharded training: a (2, 2, 2) mesh gives the numbers of one device."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from advrm_jax import sharding as shd
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.models.lm import jit_sft_step
from advrm_jax.train_state import create_train_state, make_optimizer, split_module

CFG = ModelConfig(
  arch="llama",
  vocab_size=64,
  d_model=32,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  d_ff=64,
  tie_embeddings=False,
)


def _batch(seed=0, batch=8, length=12):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, CFG.vocab_size, (batch, length)).astype(np.int32)
  lengths = rng.integers(4, length + 1, batch)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  loss_mask = mask * (np.arange(length)[None] >= 2)
  return {"tokens": tokens * mask, "mask": mask, "loss_mask": loss_mask.astype(np.int32)}


def _train(mesh, steps=3):
  graphdef, params, axes = split_module(Transformer(CFG, rngs=nnx.Rngs(0)))
  optimizer = make_optimizer(learning_rate=1e-2, schedule="constant")
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  step = jit_sft_step(graphdef, optimizer, shardings, mesh)
  losses = []
  for i in range(steps):
    state, metrics = step(state, shd.shard_batch(_batch(i), mesh), jax.random.key(i))
    losses.append(float(metrics["loss"]))
  return state, losses


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")
def test_mesh_222_matches_single_device():
  single_state, single_losses = _train(shd.make_mesh((1, 1, 1), jax.devices()[:1]))
  mesh_state, mesh_losses = _train(shd.make_mesh((2, 2, 2)))
  np.testing.assert_allclose(mesh_losses, single_losses, atol=1e-5, rtol=0)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0),
    mesh_state.params,
    single_state.params,
  )
  # The parameters really are split: embed over fsdp, heads/mlp/vocab over tensor.
  q = mesh_state.params["layers"]["q_kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)  # [L, D/fsdp, H/tensor, Dh]
  assert shd.is_sharded(mesh_state.params["lm_head"])
  mu = mesh_state.opt_state[1][0].mu["layers"]["q_kernel"]
  assert mu.sharding == q.sharding  # optimizer moments follow their parameters
  assert not shd.is_sharded(mesh_state.params["final_norm_scale"])


def test_logical_rules_drop_non_dividing_axes():
  mesh = shd.make_mesh((2, 2, 2))
  # 3 KV heads cannot split over tensor=2: replicated along that axis instead.
  spec = shd.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (30, 576, 3, 64), mesh)
  assert spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert shd.logical_to_spec(("batch", None), (8, 5), mesh) == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_mesh_and_batch_errors_name_the_key():
  with pytest.raises(shd.ShardingError, match="mesh.shape"):
    shd.make_mesh((4, 4, 4))
  with pytest.raises(shd.ShardingError, match="rm.batch_size=6"):
    shd.check_batch_divisible(6, shd.make_mesh((2, 2, 2)), "rm.batch_size")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")
def test_jit_host_readable_replicates_outputs_on_the_params_mesh():
  mesh = shd.make_mesh((2, 2, 2))
  weights = np.arange(32 * 4, dtype=np.float32).reshape(32, 4)  # w[k, j] = 4k + j
  readable = shd.jit_host_readable(lambda scale, w, x: scale * (x @ w), static_argnames=("scale",))
  ones = np.ones((8, 32), np.float32)
  # Hand-computed: 2 * sum_k (4k + j) = 2 * (4 * 496 + 32 j) = 3968 + 64 j, in every row.
  expected = np.broadcast_to(3968.0 + 64.0 * np.arange(4, dtype=np.float32), (8, 4))
  out = readable(2.0, jax.device_put(weights, NamedSharding(mesh, P("fsdp", "tensor"))), ones)
  assert out.sharding.mesh == mesh and out.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(out), expected)
  host = readable(2.0, weights, ones)  # params on no mesh: a plain jit
  assert shd.mesh_of(weights) is None
  np.testing.assert_array_equal(np.asarray(host), expected)


# Process index of each device of a (data, fsdp, tensor) mesh, and the global rows of an 8-row batch each
# process holds, worked by hand: the batch splits into data x fsdp blocks, data-major (P(("data", "fsdp"))),
# and a process holds a block when any of its devices sits on it (tensor-axis devices share their block).
HAND_WORKED_LAYOUTS = [
  # make_mesh((2, 2, 2)) over 2 processes x 4 devices: process 0 is data row 0 -> blocks 0, 1 of 2 rows.
  ([[[0, 0], [0, 0]], [[1, 1], [1, 1]]], {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}),
  # (1, 2, 4): the processes split fsdp -> one block of 4 rows each.
  ([[[0, 0, 0, 0], [1, 1, 1, 1]]], {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}),
  # (1, 1, 8): tensor parallelism only -> one block, every process holds the whole batch.
  ([[[0, 0, 0, 0, 1, 1, 1, 1]]], {0: list(range(8)), 1: list(range(8))}),
  # (4, 1, 2) with processes interleaved along data: blocks 0, 2 and 1, 3 (not contiguous).
  ([[[0, 0]], [[1, 1]], [[0, 0]], [[1, 1]]], {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}),
  # (2, 2, 2) whose tensor pairs span processes 0|1 and 2|3: both of a pair hold the same two blocks.
  ([[[0, 1], [0, 1]], [[2, 3], [2, 3]]], {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [4, 5, 6, 7], 3: [4, 5, 6, 7]}),
  # (2, 2, 1) over 4 processes of one device: one 2-row block each.
  ([[[0], [1]], [[2], [3]]], {0: [0, 1], 1: [2, 3], 2: [4, 5], 3: [6, 7]}),
]


@pytest.mark.parametrize("layout, expected", HAND_WORKED_LAYOUTS)
def test_rows_of_process_hand_worked_layouts(layout, expected):
  device_processes = np.asarray(layout)
  for process, rows in expected.items():
    np.testing.assert_array_equal(shd.rows_of_process(device_processes, process, 8), rows)
  # The same rows as jax's own layout of the batch sharding: the union of the slices the process's devices
  # get on a real mesh of that shape (the devices standing in for the processes' devices).
  mesh = shd.make_mesh(device_processes.shape)
  slices = shd.batch_sharding(mesh).devices_indices_map((8,))
  for process, rows in expected.items():
    devices = mesh.devices[device_processes == process]
    held = sorted({row for device in devices for row in range(8)[slices[device][0]]})
    assert held == rows, process


def test_rows_of_process_rejects_a_batch_that_does_not_split():
  with pytest.raises(shd.ShardingError, match="6 rows does not split over the data-parallel mesh size 4"):
    shd.rows_of_process(np.zeros((2, 2, 2), int), 0, 6)


def test_one_process_places_the_whole_batch_split_as_before():
  mesh = shd.make_mesh((2, 2, 2))
  batch = {"rows": np.arange(8 * 3).reshape(8, 3), "weights": np.arange(8.0)}
  share = shd.process_share(mesh)
  assert share(batch) is batch  # one process holds every row: nothing copied
  placed = shd.place_process_batch(share(batch), mesh)
  for key, value in batch.items():
    np.testing.assert_array_equal(np.asarray(placed[key]), value)
    assert placed[key].sharding.spec == P(("data", "fsdp"))
    assert placed[key].addressable_shards[0].data.shape[0] == 2  # 8 rows over data x fsdp = 4
