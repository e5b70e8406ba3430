"""Stage `prefs`: preference data and reference samples from the reference policy.

The reward models never see gold directly: they learn it only through
preference labels. This stage makes those labels the way a labelled
dataset is made: the SFT reference policy answers each preference prompt twice, and the
chosen side is drawn by Bradley-Terry on the exact gold reward,
``P(a preferred) = sigmoid(beta * (gold_a - gold_b))`` (label noise). Gold is
computed on the text exactly as the RM will read it (response + EOS).

Pairs are sampled at ``prefs.pair_temperature`` (hotter than the RL
temperature gives more varied pairs, as preference data usually is). It
also samples, at the RL sampling temperature, ``reference_samples`` responses per prompt of the attack
prompt pool (the world's "eval" prompt stream). Later stages use them as the
reference policy's behaviour on those prompts: the adversary's threshold
T(x) (its mean R1 reward), the chosen side of adversarial pairs, and the
reference statistics of attack success.

Artefacts in WORKDIR/prefs/:

* ``preferences.jsonl``: training pairs ``{prompt, chosen, rejected,
  chosen_gold, rejected_gold}`` (the gold columns are for analysis; the RM
  reader ignores them) -- what the `rm` stage trains on;
* ``preferences_test.jsonl``: held-out pairs on prompts not in training
  (split by prompt): the in-distribution accuracy every RM is scored on;
* ``reference.npz``: attack prompts and their reference samples
  (see ``workdir.load_reference``): the adversary trains on these prompts;
* ``reference_heldout.npz`` (with ``prefs.num_heldout_prompts``): other
  prompts of the same stream, never trained on, with
  ``prefs.heldout_reference_samples`` reference samples each: where attack
  success is measured (``workdir.load_reference(workdir, heldout=True)``);
* ``summary.json``: counts, label noise, the reference policy's gold;
* ``DONE``.

On your own data (``prefs.source = "jsonl"``, with a policy imported by the
`sft` stage) the pairs come from a file instead: see ``run_from_file``.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np

from advrm_jax import inference
from advrm_jax.data import synthetic_world as world
from advrm_jax.data.batching import prompt_key, tokenize_prompts, train_test_split
from advrm_jax.data.preferences import PreferencePair, read_preferences, write_preferences
from advrm_jax.pipelines import workdir as wd

STAGE = wd.PREFS
# Where the preference pairs come from (``prefs.source``).
SOURCES = ("synthetic", "jsonl")


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `prefs`: writes WORKDIR/prefs/ (see module doc)."""
  workdir = epath.Path(workdir)
  stage_dir = workdir / STAGE
  if wd.skip_if_done(stage_dir, "prefs"):
    return
  node = config.prefs
  source = node.get("source", "synthetic")
  if source not in SOURCES:
    raise ValueError(f"prefs.source: unknown source {source!r}; expected one of {SOURCES}")
  if source == "jsonl":
    run_from_file(config, workdir)
    return
  wd.require_synthetic_policy(workdir, "prefs (prefs.source='synthetic')")
  stage_dir.mkdir(parents=True, exist_ok=True)
  _, graphdef, params = wd.load_policy(workdir / wd.SFT)
  # The reference policy as RL sees it (rlhf.sampling) for the attack pool;
  # pairs may be drawn hotter, for more varied preference data.
  sampling = inference.sampling_config(config.rlhf.sampling)
  key = jax.random.key(config.seed + 1009)

  # 1. Preference pairs: two reference samples per prompt, labelled by BT on gold.
  records, dropped = inference.sample_labelled_pairs(
    config, graphdef, params, node.num_prompts, config.seed, jax.random.fold_in(key, 0), config.seed
  )
  if not records:
    raise ValueError(
      f"prefs: the reference policy produced no usable pairs from {node.num_prompts} prompts "
      f"({dropped}); train the `sft` stage longer"
    )
  pairs = [
    PreferencePair(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"], id=str(i))
    for i, r in enumerate(records)
  ]
  train, test = train_test_split(pairs, node.test_fraction, config.seed)
  by_id = {str(i): r for i, r in enumerate(records)}
  wd.write_jsonl(stage_dir / wd.TRAIN_FILE, [by_id[p.id] for p in train])
  wd.write_jsonl(stage_dir / wd.TEST_FILE, [by_id[p.id] for p in test])

  # 2. Reference samples on the attack prompt pool.
  attack_prompts = world.prompt_arrays(node.num_attack_prompts, config.seed, "eval", config.world.max_prompt_len)
  n = node.reference_samples
  repeated = {k: np.repeat(v, n, axis=0) for k, v in attack_prompts.items()}
  reference = inference.sample_responses(
    graphdef, params, repeated["tokens"], repeated["mask"], jax.random.fold_in(key, 1), sampling, node.sample_batch_size
  )
  reference_gold = inference.gold_of(
    reference["prompt_tokens"], reference["prompt_mask"], reference["response_tokens"], reference["response_mask"]
  )
  num_prompts, width = node.num_attack_prompts, reference["response_tokens"].shape[1]
  wd.save_npz(
    stage_dir / wd.REFERENCE_FILE,
    prompt_tokens=attack_prompts["tokens"],
    prompt_mask=attack_prompts["mask"].astype(bool),
    prompts=np.array(inference.decode_prompts(attack_prompts["tokens"], attack_prompts["mask"].astype(bool))),
    response_tokens=reference["response_tokens"].reshape(num_prompts, n, width),
    response_mask=reference["response_mask"].reshape(num_prompts, n, width).astype(bool),
    gold=reference_gold.reshape(num_prompts, n),
  )

  # 3. A held-out attack pool (prompts the adversary never trains on), with many reference samples per
  # prompt so that attack success and its strict z-test on held-out prompts rest on a stable reference.
  num_heldout = int(node.get("num_heldout_prompts", 0))
  if num_heldout:
    train_pool = set(inference.decode_prompts(attack_prompts["tokens"], attack_prompts["mask"].astype(bool)))
    candidates = world.make_prompts(num_prompts + 8 * num_heldout, config.seed, split="eval")[num_prompts:]
    heldout_texts = [p for p in dict.fromkeys(candidates) if p not in train_pool][:num_heldout]
    heldout = world.encode_prompts(heldout_texts, config.world.max_prompt_len)
    m = node.heldout_reference_samples
    repeated = {k: np.repeat(v, m, axis=0) for k, v in heldout.items()}
    samples = inference.sample_responses(
      graphdef,
      params,
      repeated["tokens"],
      repeated["mask"],
      jax.random.fold_in(key, 2),
      sampling,
      node.sample_batch_size,
    )
    heldout_gold = inference.gold_of(
      samples["prompt_tokens"], samples["prompt_mask"], samples["response_tokens"], samples["response_mask"]
    )
    rows = len(heldout_texts)
    wd.save_npz(
      stage_dir / wd.HELDOUT_REFERENCE_FILE,
      prompt_tokens=heldout["tokens"],
      prompt_mask=heldout["mask"].astype(bool),
      prompts=np.array(heldout_texts),
      response_tokens=samples["response_tokens"].reshape(rows, m, width),
      response_mask=samples["response_mask"].reshape(rows, m, width).astype(bool),
      gold=heldout_gold.reshape(rows, m),
    )

  chosen_gold = np.array([r["chosen_gold"] for r in records])
  rejected_gold = np.array([r["rejected_gold"] for r in records])
  summary = {
    "num_prompts": node.num_prompts,
    "num_pairs": len(records),
    "num_train": len(train),
    "num_test": len(test),
    "dropped": dropped,
    "beta": node.beta,
    # How often the BT label agrees with gold (ties count 1/2): the ceiling of RM accuracy.
    "label_gold_agreement": float(np.mean((chosen_gold > rejected_gold) + 0.5 * (chosen_gold == rejected_gold))),
    "gold_ties": float(np.mean(chosen_gold == rejected_gold)),
    "reference_gold_mean": float(np.mean(reference_gold)),
    "reference_eos_fraction": float(np.mean(reference["has_eos"])),
    "preference_gold_mean": float(np.mean(np.concatenate([chosen_gold, rejected_gold]))),
    "num_attack_prompts": num_prompts,
    "reference_samples": n,
    "num_heldout_prompts": len(heldout_texts) if num_heldout else 0,
  }
  wd.write_json(stage_dir / "summary.json", summary)
  wd.mark_done(stage_dir)
  logging.info(
    "prefs: %d train / %d test pairs (labels agree with gold %.1f%%), reference gold %.2f",
    len(train),
    len(test),
    100 * summary["label_gold_agreement"],
    summary["reference_gold_mean"],
  )


def run_from_file(config: Any, workdir: epath.Path) -> None:
  """Stage `prefs` on your own preference file and a policy imported by the `sft` stage.

  * The pairs of ``prefs.path`` (JSONL/JSONL.gz; ``prefs.format``,
    ``prefs.on_error`` as the `rm` stage's ``data.*`` keys) are split by
    prompt (``prefs.test_fraction``) into preferences.jsonl and
    preferences_test.jsonl (prompt_chosen_rejected records).
  * The attack prompt pool is up to ``prefs.num_attack_prompts`` distinct
    prompts of the training pairs (shuffled by ``config.seed``), encoded as
    the `rm` stage encodes prompts (``data.max_prompt_len``,
    ``data.use_chat_template``, ``data.add_bos``; left-padded, long prompts
    keep their end), so the RM scores the adversary's samples in the layout
    it was trained on.
  * The imported policy answers each of them ``prefs.reference_samples``
    times with ``attack.sampling`` (the adversary's sampling, so T(x) and
    the reference statistics compare like with like) -> reference.npz.
    Real text has no gold: its ``gold`` is NaN.

  Raises:
    ValueError: naming the key, for a policy from the synthetic world, a
      missing file, or ``attack.sampling.eos_id`` that is not the policy
      tokenizer's EOS (its responses would never end).
  """
  # The rm stage's rule for data paths ({workdir}, then the repository root, then the cwd).
  workdir = epath.Path(workdir)
  stage_dir = workdir / STAGE
  node, data = config.prefs, config.data
  tokenizer = wd.policy_tokenizer(workdir)
  if tokenizer is None:
    raise ValueError(
      "prefs.source='jsonl': needs a policy imported by the `sft` stage (model.source 'hf' or "
      "'gguf'); the synthetic world's policy only knows the world's words"
    )
  sampling = inference.sampling_config(config.attack.sampling)
  eos_ids = sampling.eos_id if isinstance(sampling.eos_id, tuple) else (sampling.eos_id,)
  if tokenizer.eos_id not in eos_ids:
    raise ValueError(
      f"attack.sampling.eos_id={sampling.eos_id} does not include the policy tokenizer's EOS "
      f"{tokenizer.eos_id}; set --config.attack.sampling.eos_id={tokenizer.eos_id}"
    )
  if not node.get("path"):
    raise ValueError("prefs.path: no preference file given; set --config.prefs.path=/path/to/pairs.jsonl[.gz]")
  path = wd.resolve_path(node.path, workdir)
  if not path.exists():
    raise FileNotFoundError(f"prefs.path: preference file {path} not found")
  stage_dir.mkdir(parents=True, exist_ok=True)
  result = read_preferences(path, format=node.get("format", "auto"), on_error=node.get("on_error", "raise"))
  pairs = list(result)
  train, test = train_test_split(pairs, node.test_fraction, config.seed)
  if not train:
    raise ValueError(f"prefs.path: {path} leaves no training pairs (prefs.test_fraction={node.test_fraction})")
  write_preferences(stage_dir / wd.TRAIN_FILE, train)
  write_preferences(stage_dir / wd.TEST_FILE, test)

  # The attack prompt pool: distinct training prompts, in a seeded order.
  by_prompt: dict[str, PreferencePair] = {}
  for pair in train:
    by_prompt.setdefault(prompt_key(pair.prompt), pair)
  pool = list(by_prompt.values())
  order = np.random.default_rng([int(config.seed), 29]).permutation(len(pool))
  pool = [pool[i] for i in order[: node.num_attack_prompts]]
  encoded = tokenize_prompts(
    pool,
    tokenizer,
    data.max_prompt_len,
    padding_side="left",
    use_chat_template=data.use_chat_template,
    on_overlength="truncate",
    add_bos=data.add_bos,
  )
  prompt_tokens, prompt_mask = encoded["tokens"], encoded["mask"].astype(bool)

  _, graphdef, params = wd.load_policy(workdir / wd.SFT)
  n, num_prompts = node.reference_samples, len(pool)
  reference = inference.sample_responses(
    graphdef,
    params,
    np.repeat(prompt_tokens, n, axis=0),
    np.repeat(prompt_mask, n, axis=0).astype(np.int32),
    jax.random.key(config.seed + 1009),
    sampling,
    node.sample_batch_size,
  )
  width = reference["response_tokens"].shape[1]
  wd.save_npz(
    stage_dir / wd.REFERENCE_FILE,
    prompt_tokens=prompt_tokens,
    prompt_mask=prompt_mask,
    prompts=np.array(inference.decode_prompts(prompt_tokens, prompt_mask, tokenizer)),
    prompts_json=np.array([json.dumps(p.prompt, ensure_ascii=False) for p in pool]),
    response_tokens=reference["response_tokens"].reshape(num_prompts, n, width),
    response_mask=reference["response_mask"].reshape(num_prompts, n, width).astype(bool),
    gold=np.full((num_prompts, n), np.nan, np.float32),
  )
  summary = {
    "source": "jsonl",
    "path": str(path),
    "format": result.stats.format,
    "num_records": result.stats.num_records,
    "skipped": dict(result.stats.skipped),
    "num_pairs": len(pairs),
    "num_train": len(train),
    "num_test": len(test),
    "num_attack_prompts": num_prompts,
    "reference_samples": n,
    "reference_eos_fraction": float(np.mean(reference["has_eos"])),
  }
  wd.write_json(stage_dir / "summary.json", summary)
  wd.mark_done(stage_dir)
  logging.info(
    "prefs: %d train / %d test pairs from %s; %d attack prompts x %d reference answers",
    len(train),
    len(test),
    path,
    num_prompts,
    n,
  )
