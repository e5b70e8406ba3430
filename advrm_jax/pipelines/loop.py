"""The one training loop every gradient-based stage runs.

It owns what must be identical across stages: resume from the newest
readable checkpoint, per-step RNG ``fold_in(seed_key, step)`` and batches
that depend only on the step (so a resumed run reproduces the uninterrupted
one), NaN/Inf detection naming step and quantity, periodic keep-N
checkpoints, SIGTERM -> checkpoint and clean exit, and metrics through the
one MetricWriter.

Steps are dispatched asynchronously: between two logging points the loop
never reads a device value, so the host prepares step t+1 while the device
runs step t. The NaN/Inf check keeps each step's watched metrics (device
scalars) and reads them all at the next logging, evaluation or checkpoint
point, before anything is logged or saved; the error still names the first
bad step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from typing import Any, Callable

from etils import epath
import jax
import numpy as np
from jax.sharding import Mesh

from advrm_jax import sharding as shd
from advrm_jax.checkpoints.orbax_io import Checkpointer
from advrm_jax.metrics import MetricWriter, parse_metrics, plot_metrics


class Preempted(SystemExit):
  """Raised after a SIGTERM-triggered checkpoint so the process exits cleanly."""

  def __init__(self, step: int):
    super().__init__(0)
    self.step = step


class _SigtermFlag:
  """Turns SIGTERM into a flag checked between steps (never mid-step)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. inside a notebook worker)
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _FiniteWatch:
  """Finds the first non-finite watched metric, reading device values only when asked.

  ``add`` keeps a step's watched metrics as device arrays (no transfer);
  ``check`` pulls everything kept since the last check in one transfer and
  raises on the first non-finite value, in step order.
  """

  def __init__(self, name: str, keys: tuple[str, ...], checkpoint_dir: epath.Path):
    self.name, self.keys, self.checkpoint_dir = name, keys, checkpoint_dir
    self.pending: list[tuple[int, dict[str, Any]]] = []

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    self.pending.append((step, {k: metrics[k] for k in self.keys if k in metrics}))

  def check(self) -> None:
    pending, self.pending = jax.device_get(self.pending), []
    for step, values in pending:
      for key in (k for k in self.keys if k in values):  # in finite_keys order: the loss first
        value = values[key]
        if not np.all(np.isfinite(value)):
          raise FloatingPointError(
            f"[{self.name}] non-finite {key}={value} at step {step}; stopping. The last good "
            f"checkpoint in {self.checkpoint_dir} is kept intact."
          )


def _logged(writer: MetricWriter, step: int, scalars: dict[str, Any]) -> bool:
  """Whether metrics.jsonl (rows not flushed yet included) has a row for ``step`` with all of ``scalars``' keys."""
  for record in parse_metrics(writer.metrics_log.read()):
    if record.get("step") == step and set(scalars) <= set(record):
      return True
  return False


# Whether each run renders metrics.png at its end (config.plots, set by ``end_of_run_plots``): about 1.5 s
# a run, which the study's many short runs skip; ``python -m advrm_jax.report DIR`` renders them later.
_plots = True


@contextlib.contextmanager
def end_of_run_plots(enabled: bool):
  """Within it, ``train_loop`` renders each run's metrics.png at its end only when ``enabled``."""
  global _plots
  previous, _plots = _plots, bool(enabled)
  try:
    yield
  finally:
    _plots = previous


@dataclasses.dataclass
class LoopConfig:
  """Step counts and intervals of ``train_loop`` (``seed`` keys the per-step RNG)."""

  num_steps: int
  log_every: int = 10
  checkpoint_every: int = 100
  keep_checkpoints: int = 2
  seed: int = 0


def without_samples(step_fn: Callable) -> Callable:
  """A ``(state, batch, rng) -> (state, metrics)`` step in train_loop's signature: no sample arrays."""
  return lambda state, batch, rng: (*step_fn(state, batch, rng), {})


