"""Training a reward-model ensemble with Bradley-Terry and evaluating it (the `rm` stage, advtrain's rounds).

  python -m advrm_jax.main --config configs/rm_hh.py --workdir /tmp/rm_hh

Steps: build the backbone (small from scratch, a Hugging Face checkpoint
directory, or a GGUF file such as SmolLM2) and its tokenizer; read preference
pairs (JSONL/JSONL.gz, HH-RLHF format auto-detected) or generate the
synthetic world's; split train/test by prompt; tokenise to fixed shapes;
train with the shared ``train_loop`` (orbax checkpoints every
``rm.checkpoint_every`` steps, resume, metrics, NaN stop); evaluate the test
split.

Artefacts in ``WORKDIR/rm/``:

* ``rm_meta.json``: what ``load_reward_model`` needs to rebuild the model
  (backbone config, ensemble kind and size, tokenizer, sequence layout,
  optimizer config).
* ``checkpoints/``: orbax train states; the newest holds the final params.
* ``eval_summary.json``: ``advrm_jax.reward.evaluation.evaluate_scores`` of
  the test split (and of up to ``rm.eval_train_pairs`` training pairs); on
  synthetic data also ``test_gold_accuracy``, the accuracy of the exact gold
  reward against the noisy labels (the ceiling to read RM accuracy against).
* ``metrics.jsonl``, ``tb/``, PNG plots: training curves.

Later stages load the model with ``load_reward_model(workdir)`` and score
with ``advrm_jax.reward.model.reward_scores``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from absl import logging
from etils import epath
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.checkpoints import gguf, hf, hf_reward
from advrm_jax.config_node import ConfigError, check_keys
from advrm_jax.data import synthetic_world as world
from advrm_jax.data.batching import tokenize_pairs, train_test_split
from advrm_jax.data.preferences import read_preferences
from advrm_jax.models.config import ModelConfig
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.loop import LoopConfig, train_loop, without_samples
from advrm_jax.reward import evaluation
from advrm_jax.reward.data import MemberBatches, synthetic_preference_pairs, tokenizer_spec
from advrm_jax.reward.losses import jit_bt_step
from advrm_jax.reward.model import init_reward_model
from advrm_jax.train_state import TrainState, create_train_state, make_optimizer, split_module

STAGE = wd.RM
SUMMARY_FILE = "eval_summary.json"

# Keys each config node may hold; anything else is a typo and an error.
RM_KEYS = (
  "ensemble",
  "num_members",
  "member_data",
  "data_seed",
  "init_seed",
  "head_seed",
  "backbone",
  "tokenizer",
  "batch_size",
  "margin",
  "centering_coef",
  "optimizer",
  "num_steps",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "eval_every",
  "eval_batch_size",
  "eval_train_pairs",
  "eval",
  "init_from",
  "paths",
)
BACKBONE_KEYS = ("source", "path", "dtype", "param_dtype", "model")
DATA_KEYS = (
  "source",
  "path",
  "format",
  "on_error",
  "max_pairs",
  "test_fraction",
  "split_seed",
  "max_prompt_len",
  "max_response_len",
  "padding_side",
  "on_overlength",
  "use_chat_template",
  "add_bos",
  "synthetic",
)
SYNTHETIC_KEYS = ("num_pairs", "beta", "seed")
EVAL_KEYS = ("std_coef", "ece_bins")
TOKENIZERS = ("auto", "byte", "word", "backbone")
BACKBONE_SOURCES = ("scratch", "hf", "gguf", "policy")


# ---------------------------------------------------------------------------
# Backbone and tokenizer.
# ---------------------------------------------------------------------------


def build_tokenizer(config: Any, backbone_source: str, backbone_path: str) -> Any:
  """The tokenizer named by ``config.rm.tokenizer`` (see configs/rm_hh.py)."""
  choice = config.rm.tokenizer
  if choice not in TOKENIZERS:
    raise ConfigError(f"rm.tokenizer: unknown tokenizer {choice!r}; expected one of {TOKENIZERS}")
  if choice == "auto":
    if config.data.source == "synthetic":
      choice = "word"
    elif backbone_source in ("hf", "gguf"):
      choice = "backbone"
    else:
      choice = "byte"
  tokenizer = wd.make_tokenizer(choice, backbone_source, backbone_path)
  if tokenizer is not None:
    return tokenizer
  raise ConfigError(
    "rm.tokenizer='backbone' needs rm.backbone.source 'hf' or 'gguf' (a from-scratch backbone "
    "has no tokenizer); use 'byte' or 'word'"
  )


def _backbone_path(config: Any, workdir: epath.PathLike | None = None) -> str:
  source, path = config.rm.backbone.source, config.rm.backbone.path
  if source == "gguf" and not path:
    return str(gguf.find_smollm2_gguf())
  if source in ("hf", "gguf", "policy"):
    if not path:
      raise ConfigError(f"rm.backbone.path: required for rm.backbone.source={source!r}")
    resolved = wd.resolve_path(path, workdir)
    if not resolved.exists():
      raise ConfigError(f"rm.backbone.path: {resolved} does not exist")
    return str(resolved)
  return path


def build_backbone(
  config: Any, tokenizer: Any, sequence_width: int, workdir: epath.PathLike | None = None
) -> tuple[ModelConfig, Any]:
  """Backbone config and pretrained params (None for a from-scratch backbone).

  ``rm.backbone.source = "policy"`` starts from a finished `sft` stage's
  policy (``rm.backbone.path``, e.g. ``{workdir}/sft``), as RMs are usually
  initialised from the SFT model.

  Raises ConfigError naming the key when the model cannot hold the data
  (vocabulary or sequence length too small).
  """
  node = config.rm.backbone
  source = node.source
  if source not in BACKBONE_SOURCES:
    raise ConfigError(f"rm.backbone.source: unknown source {source!r}; expected one of {BACKBONE_SOURCES}")
  if source == "scratch":
    values = dict(node.model)
    if not values.get("vocab_size"):
      values["vocab_size"] = tokenizer.vocab_size  # 0 means "the tokenizer's"
    values.update(dtype=node.dtype, param_dtype=node.param_dtype)
    try:
      cfg = ModelConfig.from_dict(values, "config.rm.backbone.model")
    except ConfigError:
      raise
    except ValueError as e:
      raise ConfigError(f"rm.backbone.{e}") from None
    params = None
    vocab_key, length_key = "rm.backbone.model.vocab_size", "rm.backbone.model.max_seq_len"
  else:
    path = _backbone_path(config, workdir)
    if source == "policy":
      cfg, _, params = wd.load_policy(path)
    else:
      if source == "hf":
        cfg, model = hf.load_hf_checkpoint(path, dtype=node.dtype, param_dtype=node.param_dtype)
      else:
        ckpt = gguf.read_gguf(path)
        cfg, model = hf.model_from_hf_tensors(ckpt.config, ckpt.tensors, dtype=node.dtype, param_dtype=node.param_dtype)
      params = split_module(model)[1]
    vocab_key = length_key = f"rm.backbone.path ({path})"
  _check_fits(cfg, tokenizer, sequence_width, vocab_key, length_key, f"rm.tokenizer={config.rm.tokenizer!r}")
  return cfg, params


def _check_fits(
  cfg: ModelConfig, tokenizer: Any, sequence_width: int, vocab_key: str, length_key: str, tokenizer_name: str
) -> None:
  """Stops, naming the keys, when the model's vocabulary or sequence length cannot hold the data."""
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ConfigError(
      f"{vocab_key}: the model's vocabulary ({cfg.vocab_size}) is smaller than the "
      f"tokenizer's ({tokenizer.vocab_size}, {tokenizer_name})"
    )
  if sequence_width > cfg.max_seq_len:
    raise ConfigError(
      f"data.max_prompt_len + data.max_response_len + 1 = {sequence_width} exceeds "
      f"{length_key}: max_seq_len {cfg.max_seq_len}"
    )


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


