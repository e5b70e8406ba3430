"""Safe loading: weights come only from safetensors, orbax or GGUF; no path makes code run.

* Statically: the package contains no unpickling (pickle, torch.load, numpy
  with allow_pickle=True, joblib/dill/marshal/shelve), no eval/exec, no
  unsafe YAML, and no trust_remote_code=True; every transformers
  ``from_pretrained`` is local-only with remote code refused explicitly.
* Dynamically, with booby-trapped inputs that would create a marker file if
  any of their code ran: a Hugging Face directory holding only a pickle
  ``pytorch_model.bin`` (plus ``auto_map`` custom modelling code) is refused
  by path; a tokenizer directory with custom code (``auto_map``) is refused
  without prompting; a pickle named ``.gguf``, a pickle in place of an orbax
  checkpoint's metadata, and a Python file given as a data path are each
  reported as unreadable input. The marker never appears.

The config *file* (``--config configs/x.py``) is Python by design
(ml_collections), like the training script itself; what is checked here is
that the paths and values inside a config are only ever read as data.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import pickle
import re

import jax.numpy as jnp
import pytest

from advrm_jax.checkpoints import gguf as gguf_io
from advrm_jax.checkpoints import hf
from advrm_jax.checkpoints.orbax_io import Checkpointer, UnreadableCheckpointError
from advrm_jax.data.preferences import DataError, read_preferences
from advrm_jax.models.config import ModelConfig
from tests.test_reliability_config import REPO, assert_one_line_error, run_entry_point

PACKAGE = REPO / "advrm_jax"

# (pattern, why it is forbidden). Comments and docstrings are included on
# purpose: mentioning these is rare enough that an allow-list is simpler.
FORBIDDEN = [
  (r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\b", "unpickling module"),
  (r"\bpickle\.loads?\(", "unpickling"),
  (r"\btorch\.load\(", "torch.load unpickles"),
  (r"allow_pickle\s*=\s*True", "numpy unpickling"),
  (r"(?<![\w.])eval\(", "eval of a string"),
  (r"(?<![\w.])exec\(", "exec of a string"),
  (r"\byaml\.(unsafe_)?load\(", "YAML may construct objects (use yaml.safe_load)"),
  (r"trust_remote_code\s*=\s*True", "runs a checkpoint's Python code"),
]


def _package_sources() -> list[pathlib.Path]:
  return sorted(PACKAGE.rglob("*.py"))


def test_package_has_no_unpickling_eval_or_remote_code():
  hits = []
  for path in _package_sources():
    for number, line in enumerate(path.read_text().splitlines(), 1):
      for pattern, why in FORBIDDEN:
        if re.search(pattern, line):
          hits.append(f"{path.relative_to(REPO)}:{number}: {why}: {line.strip()}")
  assert not hits, "\n".join(hits)


def test_every_from_pretrained_is_local_only_and_refuses_remote_code():
  calls = []
  for path in _package_sources():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
        # HFTokenizer.from_pretrained is our own wrapper (its body is one of the calls checked).
        if isinstance(node.func.value, ast.Name) and node.func.value.id == "HFTokenizer":
          continue
        keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        calls.append((f"{path.relative_to(REPO)}:{node.lineno}", keywords))
  assert calls, "expected the transformers tokenizer loaders"
  for where, keywords in calls:
    assert keywords.get("local_files_only") is True and keywords.get("trust_remote_code") is False, where


@pytest.fixture
def marker(tmp_path):
  """A file that exists only if attacker code ran."""
  path = tmp_path / "CODE_RAN"
  yield path
  assert not path.exists(), "a booby-trapped input executed code"


class _Trap:
  def __init__(self, marker: pathlib.Path):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (self.marker,))


def _trap_bytes(marker: pathlib.Path) -> bytes:
  return pickle.dumps(_Trap(marker))


def test_the_trap_really_fires_when_unpickled(tmp_path):
  # Guards the guard: unpickling the trap does create the marker.
  marker = tmp_path / "fired"
  pickle.loads(_trap_bytes(marker))  # noqa: S301 -- deliberately, on our own bytes
  assert marker.exists()


def _trapped_hf_dir(tmp_path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
  directory = tmp_path / "hf_pickle_only"
  directory.mkdir()
  cfg = ModelConfig.from_dict(
    dict(
      arch="llama",
      vocab_size=64,
      d_model=16,
      num_layers=1,
      num_heads=2,
      num_kv_heads=2,
      head_dim=8,
      d_ff=32,
      max_seq_len=32,
    )
  )
  config = hf.hf_config_from_model_config(cfg)
  # Custom modelling code, which transformers would import with trust_remote_code=True.
  config["auto_map"] = {"AutoModelForCausalLM": "modeling_trap.TrapModel"}
  (directory / "config.json").write_text(json.dumps(config))
  (directory / "modeling_trap.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
  (directory / "pytorch_model.bin").write_bytes(_trap_bytes(marker))
  return directory


def test_pickle_only_hf_checkpoint_is_refused_by_path(tmp_path, marker):
  directory = _trapped_hf_dir(tmp_path, marker)
  with pytest.raises(ValueError, match="refusing to load PyTorch .bin weights") as info:
    hf.load_hf_checkpoint(directory)
  assert str(directory / "pytorch_model.bin") in str(info.value)


def test_tokenizer_with_custom_code_is_refused_without_asking(tmp_path, marker):
  directory = tmp_path / "tokenizer_trap"
  directory.mkdir()
  (directory / "tokenization_trap.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
  auto_map = {"AutoTokenizer": ["tokenization_trap.TrapTokenizer", None]}
  (directory / "tokenizer_config.json").write_text(
    json.dumps({"auto_map": auto_map, "tokenizer_class": "TrapTokenizer"})
  )
  # Left unset, trust_remote_code makes transformers *ask* on stdin whether to
  # run the code; explicit False refuses at once.
  with pytest.raises(ValueError, match="trust_remote_code"):
    hf.load_hf_tokenizer(directory)


def test_pickle_named_gguf_is_not_a_readable_gguf(tmp_path, marker):
  path = tmp_path / "model.gguf"
  path.write_bytes(_trap_bytes(marker))
  with pytest.raises(ValueError, match="not a readable GGUF file") as info:
    gguf_io.read_gguf(path)
  assert str(path) in str(info.value)


def test_pickle_in_an_orbax_checkpoint_is_unreadable_not_executed(tmp_path, marker):
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  checkpointer.save(1, {"w": jnp.ones((3,))}, {"step": 1}, force=True)
  checkpointer.close()
  for name in ("_METADATA", "manifest.ocdbt"):
    (tmp_path / "checkpoints" / "1" / "state" / name).write_bytes(_trap_bytes(marker))
  (tmp_path / "checkpoints" / "1" / "meta" / "metadata").write_bytes(_trap_bytes(marker))
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  try:
    with pytest.raises(UnreadableCheckpointError):
      checkpointer.restore({"w": jnp.ones((3,))})
  finally:
    checkpointer.close()


def test_python_file_as_data_path_is_read_as_data(tmp_path, marker):
  path = tmp_path / "pairs.py"
  path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
  with pytest.raises(DataError) as info:
    read_preferences(path)
  assert info.value.line == 1


def test_pickle_only_backbone_through_the_entry_point(tmp_path, marker):
  """`rm.backbone.path` pointing at pickle weights: one error line, nothing executed."""
  directory = _trapped_hf_dir(tmp_path, marker)
  result = run_entry_point(
    f"{REPO / 'configs' / 'rm_hh.py'}:small,synthetic",
    tmp_path / "run",
    "--config.rm.backbone.source=hf",
    f"--config.rm.backbone.path={directory}",
    "--config.rm.tokenizer=byte",
    timeout=300,
  )
  assert_one_line_error(result, str(directory / "pytorch_model.bin"), "refusing to load PyTorch .bin weights")
  assert not os.path.exists(marker)
