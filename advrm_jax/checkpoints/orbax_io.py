"""Orbax checkpointing: periodic saves, keep-N, resume with abstract targets.

A checkpoint holds the train state (sharded arrays, restored straight onto
the target shardings) and a small JSON ``meta`` item (data position, config
digest, anything a stage needs to resume exactly). Restoring checks the saved
tree against the target first, so a checkpoint from a different model gives
an error naming the mismatched parameter rather than an orbax traceback; a
latest checkpoint that cannot be read is reported by path and the previous
one is used.
"""

from __future__ import annotations

import logging
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from advrm_jax.fileio import PathLike, is_remote


class CheckpointMismatchError(ValueError):
  """The checkpoint's tree does not match the model being restored."""


class UnreadableCheckpointError(ValueError):
  """Checkpoints exist but none of them can be read."""


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _flatten_with_paths(tree: Any) -> dict[str, Any]:
  """Leaves keyed by a '/'-joined path, the same for dataclasses and the dicts orbax reads back."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(e) for e in path): leaf for path, leaf in leaves}


def checkpoint_path(path: PathLike) -> epath.Path:
  """``path`` as orbax wants it: absolute when local; a ``gs://`` path as it is (orbax writes there itself)."""
  path = epath.Path(path)
  return path if is_remote(path) else path.absolute()


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for one stage's directory."""

  def __init__(self, directory: PathLike, max_to_keep: int = 3, save_interval_steps: int = 1):
    self.directory = checkpoint_path(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True
    )
    # Handlers named up front: without them a fresh manager (a resumed
    # process) cannot read item metadata, and the shape check before a
    # restore would be skipped.
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    """Newest saved step, or None when there is no checkpoint."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, ascending."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves ``state`` (and a small JSON ``meta``) as step ``step``; returns whether it was saved.

    Saving is asynchronous: call ``wait`` or ``close`` before relying on the files.
    ``force`` saves even when the manager's save interval would skip the step.
    """
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
    return self.manager.save(step, args=args, force=force)

  def wait(self) -> None:
    """Blocks until an in-flight asynchronous save has finished."""
    self.manager.wait_until_finished()

  def _check_matches(self, step: int, target: Any) -> None:
    saved = self.manager.item_metadata(step)
    saved_state = saved["state"] if saved is not None and "state" in saved else None
    if saved_state is None:
      raise ValueError(f"checkpoint {self.directory / str(step)} has no readable metadata for its state")
    saved_state = getattr(saved_state, "tree", saved_state)
    saved_flat = _flatten_with_paths(saved_state)
    target_flat = _flatten_with_paths(target)
    missing = sorted(set(target_flat) - set(saved_flat))
    extra = sorted(set(saved_flat) - set(target_flat))
    if missing or extra:
      raise CheckpointMismatchError(
        f"checkpoint {self.directory / str(step)} does not match the model: "
        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
        f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
      )
    for key, leaf in target_flat.items():
      saved_shape = tuple(getattr(saved_flat[key], "shape", ()) or ())
      if hasattr(leaf, "shape") and tuple(leaf.shape) != saved_shape:
        raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)}: parameter {key} has shape {saved_shape}, "
          f"the model expects {tuple(leaf.shape)}"
        )

  def restore(self, target: Any, step: int | None = None) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores onto ``target``'s shapes, dtypes and shardings.

    ``target`` may be real arrays or ``jax.ShapeDtypeStruct``s with
    shardings. Returns (step, state, meta), or None when there is nothing to
    restore. Without ``step``, tries the newest checkpoint and falls back to
    older ones when it cannot be read (reported by path).
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target
    )
    unreadable = []
    for candidate in steps:
      try:
        self._check_matches(candidate, abstract)
        restored = self.manager.restore(
          candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        logging.warning("checkpoint %s is unreadable (%s); trying an older one", self.directory / str(candidate), e)
        unreadable.append(candidate)
        continue
      # Only once an older checkpoint restored: the newer, unreadable ones are
      # moved aside so the resumed run can save those steps again.
      for bad in unreadable:
        self._set_aside(bad)
      return candidate, restored["state"], dict(restored["meta"] or {})
    if unreadable:
      # Never silently start again from scratch over a run's checkpoints.
      raise UnreadableCheckpointError(
        f"no readable checkpoint in {self.directory}: step(s) {unreadable} could not be restored (see the "
        "warnings above); move them away to start this stage from scratch"
      )
    return None

  def _set_aside(self, step: int) -> None:
    """Renames an unreadable step directory to ``<step>.unreadable[-k]``.

    The resumed run redoes that step and must be able to save it again
    (orbax refuses to overwrite an existing step), and a later restore must
    not trip over it again; the bytes are kept for inspection, not deleted.
    """
    source = self.directory / str(step)
    if jax.process_index() == 0 and source.exists():
      target = self.directory / f"{step}.unreadable"
      suffix = 1
      while target.exists():
        target = self.directory / f"{step}.unreadable-{suffix}"
        suffix += 1
      source.rename(target)
      logging.warning("moved the unreadable checkpoint %s to %s", source, target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"advrm_set_aside_{step}")
    self.manager.reload()

  def close(self) -> None:
    """Waits for pending saves, then closes the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


def save_params(path: PathLike, params: Any) -> None:
  """Writes a finished stage's parameters (the artefact later stages load).

  Written to a temporary name and renamed by orbax, so a kill never leaves a
  half-written artefact behind under the final name.
  """
  path = checkpoint_path(path)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, params, force=True)
    checkpointer.wait_until_finished()


def load_params(path: PathLike, target: Any) -> Any:
  """Restores parameters saved by ``save_params`` onto ``target``'s shapes/shardings."""
  path = checkpoint_path(path)
  if not path.exists():
    raise FileNotFoundError(f"parameter checkpoint {path} not found")
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target
  )
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path)
    saved_tree = getattr(saved, "item_metadata", saved)
    saved_tree = getattr(saved_tree, "tree", saved_tree)
    saved_flat = _flatten_with_paths(saved_tree)
    for key, leaf in _flatten_with_paths(abstract).items():
      if key not in saved_flat:
        raise CheckpointMismatchError(f"parameter checkpoint {path} has no parameter {key}")
      shape = tuple(getattr(saved_flat[key], "shape", ()) or ())
      if shape != tuple(leaf.shape):
        raise CheckpointMismatchError(
          f"parameter checkpoint {path}: parameter {key} has shape {shape}, the model expects {tuple(leaf.shape)}"
        )
    return checkpointer.restore(path, abstract)
