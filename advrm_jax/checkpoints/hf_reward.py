"""Hugging Face reward models in and out: ``*ForSequenceClassification`` checkpoints.

Supported (``config.json`` ``architectures[0]``, with ``num_labels = 1``):
``LlamaForSequenceClassification``, ``Qwen2ForSequenceClassification`` and
``GPT2ForSequenceClassification``, the layout TRL, OpenRLHF and most published
reward models ship. Such a checkpoint is the causal LM's backbone without the
LM head plus ``score.weight`` ``[1, hidden]`` (a bias-free linear layer applied
at every position), so the backbone goes through ``advrm_jax.checkpoints.hf``
unchanged and the score row becomes one member's head column.

* ``load_hf_reward_model([dir])``: a one-member ensemble (kind "shared");
  ``load_hf_reward_model([dir1, dir2, ...])``: one member per directory, each
  with its own backbone (kind "independent": backbones stacked along the
  ``members`` axis; the directories must share one architecture and size).
* ``save_hf_reward_member``: one member of an ensemble as a
  ``*ForSequenceClassification`` directory that
  ``transformers.AutoModelForSequenceClassification.from_pretrained`` loads.
* ``advrm_jax.export.export_reward_model(rm_dir, out_dir)``: every member of a
  trained RM as ``out_dir/member_<k>``; also ``python -m advrm_jax.export export
  --rm_dir D --out O``.

Where the reward is read. advrm_jax reads member k's reward at the last token
the attention mask marks as real, with positions counted from the first real
token. transformers reads ``logits[b, i]`` at the rightmost ``i`` with
``input_ids[b, i] != pad_token_id`` and uses positions ``0..T-1`` unless
``position_ids`` are given. The two agree (to float rounding):

* right padding, whenever no real token equals ``pad_token_id``;
* left padding, against transformers run on each unpadded row alone (or with
  ``position_ids = cumsum(attention_mask) - 1``). Batched left-padded
  transformers without ``position_ids`` shifts the positions of the padded
  rows: for GPT-2's learned positions that changes the reward (the unpadded
  row's reward is the model's).

They differ when a row's last real tokens equal ``pad_token_id``, as with
tokenizers whose pad token is EOS (GPT-2's, many Llama ones): transformers
then reads the token before the trailing EOS and advrm_jax reads the EOS
(every response advrm_jax scores ends with one). Importing such a checkpoint
warns; exporting writes the tokenizer's pad id, so give the tokenizer a pad
token of its own (or ``pad_token_id=``) when it is EOS.

transformers' score layer has no bias; advrm_jax's heads have one (reward
centering moves it). The export writes a non-zero bias as ``reward_bias`` in
``config.json`` (transformers keeps it as ``config.reward_bias``; add it to
``logits`` for advrm_jax's rewards; differences between responses, which
Bradley-Terry, RLOO and GRPO use, do not depend on it) and the import reads it
back.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
from flax import nnx
import jax
import numpy as np

from advrm_jax.checkpoints import hf
from advrm_jax.models.config import DTYPES, ModelConfig
from advrm_jax.reward.model import RewardEnsemble
from advrm_jax.train_state import abstract_module

PathLike = hf.PathLike
Params = dict[str, Any]

SCORE_TENSOR = "score.weight"
BIAS_KEY = "reward_bias"
MEMBER_DIR = "member_{k}"

# Reward-model architecture -> the causal LM whose backbone it holds.
SEQUENCE_CLASSIFICATION = {
  "LlamaForSequenceClassification": "LlamaForCausalLM",
  "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
  "GPT2ForSequenceClassification": "GPT2LMHeadModel",
}
_CAUSAL_TO_REWARD = {causal: reward for reward, causal in SEQUENCE_CLASSIFICATION.items()}


@dataclasses.dataclass(frozen=True)
class RewardCheckpoint:
  """One imported ``*ForSequenceClassification`` directory.

  Attributes:
    path: The directory.
    cfg: Backbone config (``tie_embeddings=True``: a reward model has no LM
      head, so none is allocated).
    backbone: The backbone's pure parameter dict (numpy, ``cfg.param_dtype``).
    score: ``[hidden]`` float32, the row of ``score.weight`` (exact for
      float32, bfloat16 and float16 checkpoints).
    bias: The ``reward_bias`` of an advrm_jax export, else 0.
    hf_config: The parsed ``config.json``.
  """

  path: pathlib.Path
  cfg: ModelConfig
  backbone: Params
  score: np.ndarray
  bias: float
  hf_config: dict[str, Any]


def _num_labels(hf_config: Mapping[str, Any]) -> int:
  """transformers' rule: ``id2label`` if given, else ``num_labels``, else 2."""
  if hf_config.get("id2label"):
    return len(hf_config["id2label"])
  return int(hf_config.get("num_labels") or 2)


