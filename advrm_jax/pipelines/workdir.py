"""The work directory: where every stage's artefacts live, and how they are written and read.

Stages hand over files, never objects. This module is the one place that
knows the layout of WORKDIR, writes files atomically (a kill never leaves
half a file), marks stages and rounds DONE, and loads what an earlier stage
wrote (the policy, a reward model and its tokenizer, the reference samples).
No stage module imports another stage module; what they share is here or in
``advrm_jax.inference``.

Layout of WORKDIR:

  sft/                     reference policy (stage `sft`)
  prefs/                   preferences.jsonl (train), preferences_test.jsonl
                           (held-out, in-distribution), reference.npz (n
                           reference samples per attack prompt), summary.json
  rm/                      the conventional ensemble = RM round 0 (stage `rm`)
  attack/round_<r>/        adversary run: metrics, params, collected.npz
                           (every sample of the run), final_samples.npz,
                           summary.json
  filter/round_<r>/        adversarial_pairs.jsonl, scores.npz, summary.json
  advtrain/round_<r>/      pairs.jsonl and rm/ (RM round r, r >= 1);
                           advtrain/final links to the last round
  advtrain_control/        the fresh-pairs control arm, same layout
  online/                  the online mode (stage `online`, when listed)
  rlhf/<run>/              policies trained against each RM (stage `rlhf`)
  report.json, REPORT.md, plots/   in WORKDIR itself (stage `evaluate`,
                           which has no directory of its own)

WORKDIR may be a local directory or a remote one (``gs://bucket/dir``, or
any scheme ``etils.epath`` and orbax/tensorstore can write): every path goes
through ``epath.Path``, never the builtin ``open`` or ``pathlib``, so a pod
without a shared POSIX disk can keep its run in a bucket.
"""

from __future__ import annotations

import io
import json
from typing import Any

from absl import logging
from etils import epath
from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.fileio import PathLike, write_bytes_atomic, write_text_atomic
from advrm_jax.checkpoints import gguf, hf, hf_reward
from advrm_jax.checkpoints.orbax_io import Checkpointer, load_params
from advrm_jax.config_node import ConfigError  # pylint: disable=unused-import  # stages raise wd.ConfigError
from advrm_jax.data import synthetic_world as world
from advrm_jax.data.batching import tokenize_pairs
from advrm_jax.data.preferences import read_preferences
from advrm_jax.data.tokenizer import HFTokenizer
from advrm_jax.evaluation.report import to_json_safe
from advrm_jax.models.config import ModelConfig
from advrm_jax.models.transformer import Transformer
from advrm_jax.reward.data import ByteTokenizer
from advrm_jax.reward.model import RewardEnsemble
from advrm_jax.train_state import (
  OPTIMIZER_DEFAULTS,
  TrainState,
  abstract_module,
  make_optimizer,
  split_module,
  state_shardings,
)

DONE = "DONE"

# Stage names (the keys of config.stages) whose directories other stages read.
SFT, PREFS, RM, ATTACK, FILTER, ADVTRAIN, ADVTRAIN_CONTROL = (
  "sft",
  "prefs",
  "rm",
  "attack",
  "filter",
  "advtrain",
  "advtrain_control",
)

# prefs/: the preference files and the reference samples on the attack pools.
TRAIN_FILE = "preferences.jsonl"
TEST_FILE = "preferences_test.jsonl"
REFERENCE_FILE = "reference.npz"
HELDOUT_REFERENCE_FILE = "reference_heldout.npz"  # with prefs.num_heldout_prompts
# filter/round_<r>/: the adversarial pairs and every sample's scores.
FILTER_PAIRS_FILE = "adversarial_pairs.jsonl"
FILTER_SCORES_FILE = "scores.npz"
# rm/ (and every RM round): how the ensemble was built and trained.
RM_META_FILE = "rm_meta.json"
# sft/ of an imported policy: its source and tokenizer.
POLICY_META_FILE = "policy_meta.json"


def round_dir(workdir: PathLike, stage: str, round_index: int) -> epath.Path:
  """WORKDIR/<stage>/round_<r>."""
  return epath.Path(workdir) / stage / f"round_{round_index}"


def rm_path(workdir: PathLike, round_index: int, arm: str = "adversarial") -> epath.Path:
  """Where RM round r lives (what `load_reward_model` accepts); ``arm="fresh_pairs"``: the control's round."""
  if round_index == 0:
    return epath.Path(workdir) / RM
  return round_dir(workdir, ADVTRAIN_CONTROL if arm == "fresh_pairs" else ADVTRAIN, round_index) / RM


