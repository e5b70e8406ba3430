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

import dataclasses
import functools
import json
from typing import Any

from absl import logging
from etils import epath
from jax.sharding import Mesh
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.checkpoints import gguf, hf, hf_reward
from advrm_jax.config_node import ConfigError
from advrm_jax.data import synthetic_world as world
from advrm_jax.data.batching import tokenize_pairs, train_test_split
from advrm_jax.data.preferences import read_preferences
from advrm_jax.models.config import ModelConfig
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.loop import LoopConfig, train_loop, without_samples
from advrm_jax.pipelines.nodes import BackboneConfig, PreferenceDataConfig, RMConfig
from advrm_jax.reward import evaluation
from advrm_jax.reward.data import MemberBatches, synthetic_preference_pairs, tokenizer_spec
from advrm_jax.reward.losses import jit_bt_step
from advrm_jax.reward.model import init_reward_model
from advrm_jax.train_state import TrainState, create_train_state, make_optimizer, split_module

STAGE = wd.RM
SUMMARY_FILE = "eval_summary.json"

TOKENIZERS = ("auto", "byte", "word", "backbone")
BACKBONE_SOURCES = ("scratch", "hf", "gguf", "policy")


# ---------------------------------------------------------------------------
# Backbone and tokenizer.
# ---------------------------------------------------------------------------


def build_tokenizer(choice: str, data_source: str, backbone_source: str, backbone_path: str) -> Any:
  """The tokenizer named by ``rm.tokenizer`` (``choice``, see configs/rm_hh.py) for ``data.source`` pairs."""
  if choice not in TOKENIZERS:
    raise ConfigError(f"rm.tokenizer: unknown tokenizer {choice!r}; expected one of {TOKENIZERS}")
  if choice == "auto":
    if data_source == "synthetic":
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


def _backbone_path(backbone: BackboneConfig, workdir: epath.PathLike | None = None) -> str:
  source, path = backbone.source, backbone.path
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


def _tokenizer(rm: RMConfig, data: PreferenceDataConfig, workdir: epath.PathLike) -> tuple[Any, dict[str, Any]]:
  """The tokenizer of ``rm.tokenizer`` and ``rm.backbone``, and its description for ``rm_meta.json``."""
  backbone_path = _backbone_path(rm.backbone, workdir)
  tokenizer = build_tokenizer(rm.tokenizer, data.source, rm.backbone.source, backbone_path)
  meta = dict(
    tokenizer_spec(tokenizer), kind=rm.tokenizer, backbone_source=rm.backbone.source, backbone_path=backbone_path
  )
  return tokenizer, meta


def build_backbone(
  rm: RMConfig, tokenizer: Any, sequence_width: int, workdir: epath.PathLike | None = None
) -> tuple[ModelConfig, Any]:
  """Backbone config and pretrained params (None for a from-scratch backbone).

  ``rm.backbone.source = "policy"`` starts from a finished `sft` stage's
  policy (``rm.backbone.path``, e.g. ``{workdir}/sft``), as RMs are usually
  initialised from the SFT model.

  Raises ConfigError naming the key when the model cannot hold the data
  (vocabulary or sequence length too small).
  """
  node = rm.backbone
  source = node.source
  if source not in BACKBONE_SOURCES:
    raise ConfigError(f"rm.backbone.source: unknown source {source!r}; expected one of {BACKBONE_SOURCES}")
  if source == "scratch":
    if node.model is None:
      raise ConfigError("rm.backbone.model: required for rm.backbone.source='scratch' (ModelConfig fields)")
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
    path = _backbone_path(node, workdir)
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
  _check_fits(cfg, tokenizer, sequence_width, vocab_key, length_key, f"rm.tokenizer={rm.tokenizer!r}")
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