def load_pairs(config: Any, workdir: epath.PathLike | None = None) -> tuple[list[Any], dict[str, Any]]:
  """Preference pairs from ``config.data`` and a JSON-ready description."""
  data = config.data
  if data.source == "synthetic":
    syn = data.synthetic
    check_keys(syn.keys(), SYNTHETIC_KEYS, "config.data.synthetic")
    pairs = synthetic_preference_pairs(syn.num_pairs, syn.seed, syn.beta)
    info = {"source": "synthetic", "num_pairs": len(pairs), "beta": syn.beta, "seed": syn.seed}
  elif data.source == "jsonl":
    if not data.path:
      raise ConfigError("data.path: no preference file given; set --config.data.path=/path/to/pairs.jsonl[.gz]")
    path = wd.resolve_path(data.path, workdir)
    if not path.exists():
      raise ConfigError(
        f"data.path: preference file {path} not found; set --config.data.path to a JSONL or "
        "JSONL.gz file of {prompt, chosen, rejected} or HH-RLHF {chosen, rejected} records"
      )
    result = read_preferences(path, format=data.format, on_error=data.on_error)
    pairs = list(result)
    stats = result.stats
    info = {
      "source": "jsonl",
      "path": str(path),
      "format": stats.format,
      "num_records": stats.num_records,
      "skipped": dict(stats.skipped),
    }
    if stats.num_skipped:
      logging.warning(
        "rm: skipped %d bad records of %s (data.on_error='skip'): %s; first: %s",
        stats.num_skipped,
        path,
        dict(stats.skipped),
        stats.messages[:3],
      )
  else:
    raise ConfigError(f"data.source: unknown source {data.source!r}; expected 'jsonl' or 'synthetic'")
  if data.max_pairs:
    pairs = pairs[: data.max_pairs]
  if not pairs:
    raise ConfigError(f"data: no preference pairs left to train on ({info})")
  info["num_used"] = len(pairs)
  return pairs, info


