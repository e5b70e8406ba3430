r"""EMPO (label-free semantic-entropy RL) and correctness probes on the reasoning task.

  python -m advrm_jax.main --config configs/empo_reasoning.py --workdir /tmp/advrm_empo
  python -m advrm_jax.main --config configs/empo_reasoning.py:small --workdir /tmp/advrm_empo_small

The task (advrm_jax/data/reasoning_world.py) is multi-step arithmetic in
words with exact answers ("start with three . add two . double it ." ->
"now five . now ten . answer ten ."). Stage `empo` trains the reference
policy on a corpus with a known mix of wrong solutions, then trains
``num_seeds`` policies (vmapped) with EMPO's semantic-cluster reward (no
labels) and, side by side, with the supervised correctness reward; stage
`probes` fits correctness probes on the reference policy's hidden states,
evaluates early-exit decoding and compares uncertainty signals for Adv-RM's
filter. Results: WORKDIR/empo/{summary.json, REPORT.md, *.png} and
WORKDIR/empo/probes/. ``:small`` shrinks every budget (end-to-end tests).
"""

import math
import pathlib
import runpy
import types

import ml_collections

# Config files are loaded by path (configs/ is no package); so is common.py, the blocks they share.
common = types.SimpleNamespace(**runpy.run_path(str(pathlib.Path(__file__).resolve().with_name("common.py"))))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  small = arg == "small"
  if arg not in (None, "", "small"):
    raise ValueError(f"configs/empo_reasoning.py: unknown argument {arg!r}; expected nothing or 'small'")
  config = ml_collections.ConfigDict()
  # Stages run in order; `probes` reuses the reference policy `empo` trains (or trains it).
  config.stages = ("empo", "probes")
  # Base seed: data order, initialisation and sampling all derive from it.
  config.seed = 0
  # Policies trained at once per reward, vmapped over seeds.
  config.num_seeds = 2 if small else 3
  # Multi-host: call jax.distributed.initialize() before anything else.
  config.distributed = False

  # (data, fsdp, tensor) mesh; -1 takes all remaining devices.
  config.mesh = common.mesh()

  # Laid out like configs/synthetic.py's top sections (mesh, model, world) on purpose: each config reads on its own.

  # The policy backbone: a small Llama trained from scratch on the task.
  config.model = common.scratch_llama(
    # Only "scratch": the `empo` stage always trains its reference policy from scratch and does not read this key.
    source="scratch",
    small=small,
    # Exactly the reasoning task's vocabulary (checked), so no id is undecodable.
    vocab_size=35,
    max_seq_len=64,
    dtype="float32",
  )

  # The reasoning task (reasoning_world.py) and its SFT corpus mix.
  config.world = ml_collections.ConfigDict()
  # Longest prompt (incl. BOS) and response (incl. EOS) in tokens.
  config.world.max_prompt_len = 14
  config.world.max_response_len = 36
  # Inclusive range of the number of operations per problem.
  config.world.num_ops = (2, 3)
  # Probability that attempt 1, 2, 3 of a corpus solution makes one slip.
  config.world.slip_probs = (0.35, 0.25, 0.15)
  # Probability of checking again (a new attempt) after a slipped / a correct attempt.
  config.world.check_after_slip = 0.7
  config.world.check_after_correct = 0.15
  # At most this many attempts per solution.
  config.world.max_attempts = 3

  # The reference policy: SFT on the noisy corpus (WORKDIR/empo/sft).
  config.reasoning_sft = ml_collections.ConfigDict()
  # Corpus size (reasoning_world.make_sft_corpus).
  config.reasoning_sft.num_examples = 1000 if small else 20000
  config.reasoning_sft.batch_size = 32 if small else 64
  config.reasoning_sft.num_steps = 10 if small else 1500
  config.reasoning_sft.log_every = 5 if small else 100
  config.reasoning_sft.checkpoint_every = 10 if small else 500
  config.reasoning_sft.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=3e-3, schedule="cosine", warmup_steps=2 if small else 100, weight_decay=0.0, grad_clip=1.0)
  )

  # Stage `empo`: EMPO vs the supervised correctness reward, num_seeds each.
  config.empo = ml_collections.ConfigDict()  # its run keys set one by one, as reasoning_sft's above
  # Unlabelled RL prompt pool (the "rl" split) and held-out accuracy prompts ("test" split).
  config.empo.num_prompts = 64 if small else 2048
  config.empo.num_eval_prompts = 16 if small else 256
  # Sampled responses per held-out prompt for the sampled accuracy (greedy is one).
  config.empo.eval_samples = 2 if small else 4
  # Prompts per iteration; each gets rl.num_samples responses.
  config.empo.prompts_per_step = 8 if small else 16
  config.empo.num_steps = 2 if small else 60
  config.empo.log_every = 1 if small else 5
  # Held-out accuracy every this many steps (and at the end).
  config.empo.eval_every = 2 if small else 10
  config.empo.checkpoint_every = 2 if small else 50
  # RLConfig fields. EMPO drops prompts by zeroing their group (exactly zero GRPO
  # advantage), which needs whiten_advantages=False and the KL in the loss (checked).
  config.empo.rl = common.rl(
    algorithm="grpo",
    num_samples=4 if small else 8,
    kl_coef=0.02,
    kl_estimator="k3",
    kl_in_reward=False,
    whiten_advantages=False,
    missing_eos_penalty=0.0,
  )
  config.empo.optimizer = common.rl_optimizer(1e-4)
  config.empo.sampling = common.sampling(
    max_new_tokens=config.world.max_response_len, temperature=1.0, eos_id=1, pad_id=0
  )
  # EMPO's semantic clustering (advrm_jax/rl/empo.py).
  config.empo.semantic = ml_collections.ConfigDict()
  # Reward each response by its cluster's share "prob" = p(c|q) or "log_prob" = log p(c|q).
  config.empo.semantic.reward = "prob"
  # Answerless responses: "exclude" (no cluster, share 0) or "cluster" (one cluster of their own).
  config.empo.semantic.no_answer = "exclude"
  # Equivalence of extracted final answers: "exact" or "within_one".
  config.empo.semantic.equivalence = "exact"
  # Prompts with semantic entropy (nats) outside [min, max] are dropped from the loss. With
  # G = 8 the reference policy's majority answer is right for ~80% of prompts below 1.2 nats
  # and ~50% above (REPORT.md's entropy table), so max = 0.58 ln(G) keeps the former.
  config.empo.semantic.entropy_min = 0.0
  config.empo.semantic.entropy_max = 0.58 * math.log(config.empo.rl.num_samples)
  # One policy group per entry: source "semantic" (EMPO, no labels) or
  # "correctness" (the supervised reward: 1 iff the final answer is exact).
  config.empo.runs = ml_collections.ConfigDict(
    {
      "empo": {"source": "semantic"},
      "correctness": {"source": "correctness"},
    }
  )

  # Stage `probes`: correctness probes, early exit and the Adv-RM filter tie-in.
  config.probes = ml_collections.ConfigDict()
  # Which policy's hidden states: "sft" (the reference) or a run of stage empo ("empo/<run>", seed 0).
  config.probes.policy = "sft"
  # Probe-training prompts come from the "rl" split, held-out ones from "test".
  config.probes.num_train_prompts = 32 if small else 1024
  config.probes.num_test_prompts = 16 if small else 512
  # Sampled responses per prompt (G, also the semantic-entropy group size of the tie-in).
  config.probes.samples_per_prompt = 4 if small else 8
  config.probes.temperature = 1.0
  # Probe: 0 hidden units = linear, else one hidden layer of this width.
  config.probes.hidden = 0
  config.probes.num_steps = 50 if small else 600
  config.probes.learning_rate = 1e-2
  config.probes.weight_decay = 1e-4
  # ECE bins (equal width on [0, 1]).
  config.probes.ece_bins = 10
  # Early exit: stop at the first candidate answer whose probe confidence >= threshold. The
  # class-weighted probe is fitted to a balanced prior, so its confidences sit below the
  # fraction correct (REPORT.md's reliability diagram) and rarely pass 0.8.
  config.probes.thresholds = (0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)
  # Tie-in: probes in the bootstrap ensemble whose disagreement is the baseline signal.
  config.probes.ensemble_size = 3 if small else 5
  # z cut-offs of filtering.filter_mask compared.
  config.probes.z_mins = (1.0, 1.96)
  return config
