"""Bad-input corpus (tests/data/bad/): every broken file is a located DataError.

Each file in tests/data/bad/ (written by make_corpus.py there) is broken in
one way. Reading it must raise a ``DataError`` whose message names the file,
the 1-based line and the kind of problem -- never a bare ``json``/``gzip``/
``UnicodeDecodeError`` traceback -- and ``on_error="skip"`` must count it
instead. Over-length records read fine and are refused, still by file and
line, when tokenised. A UTF-8 BOM, CRLF line endings and blank lines are
accepted. The last test runs the ``rm`` stage through the entry point on a
broken file and checks the user sees one ``error:`` line, not a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from advrm_jax.pipelines import rm_training
from advrm_jax.data import preferences as prefs
from advrm_jax.data.batching import tokenize_pairs, tokenize_prompts
from advrm_jax.data.preferences import DataError, read_preferences, read_prompts

REPO = pathlib.Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "data" / "bad"

# file -> (expected kind, expected 1-based line). Gzip lines are where the
# decompressor gave up (the records before it were readable).
READ_ERRORS = {
  "pref_truncated.jsonl.gz": (prefs.TRUNCATED_GZIP, 127),
  "pref_corrupt.jsonl.gz": (prefs.CORRUPT_GZIP, 71),
  "pref_invalid_utf8.jsonl": (prefs.INVALID_UTF8, 2),
  "pref_lone_surrogate.jsonl": (prefs.INVALID_UTF8, 3),
  "pref_binary_garbage.jsonl": (prefs.MALFORMED_JSON, 1),
  "pref_malformed_json.jsonl": (prefs.MALFORMED_JSON, 2),
  "pref_not_an_object.jsonl": (prefs.NOT_AN_OBJECT, 2),
  "pref_deeply_nested.jsonl": (prefs.MALFORMED_JSON, 2),
  "pref_huge_integer.jsonl": (prefs.MALFORMED_JSON, 2),
  "pref_missing_field.jsonl": (prefs.MISSING_FIELD, 3),
  "pref_null_field.jsonl": (prefs.NULL_FIELD, 2),
  "pref_wrong_type.jsonl": (prefs.WRONG_TYPE, 2),
  "pref_bool_id.jsonl": (prefs.WRONG_TYPE, 2),
  "pref_bad_message.jsonl": (prefs.WRONG_TYPE, 1),
  "pref_empty_side.jsonl": (prefs.EMPTY_RESPONSE, 2),
  "pref_identical_sides.jsonl": (prefs.IDENTICAL_RESPONSES, 2),
  "pref_empty_prompt.jsonl": (prefs.EMPTY_PROMPT, 2),
  "pref_duplicate_id.jsonl": (prefs.DUPLICATE_ID, 3),
  "pref_mixed_formats.jsonl": (prefs.MISSING_FIELD, 2),
  "pref_hh_no_shared_prompt.jsonl": (prefs.BAD_DIALOGUE, 1),
  "pref_hh_no_assistant_marker.jsonl": (prefs.BAD_DIALOGUE, 2),
  "pref_hh_plain_text.jsonl": (prefs.BAD_DIALOGUE, 1),
  "prompt_truncated.jsonl.gz": (prefs.TRUNCATED_GZIP, 50),
  "prompt_wrong_type.jsonl": (prefs.WRONG_TYPE, 2),
  "prompt_null.jsonl": (prefs.NULL_FIELD, 3),
  "prompt_missing.jsonl": (prefs.MISSING_FIELD, 1),
  "prompt_empty_messages.jsonl": (prefs.EMPTY_PROMPT, 2),
  "prompt_message_not_object.jsonl": (prefs.WRONG_TYPE, 1),
  "prompt_duplicate_id.jsonl": (prefs.DUPLICATE_ID, 2),
}
# The whole file is unreadable as UTF-8 text: raised in "skip" mode too (kind, line).
ENCODING_ERRORS = {
  "pref_utf16_bom.jsonl": (prefs.NOT_UTF8_ENCODING, 1),
  "pref_utf16le_no_bom.jsonl": (prefs.NOT_UTF8_ENCODING, 1),
  "pref_utf32be_no_bom.jsonl": (prefs.NOT_UTF8_ENCODING, 1),
}
# Read fine; refused by length when tokenised (kind, line).
LENGTH_ERRORS = {
  "pref_over_length.jsonl": (prefs.RESPONSE_TOO_LONG, 2),
  "pref_huge_line.jsonl.gz": (prefs.RESPONSE_TOO_LONG, 2),
  "prompt_over_length.jsonl": (prefs.PROMPT_TOO_LONG, 2),
}
# Unusual but valid: (number of records).
ACCEPTED = {
  "ok_pref_bom.jsonl": 3,
  "ok_pref_crlf_blank_lines.jsonl": 3,
  "ok_prompt_bom_crlf.jsonl": 3,
}


class _BytesTokenizer:
  """Minimal Tokenizer (UTF-8 bytes + 3 specials), so no model files are needed."""

  vocab_size, pad_id, eos_id, bos_id, chat_template = 259, 256, 257, 258, None

  def encode(self, text):
    return list(text.encode("utf-8"))

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def _reader(name: str):
  return read_prompts if name.startswith(("prompt_", "ok_prompt_")) else read_preferences


def _load_generator():
  spec = importlib.util.spec_from_file_location("make_corpus", BAD / "make_corpus.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_corpus_is_complete_and_matches_its_generator():
  on_disk = {p.name for p in BAD.iterdir() if p.name not in ("make_corpus.py", "README.md")}
  expected = set(READ_ERRORS) | set(ENCODING_ERRORS) | set(LENGTH_ERRORS) | set(ACCEPTED)
  assert on_disk == expected, "every corpus file needs an expectation here (and vice versa)"
  # The issue asks for at least 12 kinds of broken input.
  kinds = {kind for kind, _ in READ_ERRORS.values()} | {kind for kind, _ in LENGTH_ERRORS.values()}
  assert len(kinds) >= 12, kinds
  # Committed bytes are what make_corpus.py writes (so the corpus can be regenerated).
  for name, content in _load_generator().files().items():
    assert (BAD / name).read_bytes() == content, f"{name} differs from make_corpus.py's output"


@pytest.mark.parametrize("name", sorted(READ_ERRORS))
def test_broken_file_raises_data_error_naming_file_line_and_kind(name):
  kind, line = READ_ERRORS[name]
  path = BAD / name
  with pytest.raises(DataError) as info:
    _reader(name)(path)
  error = info.value
  assert (error.kind, error.line, error.path) == (kind, line, str(path))
  message = str(error)
  # The one line a user sees says where and what.
  assert message.startswith(f"{path}, line {line}: ") and message.endswith(f"[{kind}]")
  assert "\n" not in message
  # A DataError is raised deliberately: no json/gzip/codec exception chained to it.
  assert error.__cause__ is None


@pytest.mark.parametrize("name", sorted(ENCODING_ERRORS))
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_utf16_and_utf32_files_are_named_with_their_encoding(name, on_error):
  path = BAD / name
  with pytest.raises(DataError) as info:
    read_preferences(path, on_error=on_error)
  assert (info.value.kind, info.value.line) == ENCODING_ERRORS[name]
  # The encoding as the file name says it (UTF-16 with a BOM is little-endian here).
  encoding = {"utf16": "UTF-16-LE", "utf16le": "UTF-16-LE", "utf32be": "UTF-32-BE"}[name.split("_")[1]]
  assert str(info.value).startswith(f"{path}, line 1: the file is {encoding} text")
  assert "re-encode it as UTF-8" in str(info.value)


def test_hh_record_without_assistant_marker_names_the_field_and_marker():
  with pytest.raises(DataError) as info:
    read_preferences(BAD / "pref_hh_no_assistant_marker.jsonl")
  assert "field 'chosen' has no '\\n\\nAssistant:' marker" in str(info.value)
  # Chosen and rejected without any marker: still read as HH-RLHF, not as "missing field 'prompt'".
  with pytest.raises(DataError) as info:
    read_preferences(BAD / "pref_hh_plain_text.jsonl")
  assert "'\\n\\nAssistant:' marker" in str(info.value) and "prompt'" not in str(info.value)


class _AsUnprivileged:
  """Runs the block as a user that file modes apply to.

  root reads a mode-000 file anyway, so as root the block runs with the
  effective uid of "nobody" (os.seteuid, restored on exit).
  """

  def __enter__(self):
    if os.geteuid() == 0:
      os.seteuid(65534)

  def __exit__(self, *exc):
    if os.getuid() == 0:
      os.seteuid(0)


def _not_files(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
  fifo = tmp_path / "pipe.jsonl"
  os.mkfifo(fifo)
  return {"a directory": BAD, "a FIFO (named pipe)": fifo}


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_directory_fifo_and_unreadable_file_are_one_line_errors(tmp_path, on_error):
  # A FIFO would block the reader forever if it were opened: it must be refused unopened.
  for what, path in _not_files(tmp_path).items():
    with pytest.raises(DataError) as info:
      read_preferences(path, on_error=on_error)
    assert str(info.value) == f"{path}: is {what}, not a JSONL or JSONL.gz file [{prefs.NOT_A_FILE}]"
  # In a directory anyone may enter (pytest's tmp_path is private to its user), so only the file's mode stops us.
  directory = pathlib.Path(tempfile.mkdtemp(prefix="advrm_unreadable_"))
  try:
    directory.chmod(0o755)
    path = directory / "pairs.jsonl"
    path.write_bytes((BAD / "ok_pref_bom.jsonl").read_bytes())
    path.chmod(0o644)
    with _AsUnprivileged():
      assert len(read_preferences(path)) == 3  # readable while its mode allows it
    path.chmod(0)
    with _AsUnprivileged(), pytest.raises(DataError) as info:
      read_preferences(path, on_error=on_error)
  finally:
    shutil.rmtree(directory)
  assert str(info.value) == (
    f"{path}: cannot be read (permission denied); check its permissions or read a copy [{prefs.UNREADABLE}]"
  )


def test_empty_test_split_warns_and_says_which_key(caplog):
  import ml_collections  # pylint: disable=import-outside-toplevel

  pairs = list(read_preferences(BAD / "ok_pref_bom.jsonl"))[:1]
  data = ml_collections.ConfigDict(dict(source="jsonl", path="one.jsonl", test_fraction=0.1, split_seed=0))
  with caplog.at_level("WARNING"):
    train, test = rm_training.split_pairs(pairs, data)
  assert (len(train), len(test)) == (1, 0)
  assert "test split of one.jsonl is empty" in caplog.text and "--config.data.test_fraction" in caplog.text
  data.test_fraction = 1.0
  with pytest.raises(ValueError, match="none is left to train on; lower --config.data.test_fraction"):
    rm_training.split_pairs(pairs, data)


@pytest.mark.parametrize("name", sorted(READ_ERRORS))
def test_skip_mode_counts_the_problem_instead(name):
  kind, _ = READ_ERRORS[name]
  result = _reader(name)(BAD / name, on_error="skip")
  assert result.stats.skipped[kind] >= 1
  assert str(BAD / name) in result.stats.messages[0]
  # Good records before the broken one are kept.
  assert all(record.line is not None for record in result)


@pytest.mark.parametrize("name", sorted(LENGTH_ERRORS))
def test_over_length_record_is_refused_by_file_and_line_when_tokenised(name):
  kind, line = LENGTH_ERRORS[name]
  path = BAD / name
  records = _reader(name)(path)  # reading is fine, whatever the line length
  tokenizer = _BytesTokenizer()
  with pytest.raises(DataError) as info:
    if name.startswith("prompt_"):
      tokenize_prompts(records, tokenizer, max_prompt_len=64)
    else:
      tokenize_pairs(records, tokenizer, max_prompt_len=64, max_response_len=64)
  assert (info.value.kind, info.value.line, info.value.path) == (kind, line, str(path))
  assert str(info.value).startswith(f"{path}, line {line}: ")
  # "skip" drops exactly the over-length record; "truncate" keeps it cut to fit.
  if name.startswith("prompt_"):
    assert tokenize_prompts(records, tokenizer, 64, on_overlength="skip")["tokens"].shape == (1, 64)
  else:
    kept = tokenize_pairs(records, tokenizer, 64, 64, on_overlength="skip")
    assert kept["example_indices"].tolist() == [0]
    cut = tokenize_pairs(records, tokenizer, 64, 64, on_overlength="truncate")
    assert cut["chosen_tokens"].shape == (2, 64 + 64 + 1)


def test_huge_line_is_read_whole():
  pairs = read_preferences(BAD / "pref_huge_line.jsonl.gz")
  assert [p.line for p in pairs] == [1, 2]
  assert len(pairs[1].chosen) == 4_000_000


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_bom_crlf_and_blank_lines_are_accepted(name):
  records = _reader(name)(BAD / name)
  assert len(records) == ACCEPTED[name]
  for record in records:
    # Neither the BOM nor the CR may leak into a field.
    assert not record.id.startswith("\ufeff")
    values = [record.prompt, record.id] + ([record.chosen, record.rejected] if hasattr(record, "chosen") else [])
    assert not any("\r" in v or "\ufeff" in v for v in values)
  assert records[0].id in ("p1", "q1")


def _entry_point_env() -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("PYTEST_CURRENT_TEST", None)
  return env


def _run_rm_stage(workdir: pathlib.Path, path: pathlib.Path) -> str:
  """`python -m advrm_jax.main` on a preference file: asserts exit 2, no traceback; returns the error line."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "advrm_jax.main",
      f"--config={REPO / 'configs' / 'rm_hh.py'}:small",
      f"--workdir={workdir}",
      f"--config.data.path={path}",
    ],
    cwd=REPO,
    env=_entry_point_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  # At the default verbosity the error is all there is to read.
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {path}"), last
  return last


@pytest.mark.parametrize(
  "name",
  [
    "pref_malformed_json.jsonl",
    "pref_truncated.jsonl.gz",
    "pref_utf16le_no_bom.jsonl",
    "pref_hh_no_assistant_marker.jsonl",
  ],
)
def test_rm_stage_on_a_broken_file_prints_one_error_line(tmp_path, name):
  """The user-facing end: `python -m advrm_jax.main` names file, line and problem in one line."""
  path = BAD / name
  kind, line = {**READ_ERRORS, **ENCODING_ERRORS}[name]
  last = _run_rm_stage(tmp_path, path)
  assert f"{path}, line {line}: " in last and f"[{kind}]" in last, last


def test_rm_stage_on_a_directory_or_fifo_prints_one_error_line(tmp_path):
  for what, path in _not_files(tmp_path).items():
    assert f"is {what}, not a JSONL" in _run_rm_stage(tmp_path / "run", path)