def read_reward_config(path: PathLike) -> dict[str, Any]:
  """``config.json`` of a reward-model directory, checked to be one we import.

  Raises:
    FileNotFoundError: No directory or no ``config.json`` (named).
    ValueError: Not a supported ``*ForSequenceClassification`` with
      ``num_labels = 1`` (the directory and what was expected are named).
  """
  path = pathlib.Path(path)
  config_file = path / hf.CONFIG_FILE
  if not path.is_dir():
    raise FileNotFoundError(
      f"{path}: not a directory; a reward model is a Hugging Face checkpoint directory "
      f"({hf.CONFIG_FILE} + safetensors weights)"
    )
  if not config_file.exists():
    raise FileNotFoundError(f"{config_file}: no {hf.CONFIG_FILE} in the reward model directory")
  hf_config = json.loads(config_file.read_text())
  archs = hf_config.get("architectures") or []
  arch = archs[0] if archs else None
  expected = f"one of {sorted(SEQUENCE_CLASSIFICATION)} with num_labels=1 (a 'score' head)"
  if arch not in SEQUENCE_CLASSIFICATION:
    what = "a language model without a reward head" if arch in _CAUSAL_TO_REWARD else "not a supported reward model"
    raise ValueError(f"{path}: architectures {archs} is {what}; expected {expected}")
  if _num_labels(hf_config) != 1:
    raise ValueError(
      f"{path}: num_labels is {_num_labels(hf_config)} (id2label {hf_config.get('id2label')}); "
      f"expected {expected}: a reward model has one output"
    )
  return hf_config


def _storage_dtype(tensors: Mapping[str, np.ndarray]) -> str:
  """The checkpoint's floating dtype when all its tensors share one we support, else float32."""
  names = {np.dtype(t.dtype).name for t in tensors.values()}
  return names.pop() if len(names) == 1 and next(iter(names)) in DTYPES else "float32"


def reward_model_config(path: PathLike, dtype: Any = "float32", param_dtype: Any = "float32") -> ModelConfig:
  """The backbone config of a reward-model directory, read without its weights.

  ``tie_embeddings`` is True: a reward model has no LM head, so none is
  allocated. Raises as ``read_reward_config``, naming the directory.
  """
  hf_config = read_reward_config(path)
  causal = dict(hf_config, architectures=[SEQUENCE_CLASSIFICATION[hf_config["architectures"][0]]])
  try:
    return hf.model_config_from_hf(causal, dtype=dtype, param_dtype=param_dtype, tie_embeddings=True)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def read_reward_checkpoint(path: PathLike, dtype: Any = "float32", param_dtype: Any = "auto") -> RewardCheckpoint:
  """Reads one ``*ForSequenceClassification`` directory (safetensors, possibly sharded).

  Args:
    path: The directory.
    dtype: Compute dtype of the backbone.
    param_dtype: Storage dtype; "auto" keeps the checkpoint's (so an export
      of the import is bit-exact).

  Raises:
    FileNotFoundError, ValueError: naming the directory (see
      ``read_reward_config``; also a missing or misshapen ``score.weight`` and
      any backbone option or tensor ``advrm_jax.checkpoints.hf`` refuses).
  """
  path = pathlib.Path(path)
  # The config is checked before (possibly many GB of) weights are read.
  cfg = reward_model_config(path, dtype=dtype, param_dtype="float32" if param_dtype == "auto" else param_dtype)
  try:
    tensors = hf.read_hf_tensors(path)
    if SCORE_TENSOR not in tensors:
      raise ValueError(f"no {SCORE_TENSOR!r} tensor (the reward head) in the weights")
    score = tensors.pop(SCORE_TENSOR)
    if param_dtype == "auto":
      cfg = dataclasses.replace(cfg, param_dtype=_storage_dtype(tensors))
    if tuple(score.shape) != (1, cfg.d_model):
      raise ValueError(f"tensor {SCORE_TENSOR!r}: expected shape {(1, cfg.d_model)}, found {tuple(score.shape)}")
    backbone = hf.params_from_hf_tensors(cfg, tensors)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  hf_config = json.loads((path / hf.CONFIG_FILE).read_text())
  return RewardCheckpoint(
    path=path,
    cfg=cfg,
    backbone=backbone,
    score=score[0].astype(np.float32),
    bias=float(hf_config.get(BIAS_KEY) or 0.0),
    hf_config=hf_config,
  )