def load_pairs(data: PreferenceDataConfig, workdir: epath.PathLike | None = None) -> tuple[list[Any], dict[str, Any]]:
  """Preference pairs of the ``data`` node and a JSON-ready description."""
  if data.source == "synthetic":
    syn = data.synthetic
    if syn is None:
      raise ConfigError("data.synthetic: required for data.source='synthetic' (num_pairs, beta, seed)")
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


def split_pairs(pairs: list[Any], data: PreferenceDataConfig) -> tuple[list[Any], list[Any]]:
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


def tokenize(data: PreferenceDataConfig, pairs: list[Any], tokenizer: Any, what: str) -> dict[str, np.ndarray]:
  """Tokenises pairs with the ``data`` node's sequence options; logs how many were skipped as over-long."""
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


def _check_chat_template(rm: RMConfig, data: PreferenceDataConfig, tokenizer: Any) -> None:
  if data.use_chat_template and getattr(tokenizer, "chat_template", None) is None:
    # Checked before the weights are loaded, rather than at the first pair the tokenizer cannot render.
    raise ConfigError(
      f"data.use_chat_template=True but the tokenizer ({tokenizer!r}, rm.tokenizer="
      f"{rm.tokenizer!r}) has no chat template; set --config.data.use_chat_template=False"
    )


def _sequence_meta(data: PreferenceDataConfig) -> dict[str, Any]:
  """How rows are laid out, for the stages that tokenise text for this RM."""
  return {
    "max_prompt_len": data.max_prompt_len,
    "max_response_len": data.max_response_len,
    "padding_side": data.padding_side,
    "add_bos": data.add_bos,
    "use_chat_template": data.use_chat_template,
  }


def _evaluate(score_fn: Any, params: Any, data: dict[str, np.ndarray], rm: RMConfig, mesh: Mesh) -> dict[str, Any]:
  """``evaluation.evaluate_scores`` of tokenised pairs."""
  scorer = functools.partial(score_fn, params)
  chosen, rejected = evaluation.score_pairs(scorer, data, rm.eval_batch_size, mesh)
  return evaluation.evaluate_scores(chosen, rejected, std_coef=rm.eval.std_coef, num_bins=rm.eval.ece_bins)


def check_paths_init(rm: RMConfig, advtrain_init: str | None) -> None:
  """Refuses ``rm.paths`` (imported reward models) with ``advtrain.init = "scratch"`` (None: no advtrain node).

  The `rm` stage checks it before round 0 and each `advtrain` round before it trains: a scratch round
  of imported models would otherwise import them again instead of training.
  """
  if rm.paths and advtrain_init == "scratch":
    raise ConfigError(
      "rm.paths: advtrain.init='scratch' would retrain your reward models from nothing; use "
      "advtrain.init='previous' (continue from them)"
    )


