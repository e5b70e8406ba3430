"""Device mesh and logical-axis sharding rules, resolved in one place.

Parameters carry logical axis names (``embed``, ``heads``, ``mlp``...) set by
the model code; this module maps them to the physical mesh axes
``(data, fsdp, tensor)`` with a list of rules, as in big_vision/MaxText:

* ``data``: pure data parallelism (parameters replicated).
* ``fsdp``: batch split *and* parameters split along their ``embed`` axis
  (ZeRO-3 style: XLA all-gathers them inside the step).
* ``tensor``: Megatron-style split of heads, MLP and vocabulary.

A mesh axis is dropped from a dimension it does not divide (e.g. SmolLM2's
3 KV heads on tensor=2), so every model runs on every mesh; the parameter is
then replicated along that axis instead of failing to compile.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

from flax import nnx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over both data-parallel axes.
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  ("batch", BATCH_AXES),
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("layers", None),
  ("head_dim", None),
  ("norm", None),
  ("members", None),
)


class ShardingError(ValueError):
  """A mesh or batch shape that cannot work, named by config key."""


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh.

  Args:
    mesh_shape: sizes of (data, fsdp, tensor); one entry may be -1 meaning
      "all remaining devices" (config key ``mesh.shape``).
    devices: devices to use (default: all).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(mesh_shape)
  if len(shape) != 3:
    raise ShardingError(f"mesh.shape must have 3 entries (data, fsdp, tensor), got {tuple(mesh_shape)}")
  if shape.count(-1) > 1:
    raise ShardingError(f"mesh.shape may contain at most one -1, got {tuple(mesh_shape)}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ShardingError(f"mesh.shape {tuple(mesh_shape)}: {len(devices)} devices are not divisible by {known}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) > len(devices):
    raise ShardingError(
      f"mesh.shape {tuple(mesh_shape)} needs {math.prod(shape)} devices but only {len(devices)} are available "
      "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)"
    )
  used = np.asarray(devices[: math.prod(shape)]).reshape(shape)
  # Auto axes: jit propagates shardings from in/out_shardings; explicit
  # sharding-in-types (jax 0.10's make_mesh default) is not needed here.
  return Mesh(used, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(
  names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> P:
  """Maps logical axis names of one array to a PartitionSpec on ``mesh``."""
  if not names:
    return P()
  rule_map = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape):
    target = rule_map.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for axis in axes:
      size = mesh.shape[axis]
      # Skip trivial axes, axes already used by another dimension, and axes
      # that do not divide what is left of this dimension.
      if size == 1 or axis in used or dim % (math.prod(mesh.shape[a] for a in kept) * size):
        continue
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def logical_axes(state: Any) -> Any:
  """Logical axis names of each Variable in an ``nnx.State`` (pure-dict tree)."""

  def names(variable):
    return tuple(variable.get_metadata().get("out_sharding") or ())

  axes = jax.tree.map(names, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(axes) if isinstance(axes, nnx.State) else axes


def tree_shardings(
  axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> Any:
  """NamedShardings for a tree of arrays given a parallel tree of axis names."""
  return jax.tree.map(
    lambda names, x: NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)),
    axes_tree,
    shapes_tree,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that keeps a full copy of the array on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  del ndim  # trailing dims are replicated; P() pads automatically.
  return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  """Number of batch shards: the product of the data-parallel axes (data x fsdp)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def nearest_working_batch(value: int, size: int, factor: int = 1) -> int:
  """The positive value nearest ``value`` (the larger on a tie) for which ``factor * value`` divides into ``size``."""
  step = size // math.gcd(size, factor)
  below, above = value // step * step, -(-value // step) * step
  return above if below == 0 or above - value <= value - below else below


def check_batch_divisible(batch_size: int, mesh: Mesh, key: str, factor: int = 1) -> None:
  """Raises a one-line ShardingError naming the config ``key`` and a value that works when the batch
  (``factor`` x ``batch_size`` rows) cannot be split over the mesh's data-parallel axes."""
  size = data_parallel_size(mesh)
  if factor * batch_size % size:
    rows = f"{factor} x {batch_size}" if factor != 1 else f"{batch_size}"
    raise ShardingError(
      f"{key}={batch_size}: its batch of {rows} rows is not divisible by the data-parallel mesh size {size} "
      f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); set "
      f"--config.{key}={nearest_working_batch(batch_size, size, factor)}"
    )


def rows_of_process(device_processes: np.ndarray, process_index: int, num_rows: int) -> np.ndarray:
  """The global rows of a batch split along ``BATCH_AXES`` that one process's devices hold, in order.

  Args:
    device_processes: [data, fsdp, tensor] process index of each mesh device (``mesh.devices``' layout).
    process_index: the process asked about.
    num_rows: rows of the global batch (divisible by data x fsdp; callers check it, naming their key).

  Returns:
    int64 row indices, increasing: the row blocks (one per (data, fsdp) position, data-major as
    ``P(("data", "fsdp"))`` lays them out) on which any of the process's devices sits, concatenated. This is
    the order ``jax.make_array_from_process_local_data`` reads a process's local rows in.
  """
  data, fsdp = device_processes.shape[:2]
  blocks = data * fsdp
  if num_rows % blocks:
    raise ShardingError(f"a batch of {num_rows} rows does not split over the data-parallel mesh size {blocks}")
  held = np.flatnonzero((device_processes == process_index).any(axis=2).reshape(blocks))
  size = num_rows // blocks
  return (held[:, None] * size + np.arange(size)).reshape(-1)