def pads_like_eos(hf_config: Mapping[str, Any]) -> bool:
  """Whether the config's pad token is (one of) its EOS token(s)."""
  pad, eos = hf_config.get("pad_token_id"), hf_config.get("eos_token_id")
  return pad is not None and pad in (eos if isinstance(eos, list) else [eos])


def ensemble_from_checkpoints(checkpoints: Sequence[RewardCheckpoint]) -> tuple[nnx.GraphDef, Params, Any, str]:
  """``(graphdef, params, axes, kind)`` of the ensemble whose member k is ``checkpoints[k]``.

  One checkpoint gives kind "shared" (one backbone, one head); several give
  "independent" (their backbones stacked along ``members``).

  Raises:
    ValueError: The checkpoints differ in architecture or size (both
      directories and the differing fields are named).
  """
  if not checkpoints:
    raise ValueError("no reward model directories given")
  first = checkpoints[0]
  for other in checkpoints[1:]:
    if other.cfg != first.cfg:
      a, b = first.cfg.to_dict(), other.cfg.to_dict()
      diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
      raise ValueError(
        f"{other.path}: its backbone differs from {first.path}'s ({diff}); the members of one "
        "ensemble need the same architecture and size"
      )
  num_members = len(checkpoints)
  kind = "shared" if num_members == 1 else "independent"
  graphdef, abstract, axes = abstract_module(lambda: RewardEnsemble(first.cfg, num_members, kind, rngs=nnx.Rngs(0)))
  backbone = (
    first.backbone if num_members == 1 else jax.tree.map(lambda *xs: np.stack(xs), *[c.backbone for c in checkpoints])
  )
  params = {
    "backbone": backbone,
    "head_kernel": np.stack([c.score for c in checkpoints], axis=1),
    "head_bias": np.array([c.bias for c in checkpoints], np.float32),
  }
  if jax.tree.structure(params) != jax.tree.structure(abstract):  # A bug here, not a user error.
    raise AssertionError(f"imported parameters {jax.tree.structure(params)} != {jax.tree.structure(abstract)}")
  # Host (numpy) arrays: the caller places them, so a large model is never gathered on one device.
  params = jax.tree.map(lambda x, spec: np.asarray(x, spec.dtype), params, abstract)
  return graphdef, params, axes, kind