def train_reward_model(
  rm: RMConfig, data: PreferenceDataConfig, workdir: epath.PathLike, *, mesh: Mesh, seed: int, name: str = STAGE
) -> dict[str, Any]:
  """Trains and evaluates the RM ensemble in ``workdir``/rm; returns the evaluation summary.

  The `rm` stage calls it with ``nodes.reward_model_nodes(config)``, an `advtrain` round with those nodes
  ``dataclasses.replace``d (its pairs, start and budget). ``seed`` is the run's (``config.seed``, the
  training loop's); ``name`` labels the progress lines and plots (``advtrain/round_1/rm`` in a round).
  With ``rm.paths`` and no ``rm.init_from`` nothing is trained: the directories are RM round 0.
  """
  stage_dir = epath.Path(workdir) / STAGE
  stage_dir.mkdir(parents=True, exist_ok=True)
  shd.check_batch_divisible(rm.batch_size, mesh, "rm.batch_size")
  shd.check_batch_divisible(rm.eval_batch_size, mesh, "rm.eval_batch_size")

  if rm.paths and not rm.init_from:
    return _import_reward_models(rm, data, workdir, stage_dir, mesh)
  if rm.paths:
    # A later round of imported reward models (advtrain: rm.init_from = the previous round): their
    # architecture, ensemble and tokenizer, not rm.backbone's.
    init_stage = wd.rm_stage_dir(wd.resolve_path(rm.init_from, workdir))
    init_meta = json.loads((init_stage / wd.RM_META_FILE).read_text())
    tokenizer, tokenizer_meta = wd.load_tokenizer(init_meta), init_meta["tokenizer"]
    model_cfg, backbone_params = ModelConfig.from_dict(init_meta["model"]), None
    kind, num_members = init_meta["ensemble"], init_meta["num_members"]
  else:
    tokenizer, tokenizer_meta = _tokenizer(rm, data, workdir)
    _check_chat_template(rm, data, tokenizer)  # before the backbone is loaded
    width = data.max_prompt_len + data.max_response_len + 1
    model_cfg, backbone_params = build_backbone(rm, tokenizer, width, workdir)
    kind, num_members = rm.ensemble, rm.num_members

  pairs, data_info = load_pairs(data, workdir)
  train_pairs, test_pairs = split_pairs(pairs, data)
  train_data = tokenize(data, train_pairs, tokenizer, "train")
  test_data = tokenize(data, test_pairs, tokenizer, "test") if test_pairs else None
  num_train = train_data["chosen_tokens"].shape[0]
  data_info.update(num_train=num_train, num_test=0 if test_data is None else test_data["chosen_tokens"].shape[0])
  logging.info(
    "rm: %d train / %d test pairs, tokenizer %r, backbone %s", num_train, data_info["num_test"], tokenizer, model_cfg
  )

  graphdef, params, axes = init_reward_model(
    model_cfg,
    num_members,
    kind,
    seed=rm.init_seed,
    head_seed=rm.head_seed,
    backbone_params=backbone_params,
  )
  del backbone_params
  if rm.init_from:
    # Continue from a trained ensemble (e.g. the previous adversarial-training
    # round) instead of a fresh initialisation; the optimizer starts afresh.
    init_dir = wd.resolve_path(rm.init_from, workdir)
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
  optimizer = make_optimizer(rm.optimizer)
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  del params
  step_fn = without_samples(
    jit_bt_step(graphdef, optimizer, shardings, mesh, margin=rm.margin, centering_coef=rm.centering_coef)
  )
  batches = MemberBatches(
    num_train,
    rm.batch_size,
    num_members,
    mode=rm.member_data,
    per_member_rows=kind == "independent",
    seed=rm.data_seed,
  )

  wd.write_json(
    stage_dir / wd.RM_META_FILE,
    {
      "model": model_cfg.to_dict(),
      "ensemble": kind,
      "num_members": num_members,
      "tokenizer": tokenizer_meta,
      "sequence": _sequence_meta(data),
      "optimizer": dataclasses.asdict(rm.optimizer),
      "num_steps": rm.num_steps,
      "data": data_info,
    },
    sort_keys=True,
  )

  score_fn = evaluation.make_scorer(graphdef, mesh, shardings.params)
  last_eval: dict[int, dict[str, Any]] = {}

  def evaluate(params, pairs_data):
    return _evaluate(score_fn, params, pairs_data, rm, mesh)

  def eval_fn(state: TrainState, step: int) -> dict[str, float]:
    if test_data is None:
      return {}
    summary = evaluate(state.params, test_data)
    last_eval[step] = summary
    return evaluation.headline_metrics(summary, "test")

  loop = LoopConfig(
    num_steps=rm.num_steps,
    log_every=rm.log_every,
    checkpoint_every=rm.checkpoint_every,
    keep_checkpoints=rm.keep_checkpoints,
    seed=seed,
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
    eval_every=rm.eval_every,
  )

  train_subset = {k: v[: rm.eval_train_pairs] for k, v in train_data.items()}
  return _write_summary(
    stage_dir,
    step=rm.num_steps,
    test=last_eval.get(rm.num_steps),
    test_gold_accuracy=_gold_accuracy(test_pairs, test_data) if data.source == "synthetic" else None,
    train_subset=evaluate(state.params, train_subset) if rm.eval_train_pairs else None,
    data=data_info,
    ensemble=kind,
    num_members=num_members,
  )