def is_done(directory: PathLike) -> bool:
  """Whether ``directory`` holds the DONE marker of a finished stage or round."""
  return (epath.Path(directory) / DONE).exists()


def skip_if_done(directory: PathLike, label: str) -> bool:
  """``is_done``, with the log line that says the finished stage or round ``label`` is skipped."""
  if is_done(directory):
    logging.info("%s: done, skipping", label)
    return True
  return False


def writes_artefacts() -> bool:
  """Whether this process writes the run's files: process 0 of a multi-process job (every process runs
  every stage on a shared work dir; orbax checkpoints, written collectively, are the exception)."""
  return jax.process_index() == 0


def sync(label: str) -> None:
  """In a multi-process job, waits until every process gets here (after process 0 wrote what all read)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(label)


def mark_done(directory: PathLike) -> None:
  """Writes the DONE marker that makes later launches skip this stage or round.

  Every process calls it; process 0 writes, and the others wait for it here, so that the next stage's
  ``is_done`` check reads the marker on every process (a process that ran ahead would find the stage
  unfinished).
  """
  if writes_artefacts():
    write_text_atomic(epath.Path(directory) / DONE, "ok\n")
  sync(f"{directory} done")


def write_json(path: PathLike, value: Any, sort_keys: bool = False) -> None:
  """Atomic JSON write (NaN/Inf as null): a kill never leaves half a file."""
  if not writes_artefacts():
    return
  write_text_atomic(path, json.dumps(to_json_safe(value), indent=2, allow_nan=False, sort_keys=sort_keys))


def read_json(path: PathLike, what: str) -> Any:
  """Reads a JSON artefact; FileNotFoundError says which stage (``what``) writes it."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run {what} first")
  return json.loads(path.read_text())


def write_jsonl(path: PathLike, records: list[dict[str, Any]]) -> None:
  """Atomic JSON-lines write (NaN/Inf as null): a kill never leaves half a file."""
  if not writes_artefacts():
    return
  write_text_atomic(path, "".join(json.dumps(to_json_safe(record), ensure_ascii=False) + "\n" for record in records))


def save_npz(path: PathLike, **arrays: Any) -> None:
  """Atomic ``np.savez`` (built in memory, then ``write_bytes_atomic``)."""
  if not writes_artefacts():
    return
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
  write_bytes_atomic(path, buffer.getvalue())


def load_npz(path: PathLike, what: str) -> dict[str, np.ndarray]:
  """Loads every array of an .npz artefact (no pickles); FileNotFoundError names the stage to run."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run {what} first")
  with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def num_rounds(config: Any) -> int:
  """``config.advrm.num_rounds``, checked to be >= 0."""
  rounds = int(config.advrm.num_rounds)
  if rounds < 0:
    raise ValueError(f"advrm.num_rounds must be >= 0, got {rounds}")
  return rounds


def read_jsonl(path: PathLike, what: str) -> list[dict[str, Any]]:
  """Every record of a JSON-lines artefact; FileNotFoundError names the stage (``what``) to run."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run {what} first")
  return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def model_config_from(config) -> ModelConfig:
  """The policy backbone's ModelConfig from ``config.model`` (from scratch)."""
  values = dict(config.model)
  values.pop("source", None)
  values.pop("path", None)
  return ModelConfig.from_dict(values)


def save_model_config(directory: PathLike, model_config: ModelConfig) -> None:
  """Writes ``model_config.json`` (what ``load_policy`` rebuilds the policy from)."""
  if not writes_artefacts():
    return
  write_text_atomic(epath.Path(directory) / "model_config.json", json.dumps(model_config.to_dict(), indent=2))


def policy_axes(model_config: ModelConfig) -> Any:
  """Logical axis names of a policy's parameters (a tree parallel to them); nothing is allocated."""
  return abstract_module(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))[2]


def load_policy(stage_dir: PathLike, mesh: Any = None) -> tuple[ModelConfig, nnx.GraphDef, Any]:
  """(model config, graphdef, params) of a finished sft stage.

  With ``mesh`` the params are split by their logical axes (``sharding.DEFAULT_RULES``: fsdp x tensor), each
  device reading only its shards; without, they are on the default device.
  """
  stage_dir = epath.Path(stage_dir)
  config_path = stage_dir / "model_config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: run the `sft` stage first")
  model_config = ModelConfig.from_dict(json.loads(config_path.read_text()))
  graphdef, params, axes = abstract_module(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
  if mesh is not None:
    params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shd.tree_shardings(axes, params, mesh)
    )
  return model_config, graphdef, load_params(stage_dir / "params", params)


