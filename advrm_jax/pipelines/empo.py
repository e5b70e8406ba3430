"""Stage `empo`: label-free RL with semantic-entropy rewards vs the supervised reward.

On the reasoning task (``advrm_jax/data/reasoning_world.py``):

1. the reference policy is trained by SFT on the noisy corpus
   (WORKDIR/empo/sft; shared with stage `probes`, which trains it if absent);
2. for each entry of ``config.empo.runs`` (by default ``empo``: EMPO's
   semantic-cluster reward, which never sees a label, and ``correctness``:
   the supervised 1[final answer is exact]), ``config.num_seeds`` policies are
   trained at once with the one RL driver ``rlhf.train_policy`` (vmapped
   seeds, GRPO inside the one jitted iteration), tracking the accuracy of
   the training samples (a metric only) and, every ``eval_every`` steps, the
   held-out accuracy (greedy and sampled) on the "test" split;
3. WORKDIR/empo/summary.json, REPORT.md and PNG curves compare the two
   side by side (final accuracy mean ± std over seeds).

``write_report`` also renders the `probes` stage's section when its summary
exists, so REPORT.md always shows whatever has run.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.checkpoints.orbax_io import save_params
from advrm_jax.data import reasoning_world as rw
from advrm_jax.data.batching import epoch_batches
from advrm_jax.evaluation import report
from advrm_jax.metrics import read_metrics
from advrm_jax.models.transformer import Transformer
from advrm_jax.pipelines.loop import LoopConfig, train_loop
from advrm_jax.pipelines.rlhf import _node_dict, rl_config_from, train_policy
from advrm_jax.pipelines.sft import jit_sft_step, load_policy, model_config_from, save_model_config
from advrm_jax.rl import empo
from advrm_jax.rl.rewards import FunctionSource
from advrm_jax.rl.sampler import SamplingConfig, sample
from advrm_jax.train_state import create_train_state, make_optimizer, split_module

STAGE = "empo"
RUN_LABELS = {"semantic": "EMPO (no labels)", "correctness": "correctness reward (labels)"}
EQUIVALENCES = {"exact": empo.exact_match, "within_one": empo.within_one}


# ----------------------------------------------------------------------------
# Task set-up and the reference policy.
# ----------------------------------------------------------------------------


def corpus_mix(config: Any) -> rw.CorpusMix:
  """The reasoning SFT corpus's mix of slips and re-checks from ``config.world``."""
  world = config.world
  return rw.CorpusMix(slip_probs=tuple(world.slip_probs), check_after_slip=world.check_after_slip,
                      check_after_correct=world.check_after_correct, max_attempts=world.max_attempts)


def check_world(config: Any) -> None:
  """Config consistency checks, each naming the key to change."""
  world = config.world
  if config.model.vocab_size != rw.VOCAB_SIZE:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} must equal the reasoning task's vocabulary "
                     f"size {rw.VOCAB_SIZE}")
  if world.max_prompt_len < rw.MAX_PROMPT_TOKENS:
    raise ValueError(f"world.max_prompt_len={world.max_prompt_len} < {rw.MAX_PROMPT_TOKENS}, the longest prompt")
  longest = rw.max_response_tokens(corpus_mix(config))
  if world.max_response_len < longest:
    raise ValueError(f"world.max_response_len={world.max_response_len} < {longest}, the longest corpus "
                     f"response with world.max_attempts={world.max_attempts}")
  if world.max_prompt_len + world.max_response_len > config.model.max_seq_len:
    raise ValueError(f"world.max_prompt_len + world.max_response_len = "
                     f"{world.max_prompt_len + world.max_response_len} exceeds model.max_seq_len")