def load_hf_reward_model(
  paths: Sequence[PathLike], dtype: Any = "float32", param_dtype: Any = "auto"
) -> tuple[nnx.GraphDef, Params, dict[str, Any]]:
  """Imports reward-model directories as the members of one ensemble.

  Args:
    paths: One directory per member.
    dtype: Compute dtype.
    param_dtype: Storage dtype; "auto" keeps each checkpoint's.

  Returns:
    ``(graphdef, params, info)`` for ``advrm_jax.reward.model.reward_scores``
    (``[K, B]`` rewards; params are numpy arrays in host memory, for
    ``jax.device_put`` with the shardings you want); info holds ``model``
    (the backbone config dict), ``ensemble``, ``num_members``, ``hf_paths``
    and ``token_ids`` (bos / eos / pad of the first directory's config).
  """
  checkpoints = [read_reward_checkpoint(p, dtype=dtype, param_dtype=param_dtype) for p in paths]
  for c in checkpoints:
    if pads_like_eos(c.hf_config):
      warnings.warn(
        f"{c.path}: pad_token_id {c.hf_config['pad_token_id']} is an EOS id; transformers reads "
        "this model's reward at the token before a trailing EOS, advrm_jax at the EOS itself, so "
        "rewards of rows ending in EOS differ from transformers'",
        stacklevel=2,
      )
  graphdef, params, _, kind = ensemble_from_checkpoints(checkpoints)
  first = checkpoints[0].hf_config
  info = {
    "model": checkpoints[0].cfg.to_dict(),
    "ensemble": kind,
    "num_members": len(checkpoints),
    "hf_paths": [str(c.path.resolve()) for c in checkpoints],
    "token_ids": {k: first.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
  }
  return graphdef, params, info


# ---------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------


def reward_hf_config(
  cfg: ModelConfig, token_ids: Mapping[str, int | None], bias: float = 0.0, dtype: Any = None
) -> dict[str, Any]:
  """The ``config.json`` of a ``*ForSequenceClassification`` with ``num_labels = 1``."""
  out = hf.hf_config_from_model_config(cfg)
  out["architectures"] = [_CAUSAL_TO_REWARD[out["architectures"][0]]]
  out.update(
    id2label={"0": "LABEL_0"},
    label2id={"LABEL_0": 0},
    # No LM head is written, so there is nothing to tie.
    tie_word_embeddings=False,
    dtype=cfg.param_dtype if dtype is None else dtype,
  )
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    value = token_ids.get(key)
    out[key] = None if value is None else value if isinstance(value, list) else int(value)
  if bias:
    out[BIAS_KEY] = float(bias)
  return out


def member_params(params: Params, kind: str, member: int) -> tuple[Params, np.ndarray, float]:
  """(backbone, score row [D], bias) of ensemble member ``member``."""
  num_members = int(params["head_bias"].shape[0])
  if not 0 <= member < num_members:
    raise ValueError(f"member {member} out of range for a {num_members}-member ensemble")
  backbone = params["backbone"]
  if kind == "independent":
    backbone = jax.tree.map(lambda x: x[member], backbone)
  kernel = np.asarray(jax.device_get(params["head_kernel"]))
  return backbone, kernel[:, member], float(jax.device_get(params["head_bias"])[member])


def save_hf_reward_member(
  path: PathLike,
  cfg: ModelConfig,
  kind: str,
  params: Params,
  member: int,
  *,
  token_ids: Mapping[str, int | None],
  tokenizer: Any = None,
  dtype: Any = None,
  max_shard_size: int | str | None = None,
) -> pathlib.Path:
  """Writes member ``member`` of an ensemble as a ``*ForSequenceClassification`` directory.

  Args:
    path: Output directory (created; earlier weights there are replaced).
    cfg: The ensemble's backbone config.
    kind: "shared" or "independent".
    params: The ensemble's pure parameter dict.
    member: Which member.
    token_ids: ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` for the
      config (transformers needs a pad id to score batches).
    tokenizer: Optional ``HFTokenizer`` or transformers tokenizer to save.
    dtype: Storage dtype; default the backbone's ``param_dtype`` (the head,
      float32 in advrm_jax, is cast to it: exact for an imported head).
    max_shard_size: As in ``advrm_jax.checkpoints.hf.save_hf_checkpoint``.

  Returns:
    The directory.
  """
  backbone, score, bias = member_params(params, kind, member)
  out_dtype = cfg.param_dtype if dtype is None else dtype
  if out_dtype not in DTYPES:
    raise ValueError(f"dtype: unsupported {dtype!r}; expected one of {tuple(DTYPES)}")
  # tie_embeddings=True: the export has no LM head, whatever the backbone had.
  tensors = hf.hf_tensors_from_params(
    dataclasses.replace(cfg, tie_embeddings=True), backbone, dtype=None if dtype is None else out_dtype
  )
  tensors[SCORE_TENSOR] = np.ascontiguousarray(score[None, :].astype(DTYPES[out_dtype]))
  hf_config = reward_hf_config(cfg, token_ids, bias=bias, dtype=out_dtype)
  path = pathlib.Path(path)
  hf.write_hf_directory(path, hf_config, tensors, tokenizer=tokenizer, max_shard_size=max_shard_size)
  if bias:
    logging.info(
      "%s: head bias %.6g written as config.json %s (transformers' score layer has none; its logits "
      "are this member's rewards minus it)",
      path,
      bias,
      BIAS_KEY,
    )
  return path