def policy_tokenizer(workdir: PathLike) -> Any:
  """The tokenizer of a policy imported by the `sft` stage; None for the synthetic world's policy."""
  meta_path = epath.Path(workdir) / SFT / POLICY_META_FILE
  if not meta_path.exists():
    return None
  return load_tokenizer(json.loads(meta_path.read_text()))


def require_synthetic_policy(workdir: PathLike, stage: str) -> None:
  """Stops a stage that needs the synthetic world's prompts or gold when the policy is an imported checkpoint."""
  if (epath.Path(workdir) / SFT / POLICY_META_FILE).exists():
    raise ValueError(
      f"{stage}: needs the synthetic world (its prompts and exact gold reward), but the policy in "
      f"{epath.Path(workdir) / 'sft'} is an imported checkpoint; on your own model run the stages "
      "sft, prefs, rm, attack, filter and advtrain (configs/advrm_own.py)"
    )


def reference_prompts(reference: dict[str, np.ndarray]) -> list[Any]:
  """The attack pool's prompts as a preference file holds them (text, or chat messages)."""
  if "prompts_json" in reference:
    # Chat-message prompts of your own data do not fit a numpy string array.
    return [json.loads(str(p)) for p in reference["prompts_json"]]
  return [str(p) for p in reference["prompts"]]


def load_reference(workdir: PathLike, heldout: bool = False) -> dict[str, np.ndarray]:
  """The `prefs` stage's reference samples on the attack prompt pool (``heldout``: on the held-out pool).

  Returns prompt_tokens [P, Lp], prompt_mask, prompts [P] (text),
  response_tokens [P, n, R], response_mask [P, n, R], gold [P, n] (NaN for
  an imported policy); from your own data also prompts_json [P] (see
  ``reference_prompts``).
  """
  name = HELDOUT_REFERENCE_FILE if heldout else REFERENCE_FILE
  return load_npz(epath.Path(workdir) / PREFS / name, "the `prefs` stage")


def has_heldout_reference(workdir: PathLike) -> bool:
  """Whether the `prefs` stage wrote a held-out attack pool (``prefs.num_heldout_prompts``)."""
  return (epath.Path(workdir) / PREFS / HELDOUT_REFERENCE_FILE).exists()


def held_out_pairs(workdir: PathLike, meta: dict[str, Any]) -> dict[str, np.ndarray]:
  """The `prefs` stage's held-out pairs tokenised as the RM described by ``meta`` (rm_meta.json) was trained.

  Returns ``tokenize_pairs`` output (chosen/rejected tokens and masks, [N, L]).
  """
  pairs = list(read_preferences(epath.Path(workdir) / PREFS / TEST_FILE))
  seq = meta["sequence"]
  return tokenize_pairs(
    pairs,
    load_tokenizer(meta),
    seq["max_prompt_len"],
    seq["max_response_len"],
    padding_side=seq["padding_side"],
    on_overlength="truncate",
    add_bos=seq["add_bos"],
    use_chat_template=seq.get("use_chat_template", False),
  )


def pairs_path(workdir: PathLike, round_index: int) -> epath.Path:
  """WORKDIR/filter/round_<r>/adversarial_pairs.jsonl."""
  return round_dir(workdir, FILTER, round_index) / FILTER_PAIRS_FILE


def resolve_path(path: str, workdir: PathLike | None = None) -> epath.Path:
  """Relative paths are relative to the repository root (where configs/ lives), then the cwd.

  ``{workdir}`` in a path stands for the run's work dir, so a config can
  name a file an earlier stage writes (e.g. ``{workdir}/prefs/preferences.jsonl``).
  """
  if "{workdir}" in path:
    if workdir is None:
      raise ConfigError(f"path {path!r} uses {{workdir}}, which is unknown here")
    path = path.replace("{workdir}", str(workdir))
  candidate = epath.Path(path).expanduser()
  if candidate.is_absolute():
    return candidate
  repo_root = epath.Path(__file__).resolve().parents[2]
  in_repo = repo_root / candidate
  return in_repo if in_repo.exists() or not candidate.exists() else candidate