def reasoning_sft_arrays(config: Any, num_examples: int, seed: int) -> dict[str, np.ndarray]:
  """[BOS] prompt response [EOS], right-padded; loss on response and EOS only."""
  width = config.world.max_prompt_len + config.world.max_response_len
  corpus = rw.make_sft_corpus(num_examples, seed, corpus_mix(config), tuple(config.world.num_ops))
  tokens = np.zeros((num_examples, width), np.int32)
  mask = np.zeros((num_examples, width), np.int32)
  loss_mask = np.zeros((num_examples, width), np.int32)
  for i, example in enumerate(corpus):
    prompt = [rw.BOS_ID] + rw.TOKENIZER.encode(example["prompt"])
    sequence = prompt + rw.TOKENIZER.encode(example["response"]) + [rw.EOS_ID]
    tokens[i, :len(sequence)] = sequence
    mask[i, :len(sequence)] = 1
    loss_mask[i, len(prompt):len(sequence)] = 1
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def ensure_reference_policy(config: Any, workdir: pathlib.Path) -> pathlib.Path:
  """Trains (or resumes, or skips when DONE) the SFT reference policy; returns its directory."""
  sft_dir = pathlib.Path(workdir) / STAGE / "sft"
  if (sft_dir / "DONE").exists():
    return sft_dir
  check_world(config)
  node = config.reasoning_sft
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  shd.check_batch_divisible(node.batch_size, mesh, "reasoning_sft.batch_size")
  model_config = model_config_from(config)
  data = reasoning_sft_arrays(config, node.num_examples, config.seed)
  graphdef, params, axes = split_module(Transformer(model_config, rngs=nnx.Rngs(config.seed)))
  optimizer = make_optimizer(node.optimizer, total_steps=node.num_steps)
  state, shardings = create_train_state(params, axes, optimizer, mesh)
  step_fn = jit_sft_step(graphdef, optimizer, shardings, mesh)
  num_examples = data["tokens"].shape[0]
  batches_per_epoch = num_examples // node.batch_size

  def get_batch(step: int) -> dict[str, np.ndarray]:
    epoch, index = divmod(step, batches_per_epoch)
    rows = epoch_batches(num_examples, node.batch_size, config.seed, epoch)[index]
    return {k: v[rows] for k, v in data.items()}

  save_model_config(sft_dir, model_config)
  loop = LoopConfig(num_steps=node.num_steps, log_every=node.log_every, checkpoint_every=node.checkpoint_every,
                    seed=config.seed)
  state = train_loop("empo/sft", sft_dir, state, step_fn, get_batch, loop, mesh)
  save_params(sft_dir / "params", state.params)
  (sft_dir / "DONE").write_text("ok\n")
  return sft_dir


def prompt_pool(config: Any, num: int, split: str) -> dict[str, np.ndarray]:
  """{"tokens", "mask"} [num, max_prompt_len] left-padded prompts of a split, and "answer" [num]."""
  problems = rw.make_problems(num, config.seed, split, tuple(config.world.num_ops))
  arrays = rw.prompt_arrays(problems, config.world.max_prompt_len)
  return dict(arrays, answer=np.array([p.answer for p in problems], np.int32))


def decode_samples(samples: dict[str, np.ndarray], limit: int = 4) -> str:
  """A markdown table of sampled responses (reasoning tokenizer)."""
  prompts = samples["samples/prompt_tokens"].reshape(-1, samples["samples/prompt_tokens"].shape[-1])
  responses = samples["samples/response_tokens"].reshape(-1, samples["samples/response_tokens"].shape[-1])
  proxy = samples["samples/proxy_reward"].reshape(-1)
  rows = ["| prompt | response | reward |", "|---|---|---|"]
  for p, r, s in list(zip(prompts, responses, proxy))[:limit]:
    prompt = rw.TOKENIZER.decode([t for t in p if t != rw.BOS_ID])
    rows.append(f"| {prompt} | {rw.TOKENIZER.decode_response(list(r))} | {float(s):.2f} |")
  return "\n".join(rows)


# ----------------------------------------------------------------------------
# Held-out accuracy.
# ----------------------------------------------------------------------------


