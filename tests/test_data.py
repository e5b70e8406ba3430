"""Tests of the data layer: readers, validation, tokenisation, batching, TFDS.

All data is tiny and written to tmp_path; the tokenizer is a WordLevel model
built in-process, saved with `save_pretrained` and loaded back through
`HFTokenizer.from_pretrained`, so expected ids are known by construction.
"""

import gzip
import json
import sys

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from advrm_jax.data import batching
from advrm_jax.data import preferences
from advrm_jax.data import tokenizer as tokenizer_lib
from advrm_jax.data.preferences import DataError, PreferencePair

# Ids fixed by construction: the tests compare arrays with these numbers.
VOCAB = {
  "[PAD]": 0,
  "[EOS]": 1,
  "[BOS]": 2,
  "[UNK]": 3,
  "<|user|>": 4,
  "<|assistant|>": 5,
  "hello": 6,
  "world": 7,
  "how": 8,
  "are": 9,
  "you": 10,
  "?": 11,
  "fine": 12,
  "thanks": 13,
  "bye": 14,
}
CHAT_TEMPLATE = (
  "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
  "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _fast_tokenizer(with_pad: bool = True):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  raw = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  kwargs = dict(
    tokenizer_object=raw,
    eos_token="[EOS]",
    bos_token="[BOS]",
    unk_token="[UNK]",
    additional_special_tokens=["<|user|>", "<|assistant|>"],
  )
  if with_pad:
    kwargs["pad_token"] = "[PAD]"
  return PreTrainedTokenizerFast(**kwargs)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  """The WordLevel tokenizer with a chat template, via from_pretrained."""
  path = tmp_path_factory.mktemp("tokenizer")
  fast = _fast_tokenizer()
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(path)
  return tokenizer_lib.HFTokenizer.from_pretrained(path)


def _write_lines(path, lines, newline=b"\n"):
  data = newline.join(line if isinstance(line, bytes) else line.encode("utf-8") for line in lines) + newline
  path.write_bytes(data)
  return path


def _pcr(prompt="hello", chosen="fine", rejected="bye", **extra):
  return json.dumps(dict(prompt=prompt, chosen=chosen, rejected=rejected, **extra))


# --------------------------------------------------------------- tokenizer


def test_hf_tokenizer_interface(tok):
  assert isinstance(tok, tokenizer_lib.Tokenizer)
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (15, 0, 1, 2)
  assert tok.chat_template == CHAT_TEMPLATE
  # No BOS/EOS added by encode.
  assert tok.encode("hello world ?") == [6, 7, 11]
  assert tok.decode([6, 7, 0, 0]) == "hello world"
  assert tok.decode(np.array([0, 8, 9, 10, 1])) == "how are you [EOS]"


def test_chat_template_and_format_prompt(tok):
  messages = [
    {"role": "user", "content": "hello world"},
    {"role": "assistant", "content": "fine"},
    {"role": "user", "content": "how are you ?"},
  ]
  text = tok.apply_chat_template(messages)
  assert text == ("<|user|> hello world <|assistant|> fine <|user|> how are you ? <|assistant|>")
  assert tok.encode(text) == [4, 6, 7, 5, 12, 4, 8, 9, 10, 11, 5]
  assert tokenizer_lib.format_prompt(tok, "hello", True) == ("<|user|> hello <|assistant|>")
  assert tokenizer_lib.format_prompt(tok, "hello", False) == "hello"
  assert tokenizer_lib.format_prompt(tok, messages, False) == (
    "\n\nHuman: hello world\n\nAssistant: fine\n\nHuman: how are you ?\n\nAssistant:"
  )


def test_tokenizer_without_pad_uses_eos_and_no_template():
  tok = tokenizer_lib.HFTokenizer(_fast_tokenizer(with_pad=False))
  assert tok.pad_id == tok.eos_id == 1
  assert tok.chat_template is None
  with pytest.raises(ValueError, match="no chat template"):
    tokenizer_lib.format_prompt(tok, "hello", use_chat_template=True)


# ----------------------------------------------------------------- readers