# Cached per mesh: place_process_batch asks at every training step, and a pod's mesh has thousands of devices.
@functools.lru_cache(maxsize=16)
def _device_processes(mesh: Mesh) -> np.ndarray:
  """The process index of each device of ``mesh`` (its layout), after checking this process has one."""
  device_processes = np.vectorize(lambda device: device.process_index, otypes=[int])(mesh.devices)
  if not (device_processes == jax.process_index()).any():
    raise ShardingError(
      f"mesh.shape {tuple(mesh.devices.shape)} uses {mesh.devices.size} of {jax.device_count()} devices, none of "
      f"process {jax.process_index()}'s: set mesh.shape to cover every process's devices"
    )
  device_processes.setflags(write=False)  # shared by every caller through the cache
  return device_processes


def process_share(mesh: Mesh) -> Callable[[Any], Any]:
  """``share(tree)``: this process's rows of host arrays whose leading axis is a global batch on ``mesh``.

  A stage's ``get_batch(step, share)`` computes the step's global row indices (cheap) and builds only
  ``share(indices)``'s rows, so no host gathers rows another host's devices hold; ``place_process_batch``
  then assembles the global batch, the same rows in the same order on any number of processes. With one
  process (or when every process holds the whole batch) ``share`` returns its input unchanged.
  """
  device_processes, me = _device_processes(mesh), jax.process_index()
  if (device_processes == me).any(axis=2).all():
    return lambda tree: tree

  def share(tree):
    return jax.tree.map(lambda x: np.asarray(x)[rows_of_process(device_processes, me, np.shape(x)[0])], tree)

  return share


def place_process_batch(local_batch: Any, mesh: Mesh) -> Any:
  """The global batch on ``mesh`` (split along ``BATCH_AXES``) from this process's rows (``process_share``'s)."""
  held = (_device_processes(mesh) == jax.process_index()).any(axis=2)  # [data, fsdp] row blocks held

  def place(x):
    x = np.asarray(x)
    rows = x.shape[0] // held.sum() * held.size
    return jax.make_array_from_process_local_data(batch_sharding(mesh), x, (rows, *x.shape[1:]))

  return jax.tree.map(place, local_batch)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a host batch (tree of numpy arrays, the whole global batch on every host) split along its first
  axis: each process transfers only its own rows (``process_share``), as a stage's batches are placed."""
  return place_process_batch(process_share(mesh)(batch), mesh)


def is_sharded(array: jax.Array) -> bool:
  """True when the array is split (not fully replicated) across devices."""
  return not array.sharding.is_fully_replicated


def with_leading_axis(shardings: Any) -> Any:
  """The shardings of the same arrays stacked on a new, unsplit leading axis (e.g. vmapped seeds)."""
  return jax.tree.map(
    lambda s: NamedSharding(s.mesh, P(None, *s.spec)), shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
  )


def shardings_on(tree: Any, mesh: Mesh) -> Any:
  """Each leaf's own NamedSharding when it already lives on ``mesh``, else replicated on ``mesh``.

  For arguments assembled by callers: weights loaded sharded by their logical
  axes keep that layout; host arrays and small single-device values (ensemble
  mix weights, standardisation constants) get a full copy on every device.
  """

  def sharding(x):
    own = getattr(x, "sharding", None)
    return own if isinstance(own, NamedSharding) and own.mesh == mesh else replicated(mesh)

  return jax.tree.map(sharding, tree)


def mesh_of(tree: Any) -> Mesh | None:
  """The mesh the leaves of ``tree`` lie on (the first NamedSharding found); None when none lies on one
  (host arrays, a single device)."""
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return sharding.mesh
  return None


def jit_host_readable(fn: Callable, static_argnames: Sequence[str]) -> Callable:
  """``fn(graphdef, params, ...)`` jitted with its outputs replicated on the mesh ``params`` lie on.

  In a multi-process job the params span every process's devices, and an output left to the compiler may
  come back split across processes, where no host can read it whole; replicated, every host reads it
  (``np.asarray``/``device_get``). One program per (mesh, static args, shapes); params on no mesh (host
  arrays, one device) get a plain jit, as before.
  """
  plain = jax.jit(fn, static_argnames=static_argnames)

  @functools.cache
  def on_mesh(mesh: Mesh) -> Callable:
    return jax.jit(fn, static_argnames=static_argnames, out_shardings=replicated(mesh))

  def jitted(params: Any) -> Callable:
    mesh = mesh_of(params)
    return plain if mesh is None else on_mesh(mesh)

  def call(graphdef, params, *args, **kwargs):
    return jitted(params)(graphdef, params, *args, **kwargs)

  # The jitted program for given params, for what a jitted function offers beside a call (``_cache_size``).
  call.jitted = jitted
  call.lower = lambda graphdef, params, *args, **kwargs: jitted(params).lower(graphdef, params, *args, **kwargs)
  return call


def place(tree: Any, mesh: Mesh) -> tuple[Any, Any]:
  """(``tree`` on ``mesh`` as ``shardings_on`` lays it out, those shardings)."""
  shardings = shardings_on(tree, mesh)
  return jax.device_put(tree, shardings), shardings