def make_accuracy_fn(graphdef: nnx.GraphDef, sampling: SamplingConfig, num_samples: int) -> Callable:
  """Jitted ``(policy params with a seed axis, prompts, keys [S]) -> dict of [S] arrays``.

  accuracy_greedy: exact final answers with greedy decoding; accuracy_sampled:
  with ``num_samples`` samples per prompt at the sampling temperature;
  no_answer: fraction of sampled responses without a final answer;
  length: mean sampled response length.
  """
  greedy = sampling.replace(temperature=0.0)

  def one(params, tokens, mask, rng):
    out = sample(graphdef, params, tokens, mask, rng, greedy)
    acc_greedy = jnp.mean(rw.correctness_reward(out.prompt_tokens, out.prompt_mask, out.tokens,
                                                out.response_mask))
    rep_tokens = jnp.repeat(tokens, num_samples, axis=0)
    rep_mask = jnp.repeat(mask, num_samples, axis=0)
    out = sample(graphdef, params, rep_tokens, rep_mask, rng, sampling)
    correct = rw.correctness_reward(out.prompt_tokens, out.prompt_mask, out.tokens, out.response_mask)
    answer, _ = rw.final_answer(out.tokens, out.response_mask)
    return {"accuracy_greedy": acc_greedy, "accuracy_sampled": jnp.mean(correct),
            "no_answer": jnp.mean((answer < 0).astype(jnp.float32)),
            "length": jnp.mean(out.lengths.astype(jnp.float32))}

  batched = jax.vmap(one, in_axes=(0, None, None, 0))
  return jax.jit(lambda params, prompts, rngs: batched(params, prompts["tokens"], prompts["mask"], rngs))


def _per_seed_scalars(values: dict[str, Any], prefix: str) -> dict[str, float]:
  out = {}
  for key, per_seed in jax.device_get(values).items():
    per_seed = np.asarray(per_seed)
    out[f"{prefix}/{key}"] = float(per_seed.mean())
    for seed, v in enumerate(per_seed):
      out[f"{prefix}/{key}/seed{seed}"] = float(v)
  return out


def entropy_diagnostic(graphdef: nnx.GraphDef, params: Any, prompts: dict[str, np.ndarray],
                       sampling: SamplingConfig, num_samples: int, rng: jax.Array,
                       num_bins: int = 5) -> list[dict[str, Any]]:
  """Majority-vote and sample accuracy of a policy by semantic-entropy bin.

  Why EMPO bounds the entropy: the share reward pushes a prompt's answers
  towards its majority cluster, which helps only where the majority is
  right; this table (G samples per prompt, bins of equal width on
  [0, ln G]) shows how that depends on H(q).

  Returns:
    [{"lo", "hi", "prompts", "majority_accuracy", "sample_accuracy"}] per bin.
  """
  tokens = jnp.repeat(jnp.asarray(prompts["tokens"]), num_samples, axis=0)
  mask = jnp.repeat(jnp.asarray(prompts["mask"]), num_samples, axis=0)

  @jax.jit
  def run(params, rng):
    out = sample(graphdef, params, tokens, mask, rng, sampling)
    keys, valid = rw.final_answer_key(out.tokens, out.response_mask)
    _, info = empo.empo_scores(keys, valid, num_samples)
    grouped = keys.reshape(-1, num_samples)
    majority = jnp.take_along_axis(grouped, jnp.argmax(info["shares"].reshape(-1, num_samples), axis=1)[:, None],
                                   axis=1)[:, 0]
    return info["entropy"], majority, keys.reshape(-1, num_samples)

  entropy, majority, keys = jax.device_get(run(params, rng))
  truth = np.asarray(prompts["answer"])
  edges = np.linspace(0.0, math.log(num_samples), num_bins + 1)
  rows = []
  for b in range(num_bins):
    sel = (entropy >= edges[b]) & ((entropy < edges[b + 1]) if b < num_bins - 1 else (entropy <= edges[b + 1] + 1e-6))
    rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "prompts": int(sel.sum()),
                 "majority_accuracy": float(np.mean(majority[sel] == truth[sel])) if sel.any() else None,
                 "sample_accuracy": float(np.mean(keys[sel] == truth[sel, None])) if sel.any() else None})
  return rows


# ----------------------------------------------------------------------------
# The stage.
# ----------------------------------------------------------------------------


def semantic_source(node: Any, num_samples: int) -> empo.SemanticEntropySource:
  """EMPO's semantic-entropy reward source from ``config.empo.semantic``."""
  sem = node.semantic
  if sem.equivalence not in EQUIVALENCES:
    raise ValueError(f"empo.semantic.equivalence: unknown {sem.equivalence!r}; expected one of "
                     f"{sorted(EQUIVALENCES)}")
  return empo.SemanticEntropySource(
      num_samples=num_samples, key_fn=rw.final_answer_key, equivalent=EQUIVALENCES[sem.equivalence],
      reward=sem.reward, no_answer=sem.no_answer, entropy_min=float(sem.entropy_min),
      entropy_max=float(sem.entropy_max))