def load_imported_reward_models(meta: dict[str, Any], mesh: Any) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, params on ``mesh``, their shardings) of the directories ``meta['hf_paths']`` records."""
  model_cfg = ModelConfig.from_dict(meta["model"])
  graphdef, params, info = hf_reward.load_hf_reward_model(
    meta["hf_paths"], dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype
  )
  if (info["model"], info["num_members"]) != (meta["model"], meta["num_members"]):
    raise ValueError(
      f"{meta['hf_paths']} no longer hold the {meta['num_members']} reward model(s) of "
      f"{model_cfg} recorded in {RM_META_FILE}; run the `rm` stage again"
    )
  _, abstract, axes = split_module(
    nnx.eval_shape(lambda: RewardEnsemble(model_cfg, meta["num_members"], meta["ensemble"], rngs=nnx.Rngs(0)))
  )
  param_shardings = shd.tree_shardings(axes, abstract, mesh)
  # From host memory straight to each device's shard.
  return graphdef, jax.device_put(params, param_shardings), param_shardings


def rm_stage_dir(path: PathLike) -> epath.Path:
  """The directory holding rm_meta.json: ``path`` itself, its ``rm/``, or its parent (``rm/checkpoints``)."""
  path = epath.Path(path)
  for candidate in (path, path / RM, path.parent):
    if (candidate / RM_META_FILE).exists():
      return candidate
  raise FileNotFoundError(f"{path}: no {RM_META_FILE} found here or in {path / RM}; run the 'rm' stage first")


def load_reward_model(
  path: PathLike, mesh: Any = None, step: int | None = None
) -> tuple[nnx.GraphDef, Any, dict[str, Any]]:
  """Loads a trained ensemble: ``(graphdef, params, meta)``.

  Args:
    path: the run's WORKDIR, its ``rm/`` directory, or ``rm/checkpoints``.
    mesh: where to place the params (default: this process's first device; in a
      multi-process job each process then holds, and scores with, a whole copy). Parameters
      are sharded by their logical axes.
    step: checkpoint step (default: the newest readable one).

  Returns:
    graphdef and params for ``reward_scores``; meta is ``rm_meta.json`` plus
    ``step`` (the checkpoint restored; 0 for the Hugging Face reward models
    of ``rm.paths``, read from their directories).
  """
  stage_dir = rm_stage_dir(path)
  meta = json.loads((stage_dir / RM_META_FILE).read_text())
  if mesh is None:
    # jax.devices()[0] would be process 0's device, which no other process can read or restore onto.
    mesh = shd.make_mesh((1, 1, 1), jax.local_devices()[:1])
  if meta.get("hf_paths"):
    # Imported reward models (rm.paths): their directories are the checkpoint.
    graphdef, params, _ = load_imported_reward_models(meta, mesh)
    return graphdef, params, dict(meta, step=0)
  model_cfg = ModelConfig.from_dict(meta["model"])
  graphdef, abstract_params, axes = split_module(
    nnx.eval_shape(lambda: RewardEnsemble(model_cfg, meta["num_members"], meta["ensemble"], rngs=nnx.Rngs(0)))
  )
  optimizer = make_optimizer({k: v for k, v in meta["optimizer"].items() if k in OPTIMIZER_DEFAULTS})
  # The checkpoint holds the whole train state: restore it against an
  # abstract, sharded target (nothing is allocated before the read) and keep
  # the params.
  shardings = state_shardings(optimizer, abstract_params, axes, mesh)
  abstract_state = jax.eval_shape(lambda p: TrainState(np.zeros((), np.int32), p, optimizer.init(p)), abstract_params)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
  checkpointer = Checkpointer(stage_dir / "checkpoints")
  try:
    restored = checkpointer.restore(target, step=step)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"{stage_dir / 'checkpoints'}: no checkpoint to load; run the 'rm' stage first")
  restored_step, state, _ = restored
  return graphdef, state.params, dict(meta, step=restored_step)


def make_tokenizer(kind: str, backbone_source: str, backbone_path: str) -> Any:
  """The tokenizer of ``kind`` "byte", "word" or "backbone" (a Hugging Face or GGUF backbone's own); None when
  a "backbone" tokenizer is asked of a backbone that has none (the callers say which key to change)."""
  if kind == "byte":
    return ByteTokenizer()
  if kind == "word":
    return world.WordTokenizer(unknown="unk")
  if backbone_source == "hf":
    return hf.load_hf_tokenizer(backbone_path)
  if backbone_source == "gguf":
    return HFTokenizer(gguf.load_gguf_tokenizer(backbone_path))
  return None


def load_tokenizer(meta: dict[str, Any]) -> Any:
  """Rebuilds the tokenizer an RM was trained with, from ``rm_meta.json``."""
  spec = meta["tokenizer"]
  kind = {"ByteTokenizer": "byte", "WordTokenizer": "word"}.get(spec["class"], "backbone")
  tokenizer = make_tokenizer(kind, spec.get("backbone_source"), spec.get("backbone_path"))
  if tokenizer is None:
    raise ValueError(f"{RM_META_FILE}: cannot rebuild tokenizer {spec}")
  return tokenizer