def split_pairs(pairs: list[Any], data: Any) -> tuple[list[Any], list[Any]]:
  """Train/test split by prompt; warns when the test split comes out empty, refuses an empty train split."""
  train, test = train_test_split(pairs, data.test_fraction, data.split_seed)
  where = data.path if data.source == "jsonl" else "data.synthetic"
  if not train:
    raise ConfigError(
      f"data.test_fraction={data.test_fraction}: all {len(pairs)} pairs of {where} went to the "
      "test split, none is left to train on; lower --config.data.test_fraction"
    )
  if not test:
    logging.warning(
      "rm: the test split of %s is empty (round(data.test_fraction=%g * %d pairs) = 0), so there "
      "is no held-out accuracy; raise --config.data.test_fraction or give more pairs",
      where,
      data.test_fraction,
      len(pairs),
    )
  return train, test


def tokenize(config: Any, pairs: list[Any], tokenizer: Any, what: str) -> dict[str, np.ndarray]:
  """Tokenises pairs with the ``config.data`` sequence options; logs how many were skipped as over-long."""
  data = config.data
  out = tokenize_pairs(
    pairs,
    tokenizer,
    data.max_prompt_len,
    data.max_response_len,
    padding_side=data.padding_side,
    use_chat_template=data.use_chat_template,
    on_overlength=data.on_overlength,
    add_bos=data.add_bos,
  )
  dropped = len(pairs) - out["chosen_tokens"].shape[0]
  if dropped:
    logging.warning(
      "rm: %d of %d %s pairs over the length limits were skipped (data.on_overlength='skip')", dropped, len(pairs), what
    )
  return out


# ---------------------------------------------------------------------------
# The stage.
# ---------------------------------------------------------------------------


def _check_config(config: Any) -> None:
  check_keys(config.rm.keys(), RM_KEYS, "config.rm")
  check_keys(config.rm.backbone.keys(), BACKBONE_KEYS, "config.rm.backbone")
  check_keys(config.rm.eval.keys(), EVAL_KEYS, "config.rm.eval")
  check_keys(config.data.keys(), DATA_KEYS, "config.data")
  for key in (
    "num_members",
    "batch_size",
    "num_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_batch_size",
  ):
    if config.rm[key] < 1:
      raise ConfigError(f"rm.{key} must be >= 1, got {config.rm[key]}")


def _check_chat_template(config: Any, tokenizer: Any) -> None:
  if config.data.use_chat_template and getattr(tokenizer, "chat_template", None) is None:
    # Checked before the weights are loaded, rather than at the first pair the tokenizer cannot render.
    raise ConfigError(
      f"data.use_chat_template=True but the tokenizer ({tokenizer!r}, rm.tokenizer="
      f"{config.rm.tokenizer!r}) has no chat template; set --config.data.use_chat_template=False"
    )


def _sequence_meta(data_config: Any) -> dict[str, Any]:
  """How rows are laid out, for the stages that tokenise text for this RM."""
  return {
    "max_prompt_len": data_config.max_prompt_len,
    "max_response_len": data_config.max_response_len,
    "padding_side": data_config.padding_side,
    "add_bos": data_config.add_bos,
    "use_chat_template": data_config.use_chat_template,
  }


