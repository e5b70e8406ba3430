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
  # The synthetic world's WordTokenizer vocabulary fits in 256 ids.
  config.model.vocab_size = 256
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
  return config