def reward_source_for(spec: Any, node: Any, rl_config: Any, where: str) -> Any:
  """The reward source of one ``config.empo.runs`` entry: "semantic" (EMPO) or "correctness"."""
  kind = spec.get("source", "semantic")
  if kind == "semantic":
    source = semantic_source(node, rl_config.num_samples)
    empo.check_rl_config(rl_config, source, f"{where}.rl")
    return source
  if kind == "correctness":
    # The labelled baseline: the exact answer is the reward.
    return FunctionSource(rw.correctness_reward)
  raise ValueError(f"{where}.source: unknown {kind!r}; expected 'semantic' or 'correctness'")


def run(config: Any, workdir: pathlib.Path) -> None:
  """Stage `empo`: reference policy, then each run of ``config.empo.runs``, then the report."""
  workdir = pathlib.Path(workdir)
  check_world(config)
  sft_dir = ensure_reference_policy(config, workdir)
  node = config.empo
  rl_config = rl_config_from(node.rl, "empo.rl")
  sampling = SamplingConfig(**_node_dict(node.sampling, SamplingConfig, "empo.sampling"))
  prompts = prompt_pool(config, node.num_prompts, "rl")
  train_prompts = {k: prompts[k] for k in ("tokens", "mask")}  # no labels reach the RL driver
  eval_prompts = {k: jnp.asarray(v) for k, v in prompt_pool(config, node.num_eval_prompts, "test").items()}
  _, graphdef, ref_params = load_policy(sft_dir)
  accuracy = make_accuracy_fn(graphdef, sampling, node.eval_samples)
  # Common random numbers: every evaluation of every run uses the same keys.
  eval_keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 99), config.num_seeds)
  stage_dir = workdir / STAGE
  reference_path = stage_dir / "reference_eval.json"
  if not reference_path.exists():
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.num_seeds,) + x.shape), ref_params)
    reference_path.write_text(json.dumps(_per_seed_scalars(accuracy(stacked, eval_prompts, eval_keys), "eval")))

  diagnostic_path = stage_dir / "entropy_diagnostic.json"
  if not diagnostic_path.exists():
    rows = entropy_diagnostic(graphdef, ref_params, prompt_pool(config, node.num_eval_prompts, "test"), sampling,
                              rl_config.num_samples, jax.random.fold_in(jax.random.key(config.seed), 98))
    diagnostic_path.write_text(json.dumps(rows))

  for name, spec in node.runs.items():
    run_dir = stage_dir / name
    if (run_dir / "DONE").exists():
      logging.info("empo/%s: done, skipping", name)
      continue
    source = reward_source_for(spec, node, rl_config, f"empo.runs.{name}")

    def eval_fn(state, step):
      del step
      return _per_seed_scalars(accuracy(state.params["policy"], eval_prompts, eval_keys), "eval")

    state = train_policy(f"empo/{name}", run_dir, sft_dir, config, node, source, None, train_prompts,
                         config.num_seeds, gold_fn=rw.correctness_reward,
                         text_fn=lambda samples, step: {"samples": decode_samples(samples)},
                         eval_fn=eval_fn, eval_every=node.eval_every)
    (run_dir / "final_eval.json").write_text(json.dumps(eval_fn(state, node.num_steps)))
    (run_dir / "DONE").write_text("ok\n")
  summary = summarize(config, workdir)
  report.write_report_json(stage_dir / "summary.json", summary)
  write_report(workdir)


# ----------------------------------------------------------------------------
# Summary, plots, REPORT.md.
# ----------------------------------------------------------------------------


def _seed_curves(records: list[dict[str, Any]], key: str, num_seeds: int) -> tuple[list[int], list[list[float]]]:
  """(steps, [seeds][steps]) of ``key/seed{i}`` over the records that have all seeds."""
  steps, curves = [], [[] for _ in range(num_seeds)]
  for r in records:
    if all(f"{key}/seed{s}" in r for s in range(num_seeds)):
      steps.append(int(r["step"]))
      for s in range(num_seeds):
        curves[s].append(r[f"{key}/seed{s}"])
  return steps, curves


