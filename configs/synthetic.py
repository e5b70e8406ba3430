r"""The default experiment: Adv-RM on the built-in synthetic world.

  python -m advrm_jax.main --config configs/synthetic.py --workdir /tmp/advrm_synthetic
  python -m advrm_jax.main --config configs/synthetic.py:small --workdir /tmp/advrm_small

The world (advrm_jax/data/synthetic_world.py) has readable prompts and
responses and an exact multi-facet gold reward; see DESIGN.md section 4.
``:small`` shrinks every budget so the whole run takes about a minute (tests).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  small = arg == "small"
  if arg not in (None, "", "small"):
    raise ValueError(f"configs/synthetic.py: unknown argument {arg!r}; expected nothing or 'small'")
  config = ml_collections.ConfigDict()
  # Stages run in order; each resumes from (or skips, when done) its artefacts in WORKDIR/<stage>/.
  config.stages = ("sft",)
  # Base seed: data order, initialisation and sampling all derive from it.
  config.seed = 0
  # Policies (RLHF, adversary) trained at once per run, vmapped over seeds.
  config.num_seeds = 1 if small else 3
  # Multi-host: call jax.distributed.initialize() before anything else.
  config.distributed = False

  # (data, fsdp, tensor) mesh; -1 takes all remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = (-1, 1, 1)

  # The policy / reference backbone (a small Llama trained from scratch).
  config.model = ml_collections.ConfigDict()
  # Where weights come from: only "scratch" for the synthetic world.
  config.model.source = "scratch"
  config.model.arch = "llama"
  # Exactly the synthetic world's WordTokenizer vocabulary (checked by the sft stage),
  # so a policy can never emit an id the world cannot decode.
  config.model.vocab_size = 150
  config.model.d_model = 32 if small else 64
  config.model.num_layers = 1 if small else 2
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 16
  config.model.d_ff = 64 if small else 128
  config.model.max_seq_len = 128
  config.model.tie_embeddings = True
  config.model.param_dtype = "float32"
  config.model.dtype = "float32"

  # Synthetic world sizes.
  config.world = ml_collections.ConfigDict()
  # Longest prompt (incl. BOS) and response (incl. EOS) in tokens.
  config.world.max_prompt_len = 24
  config.world.max_response_len = 40

  # Stage `sft`: the reference policy on the mixed-quality corpus.
  config.sft = ml_collections.ConfigDict()
  # Corpus size (examples from make_sft_corpus).
  config.sft.num_examples = 2000 if small else 20000
  config.sft.batch_size = 32 if small else 64
  config.sft.num_steps = 20 if small else 600
  config.sft.log_every = 10 if small else 50
  config.sft.checkpoint_every = 10 if small else 200
  config.sft.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, schedule="cosine", warmup_steps=10 if small else 50,
      weight_decay=0.0, grad_clip=1.0))

  # Stage `rlhf`: policies trained against each reward model, scored by gold.
  config.rlhf = ml_collections.ConfigDict()
  # Size of the RL prompt pool (world.make_prompts(split="rl")).
  config.rlhf.num_prompts = 256 if small else 2048
  # Prompts per iteration; each gets rl.num_samples responses.
  config.rlhf.prompts_per_step = 8 if small else 16
  config.rlhf.num_steps = 4 if small else 150
  config.rlhf.log_every = 2 if small else 5
  config.rlhf.checkpoint_every = 2 if small else 50
  # RLConfig fields (advrm_jax/rl/engine.py): algorithm, samples per prompt, KL...
  config.rlhf.rl = ml_collections.ConfigDict(dict(
      algorithm="rloo", num_samples=4, ppo_epochs=1, num_minibatches=1, kl_coef=0.02, kl_estimator="k1",
      kl_in_reward=True, missing_eos_penalty=0.0))
  config.rlhf.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, schedule="constant", warmup_steps=0, grad_clip=1.0))
  config.rlhf.sampling = ml_collections.ConfigDict(dict(
      max_new_tokens=config.world.max_response_len, temperature=1.0, top_k=0, top_p=1.0, eos_id=1, pad_id=0))
  # One policy group per entry: source "rm" (rm_stage dir, aggregate, coef,
  # member) or "gold" (the oracle baseline, labelled as such in reports).
  config.rlhf.runs = ml_collections.ConfigDict({
      "oracle_gold": {"source": "gold"},
  })
  return config