# (lines of the file, bad line number, problem kind). Line 1 is always good
# so the error must point past it.
_BAD_INPUTS = {
  "malformed_json": ([_pcr(), '{"prompt": "a", "chosen": '], 2, preferences.MALFORMED_JSON),
  "not_an_object": ([_pcr(), "[1, 2]"], 2, preferences.NOT_AN_OBJECT),
  "missing_field": ([_pcr(), '{"prompt": "a", "chosen": "b"}'], 2, preferences.MISSING_FIELD),
  "null_field": ([_pcr(), _pcr(rejected=None)], 2, preferences.NULL_FIELD),
  "wrong_type": ([_pcr(), _pcr(chosen=3)], 2, preferences.WRONG_TYPE),
  "bad_message": ([_pcr(), _pcr(prompt=[{"role": "user"}])], 2, preferences.WRONG_TYPE),
  "empty_side": ([_pcr(), _pcr(chosen="")], 2, preferences.EMPTY_RESPONSE),
  "empty_prompt": ([_pcr(), _pcr(prompt="")], 2, preferences.EMPTY_PROMPT),
  "identical": ([_pcr(), _pcr(chosen="same", rejected="same")], 2, preferences.IDENTICAL_RESPONSES),
  "invalid_utf8": ([_pcr(), b'{"prompt": "\xff\xfe", "chosen": "a"}'], 2, preferences.INVALID_UTF8),
  "lone_surrogate": ([_pcr(), '{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}'], 2, preferences.INVALID_UTF8),
  "duplicate_id": ([_pcr(id="a"), _pcr(id="b"), _pcr(id="a")], 3, preferences.DUPLICATE_ID),
  "hh_no_prompt": (
    [
      json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}),
      json.dumps({"chosen": "\n\nHuman: x\n\nAssistant: b", "rejected": "\n\nHuman: y\n\nAssistant: c"}),
    ],
    2,
    preferences.BAD_DIALOGUE,
  ),
}


@pytest.mark.parametrize("case", sorted(_BAD_INPUTS))
def test_bad_input_raises_data_error_with_file_and_line(tmp_path, case):
  lines, bad_line, kind = _BAD_INPUTS[case]
  path = _write_lines(tmp_path / f"{case}.jsonl", lines)
  with pytest.raises(DataError) as info:
    preferences.read_preferences(path)
  error = info.value
  assert isinstance(error, ValueError)
  assert (error.kind, error.line) == (kind, bad_line)
  assert str(path) in str(error) and f"line {bad_line}" in str(error)
  # Skip mode keeps the good lines and counts the bad one by kind.
  result = preferences.read_preferences(path, on_error="skip")
  assert len(result) == len(lines) - 1
  assert dict(result.stats.skipped) == {kind: 1}


def test_truncated_gzip_names_line(tmp_path):
  lines = [_pcr(prompt=f"prompt number {i} " * 20, id=i) for i in range(200)]
  data = gzip.compress(("\n".join(lines) + "\n").encode())
  path = tmp_path / "cut.jsonl.gz"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match="truncated") as info:
    preferences.read_preferences(path)
  assert info.value.kind == preferences.TRUNCATED_GZIP
  assert str(path) in str(info.value)
  result = preferences.read_preferences(path, on_error="skip")
  # Every line before the cut is kept; the error is on the next line.
  assert len(result) == info.value.line - 1 > 0
  assert [p.id for p in result] == [str(i) for i in range(len(result))]
  assert dict(result.stats.skipped) == {preferences.TRUNCATED_GZIP: 1}


def test_skip_mode_counts_each_kind(tmp_path):
  path = _write_lines(
    tmp_path / "mixed.jsonl",
    [_pcr(id=1), "not json", _pcr(chosen=""), _pcr(id=2), "3", _pcr(id=1), _pcr(chosen="x", rejected="x"), _pcr(id=3)],
  )
  result = preferences.read_preferences(path, on_error="skip")
  assert [(p.id, p.line) for p in result] == [("1", 1), ("2", 4), ("3", 8)]
  assert dict(result.stats.skipped) == {
    "malformed_json": 1,
    "empty_response": 1,
    "not_an_object": 1,
    "duplicate_id": 1,
    "identical_responses": 1,
  }
  assert result.stats.num_skipped == 5 and result.stats.num_records == 3
  assert "line 2" in result.stats.messages[0]