def _write_summary(stage_dir: epath.Path, **summary: Any) -> dict[str, Any]:
  """Writes ``eval_summary.json`` (trained or imported ensemble), logs its test accuracy, returns it."""
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


def _import_reward_models(
  rm: RMConfig, data: PreferenceDataConfig, workdir: epath.PathLike, stage_dir: epath.Path, mesh: Mesh
) -> dict[str, Any]:
  """RM round 0 = the ``*ForSequenceClassification`` directories of ``rm.paths``, one member each.

  Nothing is trained or copied: ``rm_meta.json`` records the directories
  (``hf_paths``) and ``load_reward_model`` reads them. The test split of
  ``data`` is scored as after training, so ``eval_summary.json`` says how the
  imported ensemble does on your pairs. The tokenizer is the first
  directory's that has tokenizer files, else ``rm.backbone``'s (the policy's).
  """
  paths = [wd.resolve_path(str(p), workdir) for p in rm.paths]
  try:
    model_cfg = hf_reward.reward_model_config(paths[0], dtype=rm.backbone.dtype, param_dtype=rm.backbone.param_dtype)
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
    tokenizer, tokenizer_meta = _tokenizer(rm, data, workdir)
  where = f"rm.paths ({tokenizer_dir or paths[0]})"
  policy = wd.policy_tokenizer(workdir)
  if policy is not None and (policy.vocab_size, policy.eos_id) != (tokenizer.vocab_size, tokenizer.eos_id):
    raise ConfigError(
      f"{where}: the reward model's tokenizer (vocab_size {tokenizer.vocab_size}, eos_id "
      f"{tokenizer.eos_id}) is not the policy's in {epath.Path(workdir) / 'sft'} (vocab_size "
      f"{policy.vocab_size}, eos_id {policy.eos_id}); the RM must read the tokens the adversary writes"
    )
  _check_chat_template(rm, data, tokenizer)
  _check_fits(
    model_cfg,
    tokenizer,
    data.max_prompt_len + data.max_response_len + 1,
    where,
    where,
    f"from {tokenizer_meta['backbone_path']}",
  )

  pairs, data_info = load_pairs(data, workdir)
  _, test_pairs = train_test_split(pairs, data.test_fraction, data.split_seed)
  test_data = tokenize(data, test_pairs, tokenizer, "test") if test_pairs else None
  data_info.update(num_train=0, num_test=0 if test_data is None else test_data["chosen_tokens"].shape[0])
  meta = {
    "model": model_cfg.to_dict(),
    "ensemble": "shared" if len(paths) == 1 else "independent",
    "num_members": len(paths),
    "tokenizer": tokenizer_meta,
    "sequence": _sequence_meta(data),
    "optimizer": dataclasses.asdict(rm.optimizer),
    "num_steps": 0,
    "data": data_info,
    "hf_paths": [str(p.resolve()) for p in paths],
  }
  try:
    graphdef, params, param_shardings = wd.load_imported_reward_models(meta, mesh)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"rm.paths: {e}") from None
  wd.write_json(stage_dir / wd.RM_META_FILE, meta, sort_keys=True)
  logging.info("rm: imported %d reward model(s) from %s", len(paths), ", ".join(meta["hf_paths"]))
  test = None
  if test_data is not None:
    test = _evaluate(evaluation.make_scorer(graphdef, mesh, param_shardings), params, test_data, rm, mesh)
  return _write_summary(
    stage_dir,
    step=0,
    imported=meta["hf_paths"],
    test=test,
    test_gold_accuracy=None,
    train_subset=None,
    data=data_info,
    ensemble=meta["ensemble"],
    num_members=meta["num_members"],
  )
