"""Readers for preference-pair and prompt datasets stored as JSON lines.

Two preference formats are understood (plain `.jsonl` or gzip-compressed,
recognised by its magic bytes, whatever the file name):

* `prompt_chosen_rejected`: `{"prompt", "chosen", "rejected"}` per line, with
  an optional `"id"`. The prompt is a string or a list of chat messages
  `[{"role": ..., "content": ...}, ...]`; chosen and rejected are the two
  responses.
* `hh_rlhf`: Anthropic HH-RLHF's `{"chosen", "rejected"}`, each a whole
  dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ..."). The prompt is the shared
  prefix of the two dialogues up to and including its last "\\n\\nAssistant:";
  the rest of each side is the response (it keeps its leading space, as the
  text would be tokenised after "Assistant:"). The prompt is also parsed
  into chat messages (`PreferencePair.prompt_messages`) for chat templates.

Prompt datasets are `{"prompt": ...}` lines with an optional `"id"`.

Every problem with the input is a `DataError` naming the file, the 1-based
line and what is wrong, never a bare traceback from `json` or `gzip`. With
`on_error="skip"` bad records are left out instead and counted per kind of
problem in `ReadResult.stats`. A UTF-8 byte-order mark, CRLF line endings and
blank lines are accepted.

A response that is only whitespace is kept (only an empty string is an
"empty side"): HH-RLHF has real pairs where the preferred answer was an empty
reply (records 87 and 517 of the harmless-base test split), and they carry
signal about refusing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import io
import json
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

from etils import epath

from advrm_jax.data.tokenizer import Message, Prompt
from advrm_jax.fileio import is_remote, write_bytes_atomic

PreferenceFormat = Literal["auto", "prompt_chosen_rejected", "hh_rlhf"]
OnError = Literal["raise", "skip"]

# Kinds of problem; `DataError.kind` and the keys of `ReadStats.skipped`.
INVALID_UTF8 = "invalid_utf8"  # Bytes that are not UTF-8, or lone surrogates.
TRUNCATED_GZIP = "truncated_gzip"  # Stream ends before the gzip trailer.
CORRUPT_GZIP = "corrupt_gzip"  # Bad header, CRC or deflate data.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"  # Valid JSON, but not {...}.
MISSING_FIELD = "missing_field"
NULL_FIELD = "null_field"
WRONG_TYPE = "wrong_type"
EMPTY_PROMPT = "empty_prompt"
EMPTY_RESPONSE = "empty_response"
IDENTICAL_RESPONSES = "identical_responses"
BAD_DIALOGUE = "bad_dialogue"  # HH-RLHF text with no shared prompt or no turn marker.
DUPLICATE_ID = "duplicate_id"
# Whole-file problems: raised whatever on_error says, since no record can be read.
NOT_A_FILE = "not_a_file"  # A directory, FIFO, socket or device.
UNREADABLE = "unreadable"  # No read permission.
NOT_UTF8_ENCODING = "not_utf8_encoding"  # UTF-16 or UTF-32 text.
# Raised by advrm_jax.data.batching when a tokenised example does not fit.
PROMPT_TOO_LONG = "prompt_too_long"
RESPONSE_TOO_LONG = "response_too_long"

_HH_ASSISTANT = "\n\nAssistant:"
_HH_HUMAN = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_UTF8_BOM = b"\xef\xbb\xbf"
# Byte-order marks, UTF-32 first: its little-endian mark starts with UTF-16's.
_WIDE_BOMS = (
  (b"\xff\xfe\x00\x00", "UTF-32-LE"),
  (b"\x00\x00\xfe\xff", "UTF-32-BE"),
  (b"\xff\xfe", "UTF-16-LE"),
  (b"\xfe\xff", "UTF-16-BE"),
)
_GZIP_MAGIC = b"\x1f\x8b"
# How many skipped-record messages ReadStats keeps for a log line.
_MAX_EXAMPLE_MESSAGES = 10

T = TypeVar("T")


class DataError(ValueError):
  """A problem with an input record, located by file and 1-based line.

  Attributes:
    path: The file (as given to the reader), or None for in-memory data.
    line: 1-based line number, or None when not known.
    kind: One of the problem-kind constants of this module.
    detail: What is wrong, without the location.
  """

  def __init__(self, path: str | os.PathLike[str] | None, line: int | None, kind: str, detail: str):
    self.path = None if path is None else os.fspath(path)
    self.line = line
    self.kind = kind
    self.detail = detail
    super().__init__(f"{format_location(self.path, line)}: {detail} [{kind}]")


def format_location(path: str | None, line: int | None) -> str:
  """Returns "file, line N" (the form DataError messages use)."""
  where = "<in-memory data>" if path is None else path
  return where if line is None else f"{where}, line {line}"


class _Problem(Exception):
  """A problem with one record; the reader adds the file and line."""

  def __init__(self, kind: str, detail: str):
    super().__init__(detail)
    self.kind = kind
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """One preference: a prompt and a preferred and a dispreferred response.

  Attributes:
    prompt: Plain text, or a list of {"role", "content"} chat messages.
    chosen: The preferred response (without the prompt).
    rejected: The dispreferred response (without the prompt).
    id: The record's "id" as a string, or None.
    source: The file the pair was read from, or None.
    line: 1-based line in `source`, or None.
    prompt_messages: The prompt as chat messages when it was given as an
      HH-RLHF transcript (so a chat template can render it); None otherwise.
  """

  prompt: Prompt
  chosen: str
  rejected: str
  id: str | None = None
  source: str | None = None
  line: int | None = None
  prompt_messages: Sequence[Message] | None = None

  @property
  def location(self) -> str:
    """Where the record came from, as "file, line N" (for messages)."""
    return format_location(self.source, self.line)


# PreferencePair's provenance fields and `location` again, on purpose: a shared base class would put these
# defaulted fields before PreferencePair's required chosen/rejected, which dataclasses refuse.
@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """One prompt of a prompt dataset (for RL rollouts or attacks).

  Attributes:
    prompt: Plain text, or a list of {"role", "content"} chat messages.
    id: The record's "id" as a string, or None.
    source: The file the prompt was read from, or None.
    line: 1-based line in `source`, or None.
    prompt_messages: Chat-message form of an HH-RLHF transcript prompt.
  """

  prompt: Prompt
  id: str | None = None
  source: str | None = None
  line: int | None = None
  prompt_messages: Sequence[Message] | None = None

  @property
  def location(self) -> str:
    """Where the record came from, as "file, line N" (for messages)."""
    return format_location(self.source, self.line)


@dataclasses.dataclass
class ReadStats:
  """What a reader saw.

  Attributes:
    path: The file read.
    format: The record format used (after auto-detection), or None if no
      record was recognised.
    num_lines: Lines read, blank ones included.
    num_records: Records returned.
    skipped: Skipped records per problem kind (only in on_error="skip").
    messages: The first few skipped-record messages, for a log line.
  """

  path: str
  format: str | None = None
  num_lines: int = 0
  num_records: int = 0
  skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
  messages: list[str] = dataclasses.field(default_factory=list)

  @property
  def num_skipped(self) -> int:
    """Records skipped in on_error="skip" mode, all kinds together."""
    return sum(self.skipped.values())

  def record_skip(self, error: DataError) -> None:
    """Counts a skipped record by kind and keeps the first few messages."""
    self.skipped[error.kind] += 1
    if len(self.messages) < _MAX_EXAMPLE_MESSAGES:
      self.messages.append(str(error))


class ReadResult(Sequence[T], Generic[T]):
  """The records a reader returned (a read-only sequence) plus its stats."""

  def __init__(self, records: list[T], stats: ReadStats):
    self.records = records
    self.stats = stats

  def __getitem__(self, index):
    return self.records[index]

  def __len__(self) -> int:
    return len(self.records)

  def __repr__(self) -> str:
    return f"ReadResult({len(self.records)} records from {self.stats.path}, skipped={dict(self.stats.skipped)})"


def parse_hh_dialogue(text: str) -> list[dict[str, str]]:
  """Splits an HH-RLHF transcript into chat messages.

  "\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:" gives
  user "a", assistant "b", user "c": the empty final assistant turn is the
  generation prompt and is dropped. Text before the first turn marker, if
  any, becomes a system message. Contents are stripped of surrounding
  whitespace, which is what chat templates expect.

  Args:
    text: The transcript.

  Returns:
    The messages.
  """
  parts = _HH_TURN.split(text)
  messages = []
  if parts[0].strip():
    messages.append({"role": "system", "content": parts[0].strip()})
  for label, content in zip(parts[1::2], parts[2::2]):
    role = "user" if label == "Human" else "assistant"
    messages.append({"role": role, "content": content.strip()})
  if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
    messages.pop()
  return messages


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
  """Splits two HH-RLHF dialogues into a prompt and two responses.

  Args:
    chosen: The preferred full dialogue.
    rejected: The dispreferred full dialogue.

  Returns:
    The shared prefix up to and including its last "\\n\\nAssistant:", and
    the remainder of each dialogue.

  Raises:
    ValueError: If the dialogues share no prefix ending in "\\n\\nAssistant:".
  """
  shared = os.path.commonprefix([chosen, rejected])
  end = shared.rfind(_HH_ASSISTANT)
  if end < 0:
    raise ValueError(
      f"chosen and rejected share no prefix ending in {_HH_ASSISTANT!r}, so there is no prompt to split off"
    )
  end += len(_HH_ASSISTANT)
  return chosen[:end], chosen[end:], rejected[end:]


def _looks_like_hh_transcript(text: str) -> bool:
  return text.startswith(_HH_HUMAN) and text.endswith(_HH_ASSISTANT)


def _type_name(value: Any) -> str:
  return (
    "null"
    if value is None
    else {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
      type(value), type(value).__name__
    )
  )


def _check_text(value: str, field: str) -> None:
  # json.loads accepts "\ud800" escapes; such strings cannot be encoded as
  # UTF-8, so a tokenizer would fail on them later with no location.
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise _Problem(
      INVALID_UTF8,
      f"field {field!r} contains a lone surrogate escape at character {e.start}, which is not valid Unicode text",
    ) from None


def _require(record: Mapping[str, Any], field: str, fmt: str) -> Any:
  if field not in record:
    raise _Problem(MISSING_FIELD, f"missing field {field!r} (format {fmt}; fields present: {sorted(record)})")
  value = record[field]
  if value is None:
    raise _Problem(NULL_FIELD, f"field {field!r} is null")
  return value


def _require_text(record: Mapping[str, Any], field: str, fmt: str) -> str:
  value = _require(record, field, fmt)
  if not isinstance(value, str):
    raise _Problem(WRONG_TYPE, f"field {field!r} must be a string, got {_type_name(value)}")
  _check_text(value, field)
  return value


def _parse_prompt(record: Mapping[str, Any], fmt: str) -> Prompt:
  """Validates the "prompt" field: non-empty text or non-empty messages."""
  value = _require(record, "prompt", fmt)
  if isinstance(value, str):
    _check_text(value, "prompt")
    if not value:
      raise _Problem(EMPTY_PROMPT, "field 'prompt' is empty")
    return value
  if not isinstance(value, list):
    raise _Problem(WRONG_TYPE, f"field 'prompt' must be a string or a list of messages, got {_type_name(value)}")
  if not value:
    raise _Problem(EMPTY_PROMPT, "field 'prompt' is an empty message list")
  messages = []
  for i, message in enumerate(value):
    if not isinstance(message, dict):
      raise _Problem(
        WRONG_TYPE, f"prompt message {i} must be an object with 'role' and 'content', got {_type_name(message)}"
      )
    for key in ("role", "content"):
      if key not in message:
        raise _Problem(WRONG_TYPE, f"prompt message {i} has no {key!r}")
      if not isinstance(message[key], str):
        raise _Problem(WRONG_TYPE, f"prompt message {i} field {key!r} must be a string, got {_type_name(message[key])}")
      _check_text(message[key], f"prompt[{i}].{key}")
    messages.append({"role": message["role"], "content": message["content"]})
  return messages


def _parse_id(record: Mapping[str, Any]) -> str | None:
  value = record.get("id")
  if value is None:  # "id" is optional; null means absent.
    return None
  # bool is an int subclass but true/false are not meaningful ids.
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise _Problem(WRONG_TYPE, f"field 'id' must be a string or an integer, got {_type_name(value)}")
  if isinstance(value, str):
    _check_text(value, "id")
  return str(value)


def _check_responses(chosen: str, rejected: str, what: str) -> None:
  for field, value in (("chosen", chosen), ("rejected", rejected)):
    if not value:
      raise _Problem(EMPTY_RESPONSE, f"{field} {what} is empty")
  if chosen == rejected:
    raise _Problem(IDENTICAL_RESPONSES, f"chosen and rejected {what}s are identical, so the pair carries no preference")


def _parse_pcr_record(record: Mapping[str, Any], source: str, line: int) -> PreferencePair:
  fmt = "prompt_chosen_rejected"
  prompt = _parse_prompt(record, fmt)
  chosen = _require_text(record, "chosen", fmt)
  rejected = _require_text(record, "rejected", fmt)
  _check_responses(chosen, rejected, "response")
  prompt_messages = None
  if isinstance(prompt, str) and _looks_like_hh_transcript(prompt):
    prompt_messages = parse_hh_dialogue(prompt)
  return PreferencePair(
    prompt=prompt,
    chosen=chosen,
    rejected=rejected,
    id=_parse_id(record),
    source=source,
    line=line,
    prompt_messages=prompt_messages,
  )


def _parse_hh_record(record: Mapping[str, Any], source: str, line: int) -> PreferencePair:
  fmt = "hh_rlhf"
  chosen_text = _require_text(record, "chosen", fmt)
  rejected_text = _require_text(record, "rejected", fmt)
  _check_responses(chosen_text, rejected_text, "dialogue")
  for field, text in (("chosen", chosen_text), ("rejected", rejected_text)):
    if _HH_ASSISTANT not in text:
      raise _Problem(
        BAD_DIALOGUE,
        f"field {field!r} has no {_HH_ASSISTANT!r} marker, so there is "
        "no prompt to split off (HH-RLHF dialogues read '\\n\\nHuman: ...\\n\\n"
        "Assistant: ...'; give {prompt, chosen, rejected} records otherwise)",
      )
  try:
    prompt, chosen, rejected = split_hh_pair(chosen_text, rejected_text)
  except ValueError as e:
    raise _Problem(BAD_DIALOGUE, str(e)) from None
  _check_responses(chosen, rejected, f"response (after the last {_HH_ASSISTANT!r})")
  return PreferencePair(
    prompt=prompt,
    chosen=chosen,
    rejected=rejected,
    id=_parse_id(record),
    source=source,
    line=line,
    prompt_messages=parse_hh_dialogue(prompt),
  )


def _parse_prompt_record(record: Mapping[str, Any], source: str, line: int) -> PromptRecord:
  prompt = _parse_prompt(record, "prompt")
  prompt_messages = None
  if isinstance(prompt, str) and _looks_like_hh_transcript(prompt):
    prompt_messages = parse_hh_dialogue(prompt)
  return PromptRecord(prompt=prompt, id=_parse_id(record), source=source, line=line, prompt_messages=prompt_messages)


def _detect_format(record: Mapping[str, Any]) -> str | None:
  """Recognises the preference format of a JSON object, None if unclear."""
  if "prompt" in record:
    return "prompt_chosen_rejected"
  chosen = record.get("chosen")
  if isinstance(chosen, str) and _HH_ASSISTANT in chosen:
    return "hh_rlhf"
  return None


def _file_kind(mode: int) -> str:
  for test, name in (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
  ):
    if test(mode):
      return name
  return "not a regular file"


def _open_binary(path: str):
  """Opens `path` for reading bytes, decompressing gzip transparently.

  Raises:
    DataError: If `path` is not a regular file (a directory, or a FIFO whose
      read would block forever) or cannot be read.
    OSError: If it does not exist or another I/O error occurs.
  """
  try:
    if not is_remote(path):  # an object in a bucket (gs://) is never a directory, FIFO or device
      mode = os.stat(path).st_mode
      if not stat.S_ISREG(mode):
        raise DataError(path, None, NOT_A_FILE, f"is {_file_kind(mode)}, not a JSONL or JSONL.gz file")
    f = epath.Path(path).open("rb")  # pylint: disable=consider-using-with
  except PermissionError:
    raise DataError(
      path, None, UNREADABLE, "cannot be read (permission denied); check its permissions or read a copy"
    ) from None
  magic = f.read(2)
  f.seek(0)
  if magic == _GZIP_MAGIC:
    return gzip.GzipFile(fileobj=f, mode="rb"), f
  return f, f


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
  """Yields (1-based line number, raw line bytes) of a JSONL(.gz) file.

  Raises:
    DataError: On a truncated or corrupt gzip stream, naming the line being
      read when decompression failed.
    OSError: If the file cannot be opened.
  """
  stream, raw_file = _open_binary(path)
  # Only decompression errors are data problems; an OSError from a plain
  # file (e.g. EIO) is an I/O failure and propagates unchanged.
  gzip_errors = (OSError, zlib.error) if stream is not raw_file else ()
  try:
    lines = iter(stream)
    number = 0
    while True:
      try:
        raw = next(lines)
      except StopIteration:
        return
      except EOFError as e:
        raise DataError(
          path, number + 1, TRUNCATED_GZIP, f"gzip data is truncated ({e}); the file ends mid-stream"
        ) from None
      except gzip_errors as e:
        raise DataError(path, number + 1, CORRUPT_GZIP, f"gzip data is corrupt ({e})") from None
      number += 1
      if number == 1:
        _check_not_wide_encoding(path, raw)
        if raw.startswith(_UTF8_BOM):
          raw = raw[len(_UTF8_BOM) :]
      yield number, raw
  finally:
    stream.close()
    raw_file.close()


def _wide_encoding(head: bytes) -> tuple[str, str] | None:
  """(encoding, evidence) when `head` starts like UTF-16 or UTF-32 text, else None.

  Without a byte-order mark, JSON text starts with an ASCII character, so its
  first four bytes show the NUL pattern of the encoding (as RFC 4627
  section 3 detects it): x000 UTF-32-LE, 000x UTF-32-BE, x0x0 UTF-16-LE,
  0x0x UTF-16-BE.
  """
  for bom, name in _WIDE_BOMS:
    if head.startswith(bom):
      return name, f"byte-order mark {bom.hex(' ')}"
  if len(head) < 4:
    return None
  nul = tuple(b == 0 for b in head[:4])
  patterns = {
    (False, True, True, True): "UTF-32-LE",
    (True, True, True, False): "UTF-32-BE",
    (False, True, False, True): "UTF-16-LE",
    (True, False, True, False): "UTF-16-BE",
  }
  if nul in patterns:
    return patterns[nul], f"NUL bytes in the first four bytes {head[:4].hex(' ')}"
  return None


def _check_not_wide_encoding(path: str, first_line: bytes) -> None:
  found = _wide_encoding(first_line)
  if found:
    name, evidence = found
    raise DataError(
      path,
      1,
      NOT_UTF8_ENCODING,
      f"the file is {name} text ({evidence}), not UTF-8; re-encode it as UTF-8 (e.g. iconv -f {name} -t UTF-8)",
    )


def _decode_json_object(raw: bytes) -> dict[str, Any] | None:
  """Parses one line; None for a blank line. Raises _Problem otherwise."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _Problem(
      INVALID_UTF8, f"line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {e.start})"
    ) from None
  text = text.strip()  # Also drops the "\r" of CRLF line endings.
  if not text:
    return None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise _Problem(MALFORMED_JSON, f"malformed JSON: {e.msg} at column {e.colno}") from None
  except RecursionError:
    raise _Problem(MALFORMED_JSON, "JSON is nested too deeply") from None
  except ValueError as e:  # E.g. an integer literal with too many digits.
    raise _Problem(MALFORMED_JSON, f"malformed JSON: {e}") from None
  if not isinstance(value, dict):
    raise _Problem(NOT_AN_OBJECT, f"expected a JSON object per line, got {_type_name(value)}")
  return value