def summarize(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """summary.json: reference accuracy, per-run curves and final accuracy mean ± std."""
  stage_dir = pathlib.Path(workdir) / STAGE
  num_seeds = config.num_seeds
  reference = json.loads((stage_dir / "reference_eval.json").read_text())
  summary: dict[str, Any] = {
      "task": {"num_ops": list(config.world.num_ops), "corpus_mix": dict(config.world),
               "rl_prompts": config.empo.num_prompts, "eval_prompts": config.empo.num_eval_prompts,
               "eval_samples": config.empo.eval_samples, "num_seeds": num_seeds,
               "num_steps": config.empo.num_steps, "num_samples": config.empo.rl.num_samples,
               "semantic": dict(config.empo.semantic)},
      "reference": {k.split("/")[1]: v for k, v in reference.items() if k.count("/") == 1},
      "runs": {},
  }
  diagnostic_path = stage_dir / "entropy_diagnostic.json"
  if diagnostic_path.exists():
    summary["reference_entropy_bins"] = json.loads(diagnostic_path.read_text())
  for name, spec in config.empo.runs.items():
    run_dir = stage_dir / name
    if not (run_dir / "metrics.jsonl").exists():
      continue
    records = read_metrics(run_dir / "metrics.jsonl")
    curves = {}
    for key, label in (("gold_reward", "train_accuracy"), ("eval/accuracy_sampled", "eval_accuracy_sampled"),
                       ("eval/accuracy_greedy", "eval_accuracy_greedy"), ("proxy_reward", "proxy_reward"),
                       ("empo/semantic_entropy", "semantic_entropy"), ("empo/kept_fraction", "kept_fraction"),
                       ("kl", "kl")):
      steps, values = _seed_curves(records, key, num_seeds)
      if steps:
        if key.startswith("eval/"):
          # Step 0 is the reference policy, evaluated with the same keys.
          steps = [0] + steps
          values = [[reference[f"{key}/seed{s}"]] + v for s, v in enumerate(values)]
        curves[label] = {"steps": steps, "values": values}
    entry: dict[str, Any] = {"source": spec.get("source", "semantic"),
                             "label": RUN_LABELS.get(spec.get("source", "semantic"), name), "curves": curves}
    final_path = run_dir / "final_eval.json"
    if final_path.exists():
      final = json.loads(final_path.read_text())
      entry["final"] = {key: report.mean_std([final[f"eval/{key}/seed{s}"] for s in range(num_seeds)])
                        for key in ("accuracy_greedy", "accuracy_sampled", "no_answer", "length")}
    summary["runs"][name] = entry
  return summary


def plot_curves(path: pathlib.Path, summary: dict[str, Any]) -> pathlib.Path | None:
  """Held-out sampled / greedy accuracy and training-sample accuracy vs step, bands over seeds."""
  panels = (("eval_accuracy_sampled", "held-out accuracy (sampled)"),
            ("eval_accuracy_greedy", "held-out accuracy (greedy)"),
            ("train_accuracy", "accuracy of RL samples"))
  if not summary["runs"]:
    return None
  fig, axes = report._figure(ncols=len(panels), width=4.5)  # pylint: disable=protected-access
  for ax, (key, title) in zip(axes, panels):
    for name, entry in summary["runs"].items():
      curve = entry["curves"].get(key)
      if curve:
        report._band(ax, np.asarray(curve["steps"]), np.asarray(curve["values"], np.float64),  # pylint: disable=protected-access
                     entry["label"])
    ax.set(xlabel="RL step", ylabel="accuracy", title=title)
    ax.legend(fontsize="small")
  fig.suptitle("EMPO (no labels) vs the correctness reward; bands: ± 1 std over seeds")
  return report._save(fig, path)  # pylint: disable=protected-access


def _empo_section(summary: dict[str, Any], stage_dir: pathlib.Path) -> list[str]:
  task = summary["task"]
  lines = ["## EMPO: semantic-entropy rewards without labels", "",
           f"Reasoning task: arithmetic in words, {task['num_ops'][0]}-{task['num_ops'][1]} operations. "
           f"{task['num_seeds']} seeds per reward (vmapped), {task['num_steps']} GRPO steps, "
           f"G = {task['num_samples']} samples per prompt, {task['rl_prompts']} unlabelled RL prompts; "
           f"accuracy on {task['eval_prompts']} held-out prompts (greedy, and {task['eval_samples']} "
           f"samples per prompt at temperature 1). EMPO clusters by exact final answer "
           f"(equivalence `{task['semantic'].get('equivalence')}`, no-answer `{task['semantic'].get('no_answer')}`, "
           f"reward `{task['semantic'].get('reward')}`, entropy bounds "
           f"[{task['semantic'].get('entropy_min'):.2f}, {task['semantic'].get('entropy_max'):.2f}] nats).", ""]
  ref = summary["reference"]
  rows = [["reference (SFT)", f"{ref.get('accuracy_greedy', float('nan')):.3f}",
           f"{ref.get('accuracy_sampled', float('nan')):.3f}", f"{ref.get('no_answer', float('nan')):.3f}"]]
  for name, entry in summary["runs"].items():
    final = entry.get("final")
    if not final:
      continue
    rows.append([entry["label"], report.format_mean_std(final["accuracy_greedy"], ".3f"),
                 report.format_mean_std(final["accuracy_sampled"], ".3f"),
                 report.format_mean_std(final["no_answer"], ".3f")])
  lines.append(report.markdown_table(["policy", "held-out accuracy, greedy", "held-out accuracy, sampled",
                                      "no-answer rate"], rows))
  if (stage_dir / "accuracy_curves.png").exists():
    lines += ["![accuracy curves](accuracy_curves.png)", ""]
  bins = summary.get("reference_entropy_bins")
  if bins:
    lines += [f"Why the entropy bound: the reference policy's majority-vote accuracy by the semantic entropy of "
              f"the prompt ({task['num_samples']} samples per held-out prompt). The share reward moves each "
              f"prompt towards its majority answer, which helps only where the majority tends to be right.", ""]
    lines.append(report.markdown_table(
        ["H(q) (nats)", "prompts", "majority-vote accuracy", "sample accuracy"],
        [[f"[{b['lo']:.2f}, {b['hi']:.2f}]", b["prompts"], b["majority_accuracy"], b["sample_accuracy"]]
         for b in bins], float_fmt=".3f"))
  empo_run = next((e for e in summary["runs"].values() if e["source"] == "semantic"), None)
  if empo_run and "semantic_entropy" in empo_run["curves"]:
    ent = np.asarray(empo_run["curves"]["semantic_entropy"]["values"], np.float64)
    kept = np.asarray(empo_run["curves"]["kept_fraction"]["values"], np.float64)
    lines += [f"EMPO diagnostics (mean over seeds): semantic entropy of the RL prompts "
              f"{ent[:, 0].mean():.3f} -> {ent[:, -1].mean():.3f} nats; fraction of prompts kept by the "
              f"entropy bounds {kept[:, 0].mean():.2f} -> {kept[:, -1].mean():.2f}.", ""]
  return lines


def write_report(workdir: pathlib.Path) -> pathlib.Path:
  """Renders WORKDIR/empo/REPORT.md (and the curves PNG) from the summaries that exist."""
  stage_dir = pathlib.Path(workdir) / STAGE
  lines = ["# EMPO and correctness probes on the reasoning task", "",
           "Reproduce: `python -m advrm_jax.main --config configs/empo_reasoning.py --workdir WORKDIR` "
           "(stages `empo`, `probes`; `:small` for a smoke run).", ""]
  summary_path = stage_dir / "summary.json"
  if summary_path.exists():
    summary = report.read_report_json(summary_path)
    plot_curves(stage_dir / "accuracy_curves.png", summary)
    lines += _empo_section(summary, stage_dir)
  probes_path = stage_dir / "probes" / "summary.json"
  if probes_path.exists():
    from advrm_jax.pipelines.probes import report_section  # pylint: disable=import-outside-toplevel
    lines += report_section(report.read_report_json(probes_path), "probes")
  path = stage_dir / "REPORT.md"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")
  return path