def test_bom_crlf_blank_lines_and_gzip_by_content(tmp_path):
  lines = [_pcr(prompt="p1"), "", _pcr(prompt="p2")]
  plain = _write_lines(tmp_path / "a.jsonl", lines, newline=b"\r\n")
  plain.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
  zipped = tmp_path / "no_suffix.jsonl"
  zipped.write_bytes(gzip.compress(plain.read_bytes()))
  for path in (plain, zipped):
    result = preferences.read_preferences(path)
    assert [(p.prompt, p.line) for p in result] == [("p1", 1), ("p2", 3)]
    assert result[0].chosen == "fine"  # No stray "\r".


def test_prompt_reader_and_messages(tmp_path):
  messages = [{"role": "user", "content": "hello"}]
  path = _write_lines(
    tmp_path / "prompts.jsonl",
    [
      json.dumps({"prompt": "hello world", "id": "a"}),
      json.dumps({"prompt": messages}),
      json.dumps({"prompt": "\n\nHuman: how are you\n\nAssistant:"}),
      json.dumps({"prompt": 5}),
    ],
  )
  with pytest.raises(DataError, match="line 4"):
    preferences.read_prompts(path)
  result = preferences.read_prompts(path, on_error="skip")
  assert [r.prompt for r in result][:2] == ["hello world", messages]
  assert result[0].id == "a" and result[1].line == 2
  assert result[2].prompt_messages == [{"role": "user", "content": "how are you"}]
  assert dict(result.stats.skipped) == {"wrong_type": 1}


HH_CHOSEN = "\n\nHuman: hello world\n\nAssistant: how are you\n\nHuman: you ?\n\nAssistant: fine thanks"
HH_REJECTED = "\n\nHuman: hello world\n\nAssistant: how are you\n\nHuman: you ?\n\nAssistant: bye"
HH_PROMPT = "\n\nHuman: hello world\n\nAssistant: how are you\n\nHuman: you ?\n\nAssistant:"


def test_hh_rlhf_prompt_split(tmp_path):
  path = _write_lines(tmp_path / "hh.jsonl", [json.dumps({"chosen": HH_CHOSEN, "rejected": HH_REJECTED})])
  for fmt in ("auto", "hh_rlhf"):
    result = preferences.read_preferences(path, format=fmt)
    assert result.stats.format == "hh_rlhf"
    (pair,) = result
    assert pair.prompt == HH_PROMPT
    assert (pair.chosen, pair.rejected) == (" fine thanks", " bye")
    assert pair.prompt_messages == [
      {"role": "user", "content": "hello world"},
      {"role": "assistant", "content": "how are you"},
      {"role": "user", "content": "you ?"},
    ]
  # Both responses starting alike must not move the split into them.
  prompt, chosen, rejected = preferences.split_hh_pair(HH_PROMPT + " fine thanks", HH_PROMPT + " fine bye")
  assert (prompt, chosen, rejected) == (HH_PROMPT, " fine thanks", " fine bye")
  # Rendering the parsed messages without a template restores the text.
  assert tokenizer_lib.render_plain_dialogue(pair.prompt_messages) == HH_PROMPT


def test_format_detection_locks_on_first_recognisable_record(tmp_path):
  hh = json.dumps({"chosen": HH_CHOSEN, "rejected": HH_REJECTED})
  # An unrecognisable first line does not decide the format ...
  path = _write_lines(tmp_path / "hh.jsonl", ['{"chosen": 1}', hh, _pcr()])
  result = preferences.read_preferences(path, on_error="skip")
  assert result.stats.format == "hh_rlhf" and [p.line for p in result] == [2]
  # ... but once decided, a record of the other format is reported.
  assert dict(result.stats.skipped) == {"missing_field": 1, "bad_dialogue": 1}
  with pytest.raises(DataError, match="line 2.*missing field 'prompt'"):
    preferences.read_preferences(_write_lines(tmp_path / "p.jsonl", [_pcr(), hh]))