def _evaluate(score_fn: Any, params: Any, data: dict[str, np.ndarray], rm_config: Any, mesh: Any) -> dict[str, Any]:
  """``evaluation.evaluate_scores`` of tokenised pairs."""
  scorer = functools.partial(score_fn, params)
  chosen, rejected = evaluation.score_pairs(scorer, data, rm_config.eval_batch_size, mesh)
  return evaluation.evaluate_scores(
    chosen, rejected, std_coef=rm_config.eval.std_coef, num_bins=rm_config.eval.ece_bins
  )


def train_reward_model(config: Any, workdir: epath.PathLike, name: str = STAGE) -> dict[str, Any]:
  """Trains and evaluates the RM ensemble; returns the evaluation summary.

  ``name`` labels the progress lines and plots (``advtrain/round_1/rm`` when
  an adversarial-training round runs this stage).
  """
  _check_config(config)
  rm_config, data_config = config.rm, config.data
  stage_dir = epath.Path(workdir) / STAGE
  stage_dir.mkdir(parents=True, exist_ok=True)
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  shd.check_batch_divisible(rm_config.batch_size, mesh, "rm.batch_size")
  shd.check_batch_divisible(rm_config.eval_batch_size, mesh, "rm.eval_batch_size")

  if rm_config.get("paths") and not rm_config.init_from:
    return _import_reward_models(config, workdir, stage_dir, mesh)
  if rm_config.get("paths"):
    # A later round of imported reward models (advtrain: rm.init_from = the previous round): their
    # architecture, ensemble and tokenizer, not rm.backbone's.
    init_stage = wd.rm_stage_dir(wd.resolve_path(rm_config.init_from, workdir))
    init_meta = json.loads((init_stage / wd.RM_META_FILE).read_text())
    tokenizer, tokenizer_meta = wd.load_tokenizer(init_meta), init_meta["tokenizer"]
    model_cfg, backbone_params = ModelConfig.from_dict(init_meta["model"]), None
    kind, num_members = init_meta["ensemble"], init_meta["num_members"]
  else:
    backbone_path = _backbone_path(config, workdir)
    tokenizer = build_tokenizer(config, rm_config.backbone.source, backbone_path)
    tokenizer_meta = dict(
      tokenizer_spec(tokenizer),
      kind=rm_config.tokenizer,
      backbone_source=rm_config.backbone.source,
      backbone_path=backbone_path,
    )
    _check_chat_template(config, tokenizer)  # before the backbone is loaded
    width = data_config.max_prompt_len + data_config.max_response_len + 1
    model_cfg, backbone_params = build_backbone(config, tokenizer, width, workdir)
    kind, num_members = rm_config.ensemble, rm_config.num_members

  pairs, data_info = load_pairs(config, workdir)
  train_pairs, test_pairs = split_pairs(pairs, data_config)
  train_data = tokenize(config, train_pairs, tokenizer, "train")
  test_data = tokenize(config, test_pairs, tokenizer, "test") if test_pairs else None
  num_train = train_data["chosen_tokens"].shape[0]
  data_info.update(num_train=num_train, num_test=0 if test_data is None else test_data["chosen_tokens"].shape[0])
  logging.info(
    "rm: %d train / %d test pairs, tokenizer %r, backbone %s", num_train, data_info["num_test"], tokenizer, model_cfg
  )

  graphdef, params, axes = init_reward_model(
    model_cfg,
    num_members,
    kind,
    seed=rm_config.init_seed,
    head_seed=rm_config.head_seed,
    backbone_params=backbone_params,
  )
  del backbone_params
  if rm_config.get("init_from"):
    # Continue from a trained ensemble (e.g. the previous adversarial-training
    # round) instead of a fresh initialisation; the optimizer starts afresh.
    init_dir = wd.resolve_path(rm_config.init_from, workdir)
    # Read straight into this run's shards (a multi-process job cannot move one process's copy to the mesh).
    init_graphdef, params, init_meta = wd.load_reward_model(init_dir, mesh=mesh)
    same_backbone = init_meta["model"] == json.loads(json.dumps(model_cfg.to_dict()))
    if (init_meta["ensemble"], init_meta["num_members"]) != (kind, num_members) or not same_backbone:
      raise ConfigError(
        f"rm.init_from: {init_dir} holds a {init_meta['num_members']}-member "
        f"{init_meta['ensemble']} ensemble of another backbone; this run builds a {num_members}-"
        f"member {kind} one of {model_cfg}"
      )
    del init_graphdef
    data_info["init_from"] = str(init_dir)
  optimizer_values = dict(rm_config.optimizer)
  optimizer = make_optimizer(optimizer_values, "config.rm.optimizer")
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  del params
  step_fn = without_samples(
    jit_bt_step(graphdef, optimizer, shardings, mesh, margin=rm_config.margin, centering_coef=rm_config.centering_coef)
  )
  batches = MemberBatches(
    num_train,
    rm_config.batch_size,
    num_members,
    mode=rm_config.member_data,
    per_member_rows=kind == "independent",
    seed=rm_config.data_seed,
  )

  wd.write_json(
    stage_dir / wd.RM_META_FILE,
    {
      "model": model_cfg.to_dict(),
      "ensemble": kind,
      "num_members": num_members,
      "tokenizer": tokenizer_meta,
      "sequence": _sequence_meta(data_config),
      "optimizer": optimizer_values,
      "num_steps": rm_config.num_steps,
      "data": data_info,
    },
    sort_keys=True,
  )

  score_fn = evaluation.make_scorer(graphdef, mesh, shardings.params)
  last_eval: dict[int, dict[str, Any]] = {}

  def evaluate(params, data):
    return _evaluate(score_fn, params, data, rm_config, mesh)

  def eval_fn(state: TrainState, step: int) -> dict[str, float]:
    if test_data is None:
      return {}
    summary = evaluate(state.params, test_data)
    last_eval[step] = summary
    return evaluation.headline_metrics(summary, "test")

  loop = LoopConfig(
    num_steps=rm_config.num_steps,
    log_every=rm_config.log_every,
    checkpoint_every=rm_config.checkpoint_every,
    keep_checkpoints=rm_config.keep_checkpoints,
    seed=config.seed,
  )
  state = train_loop(
    name,
    stage_dir,
    state,
    step_fn,
    functools.partial(batches.batch, train_data),
    loop,
    mesh,
    eval_fn=eval_fn,
    eval_every=rm_config.eval_every,
  )

  train_subset = {k: v[: rm_config.eval_train_pairs] for k, v in train_data.items()}
  summary = {
    "step": rm_config.num_steps,
    "test": last_eval.get(rm_config.num_steps),
    "test_gold_accuracy": _gold_accuracy(test_pairs, test_data) if data_config.source == "synthetic" else None,
    "train_subset": evaluate(state.params, train_subset) if rm_config.eval_train_pairs else None,
    "data": data_info,
    "ensemble": kind,
    "num_members": num_members,
  }
  wd.write_json(stage_dir / SUMMARY_FILE, summary, sort_keys=True)
  if summary["test"] is not None:
    logging.info(
      "rm: test accuracy mean-aggregate %.3f, members %s",
      summary["test"]["accuracy"]["mean"],
      [round(v, 3) for k, v in summary["test"]["accuracy"].items() if k.startswith("member_")],
    )
  return summary