def _read_records(
  path: str | os.PathLike[str], parse_for_format, fixed_format: str | None, on_error: OnError
) -> ReadResult:
  """The shared reading loop: lines -> JSON objects -> records.

  Args:
    path: File to read.
    parse_for_format: Maps a format name to a parser
      `(record, source, line) -> record object`.
    fixed_format: The format to use, or None to detect it from the first
      JSON object in the file.
    on_error: "raise" or "skip".

  Returns:
    The records and stats.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  source = os.fspath(path)
  stats = ReadStats(path=source, format=fixed_format)
  records = []
  first_line_of_id: dict[str, int] = {}

  def handle(error: DataError) -> None:
    if on_error == "raise":
      raise error
    stats.record_skip(error)

  lines = _iter_lines(source)
  while True:
    try:
      number, raw = next(lines)
    except StopIteration:
      break
    except DataError as error:
      if error.kind in (NOT_A_FILE, UNREADABLE, NOT_UTF8_ENCODING):
        raise  # no record of the file can be read, so there is nothing to skip to
      # A broken gzip stream cannot be resumed: keep what was read before.
      handle(error)
      break
    stats.num_lines = number
    try:
      obj = _decode_json_object(raw)
      if obj is None:
        continue
      fmt = stats.format
      if fmt is None:
        # The first recognisable object fixes the format for the whole file,
        # so a stray record of the other format is reported, not accepted.
        stats.format = fmt = _detect_format(obj)
      if fmt is None:
        # Not recognisable. Chosen and rejected without a prompt is an
        # HH-RLHF record whose dialogue lacks its marker (its parser says
        # which); otherwise report it as a prompt/chosen/rejected record,
        # whose message ("missing field 'prompt'") is the likelier fix.
        hh_like = "prompt" not in obj and {"chosen", "rejected"} <= obj.keys()
        fmt = "hh_rlhf" if hh_like and "hh_rlhf" in parse_for_format else "prompt_chosen_rejected"
      record = parse_for_format[fmt](obj, source, number)
      if record.id is not None:
        if record.id in first_line_of_id:
          raise _Problem(DUPLICATE_ID, f"duplicate id {record.id!r} (first used on line {first_line_of_id[record.id]})")
        first_line_of_id[record.id] = number
    except _Problem as problem:
      handle(DataError(source, number, problem.kind, problem.detail))
      continue
    records.append(record)
  stats.num_records = len(records)
  return ReadResult(records, stats)


def read_preferences(
  path: str | os.PathLike[str],
  *,
  format: PreferenceFormat = "auto",  # pylint: disable=redefined-builtin
  on_error: OnError = "raise",
) -> ReadResult[PreferencePair]:
  """Reads preference pairs from a JSONL or JSONL.gz file.

  Args:
    path: The file. Gzip is recognised by content, not by name.
    format: "prompt_chosen_rejected", "hh_rlhf", or "auto": decided by the
      first recognisable JSON object (a "prompt" field means
      prompt_chosen_rejected; "chosen" dialogue text containing
      "\\n\\nAssistant:" means hh_rlhf) and then applied to every line, so
      a stray record of the other format is reported rather than silently
      accepted.
    on_error: "raise" stops at the first problem with a DataError; "skip"
      leaves bad records out and counts them in `result.stats.skipped`.

  Returns:
    A ReadResult: a sequence of PreferencePair with `.stats`.

  Raises:
    DataError: For any problem with the content (in "raise" mode).
    OSError: If the file cannot be opened.
  """
  parsers = {"prompt_chosen_rejected": _parse_pcr_record, "hh_rlhf": _parse_hh_record}
  if format != "auto" and format not in parsers:
    raise ValueError(f"unknown preference format {format!r}; expected 'auto' or one of {sorted(parsers)}")
  return _read_records(path, parsers, None if format == "auto" else format, on_error)


def read_prompts(path: str | os.PathLike[str], *, on_error: OnError = "raise") -> ReadResult[PromptRecord]:
  """Reads a prompt dataset: `{"prompt": ..., "id": ...}` per line.

  Args:
    path: A JSONL or JSONL.gz file.
    on_error: "raise" or "skip", as for `read_preferences`.

  Returns:
    A ReadResult of PromptRecord with `.stats`.

  Raises:
    DataError: For any problem with the content (in "raise" mode).
  """
  return _read_records(path, {"prompt": _parse_prompt_record}, "prompt", on_error)


@contextlib.contextmanager
def _open_for_writing(path: str | os.PathLike[str]) -> Iterator[io.TextIOBase]:
  """A text stream whose content replaces ``path`` atomically on exit (gzipped when it ends in .gz)."""
  path = epath.Path(path)
  buffer = io.BytesIO()
  if path.name.endswith(".gz"):
    # As gzip.open(path) writes it: the file's name in the header.
    with (
      gzip.GzipFile(filename=path.name, mode="wb", fileobj=buffer) as raw,
      io.TextIOWrapper(raw, encoding="utf-8") as text,
    ):
      yield text
  else:
    text = io.TextIOWrapper(buffer, encoding="utf-8")
    yield text
    text.flush()
  write_bytes_atomic(path, buffer.getvalue())


def write_preferences(path: str | os.PathLike[str], pairs: Iterable[PreferencePair]) -> None:
  """Writes pairs as prompt_chosen_rejected JSONL (gzip if path ends in .gz).

  HH-RLHF pairs keep their transcript prompt, so reading the file back
  restores `prompt_messages` too.
  """
  with _open_for_writing(path) as f:
    for pair in pairs:
      record = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
      if pair.id is not None:
        record["id"] = pair.id
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_prompts(path: str | os.PathLike[str], prompts: Iterable[PromptRecord | Prompt]) -> None:
  """Writes a prompt JSONL file (gzip if path ends in .gz)."""
  with _open_for_writing(path) as f:
    for item in prompts:
      if isinstance(item, PromptRecord):
        record = {"prompt": item.prompt}
        if item.id is not None:
          record["id"] = item.id
      else:
        record = {"prompt": item}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
