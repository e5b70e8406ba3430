r"""The default experiment: Adv-RM on the built-in synthetic world, end to end.

  python -m advrm_jax.main --config configs/synthetic.py --workdir /tmp/advrm_synthetic
  python -m advrm_jax.main --config configs/synthetic.py:small --workdir /tmp/advrm_small

The world (advrm_jax/data/synthetic_world.py) has readable prompts and
responses and an exact multi-facet gold reward; see docs/concepts.md.
Stages (each resumes from, or skips, its artefacts in WORKDIR):

  sft       the reference policy on the world's mixed-quality corpus
  prefs     reference-policy answers labelled by Bradley-Terry on gold
  rm        the conventional reward-model ensemble (RM round 0)
  advrm     advrm.num_rounds x (attack -> filter -> advtrain), then a last
            attack on the hardened RM (the stages `attack`, `filter` and
            `advtrain` can also be run on their own)
  rlhf      policies against the conventional RM, ensemble baselines, the
            Adv-RM RM and (labelled as such) the gold oracle
  evaluate  WORKDIR/report.json, REPORT.md and plots/

``:small`` shrinks every budget so the whole run takes about a minute (tests);
``:online`` (or ``:small,online``) adds the online mode and an RLHF run against its RM.
Gold reaches the reward models only through preference labels, and the
policies only in the run named ``oracle_gold``.
"""

import pathlib
import runpy
import types

import ml_collections