def train_loop(
  name: str,
  directory: epath.PathLike,
  state: Any,
  step_fn: Callable,
  get_batch: Callable[[int, Callable[[Any], Any]], dict[str, np.ndarray]],
  loop: LoopConfig,
  mesh: Mesh,
  eval_fn: Callable[[Any, int], dict[str, Any]] | None = None,
  eval_every: int = 0,
  finite_keys: tuple[str, ...] = ("loss", "grad_norm", "reward", "proxy_reward"),
  text_fn: Callable[[dict[str, np.ndarray], int], dict[str, str]] | None = None,
) -> Any:
  """Runs ``state, metrics, samples = step_fn(state, batch, rng)`` for loop.num_steps steps.

  Args:
    name: stage name for the progress line.
    directory: the stage's work directory (checkpoints/, metrics.jsonl, tb/).
    state: the initial (sharded) state; also the restore target.
    step_fn: the jitted pure step: the new state, its metrics (scalars, the
      only values written to metrics.jsonl) and its sample arrays for
      ``text_fn`` (``{}`` for stages without sample tables).
    get_batch: ``get_batch(step, share)``, this process's rows of the step's batch (must depend only on
      the step): ``share(x)`` picks them from any array whose leading axis is the global batch, e.g. the
      step's global row indices (``sharding.process_share``), so each host builds only its own share.
    loop: step counts and intervals.
    mesh: the device mesh batches are placed on.
    eval_fn: optional ``(state, step) -> scalars`` run every ``eval_every``
      steps and at the end.
    finite_keys: metrics checked for NaN/Inf at every step (those present),
      read at the next logging, evaluation or checkpoint step. The gradient
      norm is among them because a NaN gradient poisons the parameters while
      the step's loss (computed before the update) is still finite: watching
      the loss alone would checkpoint NaN parameters as the "last good" state.
    text_fn: turns the step's sample arrays into texts (sample tables,
      samples.jsonl) at every logged step.
  Returns the final state.
  """
  directory = epath.Path(directory)
  checkpointer = Checkpointer(directory / "checkpoints", max_to_keep=loop.keep_checkpoints)
  start = 0
  restored = checkpointer.restore(state)
  if restored is not None:
    start, state, _ = restored
  writer = MetricWriter(directory, total_steps=loop.num_steps, name=name)
  writer.truncate_after(start)
  seed_key = jax.random.key(loop.seed)
  watch = _FiniteWatch(name, finite_keys, directory / "checkpoints")
  share = shd.process_share(mesh)
  try:
    with _SigtermFlag() as sigterm:
      for step in range(start, loop.num_steps):
        batch = shd.place_process_batch(get_batch(step, share), mesh)
        state, metrics, samples = step_fn(state, batch, jax.random.fold_in(seed_key, step))
        done = step + 1
        watch.add(done, metrics)
        log = done % loop.log_every == 0 or done == loop.num_steps
        evaluate = eval_fn is not None and eval_every and done % eval_every == 0 and done != loop.num_steps
        # Read once: a SIGTERM landing later in this step (during the logging below) must not raise
        # Preempted without the checkpoint the message promises; the next step sees it instead.
        preempted = sigterm.raised
        save = done % loop.checkpoint_every == 0 or preempted
        if not (log or evaluate or save):
          continue  # nothing read from the device: the next step is dispatched at once
        watch.check()
        if log or evaluate:
          if text_fn is not None and samples:
            writer.write_texts(done, text_fn(jax.device_get(samples), done))
          writer.write_scalars(done, jax.device_get(metrics), evaluation=eval_fn(state, done) if evaluate else None)
        if save:
          # Logs first (remote ones are written only now): a kill after them keeps rows past the newest
          # checkpoint, which the resumed run drops (truncate_after); the reverse order would lose rows for good.
          writer.flush()
          checkpointer.save(done, state, {"step": done}, force=True)
        if preempted:
          raise Preempted(done)
    if eval_fn is not None:
      # Also when resumed at the last step: a run killed between its final
      # checkpoint and this evaluation (or a stage rerun after finishing, as
      # `rm` is) still gets the final evaluation -- stages keep its result --
      # and the log row is written unless it already was.
      scalars = eval_fn(state, loop.num_steps)
      if start < loop.num_steps or not _logged(writer, loop.num_steps, scalars):
        writer.write_scalars(loop.num_steps, {}, evaluation=scalars)
    if checkpointer.latest_step() != loop.num_steps:
      writer.flush()  # logs before the checkpoint, as in the loop
      checkpointer.save(loop.num_steps, state, {"step": loop.num_steps}, force=True)
  finally:
    writer.close()  # also writes the remote logs' last rows (after an error or SIGTERM too, as a local log has them)
    checkpointer.close()  # waits for an in-flight async save: nothing written is lost
  if _plots and jax.process_index() == 0:
    plot_metrics(writer.jsonl_path, directory / "metrics.png", title=name)
  return state
