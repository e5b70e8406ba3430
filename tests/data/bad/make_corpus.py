"""Writes the bad-input corpus next to this file (rerun to regenerate it).

  python tests/data/bad/make_corpus.py

Every file is small and deterministic (gzip with mtime 0). What each file is
expected to produce (the problem kind and line) is asserted in
tests/test_reliability_data.py; README.md here lists them. ``pref_*`` files
are preference-pair files (read_preferences), ``prompt_*`` files are prompt
files (read_prompts); ``ok_*`` files are unusual but valid and must parse.
"""

import gzip
import io
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def _line(**record) -> str:
  return json.dumps(record, ensure_ascii=False)


def _good(i: int) -> str:
  return _line(
    id=f"p{i}", prompt=f"Name a colour number {i}.", chosen=f"Blue, number {i}.", rejected=f"I will not say {i}."
  )


def _text(*lines: str, newline: str = "\n") -> bytes:
  return "".join(l + newline for l in lines).encode("utf-8")


def _gzip(data: bytes) -> bytes:
  buffer = io.BytesIO()
  # mtime=0 and no file name: the same bytes on every regeneration.
  with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as f:
    f.write(data)
  return buffer.getvalue()


def _hh(human: str, answer: str) -> str:
  return f"\n\nHuman: {human}\n\nAssistant: {answer}"


def files() -> dict[str, bytes]:
  """File name -> content."""
  good = [_good(i) for i in range(1, 200)]
  out = {}
  # -- Compression.
  whole = _gzip(_text(*good))
  # Cut before the end: the deflate stream and the CRC/size trailer are gone.
  out["pref_truncated.jsonl.gz"] = whole[: len(whole) * 2 // 3]
  # A damaged deflate block in the middle of the stream.
  damaged = bytearray(whole)
  for i in range(len(damaged) // 2, len(damaged) // 2 + 8):
    damaged[i] ^= 0xA5
  out["pref_corrupt.jsonl.gz"] = bytes(damaged)
  # -- Encoding.
  out["pref_invalid_utf8.jsonl"] = _text(good[0]) + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
  # Valid JSON whose string is a lone UTF-16 surrogate: not encodable text.
  out["pref_lone_surrogate.jsonl"] = _text(good[0], good[1], '{"prompt": "hi", "chosen": "\\ud800", "rejected": "b"}')
  out["pref_binary_garbage.jsonl"] = bytes(range(256)) * 4
  # Text editors on Windows save "Unicode" as UTF-16 (with a byte-order mark);
  # without one, the NUL bytes of the ASCII characters give the encoding away.
  out["pref_utf16_bom.jsonl"] = "".join(l + "\n" for l in good[:3]).encode("utf-16")
  out["pref_utf16le_no_bom.jsonl"] = "".join(l + "\n" for l in good[:3]).encode("utf-16-le")
  out["pref_utf32be_no_bom.jsonl"] = "".join(l + "\n" for l in good[:3]).encode("utf-32-be")
  # -- JSON structure.
  out["pref_malformed_json.jsonl"] = _text(good[0], '{"prompt": "cut by a crash", "chosen": "a", "rej', good[2])
  out["pref_not_an_object.jsonl"] = _text(good[0], '["prompt", "chosen", "rejected"]')
  out["pref_deeply_nested.jsonl"] = _text(good[0], "[" * 100_000 + "]" * 100_000)
  out["pref_huge_integer.jsonl"] = _text(
    good[0], '{"id": ' + "9" * 5000 + ', "prompt": "p", "chosen": "a", "rejected": "b"}'
  )
  # -- Fields.
  out["pref_missing_field.jsonl"] = _text(good[0], good[1], _line(prompt="p", chosen="a"))
  out["pref_null_field.jsonl"] = _text(good[0], _line(prompt="p", chosen=None, rejected="b"))
  out["pref_wrong_type.jsonl"] = _text(good[0], _line(prompt="p", chosen="a", rejected=42))
  out["pref_bool_id.jsonl"] = _text(good[0], _line(id=True, prompt="p", chosen="a", rejected="b"))
  out["pref_bad_message.jsonl"] = _text(_line(prompt=[{"role": "user"}], chosen="a", rejected="b"))
  # -- Content.
  out["pref_empty_side.jsonl"] = _text(good[0], _line(prompt="p", chosen="a", rejected=""))
  out["pref_identical_sides.jsonl"] = _text(good[0], _line(prompt="p", chosen="same", rejected="same"))
  out["pref_empty_prompt.jsonl"] = _text(good[0], _line(prompt="", chosen="a", rejected="b"))
  out["pref_duplicate_id.jsonl"] = _text(good[0], good[1], good[0])
  out["pref_mixed_formats.jsonl"] = _text(good[0], _line(chosen=_hh("hi", "hello"), rejected=_hh("hi", "go away")))
  # The second record's chosen side lost its "\n\nAssistant:" marker.
  out["pref_hh_no_assistant_marker.jsonl"] = _text(
    _line(chosen=_hh("hi", "hello"), rejected=_hh("hi", "go away")),
    _line(chosen="\n\nHuman: hi\n\nhello", rejected=_hh("hi", "no")),
  )
  # Chosen/rejected dialogues without any marker: not recognisable as HH-RLHF.
  out["pref_hh_plain_text.jsonl"] = _text(_line(chosen="Human: hi. Bot: hello", rejected="Human: hi. Bot: no"))
  out["pref_hh_no_shared_prompt.jsonl"] = _text(_line(chosen=_hh("hi", "hello"), rejected=_hh("bye", "ok")))
  # -- Length (read fine; tokenize_pairs/tokenize_prompts reject them).
  out["pref_over_length.jsonl"] = _text(good[0], _line(prompt="p", chosen="word " * 300, rejected="no"))
  # A 4 MB line (40 KB compressed): read without a line-length limit, then
  # refused by length at tokenisation, still naming its line.
  out["pref_huge_line.jsonl.gz"] = _gzip(_text(good[0], _line(prompt="p", chosen="x" * 4_000_000, rejected="y")))
  # -- Valid but unusual: must parse.
  out["ok_pref_bom.jsonl"] = b"\xef\xbb\xbf" + _text(*good[:3])
  out["ok_pref_crlf_blank_lines.jsonl"] = _text(good[0], "", good[1], "   ", good[2], newline="\r\n")
  # -- Prompt files.
  prompts = [_line(id=f"q{i}", prompt=f"Say something about {i}.") for i in range(1, 50)]
  out["prompt_truncated.jsonl.gz"] = _gzip(_text(*prompts))[:300]
  out["prompt_wrong_type.jsonl"] = _text(prompts[0], _line(prompt=123))
  out["prompt_null.jsonl"] = _text(prompts[0], prompts[1], _line(prompt=None))
  out["prompt_missing.jsonl"] = _text(_line(text="where is the prompt"))
  out["prompt_empty_messages.jsonl"] = _text(prompts[0], _line(prompt=[]))
  out["prompt_message_not_object.jsonl"] = _text(_line(prompt=["hello"]))
  out["prompt_duplicate_id.jsonl"] = _text(prompts[0], prompts[0])
  out["prompt_over_length.jsonl"] = _text(prompts[0], _line(prompt="word " * 300))
  out["ok_prompt_bom_crlf.jsonl"] = b"\xef\xbb\xbf" + _text(*prompts[:3], newline="\r\n")
  return out


def main() -> None:
  for name, content in files().items():
    (HERE / name).write_bytes(content)
  print(f"wrote {len(files())} files to {HERE}")


if __name__ == "__main__":
  main()