# Config files are loaded by path (configs/ is no package); so is common.py, the blocks they share.
common = types.SimpleNamespace(**runpy.run_path(str(pathlib.Path(__file__).resolve().with_name("common.py"))))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = [o.strip() for o in (arg or "").split(",") if o.strip()]
  for option in options:
    if option not in ("small", "online"):
      raise ValueError(
        f"configs/synthetic.py: unknown argument {option!r}; expected nothing or some of "
        "'small', 'online' (comma-separated)"
      )
  small = "small" in options
  config = ml_collections.ConfigDict()
  # Stages run in order; each resumes from (or skips, when done) its artefacts in WORKDIR/<stage>/.
  config.stages = ("sft", "prefs", "rm", "advrm", "rlhf", "evaluate")
  # Base seed: data order, initialisation and sampling all derive from it.
  config.seed = 0
  # Policies (RLHF, adversary) trained at once per run, vmapped over seeds.
  config.num_seeds = 1 if small else 3
  # Multi-host: call jax.distributed.initialize() before anything else.
  config.distributed = False
  # JAX's persistent compilation cache ({workdir} = the run's work dir; "" = off): adversary
  # rounds and RLHF runs rebuild identical programs, which then compile once.
  config.compilation_cache_dir = "{workdir}/jax_cache"
  # Each training run renders its metrics.png at its end (~1.5 s a run; `python -m advrm_jax.report WORKDIR`
  # renders them any time).
  config.plots = True

  # (data, fsdp, tensor) mesh; -1 takes all remaining devices.
  config.mesh = common.mesh()

  # The policy / reference backbone (a small Llama trained from scratch).
  config.model = common.scratch_llama(
    # Where weights come from (read by the `sft` stage): "scratch" trains the policy on the world's corpus, which
    # the synthetic world needs; "hf" / "gguf" import a checkpoint instead (configs/advrm_own.py), and then
    # `prefs` (synthetic pairs), `online`, `rlhf` and `evaluate` stop with an error.
    source="scratch",
    small=small,
    # Exactly the synthetic world's WordTokenizer vocabulary (checked by the sft stage),
    # so a policy can never emit an id the world cannot decode.
    vocab_size=150,
    # Longest sequence the model is built for (prompt + response fits in it).
    max_seq_len=128,
    dtype="float32",
  )

  # Synthetic world sizes.
  config.world = ml_collections.ConfigDict()
  # Longest prompt (incl. BOS) in tokens (the world's longest prompt has 14).
  config.world.max_prompt_len = 16
  # Longest response (incl. EOS) in tokens (a good answer to three topics needs about 20).
  config.world.max_response_len = 32
  # Share of SFT-corpus responses that use the world's exploits (off-topic praise, stacked style words,
  # stuffed topics, ...), so that some reach preference pairs, labelled by Bradley-Terry on gold like any
  # other pair. Gold is unchanged. 0: the exploits never occur in training data, so every RM member
  # extrapolates them alike (an error no disagreement filter can find). Calibrated on conventional RLHF
  # (docs/results/calibration_h200): 0.05 made it rise less and hack in fewer realisations than 0.
  config.world.exploit_exposure = 0.0

  # Stage `sft`: the reference policy on the mixed-quality corpus.
  config.sft = ml_collections.ConfigDict()
  # Seed of the SFT corpus, initialisation and batch order (-1: config.seed); configs/study.py varies it
  # apart from config.seed to make realisations (SFT seed, preference/RM seed).
  config.sft.seed = -1
  # Corpus size (examples from make_sft_corpus).
  config.sft.num_examples = 2000 if small else 20000
  # Sequences per step.
  config.sft.batch_size = 32 if small else 128
  # Training steps (copying the asked topics "clicks" after ~400 steps of 128).
  config.sft.num_steps = 20 if small else 700
  # Log every this many steps.
  config.sft.log_every = 10 if small else 50
  # Checkpoint every this many steps.
  config.sft.checkpoint_every = 10 if small else 200
  # AdamW with warm-up and decay (advrm_jax.train_state.make_optimizer).
  config.sft.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=1e-2, schedule="cosine", warmup_steps=10 if small else 50, weight_decay=0.0, grad_clip=1.0)
  )

  # Stage `prefs`: preference pairs and reference samples from the reference policy.
  config.prefs = ml_collections.ConfigDict()
  # Preference prompts (world split "preference"); each gives one pair of two samples. The RM's
  # robustness rests on it: with 3000 pairs adversarial training did not generalise, with 8000 it did.
  config.prefs.num_prompts = 256 if small else 8000
  # Bradley-Terry inverse temperature of the gold labels (larger: less label noise).
  config.prefs.beta = 2.0
  # Sampling temperature of the two answers of a pair (the reference samples use rlhf.sampling).
  config.prefs.pair_temperature = 1.0
  # Fraction of pairs held out (split by prompt) for every RM's in-distribution accuracy.
  config.prefs.test_fraction = 0.1
  # Attack prompt pool (world split "eval"): the adversary's prompts and the evaluation's.
  config.prefs.num_attack_prompts = 32 if small else 128
  # Reference-policy samples per attack prompt: T(x), chosen responses, the reward units' population.
  config.prefs.reference_samples = 4 if small else 8
  # Held-out attack prompts (same stream, never trained on): where attack success is measured.
  config.prefs.num_heldout_prompts = 16 if small else 64
  # Reference samples per held-out prompt: the strict test's per-prompt z-scores need many.
  config.prefs.heldout_reference_samples = 8 if small else 32
  # Rows per jitted sampling call.
  config.prefs.sample_batch_size = 64 if small else 256

  # Stage `rm`'s preference data (advrm_jax.pipelines.rm; keys as configs/rm_hh.py).
  config.data = common.preference_data(
    # The pairs the `prefs` stage wrote ({workdir} is replaced by the run's work dir).
    path="{workdir}/prefs/preferences.jsonl",
    # Most prompt tokens per row (BOS included): the world's prompt length.
    max_prompt_len=config.world.get_ref("max_prompt_len"),
    # Most response tokens per row (EOS not counted): the world's response length.
    max_response_len=config.world.get_ref("max_response_len"),
    # The word tokenizer has no chat template.
    use_chat_template=False,
    # The rm stage's own held-out split (monitoring only; the report uses prefs' test file).
    test_fraction=0.05,
    # BOS before the prompt, as the policy's prompts have it.
    add_bos=True,
  )

  # Stage `rm`: the conventional ensemble (RM round 0).
  config.rm = common.reward_model(
    # "independent": K whole backbones, each from the SFT model with its own head seed, data order and
    # bootstrap (the paper's two separately trained RMs; vmapped, one jitted step for all K);
    # "shared": K heads on one backbone (cheaper, but the heads made the same mistakes: R1 and R2
    # correlated 0.98 on the adversary's samples and the adversary found no disagreement).
    ensemble="independent",
    # Ensemble size K (R1 = member `attack.target`, R2 = the mean of the others); K=4 is a documented variant.
    num_members=2,
    # The synthetic world's word tokenizer.
    tokenizer="word",
    # "policy": start from the SFT reference policy (as RMs usually start from the SFT model) in its stage
    # dir; "scratch": a fresh backbone of rm.backbone.model's shape (vocab_size 0 = the tokenizer's).
    backbone=common.backbone(
      source="policy", path="{workdir}/sft", model=common.scratch_llama(small=small, vocab_size=0, max_seq_len=128)
    ),
    batch_size=16 if small else 32,
    num_steps=20 if small else 600,
    learning_rate=3e-3 if small else 1e-3,
    warmup_steps=2 if small else 20,
    log_every=10 if small else 50,
    checkpoint_every=10 if small else 200,
    eval_batch_size=64,
  )

  # RL sampling shared by the reference samples, the adversary and RLHF: temperature 0.7 (the reference
  # policy then answers with gold ~2.3 instead of ~1.5 at temperature 1).
  def sampling():
    return common.sampling(max_new_tokens=config.world.max_response_len, temperature=0.7, eos_id=1, pad_id=0)

  # One RL regime for RLHF and the adversary (the authors use one small KL coefficient and learning rate
  # for both). Chosen on conventional RLHF alone (docs/reproducing.md, "Calibration"): it must first raise
  # gold above the reference policy's before it hacks. RLConfig fields: RLOO with 4 samples per prompt (the
  # first author's setting; "ppo" works too), KL as a per-token mean (the authors' form).
  def rl_settings():
    return common.rl(algorithm="rloo", num_samples=4, kl_coef=0.1, kl_aggregate="mean")

  # AdamW for RL (constant learning rate). Calibration (docs/results/calibration_h200): lr 5e-4 with KL 0.1 per
  # token made conventional RLHF rise >= 0.3 gold and then hack in 3 of 5 realisations (lr 1e-3: 3 of 5 with a
  # smaller rise; the bar of 4 of 5 was missed by both).
  def rl_optimizer():
    return common.rl_optimizer(5e-4)

  # Stage `attack`: the adversary (RL from the reference policy) against RM round r.
  config.attack = common.attack(
    # RLConfig fields: RLOO with 4 samples per prompt (the first author's setting); "ppo" works too.
    # The same KL regime as RLHF (per-token mean, one coefficient), as the authors run both.
    rl=rl_settings(),
    # AdamW for the adversary: the same regime as RLHF (an exploit 30 nats away is one RLHF never reaches,
    # and hardening against it cannot help RLHF).
    optimizer=rl_optimizer(),
    sampling=sampling(),
    # RL iterations per round.
    # (240: of 180 / 240 / 360, the budget under which most of seeds 0-4 passed the three adversary method
    # checks (5 of 5; 180: 4 of 5; 120: 2 of 5), docs/calibration.md addendum 2. It ends far further from the
    # reference than 60 steps of RLHF (17-37 nats against 5-11): the report shows both KLs.)
    num_steps=4 if small else 240,
    prompts_per_step=8,
    log_every=2 if small else 10,
    checkpoint_every=2 if small else 30,
    # Save the policies every this many steps (a multiple of log_every; 0: never): the evaluation samples round
    # 0's snapshots for attack success at matched KL, measured as RLHF's is.
    snapshot_every=2 if small else 20,
    # Members' rewards in reference z units (each member's mean/std over the reference samples, stored
    # with the RM round): the floor, the penalty and U = z1 - z2 then share one scale.
    standardize=True,
    # Added to R1 when R1 <= T(x), in the reward's units (the first author's -25 on raw rewards).
    penalty=-5.0,
    # T(x): "constant" (attack.tau for every prompt: the authors' fixed low anchor), or from the reference
    # samples' R1: "mean" (the per-prompt mean; kept for ablation: it put half of all ordinary answers under
    # the penalty), "max" or "quantile".
    threshold="constant",
    tau=-1.0,
    final_samples_per_prompt=2 if small else 4,
  )

  # Stage `filter`: which adversarial samples become rejected responses.
  config.filter = common.filter_stage(compare_signals=True, max_pairs=256 if small else 2000)

  # Stage `advtrain`: RM round r + 1 from RM round r and the adversarial pairs.
  config.advtrain = common.advtrain(
    # Adversarial pairs added per round (drawn from the kept set; the paper added about 1,000). 0: use
    # adversarial_fraction / upsample instead.
    num_pairs=200 if small else 1000,
    # Also run the fresh-pairs control: the same schedule with num_pairs fresh reference pairs labelled by
    # Bradley-Terry on gold (WORKDIR/advtrain_control/), and an RLHF run against it.
    control=True,
    num_steps=10 if small else 200,
    learning_rate=3e-3 if small else 5e-4,
    export_hf=False,
  )

  # Stage `advrm`: the round schedule.
  config.advrm = ml_collections.ConfigDict()
  # Rounds of attack -> filter -> advtrain (the paper: two sufficed).
  config.advrm.num_rounds = 2

  # Stage `online` (beyond the paper; advrm_jax/pipelines/online.py): adversary and ensemble updated in
  # one jitted iteration from RM round 0, with the attack's objective, the filter's rule and a replay
  # buffer. Budgets match the round schedule: adversary samples = num_rounds x the attack's, RM pair
  # updates ~= num_rounds x advtrain.num_steps x rm.batch_size (summary.json reports both).
  config.online = ml_collections.ConfigDict()
  # Iterations (one adversary RL step + rm_updates BT steps each).
  config.online.num_steps = config.advrm.num_rounds * config.attack.num_steps
  # Prompts per iteration: one adversary sees as many as the attack's vmapped seeds together.
  config.online.prompts_per_step = config.attack.prompts_per_step * config.num_seeds
  # Log metrics every this many steps.
  config.online.log_every = 2 if small else 10
  # Save an orbax checkpoint every this many steps.
  config.online.checkpoint_every = 4 if small else 40
  # The adversary's RL, optimizer and sampling: the attack's.
  config.online.rl = ml_collections.ConfigDict(dict(config.attack.rl))
  config.online.optimizer = ml_collections.ConfigDict(dict(config.attack.optimizer))
  config.online.sampling = sampling()
  # BT steps per iteration, and per step: ordinary pairs from prefs + pairs drawn from the buffer.
  config.online.rm_updates = 2 if small else 3
  config.online.ordinary_pairs = 16 if small else 24
  config.online.adversarial_pairs = 4 if small else 12
  # Replay-buffer slots (ring: the freshest filtered samples).
  config.online.buffer_capacity = 64 if small else 512
  # Poisson(1) bootstrap weights per member on ordinary pairs (keeps members diverse).
  config.online.bootstrap = True
  # The ensemble's AdamW (constant: the run has no natural end for a decay).
  config.online.rm_optimizer = ml_collections.ConfigDict(
    dict(
      learning_rate=config.advtrain.learning_rate, schedule="constant", warmup_steps=0, grad_clip=1.0, b1=0.9, b2=0.95
    )
  )

  # Stage `rlhf`: policies trained against each reward model, scored by gold.
  config.rlhf = ml_collections.ConfigDict()
  # Size of the RL prompt pool (world.make_prompts(split="rl")).
  config.rlhf.num_prompts = 256 if small else 2048
  # Prompts per iteration; each gets rl.num_samples responses.
  config.rlhf.prompts_per_step = 8
  # RL iterations per run.
  config.rlhf.num_steps = 4 if small else 60
  # Log every this many steps (the gold/proxy curves' resolution).
  config.rlhf.log_every = 2 if small else 5
  # Checkpoint every this many steps.
  config.rlhf.checkpoint_every = 2 if small else 50
  # Save the policies every this many steps (a multiple of log_every; 0: never): conventional RLHF's snapshots
  # give its attack success at matched KL and the over-optimisation baseline at its peak of gold.
  config.rlhf.snapshot_every = 2 if small else 10
  # RLConfig fields (advrm_jax/rl/engine.py): algorithm, samples per prompt, KL...
  config.rlhf.rl = rl_settings()
  # AdamW for the policies.
  config.rlhf.optimizer = rl_optimizer()
  # Sampling options; also the reference policy's sampling in `prefs` and `evaluate`.
  config.rlhf.sampling = sampling()
  # One policy group per entry: source "rm" (rm_stage: a dir under WORKDIR holding an RM;
  # aggregate mean | min | mean_minus_std | mean_minus_var | member; coef; member) or
  # "gold" (the oracle baseline, labelled as such in reports).
  config.rlhf.runs = ml_collections.ConfigDict(
    {
      # The conventional RM: one member (the attacked R1) of the round-0 ensemble.
      "conventional": {"source": "rm", "rm_stage": "rm", "aggregate": "member", "member": 0},
      # Ensemble baselines on the same round-0 ensemble.
      "ensemble_mean": {"source": "rm", "rm_stage": "rm", "aggregate": "mean"},
      "ensemble_min": {"source": "rm", "rm_stage": "rm", "aggregate": "min"},
      "uncertainty_weighted": {"source": "rm", "rm_stage": "rm", "aggregate": "mean_minus_var", "coef": 1.0},
      # Adv-RM: the same member of the hardened ensemble (advtrain/final -> the last round).
      "adv_rm": {"source": "rm", "rm_stage": "advtrain/final", "aggregate": "member", "member": 0},
      # The control: the same member after the same schedule with fresh ordinary pairs.
      "fresh_pairs": {"source": "rm", "rm_stage": "advtrain_control/final", "aggregate": "member", "member": 0},
      # Oracle: the policy optimises gold itself (an upper reference, not a method).
      "oracle_gold": {"source": "gold"},
    }
  )
  # Train only these runs (names of rlhf.runs; empty: all), e.g. the calibration's ("conventional",).
  config.rlhf.only = ()
  if "online" in options:
    # `:online` adds the online mode (beyond the paper) at the round schedule's compute, and an RLHF
    # run against its RM; in a finished default WORKDIR only these two parts train.
    config.stages = ("sft", "prefs", "rm", "advrm", "online", "rlhf", "evaluate")
    config.rlhf.runs.online = {"source": "rm", "rm_stage": "online/rm", "aggregate": "member", "member": 0}

  # Stage `evaluate`: report.json, REPORT.md, plots.
  config.evaluate = ml_collections.ConfigDict()
  # Hacking onset: smoothed gold this far below its running peak while proxy kept rising.
  config.evaluate.hacking_margin = 0.3
  # Trailing moving-average width (logged points) before the onset test.
  config.evaluate.hacking_window = 3
  # Samples per attack prompt from each final RLHF policy (the over-optimisation baseline).
  config.evaluate.policy_samples_per_prompt = 2 if small else 4
  # Word-substitution (TextFooler-like) baseline: substitutions per response and search.
  config.evaluate.substitution_budget = 3
  config.evaluate.substitution_search = "importance"
  # Reference responses per prompt the substitution attack perturbs.
  config.evaluate.substitution_responses_per_prompt = 1 if small else 2
  # Adversarial responses shown in REPORT.md.
  config.evaluate.num_examples = 6
  return config
