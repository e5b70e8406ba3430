"""Work dirs in a bucket: every stage file goes through epath, none through the builtin open() or pathlib.

The bucket is ``gs://bucket``, served by a fake GCS: fsspec's ``gs``
protocol (what ``epath`` uses for ``gs://`` without TensorFlow) maps to a
local store directory, and orbax's two GCS client calls (TensorStore's kvstore
spec, the hierarchical-namespace query) point at the same store. Everything
else is the real code path for a bucket: epath's fsspec backend, orbax's
commit_success.txt protocol for GCS, direct (non-renamed) object writes.

A stray builtin ``open("gs://bucket/...")``, ``pathlib.Path("gs://...")``,
``np.save`` or ``os.replace`` resolves against the working directory
("gs:/bucket/..."): it fails, or leaves a ``gs:`` directory there, which
every test checks for.
"""

import collections
import importlib.util
import io
import json
import os
import pathlib
import sys
import types

import fsspec
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem
import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
import pytest

from advrm_jax import metrics
from advrm_jax import sharding as shd
from advrm_jax.checkpoints.orbax_io import Checkpointer, load_params, save_params
from advrm_jax.data.preferences import PreferencePair, read_preferences, write_preferences
from advrm_jax.pipelines import prefs, sft
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.loop import LoopConfig, end_of_run_plots, train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "gs://bucket/run"
OBJECT_WRITES = collections.Counter()  # object writes through fsspec, by key below BUCKET


