"""Kill and resume real stages through the entry point; SIGTERM; stage-level checkpoint and NaN faults.

Each test starts ``python -m advrm_jax.main`` as a subprocess (see
test_reliability_config.run_entry_point) on ``configs/synthetic.py:small``
with overrides that make every stage a handful of steps, interrupts it the
way clusters do, resumes it with the same command, and compares the result
with an uninterrupted run of the same command:

* SIGKILL at a random step (seeded) -- the process dies mid-step;
* SIGKILL while orbax is writing a checkpoint (the test polls for a new
  ``*.orbax-checkpoint-tmp*`` directory and kills as soon as it appears, then
  checks the half-written directory is really left behind);
* SIGTERM -- the run must write a checkpoint of the step it is on and exit 0.

The pipeline run is sft -> prefs -> rm -> attack (Adv-RM round 0's
adversary) -> rlhf; each training stage is SIGKILLed once at a random step
and once mid-checkpoint-write, the attack also gets a SIGTERM. The Adv-RM
loop (stage ``advrm``, one round: attack 0 -> filter 0 -> advtrain 1 ->
attack 1 -> filter 1) starts from copies of that run's sft, prefs and rm and
is SIGKILLed at a random step of each attack and while advtrain's RM writes
a checkpoint; the filtered pairs, advtrain's mixed training set and RM
round 1 are compared with an uninterrupted run as well. Every stage's
final parameters, final train state (optimizer moments, step counters),
metrics and sample logs, and the data it hands on (preference pairs,
reference samples, the adversary's collected rollouts, evaluation
summaries) must be *bitwise* equal to the uninterrupted run's: on CPU with a
fixed device count every step is deterministic, and the RNG
(``fold_in(key, step)``), the data order and the RL prompt stream are all
functions of the step, so nothing else may differ. (That those streams are
derived from the step, and only from it, is checked in detail in
test_reliability_loop.py; here the whole stack is checked.)

All launches share one persistent XLA compilation cache, so only the first
launch of each stage pays for compilation; a cached executable is the same
binary, so it does not change any result. ``rlhf.runs`` is cut to the
gold-oracle run by a small wrapper config written into the test's tmp dir
(the other runs train against RMs that need the later Adv-RM rounds).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.test_reliability_config import REPO, assert_one_line_error, entry_point_command, entry_point_env

STEPS = 6  # per training stage; checkpoints every 2 steps (a random kill usually has to redo a step)
PIPELINE = ("sft", "prefs", "rm", "attack", "rlhf")
SMALL = [
  f"--config.stages={PIPELINE!r}".replace("'", '"'),
  "--config.mesh.shape=(1,1,1)",
  "--config.sft.num_examples=256",
  f"--config.sft.num_steps={STEPS}",
  "--config.sft.log_every=1",
  "--config.sft.checkpoint_every=2",
  "--config.prefs.num_prompts=64",
  "--config.prefs.num_attack_prompts=8",
  f"--config.rm.num_steps={STEPS}",
  "--config.rm.log_every=1",
  "--config.rm.checkpoint_every=2",
  f"--config.attack.num_steps={STEPS}",
  "--config.attack.prompts_per_step=4",
  "--config.attack.log_every=1",
  "--config.attack.checkpoint_every=2",
  "--config.attack.sampling.max_new_tokens=12",
  "--config.rlhf.num_prompts=64",
  "--config.rlhf.prompts_per_step=4",
  f"--config.rlhf.num_steps={STEPS}",
  "--config.rlhf.log_every=1",
  "--config.rlhf.checkpoint_every=2",
  "--config.rlhf.sampling.max_new_tokens=12",
]
SFT_ONLY = SMALL + ['--config.stages=("sft",)']
RUN = "oracle_gold"
_WRAPPER = '''"""configs/synthetic.py with only the gold-oracle RLHF run (written by {test})."""
import importlib.util
import ml_collections


def get_config(arg=None):
  spec = importlib.util.spec_from_file_location("synthetic_config", {path!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.rlhf.runs = ml_collections.ConfigDict({{"oracle_gold": {{"source": "gold"}}}})
  if "compilation_cache_dir" in config:
    # The test's shared cache (JAX_COMPILATION_CACHE_DIR) instead of one per work dir.
    config.compilation_cache_dir = ""
  return config
'''

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------
# Launching and interrupting.
# ---------------------------------------------------------------------------


class Launch:
  """One run of the entry point, its log in a file (no pipe to fill up)."""

  def __init__(self, config: str, workdir: pathlib.Path, overrides: list[str], cache: pathlib.Path, log: pathlib.Path):
    self.log = log
    self._file = open(log, "w")  # pylint: disable=consider-using-with
    # --verbosity=-1: warnings and errors only (orbax logs every save at INFO).
    self.proc = subprocess.Popen(
      entry_point_command(config, workdir, *overrides, "--verbosity=-1"),
      cwd=REPO,
      env=entry_point_env(compile_cache=cache),
      stdout=self._file,
      stderr=subprocess.STDOUT,
    )

  def text(self) -> str:
    # Incremental: polled every few milliseconds while the run writes to it.
    if not hasattr(self, "_seen"):
      self._seen, self._offset = "", 0
    with open(self.log, "rb") as f:
      f.seek(self._offset)
      chunk = f.read()
    self._offset += len(chunk)
    self._seen += chunk.decode("utf-8", errors="replace")
    return self._seen

  def wait(self, timeout: float = 900) -> int:
    try:
      code = self.proc.wait(timeout=timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
        self.proc.wait()
      self._file.close()
    return code

  def interrupt_when(self, condition, sig: int, timeout: float = 900) -> bool:
    """Sends ``sig`` as soon as ``condition()`` holds; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        return False
      if condition():
        self.proc.send_signal(sig)
        return True
      time.sleep(0.002)
    raise TimeoutError(f"condition not reached in {timeout}s; log: {self.log}")

  def kill_while(self, condition, timeout: float = 900) -> bool:
    """SIGKILLs the run at a moment when ``condition()`` holds; False if the run ended first.

    A condition on the file system (a half-written checkpoint) can stop holding
    between the check and the signal's delivery: orbax may finish the write in
    that gap. So the run is frozen with SIGSTOP, the condition checked again
    while nothing moves, and the run killed only if it still holds (else thawed
    to try at the next write).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        return False
      if condition():
        self.proc.send_signal(signal.SIGSTOP)
        _wait_stopped(self.proc.pid)
        if condition():
          self.proc.send_signal(signal.SIGKILL)
          return True
        self.proc.send_signal(signal.SIGCONT)
      time.sleep(0.002)
    raise TimeoutError(f"condition not reached in {timeout}s; log: {self.log}")


def _wait_stopped(pid: int, timeout: float = 10) -> None:
  """Until /proc says every thread of ``pid`` is stopped (SIGSTOP's delivery is asynchronous)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    states = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
      try:
        # The state follows the parenthesised command name, which may hold spaces.
        states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
      except (FileNotFoundError, ProcessLookupError):
        continue
    if states and all(state in "tTZX" for state in states):
      return
    time.sleep(0.001)
  raise TimeoutError(f"process {pid} did not stop within {timeout}s of SIGSTOP")


def _progress_reached(launch: Launch, name: str, step: int):
  pattern = re.compile(rf"^\[{re.escape(name)}\] step (\d+)/", re.M)

  def condition():
    return any(int(s) >= step for s in pattern.findall(launch.text()))

  return condition


def _tmp_entries(stage_dir: pathlib.Path) -> set[tuple[str, int, int]]:
  """orbax's half-written directories under ``stage_dir``: (path, inode, ctime)."""
  entries = set()
  for directory in (stage_dir / "checkpoints", stage_dir):
    try:
      with os.scandir(directory) as it:
        for entry in it:
          if ".orbax-checkpoint-tmp" in entry.name:
            stat = entry.stat(follow_symlinks=False)
            entries.add((entry.path, stat.st_ino, stat.st_ctime_ns))
    except FileNotFoundError:
      pass
  return entries


class WritingCheckpoint:
  """Condition: this launch has a half-written checkpoint directory under ``stage_dir``.

  Created before the launch: leftovers of an earlier killed launch do not
  count; a directory orbax recreates under the same name does (new inode or
  ctime). ``new()`` lists the ones that appeared.
  """

  def __init__(self, stage_dir: pathlib.Path):
    self.stage_dir = stage_dir
    self.stale = _tmp_entries(stage_dir)

  def new(self) -> list[str]:
    return sorted(path for path, _, _ in _tmp_entries(self.stage_dir) - self.stale)

  def __call__(self) -> bool:
    return bool(self.new())


def _tmp_dirs(stage_dir: pathlib.Path) -> list[str]:
  return [str(p) for p in stage_dir.rglob("*.orbax-checkpoint-tmp*")]


# ---------------------------------------------------------------------------
# Comparing runs.
# ---------------------------------------------------------------------------


def _restore(path: pathlib.Path):
  """An orbax item as saved (no target needed: shapes and dtypes come from its metadata)."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path.absolute())


def _flat(tree) -> dict[str, np.ndarray]:
  import jax  # pylint: disable=import-outside-toplevel

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _assert_bitwise_equal(a, b, what: str) -> None:
  flat_a, flat_b = _flat(a), _flat(b)
  assert flat_a.keys() == flat_b.keys(), what
  # Bytes, not values: -0.0 vs 0.0 or a different NaN payload counts as a difference.
  different = [
    k
    for k in flat_a
    if (flat_a[k].dtype, flat_a[k].shape, flat_a[k].tobytes())
    != (flat_b[k].dtype, flat_b[k].shape, flat_b[k].tobytes())
  ]
  assert not different, f"{what}: {len(different)} arrays differ, e.g. {different[:3]}"


def _log(path: pathlib.Path) -> list[dict]:
  records = [json.loads(l) for l in path.read_text().splitlines()]
  for record in records:
    record.pop("time", None)
  return records


def _assert_same_files(reference: pathlib.Path, resumed: pathlib.Path, names, workdirs) -> None:
  """Data a stage hands on: .npz arrays bitwise, JSON/JSONL texts equal up to the work dir's path."""
  for name in names:
    a, b = reference / name, resumed / name
    if name.endswith(".npz"):
      with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        _assert_bitwise_equal(dict(x), dict(y), str(b))
    else:
      text_a = a.read_text().replace(str(workdirs[0]), "WORKDIR")
      text_b = b.read_text().replace(str(workdirs[1]), "WORKDIR")
      assert text_a == text_b, f"{b} differs from the uninterrupted run"


def _latest_step_dir(stage_dir: pathlib.Path) -> pathlib.Path:
  steps = [int(p.name) for p in (stage_dir / "checkpoints").iterdir() if p.name.isdigit()]
  return stage_dir / "checkpoints" / str(max(steps))


def _assert_same_stage(
  reference: pathlib.Path, resumed: pathlib.Path, logs=("metrics.jsonl",), params: bool = True
) -> None:
  assert (resumed / "DONE").exists() or not (reference / "DONE").exists()
  if params:
    _assert_bitwise_equal(_restore(reference / "params"), _restore(resumed / "params"), f"{resumed}/params")
  ref_latest, res_latest = _latest_step_dir(reference), _latest_step_dir(resumed)
  assert ref_latest.name == res_latest.name
  _assert_bitwise_equal(_restore(ref_latest / "state"), _restore(res_latest / "state"), f"{res_latest}/state")
  for name in logs:
    assert _log(reference / name) == _log(resumed / name), f"{resumed / name} differs from the uninterrupted run"
  assert not _tmp_dirs(resumed), "half-written checkpoints left behind"


# ---------------------------------------------------------------------------
# Fixtures.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume")
  config = root / "synthetic_gold_only.py"
  config.write_text(_WRAPPER.format(test=pathlib.Path(__file__).name, path=str(REPO / "configs" / "synthetic.py")))
  return {"root": root, "cache": root / "xla_cache", "config": f"{config}:small"}


def _launch(env, workdir, overrides, name):
  return Launch(env["config"], workdir, overrides, env["cache"], env["root"] / f"{workdir.name}-{name}.log")


@pytest.fixture(scope="module")
def reference(env):
  """The uninterrupted sft -> prefs -> rm -> attack -> rlhf run."""
  workdir = env["root"] / "reference"
  launch = _launch(env, workdir, SMALL, "straight")
  assert launch.wait() == 0, launch.text()[-4000:]
  return workdir


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


def _only(*stages: str) -> list[str]:
  """SMALL with ``config.stages`` narrowed (the launches that target one stage skip the others' startup)."""
  return SMALL + [f"--config.stages={stages!r}".replace("'", '"')]


def _kill_at_random_step(env, workdir, name, progress_name, rng, events, overrides):
  kill_step = rng.randint(2, STEPS - 2)
  launch = _launch(env, workdir, overrides, name)
  assert launch.interrupt_when(_progress_reached(launch, progress_name, kill_step), signal.SIGKILL), (
    f"{progress_name} never reached step {kill_step}: {launch.text()[-3000:]}"
  )
  assert launch.wait() == -signal.SIGKILL
  events.append(f"{name}: SIGKILL after [{progress_name}] step {kill_step}")


def _kill_mid_write(env, workdir, name, stage_dir, events, overrides):
  writing = WritingCheckpoint(stage_dir)
  launch = _launch(env, workdir, overrides, name)
  assert launch.kill_while(writing), f"no checkpoint write seen: {launch.text()[-3000:]}"
  assert launch.wait() == -signal.SIGKILL
  # The half-written directory is still there: the kill did land mid-write.
  assert writing.new(), "the kill was meant to land during a checkpoint write"
  events.append(f"{name}: SIGKILL while writing {writing.new()}")


def test_pipeline_survives_sigkill_mid_step_and_mid_checkpoint_and_sigterm(env, reference):
  rng = random.Random(7)  # the "random" steps, reproducible
  workdir = env["root"] / "interrupted"
  attack_dir, rlhf_dir = workdir / "attack" / "round_0", workdir / "rlhf" / RUN
  events = []

  # Launches aimed at one stage list only the stages up to it; the last one
  # is the full command (which also reruns `rm`, a stage without a DONE
  # marker, over its finished checkpoints).
  _kill_at_random_step(env, workdir, "01-sft-step", "sft", rng, events, _only("sft"))
  _kill_mid_write(env, workdir, "02-sft-write", workdir / "sft", events, _only("sft"))
  # prefs (sampling, no train loop) runs through here uninterrupted.
  _kill_at_random_step(env, workdir, "03-rm-step", "rm", rng, events, _only("sft", "prefs", "rm"))
  _kill_mid_write(env, workdir, "04-rm-write", workdir / "rm", events, _only("rm"))
  _kill_at_random_step(env, workdir, "05-attack-step", "attack/round_0", rng, events, _only("attack"))

  # SIGTERM during the attack: a checkpoint of the current step, exit code 0,
  # and the adversary's rollouts up to that step are on disk.
  launch = _launch(env, workdir, _only("attack"), "06-attack-sigterm")
  progress = re.compile(r"^\[attack/round_0\] step (\d+)/", re.M)
  assert launch.interrupt_when(lambda: progress.search(launch.text()), signal.SIGTERM)
  assert launch.wait() == 0, launch.text()[-4000:]
  message = re.search(r"preempted by SIGTERM after step (\d+): checkpoint written", launch.text())
  assert message, launch.text()[-3000:]
  preempted_at = int(message.group(1))
  assert int(_latest_step_dir(attack_dir).name) == preempted_at
  assert all((attack_dir / "rollouts" / f"step_{s:05d}.npz").exists() for s in range(1, preempted_at + 1))
  assert not (attack_dir / "DONE").exists() and "Traceback" not in launch.text()
  events.append(f"06-attack-sigterm: SIGTERM, checkpoint at step {preempted_at}")

  if preempted_at < STEPS:  # a checkpoint write is still ahead
    _kill_mid_write(env, workdir, "07-attack-write", attack_dir, events, _only("attack"))
  _kill_at_random_step(env, workdir, "08-rlhf-step", f"rlhf/{RUN}", rng, events, _only("attack", "rlhf"))
  _kill_mid_write(env, workdir, "09-rlhf-write", rlhf_dir, events, _only("rlhf"))

  launch = _launch(env, workdir, SMALL, "10-finish")
  assert launch.wait() == 0, launch.text()[-4000:]
  print("\n".join(events))

  _assert_same_stage(reference / "sft", workdir / "sft")
  workdirs = (reference, workdir)
  _assert_same_files(
    reference / "prefs",
    workdir / "prefs",
    ["preferences.jsonl", "preferences_test.jsonl", "reference.npz", "summary.json"],
    workdirs,
  )
  _assert_same_stage(reference / "rm", workdir / "rm", params=False)
  _assert_same_files(reference / "rm", workdir / "rm", ["eval_summary.json"], workdirs)
  _assert_same_stage(reference / "attack" / "round_0", attack_dir, logs=("metrics.jsonl", "samples.jsonl"))
  _assert_same_files(
    reference / "attack" / "round_0", attack_dir, ["collected.npz", "final_samples.npz", "summary.json"], workdirs
  )
  _assert_same_stage(reference / "rlhf" / RUN, rlhf_dir, logs=("metrics.jsonl", "samples.jsonl"))


def test_sft_corrupted_latest_checkpoint_is_reported_and_the_previous_one_resumes_exactly(env, reference):
  workdir = env["root"] / "corrupted"
  shutil.copytree(reference / "sft", workdir / "sft")
  # As if the run had died right after writing its last checkpoint...
  shutil.rmtree(workdir / "sft" / "params")
  (workdir / "sft" / "DONE").unlink()
  # ... and that checkpoint's array data had been truncated on disk.
  latest = _latest_step_dir(workdir / "sft")
  for path in (latest / "state").rglob("*"):
    if path.is_file() and "/d/" in str(path):
      os.truncate(path, path.stat().st_size // 2)
  launch = _launch(env, workdir, SFT_ONLY, "corrupted")
  assert launch.wait() == 0, launch.text()[-4000:]
  log = launch.text()
  assert f"checkpoint {latest} is unreadable" in log and "trying an older one" in log
  assert f"moved the unreadable checkpoint {latest} to {latest}.unreadable" in log
  _assert_same_stage(reference / "sft", workdir / "sft")


def test_sft_checkpoint_of_a_different_model_is_an_error_naming_the_parameter(env, reference):
  workdir = env["root"] / "mismatch"
  shutil.copytree(reference / "sft", workdir / "sft")
  (workdir / "sft" / "DONE").unlink()
  before = sorted(p.name for p in (workdir / "sft" / "checkpoints").iterdir())
  launch = _launch(env, workdir, SFT_ONLY + ["--config.model.d_ff=48"], "mismatch")
  result = subprocess.CompletedProcess(launch.proc.args, launch.wait(), "", launch.text())
  last = assert_one_line_error(
    result, "parameter params/layers/", "has shape (1, 64, 32)", "the model expects (1, 48, 32)"
  )
  assert str(workdir / "sft" / "checkpoints") in last
  # The checkpoints of the other model are left exactly as they were.
  assert sorted(p.name for p in (workdir / "sft" / "checkpoints").iterdir()) == before


def test_nan_loss_stops_sft_naming_step_and_quantity_and_keeps_the_last_good_checkpoint(env):
  workdir = env["root"] / "nan"
  # A learning rate of 1e30 blows the weights up within a few steps, as in a
  # diverging run.
  overrides = SFT_ONLY + [
    "--config.sft.optimizer.learning_rate=1e30",
    "--config.sft.optimizer.warmup_steps=0",
    "--config.sft.checkpoint_every=1",
  ]
  launch = _launch(env, workdir, overrides, "nan")
  result = subprocess.CompletedProcess(launch.proc.args, launch.wait(), "", launch.text())
  last = assert_one_line_error(result, "[sft] non-finite ", "at step ", "last good checkpoint")
  # The gradient goes NaN while that step's loss is still finite; either
  # quantity may be the first to be named.
  assert re.search(r"non-finite (loss|grad_norm)=(nan|inf|-inf)", last), last
  bad_step = int(re.search(r"at step (\d+)", last).group(1))
  checkpoints = sorted(int(p.name) for p in (workdir / "sft" / "checkpoints").iterdir() if p.name.isdigit())
  # Every checkpoint is from before the bad step, and the newest one restores to finite values.
  assert checkpoints and max(checkpoints) == bad_step - 1
  state = _restore(workdir / "sft" / "checkpoints" / str(max(checkpoints)) / "state")
  assert all(np.all(np.isfinite(v)) for v in _flat(state["params"]).values())
  assert not (workdir / "sft" / "DONE").exists() and not (workdir / "sft" / "params").exists()


# The Adv-RM loop (stage `advrm`) on one round: attack 0 -> filter 0 ->
# advtrain 1 (RM round 1, trained by the rm stage's loop in
# advtrain/round_1/rm) -> attack 1 -> filter 1. advtrain's RM takes rm's
# log_every and checkpoint_every (2) from SMALL; its step count is its own.
# filter.z_min: after 6 adversary steps the default 1.96 keeps 2 of 96
# samples, too few to rely on for the mixing (with none, advtrain trains on
# ordinary pairs only); 0 keeps ~40 a round and still drops some samples
# that beat T(x) for their z.
ADVRM = _only("advrm") + [
  "--config.advrm.num_rounds=1",
  f"--config.advtrain.num_steps={STEPS}",
  "--config.filter.z_min=0.0",
]


def test_advrm_rounds_survive_sigkill_in_the_attacks_and_mid_checkpoint_of_advtrain(env, reference):
  rng = random.Random(11)
  straight, workdir = env["root"] / "advrm_straight", env["root"] / "advrm_interrupted"
  for target in (straight, workdir):
    # The stages before `advrm` are the reference run's (tested above).
    for stage in ("sft", "prefs", "rm"):
      shutil.copytree(reference / stage, target / stage)

  launch = _launch(env, straight, ADVRM, "straight")
  assert launch.wait() == 0, launch.text()[-4000:]
  pairs = [json.loads(l) for l in (straight / "advtrain" / "round_1" / "pairs.jsonl").read_text().splitlines()]
  assert any(p["adversarial"] for p in pairs) and not all(p["adversarial"] for p in pairs), (
    "advtrain should mix adversarial with ordinary pairs"
  )
  summary = json.loads((straight / "filter" / "round_0" / "summary.json").read_text())
  assert 0 < summary["num_kept"] < summary["num_above_threshold"], summary  # z(U) decided some samples

  events = []
  _kill_at_random_step(env, workdir, "01-attack0-step", "attack/round_0", rng, events, ADVRM)
  # The relaunch finishes the attack and the filter first; advtrain's RM
  # trains in the rm stage's loop, so its checkpoints are under rm/.
  _kill_mid_write(env, workdir, "02-advtrain-write", workdir / "advtrain" / "round_1" / "rm", events, ADVRM)
  assert not (workdir / "advtrain" / "round_1" / "DONE").exists()
  _kill_at_random_step(env, workdir, "03-attack1-step", "attack/round_1", rng, events, ADVRM)
  launch = _launch(env, workdir, ADVRM, "04-finish")
  assert launch.wait() == 0, launch.text()[-4000:]
  print("\n".join(events))

  workdirs = (straight, workdir)
  for r in (0, 1):
    attack = pathlib.Path("attack") / f"round_{r}"
    _assert_same_stage(straight / attack, workdir / attack, logs=("metrics.jsonl", "samples.jsonl"))
    _assert_same_files(
      straight / attack, workdir / attack, ["collected.npz", "final_samples.npz", "summary.json"], workdirs
    )
    filtered = pathlib.Path("filter") / f"round_{r}"
    assert (workdir / filtered / "DONE").exists()
    _assert_same_files(
      straight / filtered, workdir / filtered, ["adversarial_pairs.jsonl", "scores.npz", "summary.json"], workdirs
    )
  advtrain = pathlib.Path("advtrain") / "round_1"
  assert (workdir / advtrain / "DONE").exists()
  _assert_same_files(straight / advtrain, workdir / advtrain, ["pairs.jsonl", "summary.json"], workdirs)
  _assert_same_stage(straight / advtrain / "rm", workdir / advtrain / "rm", params=False)
  _assert_same_files(straight / advtrain / "rm", workdir / advtrain / "rm", ["eval_summary.json"], workdirs)
  assert os.readlink(workdir / "advtrain" / "final") == "round_1"
  # Stage `advrm` runs round 0's attack exactly as stage `attack` does.
  _assert_same_stage(
    reference / "attack" / "round_0", straight / "attack" / "round_0", logs=("metrics.jsonl", "samples.jsonl")
  )