def _gold_accuracy(pairs: list[Any], data: dict[str, np.ndarray] | None) -> float | None:
  """How often the exact gold reward agrees with the (noisy, BT-sampled) labels.

  The ceiling an RM's test accuracy should be read against on synthetic data:
  a perfect copy of gold scores this, not 1.0.
  """
  if data is None:
    return None
  kept = [pairs[i] for i in data["example_indices"]]
  prompts = [p.prompt for p in kept]
  chosen_gold = world.score_texts(prompts, [p.chosen for p in kept])
  rejected_gold = world.score_texts(prompts, [p.rejected for p in kept])
  return float(evaluation.pairwise_accuracy(chosen_gold, rejected_gold))


# ---------------------------------------------------------------------------
# Your own Hugging Face reward models (rm.paths) as RM round 0.
# ---------------------------------------------------------------------------


def _import_reward_models(config: Any, workdir: epath.PathLike, stage_dir: epath.Path, mesh: Any) -> dict[str, Any]:
  """RM round 0 = the ``*ForSequenceClassification`` directories of ``rm.paths``, one member each.

  Nothing is trained or copied: ``rm_meta.json`` records the directories
  (``hf_paths``) and ``load_reward_model`` reads them. The test split of
  ``data`` is scored as after training, so ``eval_summary.json`` says how the
  imported ensemble does on your pairs. The tokenizer is the first
  directory's that has tokenizer files, else ``rm.backbone``'s (the policy's).
  """
  rm_config, data_config = config.rm, config.data
  if config.get("advtrain") is not None and config.advtrain.get("init") == "scratch":
    raise ConfigError(
      "rm.paths: advtrain.init='scratch' would retrain your reward models from nothing; use "
      "advtrain.init='previous' (continue from them)"
    )
  paths = [wd.resolve_path(str(p), workdir) for p in rm_config.paths]
  try:
    model_cfg = hf_reward.reward_model_config(
      paths[0], dtype=rm_config.backbone.dtype, param_dtype=rm_config.backbone.param_dtype
    )
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"rm.paths: {e}") from None
  tokenizer_dir = next(
    (p for p in paths if (p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()), None
  )
  if tokenizer_dir is not None:
    tokenizer = hf.load_hf_tokenizer(tokenizer_dir)
    tokenizer_meta = dict(
      tokenizer_spec(tokenizer), kind="backbone", backbone_source="hf", backbone_path=str(tokenizer_dir)
    )
  else:
    backbone_path = _backbone_path(config, workdir)
    tokenizer = build_tokenizer(config, rm_config.backbone.source, backbone_path)
    tokenizer_meta = dict(
      tokenizer_spec(tokenizer),
      kind=rm_config.tokenizer,
      backbone_source=rm_config.backbone.source,
      backbone_path=backbone_path,
    )
  where = f"rm.paths ({tokenizer_dir or paths[0]})"
  policy = wd.policy_tokenizer(workdir)
  if policy is not None and (policy.vocab_size, policy.eos_id) != (tokenizer.vocab_size, tokenizer.eos_id):
    raise ConfigError(
      f"{where}: the reward model's tokenizer (vocab_size {tokenizer.vocab_size}, eos_id "
      f"{tokenizer.eos_id}) is not the policy's in {epath.Path(workdir) / 'sft'} (vocab_size "
      f"{policy.vocab_size}, eos_id {policy.eos_id}); the RM must read the tokens the adversary writes"
    )
  _check_chat_template(config, tokenizer)
  _check_fits(
    model_cfg,
    tokenizer,
    data_config.max_prompt_len + data_config.max_response_len + 1,
    where,
    where,
    f"from {tokenizer_meta['backbone_path']}",
  )

  pairs, data_info = load_pairs(config, workdir)
  _, test_pairs = train_test_split(pairs, data_config.test_fraction, data_config.split_seed)
  test_data = tokenize(config, test_pairs, tokenizer, "test") if test_pairs else None
  data_info.update(num_train=0, num_test=0 if test_data is None else test_data["chosen_tokens"].shape[0])
  meta = {
    "model": model_cfg.to_dict(),
    "ensemble": "shared" if len(paths) == 1 else "independent",
    "num_members": len(paths),
    "tokenizer": tokenizer_meta,
    "sequence": _sequence_meta(data_config),
    "optimizer": dict(rm_config.optimizer),
    "num_steps": 0,
    "data": data_info,
    "hf_paths": [str(p.resolve()) for p in paths],
  }
  try:
    graphdef, params, param_shardings = wd.load_imported_reward_models(meta, mesh)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"rm.paths: {e}") from None
  wd.write_json(stage_dir / wd.RM_META_FILE, meta, sort_keys=True)
  summary = {
    "step": 0,
    "imported": meta["hf_paths"],
    "test": None
    if test_data is None
    else _evaluate(evaluation.make_scorer(graphdef, mesh, param_shardings), params, test_data, rm_config, mesh),
    "test_gold_accuracy": None,
    "train_subset": None,
    "data": data_info,
    "ensemble": meta["ensemble"],
    "num_members": meta["num_members"],
  }
  wd.write_json(stage_dir / SUMMARY_FILE, summary, sort_keys=True)
  logging.info("rm: imported %d reward model(s) from %s", len(paths), ", ".join(meta["hf_paths"]))
  if summary["test"] is not None:
    logging.info(
      "rm: test accuracy mean-aggregate %.3f, members %s",
      summary["test"]["accuracy"]["mean"],
      [round(v, 3) for k, v in summary["test"]["accuracy"].items() if k.startswith("member_")],
    )
  return summary


# ---------------------------------------------------------------------------
# Loading a trained RM (for later stages).
# ---------------------------------------------------------------------------