def _fake_gcs_class(store: pathlib.Path) -> type:
  root = str(store)

  class FakeGCS(LocalFileSystem):
    """gs://<bucket>/<key> is <store>/<bucket>/<key>; listings are given back as gs:// names."""

    protocol = ("gs", "gcs")

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # gcsfs's argument, which epath passes
      del finalize_on_close
      super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
      path = fsspec.utils.stringify_path(path)
      if path.startswith(root):
        return path.rstrip("/") or "/"
      for prefix in ("gs://", "gcs://"):
        path = path.removeprefix(prefix)
      return f"{root}/{path}".rstrip("/")

    def glob(self, path, **kwargs):
      return [p.removeprefix(root + "/") for p in super().glob(path, **kwargs)]

    def _open(self, path, mode="rb", **kwargs):
      if "w" in mode or "a" in mode:
        OBJECT_WRITES[self._strip_protocol(path).removeprefix(f"{root}/bucket/run/")] += 1
      return super()._open(path, mode=mode, **kwargs)

  return FakeGCS


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The fake bucket's store directory; the test runs in an empty working directory."""
  store = tmp_path / "store"
  store.mkdir()
  fake = _fake_gcs_class(store)
  for protocol in ("gs", "gcs"):
    # fsspec's registry of protocol classes (fsspec.register_implementation writes the same dict).
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, protocol, fake)  # pylint: disable=protected-access
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)

  def kvstore(path):
    bucket_name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": f"{store}/{bucket_name}/{key}"}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield store / "bucket" / "run"
  assert os.listdir(cwd) == [], f"something wrote to the local disk instead of the bucket: {os.listdir(cwd)}"
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def _files(root: pathlib.Path) -> set[str]:
  return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_workdir_files_in_a_bucket_have_the_local_bytes(bucket, tmp_path):
  value = {"accuracy": 0.75, "nan": float("nan"), "rows": [1, 2]}
  records = [{"prompt": "p", "chosen": "é"}, {"prompt": "q", "chosen": "b"}]
  pairs = [PreferencePair(prompt="p", chosen="a", rejected="b", id="0")]
  local = tmp_path / "local"
  for root in (BUCKET, local):
    wd.write_json(f"{root}/stage/summary.json", value)
    wd.write_jsonl(f"{root}/stage/rows.jsonl", records)
    wd.save_npz(f"{root}/stage/arrays.npz", a=np.arange(6).reshape(2, 3), b=np.array(["x", "y"]))
    write_preferences(f"{root}/stage/{wd.TRAIN_FILE}", pairs)
    write_preferences(f"{root}/stage/pairs.jsonl.gz", pairs)
    wd.mark_done(f"{root}/stage")
  assert wd.is_done(epath.Path(BUCKET) / "stage") and not wd.is_done(epath.Path(BUCKET) / "other")
  # The objects themselves, no temporary names left over.
  names = {"summary.json", "rows.jsonl", "arrays.npz", wd.TRAIN_FILE, "pairs.jsonl.gz", wd.DONE}
  assert _files(bucket / "stage") == names == _files(local / "stage")
  for name in ("summary.json", "rows.jsonl", wd.TRAIN_FILE, wd.DONE):
    assert (bucket / "stage" / name).read_bytes() == (local / "stage" / name).read_bytes(), name
  # Worked out independently: the JSON text, NaN as null, and the UTF-8 line.
  assert json.loads((bucket / "stage" / "summary.json").read_text()) == {"accuracy": 0.75, "nan": None, "rows": [1, 2]}
  assert (bucket / "stage" / "rows.jsonl").read_bytes().split(b"\n")[0] == '{"prompt": "p", "chosen": "é"}'.encode()
  assert wd.read_json(f"{BUCKET}/stage/summary.json", "x")["rows"] == [1, 2]
  assert wd.read_jsonl(f"{BUCKET}/stage/rows.jsonl", "x") == records
  arrays = wd.load_npz(f"{BUCKET}/stage/arrays.npz", "x")
  assert arrays["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and arrays["b"].tolist() == ["x", "y"]
  for name in (wd.TRAIN_FILE, "pairs.jsonl.gz"):
    back = list(read_preferences(f"{BUCKET}/stage/{name}"))
    assert [(p.prompt, p.chosen, p.rejected, p.id) for p in back] == [("p", "a", "b", "0")]
  with pytest.raises(FileNotFoundError, match="run the `prefs` stage first"):
    wd.load_npz(f"{BUCKET}/missing.npz", "the `prefs` stage")


def test_metric_writer_and_tensorboard_events_in_a_bucket(bucket):
  writer = metrics.MetricWriter(f"{BUCKET}/sft", total_steps=3, name="sft", stream=io.StringIO())
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": 1.0 / step})
  writer.write_texts(2, {"samples": "a table"})
  writer.truncate_after(2)  # a resumed run drops what was logged after its checkpoint
  writer.close()
  rows = metrics.read_metrics(f"{BUCKET}/sft/metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5)]
  assert [json.loads(l)["step"] for l in (bucket / "sft" / "samples.jsonl").read_text().splitlines()] == [2]
  events = list((bucket / "sft" / "tb").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0
  assert metrics.plot_metrics(f"{BUCKET}/sft/metrics.jsonl", f"{BUCKET}/sft/metrics.png") is not None
  assert (bucket / "sft" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_orbax_checkpoints_round_trip_through_the_bucket(bucket):
  state = {"w": np.arange(8, dtype=np.float32).reshape(2, 4), "b": np.float32(3.5)}
  checkpointer = Checkpointer(f"{BUCKET}/rm/checkpoints", max_to_keep=2)
  for step in (1, 2, 3):
    checkpointer.save(step, jax.tree.map(lambda x: x * step, state), {"step": step}, force=True)
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 3]  # keep-2 deleted step 1 in the bucket
  restored_step, restored, meta = checkpointer.restore(state)
  checkpointer.close()
  assert restored_step == 3 and meta == {"step": 3}
  assert restored["w"].tolist() == [[0, 3, 6, 9], [12, 15, 18, 21]] and float(restored["b"]) == 10.5
  # Orbax took its GCS path (a commit marker instead of a rename).
  assert (bucket / "rm" / "checkpoints" / "3" / "commit_success.txt").exists()
  save_params(f"{BUCKET}/sft/params", state)
  assert load_params(f"{BUCKET}/sft/params", state)["w"].tolist() == state["w"].tolist()


def _small_config():
  spec = importlib.util.spec_from_file_location("synthetic_config", REPO / "configs" / "synthetic.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("small")
  config.sft.num_examples, config.sft.batch_size, config.sft.num_steps = 64, 8, 4
  config.sft.log_every = config.sft.checkpoint_every = 2
  config.prefs.num_prompts, config.prefs.num_attack_prompts, config.prefs.num_heldout_prompts = 16, 8, 0
  config.prefs.reference_samples, config.prefs.sample_batch_size = 2, 16
  return config


def test_sft_and_prefs_stages_write_their_work_dir_to_the_bucket(bucket):
  config = _small_config()
  workdir = epath.Path(BUCKET)
  sft.run(config, workdir)
  prefs.run(config, workdir)
  files = _files(bucket)
  assert {
    "sft/DONE",
    "sft/model_config.json",
    "sft/metrics.jsonl",
    "sft/metrics.png",
    "prefs/DONE",
    f"prefs/{wd.TRAIN_FILE}",
    f"prefs/{wd.TEST_FILE}",
    f"prefs/{wd.REFERENCE_FILE}",
    "prefs/summary.json",
  } <= files
  assert any(f.startswith("sft/params/") for f in files) and any(f.startswith("sft/checkpoints/4/") for f in files)
  assert [r["step"] for r in metrics.read_metrics(bucket / "sft" / "metrics.jsonl")] == [2, 4]
  # What later stages read back, from the bucket.
  model_config, _, params = wd.load_policy(workdir / "sft")
  assert model_config.d_model == config.model.d_model and jax.tree.leaves(params)
  reference = wd.load_reference(workdir)
  assert reference["response_tokens"].shape[:2] == (8, 2)
  num_pairs = sum(1 for _ in read_preferences(workdir / "prefs" / wd.TRAIN_FILE))
  assert num_pairs == wd.read_json(workdir / "prefs" / "summary.json", "prefs")["num_train"]


def _logging_loop(directory, get_batch=None):
  """train_loop over NUM_LOGGED steps, each logged (metrics and a sample table), a checkpoint every CHECKPOINT_EVERY."""

  def step_fn(state, batch, rng):
    del rng
    w = state["w"] * 0.5 + jnp.mean(batch["x"])
    return {"w": w}, {"loss": jnp.sum(w**2)}, {"x": batch["x"]}

  def batch_of(step, share):
    return share({"x": np.full((1, 2), 0.25 * step, np.float32)})

  def text_fn(samples, step):
    del step
    return {"samples": str(samples["x"].tolist())}

  with end_of_run_plots(False):
    train_loop(
      "remote",
      directory,
      {"w": jnp.zeros((2,), jnp.float32)},
      step_fn,
      get_batch or batch_of,
      LoopConfig(num_steps=NUM_LOGGED, log_every=1, checkpoint_every=CHECKPOINT_EVERY, keep_checkpoints=2),
      shd.make_mesh((1, 1, 1), jax.devices()[:1]),
      text_fn=text_fn,
    )


NUM_LOGGED, CHECKPOINT_EVERY = 12, 4


def test_remote_logs_are_written_at_checkpoints_and_equal_the_local_files(bucket, tmp_path, monkeypatch):
  monkeypatch.setattr(metrics, "time", types.SimpleNamespace(time=lambda: 0.0))  # rows equal byte for byte
  _logging_loop(tmp_path / "local")
  OBJECT_WRITES.clear()
  _logging_loop(f"{BUCKET}/loop")
  # One object write per checkpoint (steps 4, 8, 12), not one per row (12): O(rows x checkpoints) bytes, not rows^2.
  assert OBJECT_WRITES["loop/metrics.jsonl"] == OBJECT_WRITES["loop/samples.jsonl"] == NUM_LOGGED // CHECKPOINT_EVERY
  for name in ("metrics.jsonl", "samples.jsonl"):
    assert (bucket / "loop" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
  assert [r["step"] for r in metrics.read_metrics(bucket / "loop" / "metrics.jsonl")] == list(range(1, 13))

  # Crashed before step 11: the rows of steps 9, 10 (after the step-8 checkpoint) are written as the loop
  # ends, as a local log has them; the resumed run drops and logs them again, like a local one.
  def crash_at_10(step, share):
    if step == 10:
      raise RuntimeError("crash before step 11")
    return share({"x": np.full((1, 2), 0.25 * step, np.float32)})

  with pytest.raises(RuntimeError, match="crash before step 11"):
    _logging_loop(f"{BUCKET}/resumed", crash_at_10)
  assert [r["step"] for r in metrics.read_metrics(bucket / "resumed" / "metrics.jsonl")] == list(range(1, 11))
  _logging_loop(f"{BUCKET}/resumed")
  for name in ("metrics.jsonl", "samples.jsonl"):
    assert (bucket / "resumed" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
