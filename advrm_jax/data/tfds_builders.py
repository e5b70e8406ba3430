"""TFDS builders for preference and prompt JSONL files, without TensorFlow.

tensorflow-datasets 4.9.10 builds and reads datasets without TensorFlow
installed as long as:

* the builder writes `array_record` files (`file_format="array_record"`;
  the default, tfrecord, needs TensorFlow to write), and
* the data is read as a random-access data source (`tfds.data_source(...)`
  or `builder.as_data_source()`), not as a `tf.data.Dataset`
  (`tfds.load` / `as_dataset` need TensorFlow).

Examples are serialised with TFDS's own copy of the `tf.train.Example`
protos, and TensorFlow is imported lazily only by the tf.data paths, so no
environment variable is needed. tfds 4.9.10 imports `importlib_resources`
without declaring it; pyproject.toml lists it. Features here are `Text` and
`Scalar` only; through a data source, text decodes to UTF-8 `bytes`, which
`example_to_pair` / `example_to_prompt` turn back into records.

One builder class serves any number of JSONL files: each file is a builder
config (its name picks the directory `<data_dir>/<builder>/<name>/<version>`),
created at run time:

  builder = build_preference_dataset("pairs.jsonl.gz", data_dir, "hh_harmless",
                                     test_fraction=0.1)
  source = tfds.data_source("preference_jsonl/hh_harmless", data_dir=data_dir)
  pairs = pairs_from_data_source(source["train"])

Reading back needs neither the JSONL file nor this module's configs: TFDS
reconstructs the builder from the files it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from advrm_jax.data import batching
from advrm_jax.data import preferences
from advrm_jax.data.preferences import PreferencePair, PromptRecord

# The record order of a split is the file order (shuffling disabled), so
# index i of a data source is the i-th kept record; shuffling is done by
# `batching.epoch_batches`, reproducibly, at training time.
_TEXT_FIELDS_DOC = {
  "prompt_json": "JSON of the prompt: a string or a list of messages.",
  "prompt_messages_json": "JSON of the chat-message form of an HH transcript prompt, or 'null'.",
  "chosen": "Preferred response.",
  "rejected": "Dispreferred response.",
  "id": "Record id, '' if none.",
  "source": "JSONL file the record came from.",
}


@dataclasses.dataclass(eq=False)
class JsonlConfig(tfds.core.BuilderConfig):
  """A builder config naming the JSONL file to convert.

  Attributes:
    jsonl_path: The JSONL or JSONL.gz file. Only needed to build.
    format: Preference format ("auto", "prompt_chosen_rejected", "hh_rlhf");
      ignored by the prompt builder.
    on_error: "raise" or "skip"; with "skip" the per-kind counts of skipped
      records are stored in the dataset's metadata ("read_stats").
    test_fraction: If > 0 (preference builder only), also write a "test"
      split holding this fraction of pairs, split by prompt.
    split_seed: Seed of that split.
  """

  jsonl_path: str | None = None
  format: str = "auto"
  on_error: str = "raise"
  test_fraction: float = 0.0
  split_seed: int = 0


def _stats_metadata(stats: preferences.ReadStats) -> dict[str, Any]:
  return {
    "path": stats.path,
    "format": stats.format,
    "num_lines": stats.num_lines,
    "num_records": stats.num_records,
    "skipped": dict(stats.skipped),
    "messages": list(stats.messages),
  }


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared plumbing: config checks, metadata, no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  # A placeholder so the class can be instantiated for reading; real
  # configs are passed as `config=JsonlConfig(name=..., jsonl_path=...)`.
  BUILDER_CONFIGS = [JsonlConfig(name="default")]

  def _jsonl_path(self) -> str:
    path = self.builder_config.jsonl_path
    if path is None:
      raise ValueError(
        f"{self.name}/{self.builder_config.name}: the config "
        "has no jsonl_path; pass JsonlConfig(name=..., "
        "jsonl_path=...) to build"
      )
    return path

  def _dataset_info(self, description: str, features: dict[str, Any]) -> tfds.core.DatasetInfo:
    """The builder's DatasetInfo: ``features`` and the record's source line, unshuffled, with metadata."""
    features["line"] = tfds.features.Scalar(dtype=np.int64, doc="1-based line in the source file.")
    return tfds.core.DatasetInfo(
      builder=self,
      description=description,
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )


class PreferenceJsonl(_JsonlBuilder):
  """Preference pairs from a JSONL(.gz) file (`advrm_jax` formats)."""

  def _info(self) -> tfds.core.DatasetInfo:
    features = {name: tfds.features.Text(doc=doc) for name, doc in _TEXT_FIELDS_DOC.items()}
    return self._dataset_info("Preference pairs converted from JSON lines.", features)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the input is a local file.
    config = self.builder_config
    pairs = preferences.read_preferences(self._jsonl_path(), format=config.format, on_error=config.on_error)
    self.info.metadata["read_stats"] = _stats_metadata(pairs.stats)
    if config.test_fraction > 0:
      train, test = batching.train_test_split(list(pairs), config.test_fraction, config.split_seed)
      return {"train": self._generate_examples(train), "test": self._generate_examples(test)}
    return {"train": self._generate_examples(list(pairs))}

  def _generate_examples(self, pairs: Sequence[PreferencePair]) -> Iterator[tuple[int, dict[str, Any]]]:
    for key, pair in enumerate(pairs):
      yield (
        key,
        {
          "prompt_json": json.dumps(pair.prompt, ensure_ascii=False),
          "prompt_messages_json": json.dumps(pair.prompt_messages, ensure_ascii=False),
          "chosen": pair.chosen,
          "rejected": pair.rejected,
          "id": pair.id or "",
          "source": pair.source or "",
          "line": pair.line or 0,
        },
      )


class PromptJsonl(_JsonlBuilder):
  """Prompts from a `{"prompt": ...}` JSONL(.gz) file."""

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
      name: tfds.features.Text(doc=_TEXT_FIELDS_DOC[name])
      for name in ("prompt_json", "prompt_messages_json", "id", "source")
    }
    return self._dataset_info("Prompts converted from JSON lines.", features)

  def _split_generators(self, dl_manager):
    del dl_manager
    prompts = preferences.read_prompts(self._jsonl_path(), on_error=self.builder_config.on_error)
    self.info.metadata["read_stats"] = _stats_metadata(prompts.stats)
    return {"train": self._generate_examples(list(prompts))}

  # PreferenceJsonl's example less chosen/rejected, spelled out: each builder's example reads on its own.
  def _generate_examples(self, prompts: Sequence[PromptRecord]) -> Iterator[tuple[int, dict[str, Any]]]:
    for key, record in enumerate(prompts):
      yield (
        key,
        {
          "prompt_json": json.dumps(record.prompt, ensure_ascii=False),
          "prompt_messages_json": json.dumps(record.prompt_messages, ensure_ascii=False),
          "id": record.id or "",
          "source": record.source or "",
          "line": record.line or 0,
        },
      )


def _text(value: Any) -> str:
  # Through a data source, Text features come back as bytes.
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_to_pair(example: Mapping[str, Any]) -> PreferencePair:
  """Turns one decoded PreferenceJsonl example back into a PreferencePair."""
  return PreferencePair(
    prompt=json.loads(_text(example["prompt_json"])),
    chosen=_text(example["chosen"]),
    rejected=_text(example["rejected"]),
    id=_text(example["id"]) or None,
    source=_text(example["source"]) or None,
    line=int(example["line"]) or None,
    prompt_messages=json.loads(_text(example["prompt_messages_json"])),
  )


def example_to_prompt(example: Mapping[str, Any]) -> PromptRecord:
  """Turns one decoded PromptJsonl example back into a PromptRecord."""
  return PromptRecord(
    prompt=json.loads(_text(example["prompt_json"])),
    id=_text(example["id"]) or None,
    source=_text(example["source"]) or None,
    line=int(example["line"]) or None,
    prompt_messages=json.loads(_text(example["prompt_messages_json"])),
  )


def pairs_from_data_source(source: Sequence[Mapping[str, Any]]) -> list[PreferencePair]:
  """Reads every example of a preference data source (one split)."""
  return [example_to_pair(source[i]) for i in range(len(source))]


def prompts_from_data_source(source: Sequence[Mapping[str, Any]]) -> list[PromptRecord]:
  """Reads every example of a prompt data source (one split)."""
  return [example_to_prompt(source[i]) for i in range(len(source))]


def _build(
  builder_cls, jsonl_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], name: str, **config_kwargs: Any
) -> tfds.core.DatasetBuilder:
  config = JsonlConfig(
    name=name, jsonl_path=os.fspath(jsonl_path), description=f"Converted from {os.fspath(jsonl_path)}", **config_kwargs
  )
  builder = builder_cls(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder


def build_preference_dataset(
  jsonl_path: str | os.PathLike[str],
  data_dir: str | os.PathLike[str],
  name: str,
  format: str = "auto",  # pylint: disable=redefined-builtin
  on_error: str = "raise",
  test_fraction: float = 0.0,
  split_seed: int = 0,
) -> tfds.core.DatasetBuilder:
  """Converts a preference JSONL file to an array_record TFDS dataset.

  Building again with the same name and data_dir reuses the existing data
  (TFDS semantics); choose a new name for a changed file.

  Args:
    jsonl_path: The preference JSONL(.gz) file.
    data_dir: TFDS data directory.
    name: Config name; read back as `tfds.data_source(f"preference_jsonl/
      {name}", data_dir=data_dir)`.
    format: As for `read_preferences`.
    on_error: As for `read_preferences`; skip counts go to
      `builder.info.metadata["read_stats"]`.
    test_fraction: If > 0, also write a "test" split, split by prompt.
    split_seed: Seed of that split.

  Returns:
    The prepared builder (`builder.as_data_source()` gives the splits).

  Raises:
    DataError: If the file has a problem and on_error="raise".
  """
  return _build(
    PreferenceJsonl,
    jsonl_path,
    data_dir,
    name,
    format=format,
    on_error=on_error,
    test_fraction=test_fraction,
    split_seed=split_seed,
  )


def build_prompt_dataset(
  jsonl_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], name: str, on_error: str = "raise"
) -> tfds.core.DatasetBuilder:
  """Converts a prompt JSONL file to an array_record TFDS dataset.

  Read back as `tfds.data_source(f"prompt_jsonl/{name}", data_dir=data_dir)`.
  """
  return _build(PromptJsonl, jsonl_path, data_dir, name, on_error=on_error)