def test_hh_rlhf_real_slice(hh_rlhf_path):
  result = preferences.read_preferences(hh_rlhf_path)
  assert len(result) == 600 and result.stats.num_skipped == 0
  assert result.stats.format == "hh_rlhf"
  with gzip.open(hh_rlhf_path, "rt", encoding="utf-8") as f:
    raw = [json.loads(line) for line in f]
  for pair, record in zip(result, raw):
    assert pair.prompt.endswith("\n\nAssistant:")
    assert pair.prompt + pair.chosen == record["chosen"]
    assert pair.prompt + pair.rejected == record["rejected"]
    assert pair.prompt_messages[-1]["role"] == "user"


def test_write_then_read_round_trip(tmp_path):
  pairs = [
    PreferencePair("hello", "fine", "bye", id="1"),
    PreferencePair([{"role": "user", "content": "hi"}], "a", "b"),
    PreferencePair(HH_PROMPT, " fine", " bye"),
  ]
  path = tmp_path / "out.jsonl.gz"
  preferences.write_preferences(path, pairs)
  back = preferences.read_preferences(path)
  assert [(p.prompt, p.chosen, p.rejected, p.id) for p in back] == [
    (p.prompt, p.chosen, p.rejected, p.id) for p in pairs
  ]
  assert back[2].prompt_messages[-1]["content"] == "you ?"


# ---------------------------------------------------------------- batching


def _pairs():
  return [PreferencePair("hello world", "how are you", "you ?", source="mem.jsonl", line=7)]


def test_tokenize_pairs_right_and_left_padding(tok):
  right = batching.tokenize_pairs(_pairs(), tok, max_prompt_len=3, max_response_len=4, padding_side="right")
  # L = 3 + 4 + 1; prompt "hello world" = [6, 7]; EOS = 1; PAD = 0.
  np.testing.assert_array_equal(right["chosen_tokens"], [[6, 7, 8, 9, 10, 1, 0, 0]])
  np.testing.assert_array_equal(right["chosen_mask"], [[1, 1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(right["rejected_tokens"], [[6, 7, 10, 11, 1, 0, 0, 0]])
  np.testing.assert_array_equal(right["rejected_mask"], [[1, 1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(right["prompt_lengths"], [2])
  np.testing.assert_array_equal(right["chosen_lengths"], [6])
  np.testing.assert_array_equal(right["rejected_lengths"], [5])
  left = batching.tokenize_pairs(_pairs(), tok, 3, 4, padding_side="left")
  np.testing.assert_array_equal(left["chosen_tokens"], [[0, 0, 6, 7, 8, 9, 10, 1]])
  np.testing.assert_array_equal(left["chosen_mask"], [[0, 0, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(left["rejected_tokens"], [[0, 0, 0, 6, 7, 10, 11, 1]])
  np.testing.assert_array_equal(left["rejected_mask"], [[0, 0, 0, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(left["prompt_lengths"], [2])
  assert left["chosen_tokens"].dtype == np.int32


def test_tokenize_pairs_with_chat_template_and_bos(tok):
  pair = PreferencePair(HH_PROMPT, " fine thanks", " bye", prompt_messages=preferences.parse_hh_dialogue(HH_PROMPT))
  out = batching.tokenize_pairs([pair], tok, 12, 2, use_chat_template=True, add_bos=True)
  # [BOS] <|user|> hello world <|assistant|> how are you <|user|> you ?
  # <|assistant|>, then the response with its leading space dropped.
  prompt = [2, 4, 6, 7, 5, 8, 9, 10, 4, 10, 11, 5]
  np.testing.assert_array_equal(out["chosen_tokens"][0], prompt + [12, 13, 1])
  np.testing.assert_array_equal(out["rejected_tokens"][0], prompt + [14, 1, 0])
  np.testing.assert_array_equal(out["prompt_lengths"], [12])


def test_overlength_error_truncate_skip(tok):
  pairs = [
    PreferencePair("hello", "fine", "bye", source="f.jsonl", line=1),
    PreferencePair("hello world how are you", "fine", "bye", source="f.jsonl", line=2),
    PreferencePair("hello", "how are you fine thanks", "bye", source="f.jsonl", line=3),
  ]
  with pytest.raises(DataError, match=r"f\.jsonl, line 2.*5 tokens"):
    batching.tokenize_pairs(pairs, tok, 3, 3)
  with pytest.raises(DataError, match=r"f\.jsonl, line 3.*chosen"):
    batching.tokenize_pairs([pairs[0], pairs[2]], tok, 3, 3)
  skipped = batching.tokenize_pairs(pairs, tok, 3, 3, on_overlength="skip")
  np.testing.assert_array_equal(skipped["example_indices"], [0])
  cut = batching.tokenize_pairs(pairs, tok, 3, 3, on_overlength="truncate")
  np.testing.assert_array_equal(cut["example_indices"], [0, 1, 2])
  # Prompt keeps its last 3 tokens; a cut response gets no EOS.
  np.testing.assert_array_equal(cut["chosen_tokens"][1], [8, 9, 10, 12, 1, 0, 0])
  np.testing.assert_array_equal(cut["chosen_tokens"][2], [6, 8, 9, 10, 0, 0, 0])
  np.testing.assert_array_equal(cut["chosen_mask"][2], [1, 1, 1, 1, 0, 0, 0])


def test_tokenize_prompts_left_padding(tok):
  records = [
    preferences.PromptRecord("hello", source="p.jsonl", line=1),
    preferences.PromptRecord("how are you ?", source="p.jsonl", line=2),
  ]
  out = batching.tokenize_prompts(records, tok, max_prompt_len=5)
  np.testing.assert_array_equal(out["tokens"], [[0, 0, 0, 0, 6], [0, 8, 9, 10, 11]])
  np.testing.assert_array_equal(out["mask"], [[0, 0, 0, 0, 1], [0, 1, 1, 1, 1]])
  np.testing.assert_array_equal(out["lengths"], [1, 4])
  with pytest.raises(DataError, match=r"p\.jsonl, line 2"):
    batching.tokenize_prompts(records, tok, max_prompt_len=3)
  raw = batching.tokenize_prompts(["hello"], tok, 2, padding_side="right")
  np.testing.assert_array_equal(raw["tokens"], [[6, 0]])


def test_epoch_batches_deterministic():
  first = batching.epoch_batches(10, 3, seed=5, epoch=2)
  np.random.seed(123)  # Global numpy state must not matter.
  again = batching.epoch_batches(10, 3, seed=5, epoch=2)
  assert len(first) == 3 and all(len(b) == 3 for b in first)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  full = batching.epoch_batches(10, 3, seed=5, epoch=2, drop_remainder=False)
  assert [len(b) for b in full] == [3, 3, 3, 1]
  assert sorted(np.concatenate(full).tolist()) == list(range(10))
  np.testing.assert_array_equal(np.concatenate(first), np.concatenate(full)[:9])
  other_epoch = np.concatenate(batching.epoch_batches(10, 3, 5, 3, False))
  other_seed = np.concatenate(batching.epoch_batches(10, 3, 6, 2, False))
  assert not np.array_equal(np.concatenate(full), other_epoch)
  assert not np.array_equal(np.concatenate(full), other_seed)


def test_bootstrap_indices():
  idx = batching.bootstrap_indices(50, 3, seed=0)
  assert idx.shape == (3, 50)
  assert idx.min() >= 0 and idx.max() < 50
  # Resampling with replacement: some repeats, some examples left out.
  assert all(len(np.unique(row)) < 50 for row in idx)
  assert not np.array_equal(idx[0], idx[1])
  np.testing.assert_array_equal(idx, batching.bootstrap_indices(50, 3, 0))
  # Growing the ensemble leaves existing members' data unchanged.
  np.testing.assert_array_equal(batching.bootstrap_indices(50, 5, 0)[:3], idx)


def test_train_test_split_by_prompt():
  pairs = [PreferencePair(f"prompt {i % 7}", f"a{i}", f"b{i}", line=i) for i in range(40)]
  pairs.append(PreferencePair([{"role": "user", "content": "m"}], "a", "b"))
  train, test = batching.train_test_split(pairs, 0.25, seed=1)
  assert len(train) + len(test) == len(pairs)
  train_prompts = {batching.prompt_key(p.prompt) for p in train}
  test_prompts = {batching.prompt_key(p.prompt) for p in test}
  assert not train_prompts & test_prompts
  assert len(test) >= round(0.25 * len(pairs)) and train
  assert batching.train_test_split(pairs, 0.25, seed=1) == (train, test)
  assert batching.train_test_split(pairs, 0.0, seed=1) == (pairs, [])


# -------------------------------------------------------------------- TFDS


def test_tfds_build_and_data_source_round_trip(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from advrm_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top

  messages = [{"role": "user", "content": "hi ü"}]
  source = _write_lines(
    tmp_path / "prefs.jsonl",
    [
      _pcr(prompt="p0", id="a"),
      _pcr(prompt=messages),
      "oops",
      json.dumps({"prompt": HH_PROMPT, "chosen": " fine", "rejected": " bye"}),
      _pcr(prompt="p0", chosen="other"),
    ],
  )
  data_dir = tmp_path / "tfds"
  builder = tfds_builders.build_preference_dataset(source, data_dir, "toy", on_error="skip", test_fraction=0.25)
  expected = list(preferences.read_preferences(source, on_error="skip"))
  assert builder.info.metadata["read_stats"]["skipped"] == {"malformed_json": 1}
  splits = tfds.data_source("preference_jsonl/toy", data_dir=data_dir)
  train = tfds_builders.pairs_from_data_source(splits["train"])
  test = tfds_builders.pairs_from_data_source(splits["test"])
  assert sorted(train + test, key=lambda p: p.line) == expected
  assert not ({batching.prompt_key(p.prompt) for p in train} & {batching.prompt_key(p.prompt) for p in test})
  from_builder = tfds_builders.pairs_from_data_source(builder.as_data_source()["train"])
  assert from_builder == train
  prompts_file = _write_lines(
    tmp_path / "prompts.jsonl", [json.dumps({"prompt": "hello", "id": 1}), json.dumps({"prompt": messages})]
  )
  tfds_builders.build_prompt_dataset(prompts_file, data_dir, "toy_prompts")
  prompt_source = tfds.data_source("prompt_jsonl/toy_prompts", data_dir=data_dir)["train"]
  assert tfds_builders.prompts_from_data_source(prompt_source) == list(preferences.read_prompts(prompts_file))
  assert "tensorflow" not in sys.modules


# ------------------------------------------------------------------- fuzz

_KEYS = st.sampled_from(["prompt", "chosen", "rejected", "id", "other"])
_SCALARS = st.one_of(
  st.none(),
  st.booleans(),
  st.integers(),
  st.floats(allow_nan=False),
  st.text(max_size=8),
  st.sampled_from(["", "\n\nAssistant:", HH_CHOSEN, HH_REJECTED, "\ud800"]),
)
_VALUES = st.recursive(
  _SCALARS,
  lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["role", "content"]), inner, max_size=2)
  ),
  max_leaves=6,
)
_JSON_LINES = st.dictionaries(_KEYS, _VALUES, max_size=5).map(lambda d: json.dumps(d).encode())
_LINES = st.lists(
  st.one_of(
    _JSON_LINES,
    st.binary(max_size=30),
    st.sampled_from([b"", b"\xef\xbb\xbf{}", b"[[[[", b"1" * 5000, b"null", b"[" * 3000]),
  ),
  max_size=6,
)


@hypothesis.settings(
  max_examples=50,
  deadline=None,
  derandomize=True,
  suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(lines=_LINES, crlf=st.booleans(), zipped=st.booleans(), cut=st.integers(0, 100))
def test_fuzz_reader_only_raises_data_error(tmp_path, lines, crlf, zipped, cut):
  data = (b"\r\n" if crlf else b"\n").join(lines)
  if zipped:
    data = gzip.compress(data)
    data = data[: max(2, len(data) * cut // 100)] if cut < 100 else data
  path = tmp_path / "fuzz.jsonl"
  path.write_bytes(data)
  try:
    strict = preferences.read_preferences(path)
  except DataError as e:
    assert str(path) in str(e) and e.line is not None and e.line >= 1
    strict = None
  lenient = preferences.read_preferences(path, on_error="skip")
  assert lenient.stats.num_records == len(lenient)
  if strict is not None:
    assert list(strict) == list(lenient) and lenient.stats.num_skipped == 0
  else:
    assert lenient.stats.num_skipped >= 1
  try:
    preferences.read_prompts(path)
  except DataError:
    pass
