"""What the `empo` and `probes` stages share on the reasoning world.

The SFT reference policy (trained once into WORKDIR/empo/sft/), the prompt
pools of a split, and WORKDIR/empo/REPORT.md, which holds both stages'
sections.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.data import reasoning_world as rw
from advrm_jax.evaluation import report
from advrm_jax.metrics import read_metrics
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.sft_driver import train_sft

# WORKDIR/empo/: the `empo` stage's directory; the `probes` stage writes into empo/probes/.
EMPO_DIR = "empo"


RUN_LABELS = {"semantic": "EMPO (no labels)", "correctness": "correctness reward (labels)"}


def corpus_mix(config: Any) -> rw.CorpusMix:
  """The reasoning SFT corpus's mix of slips and re-checks from ``config.world``."""
  world = config.world
  return rw.CorpusMix(
    slip_probs=tuple(world.slip_probs),
    check_after_slip=world.check_after_slip,
    check_after_correct=world.check_after_correct,
    max_attempts=world.max_attempts,
  )


def check_world(config: Any) -> None:
  """Config consistency checks, each naming the key to change."""
  world = config.world
  if config.model.vocab_size != rw.VOCAB_SIZE:
    raise ValueError(
      f"model.vocab_size={config.model.vocab_size} must equal the reasoning task's vocabulary size {rw.VOCAB_SIZE}"
    )
  if world.max_prompt_len < rw.MAX_PROMPT_TOKENS:
    raise ValueError(f"world.max_prompt_len={world.max_prompt_len} < {rw.MAX_PROMPT_TOKENS}, the longest prompt")
  longest = rw.max_response_tokens(corpus_mix(config))
  if world.max_response_len < longest:
    raise ValueError(
      f"world.max_response_len={world.max_response_len} < {longest}, the longest corpus "
      f"response with world.max_attempts={world.max_attempts}"
    )
  if world.max_prompt_len + world.max_response_len > config.model.max_seq_len:
    raise ValueError(
      f"world.max_prompt_len + world.max_response_len = "
      f"{world.max_prompt_len + world.max_response_len} exceeds model.max_seq_len"
    )


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
    tokens[i, : len(sequence)] = sequence
    mask[i, : len(sequence)] = 1
    loss_mask[i, len(prompt) : len(sequence)] = 1
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def ensure_reference_policy(config: Any, workdir: epath.Path) -> epath.Path:
  """Trains (or resumes, or skips when DONE) the SFT reference policy; returns its directory."""
  sft_dir = epath.Path(workdir) / EMPO_DIR / "sft"
  if wd.is_done(sft_dir):
    return sft_dir
  check_world(config)
  node = config.reasoning_sft
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  shd.check_batch_divisible(node.batch_size, mesh, "reasoning_sft.batch_size")
  model_config = wd.model_config_from(config)
  data = reasoning_sft_arrays(config, node.num_examples, config.seed)
  train_sft("empo/sft", sft_dir, node, model_config, data, config.seed, mesh, where="config.reasoning_sft")
  return sft_dir


def prompt_pool(config: Any, num: int, split: str) -> dict[str, np.ndarray]:
  """{"tokens", "mask"} [num, max_prompt_len] left-padded prompts of a split, and "answer" [num]."""
  problems = rw.make_problems(num, config.seed, split, tuple(config.world.num_ops))
  arrays = rw.prompt_arrays(problems, config.world.max_prompt_len)
  return dict(arrays, answer=np.array([p.answer for p in problems], np.int32))


def _seed_curves(records: list[dict[str, Any]], key: str, num_seeds: int) -> tuple[list[int], list[list[float]]]:
  """(steps, [seeds][steps]) of ``key/seed{i}`` over the records that have all seeds."""
  steps, curves = [], [[] for _ in range(num_seeds)]
  for r in records:
    if all(f"{key}/seed{s}" in r for s in range(num_seeds)):
      steps.append(int(r["step"]))
      for s in range(num_seeds):
        curves[s].append(r[f"{key}/seed{s}"])
  return steps, curves


def summarize(config: Any, workdir: epath.Path) -> dict[str, Any]:
  """summary.json: reference accuracy, per-run curves and final accuracy mean ± std."""
  stage_dir = epath.Path(workdir) / EMPO_DIR
  num_seeds = config.num_seeds
  reference = json.loads((stage_dir / "reference_eval.json").read_text())
  summary: dict[str, Any] = {
    "task": {
      "num_ops": list(config.world.num_ops),
      "corpus_mix": dict(config.world),
      "rl_prompts": config.empo.num_prompts,
      "eval_prompts": config.empo.num_eval_prompts,
      "eval_samples": config.empo.eval_samples,
      "num_seeds": num_seeds,
      "num_steps": config.empo.num_steps,
      "num_samples": config.empo.rl.num_samples,
      "semantic": dict(config.empo.semantic),
    },
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
    for key, label in (
      ("gold_reward", "train_accuracy"),
      ("eval/accuracy_sampled", "eval_accuracy_sampled"),
      ("eval/accuracy_greedy", "eval_accuracy_greedy"),
      ("proxy_reward", "proxy_reward"),
      ("empo/semantic_entropy", "semantic_entropy"),
      ("empo/kept_fraction", "kept_fraction"),
      ("kl", "kl"),
    ):
      steps, values = _seed_curves(records, key, num_seeds)
      if steps:
        if key.startswith("eval/"):
          # Step 0 is the reference policy, evaluated with the same keys.
          steps = [0] + steps
          values = [[reference[f"{key}/seed{s}"]] + v for s, v in enumerate(values)]
        curves[label] = {"steps": steps, "values": values}
    entry: dict[str, Any] = {
      "source": spec.get("source", "semantic"),
      "label": RUN_LABELS.get(spec.get("source", "semantic"), name),
      "curves": curves,
    }
    final_path = run_dir / "final_eval.json"
    if final_path.exists():
      final = json.loads(final_path.read_text())
      entry["final"] = {
        key: report.mean_std([final[f"eval/{key}/seed{s}"] for s in range(num_seeds)])
        for key in ("accuracy_greedy", "accuracy_sampled", "no_answer", "length")
      }
    summary["runs"][name] = entry
  return summary


def plot_curves(path: epath.Path, summary: dict[str, Any]) -> epath.Path | None:
  """Held-out sampled / greedy accuracy and training-sample accuracy vs step, bands over seeds."""
  panels = (
    ("eval_accuracy_sampled", "held-out accuracy (sampled)"),
    ("eval_accuracy_greedy", "held-out accuracy (greedy)"),
    ("train_accuracy", "accuracy of RL samples"),
  )
  if not summary["runs"]:
    return None
  fig, axes = report.figure(ncols=len(panels), width=4.5)
  for ax, (key, title) in zip(axes, panels):
    for name, entry in summary["runs"].items():
      curve = entry["curves"].get(key)
      if curve:
        report.band(ax, np.asarray(curve["steps"]), np.asarray(curve["values"], np.float64), entry["label"])
    ax.set(xlabel="RL step", ylabel="accuracy", title=title)
    ax.legend(fontsize="small")
  fig.suptitle("EMPO (no labels) vs the correctness reward; bands: ± 1 std over seeds")
  return report.save_figure(fig, path)


def _empo_section(summary: dict[str, Any], stage_dir: epath.Path) -> list[str]:
  task = summary["task"]
  lines = [
    "## EMPO: semantic-entropy rewards without labels",
    "",
    f"Reasoning task: arithmetic in words, {task['num_ops'][0]}-{task['num_ops'][1]} operations. "
    f"{task['num_seeds']} seeds per reward (vmapped), {task['num_steps']} GRPO steps, "
    f"G = {task['num_samples']} samples per prompt, {task['rl_prompts']} unlabelled RL prompts; "
    f"accuracy on {task['eval_prompts']} held-out prompts (greedy, and {task['eval_samples']} "
    f"samples per prompt at temperature 1). EMPO clusters by exact final answer "
    f"(equivalence `{task['semantic'].get('equivalence')}`, no-answer `{task['semantic'].get('no_answer')}`, "
    f"reward `{task['semantic'].get('reward')}`, entropy bounds "
    f"[{task['semantic'].get('entropy_min'):.2f}, {task['semantic'].get('entropy_max'):.2f}] nats).",
    "",
  ]
  ref = summary["reference"]
  rows = [
    [
      "reference (SFT)",
      f"{ref.get('accuracy_greedy', float('nan')):.3f}",
      f"{ref.get('accuracy_sampled', float('nan')):.3f}",
      f"{ref.get('no_answer', float('nan')):.3f}",
    ]
  ]
  for name, entry in summary["runs"].items():
    final = entry.get("final")
    if not final:
      continue
    rows.append(
      [
        entry["label"],
        report.format_mean_std(final["accuracy_greedy"], ".3f"),
        report.format_mean_std(final["accuracy_sampled"], ".3f"),
        report.format_mean_std(final["no_answer"], ".3f"),
      ]
    )
  lines.append(
    report.markdown_table(["policy", "held-out accuracy, greedy", "held-out accuracy, sampled", "no-answer rate"], rows)
  )
  if (stage_dir / "accuracy_curves.png").exists():
    lines += ["![accuracy curves](accuracy_curves.png)", ""]
  bins = summary.get("reference_entropy_bins")
  if bins:
    lines += [
      f"Why the entropy bound: the reference policy's majority-vote accuracy by the semantic entropy of "
      f"the prompt ({task['num_samples']} samples per held-out prompt). The share reward moves each "
      f"prompt towards its majority answer, which helps only where the majority tends to be right.",
      "",
    ]
    lines.append(
      report.markdown_table(
        ["H(q) (nats)", "prompts", "majority-vote accuracy", "sample accuracy"],
        [[f"[{b['lo']:.2f}, {b['hi']:.2f}]", b["prompts"], b["majority_accuracy"], b["sample_accuracy"]] for b in bins],
        float_fmt=".3f",
      )
    )
  empo_run = next((e for e in summary["runs"].values() if e["source"] == "semantic"), None)
  if empo_run and "semantic_entropy" in empo_run["curves"]:
    ent = np.asarray(empo_run["curves"]["semantic_entropy"]["values"], np.float64)
    kept = np.asarray(empo_run["curves"]["kept_fraction"]["values"], np.float64)
    lines += [
      f"EMPO diagnostics (mean over seeds): semantic entropy of the RL prompts "
      f"{ent[:, 0].mean():.3f} -> {ent[:, -1].mean():.3f} nats; fraction of prompts kept by the "
      f"entropy bounds {kept[:, 0].mean():.2f} -> {kept[:, -1].mean():.2f}.",
      "",
    ]
  return lines


def write_report(workdir: epath.Path) -> epath.Path:
  """Renders WORKDIR/empo/REPORT.md (and the curves PNG) from the summaries that exist."""
  stage_dir = epath.Path(workdir) / EMPO_DIR
  lines = [
    "# EMPO and correctness probes on the reasoning task",
    "",
    "Reproduce: `python -m advrm_jax.main --config configs/empo_reasoning.py --workdir WORKDIR` "
    "(stages `empo`, `probes`; `:small` for a smoke run).",
    "",
  ]
  summary_path = stage_dir / "summary.json"
  if summary_path.exists():
    summary = report.read_report_json(summary_path)
    plot_curves(stage_dir / "accuracy_curves.png", summary)
    lines += _empo_section(summary, stage_dir)
  probes_path = stage_dir / "probes" / "summary.json"
  if probes_path.exists():
    lines += report_section(report.read_report_json(probes_path), "probes")
  path = stage_dir / "REPORT.md"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")
  return path


def report_section(summary: dict[str, Any], rel_dir: str) -> list[str]:
  """REPORT.md lines for the probes summary (images relative to WORKDIR/empo/)."""
  data, metrics = summary["data"], summary["metrics"]
  lines = [
    "## Correctness probes on hidden states",
    "",
    f"A {summary['probe']['kind']} probe on the last-layer hidden state of the {summary['policy']} at "
    f'each intermediate answer ("now X", the X token), class-weighted BCE. '
    f"{data['train_prompts']} probe-training prompts and {data['test_prompts']} held-out prompts, "
    f"{data['samples_per_prompt']} samples each at temperature {data['temperature']:g}: "
    f"{data['train_intermediates']} / {data['test_intermediates']} intermediate answers. "
    f"Held-out response accuracy: {data['test_response_accuracy']:.3f}.",
    "",
  ]
  rows = []
  for name, label in (
    ("all_intermediates", "held-out, all intermediate answers"),
    ("candidate_answers", "held-out, candidate final answers"),
    ("train_all_intermediates", "probe-training data"),
  ):
    m = metrics[name]
    rows.append([label, m["n"], m["positive_rate"], m["roc_auc"], m["ece"], m["brier"]])
  lines.append(
    report.markdown_table(["data", "n", "fraction correct", "ROC-AUC", "ECE", "Brier"], rows, float_fmt=".3f")
  )
  lines += [
    f"![reliability]({rel_dir}/reliability.png)",
    "",
    "Early exit: stop at the first candidate final answer (an attempt's last step) whose probe "
    'confidence reaches the threshold; "never" is the full response.',
    "",
  ]
  rows = [
    [
      "never" if r["threshold"] is None else f"{r['threshold']:g}",
      r["accuracy"],
      r["mean_tokens"],
      100 * r["tokens_saved"],
      r["exit_rate"],
    ]
    for r in summary["early_exit"]
  ]
  lines.append(
    report.markdown_table(
      ["threshold", "accuracy", "mean tokens", "tokens saved %", "exit rate"], rows, float_fmt=".3f"
    )
  )
  lines += [f"![early exit]({rel_dir}/early_exit.png)", ""]
  tie = summary["filter_tie_in"]
  z_mins = list(next(iter(tie["signals"].values()))["filter"]) if tie["signals"] else []
  lines += [
    "### Uncertainty signals for Adv-RM's filter",
    "",
    "The probe plays the reward model (R1 = its logit at the final answer, T = 0) and a bootstrap "
    "ensemble of probes gives the ensemble disagreement; each signal is standardised over the batch "
    "and used in `filtering.filter_mask` (R1 > T and z > z_min). A good signal keeps responses the "
    f"reward wrongly likes: {tie['num_liked']} of {tie['num_responses']} held-out responses are liked, "
    f"{(tie['base_rate'] or 0.0):.3f} of them wrong (the precision of keeping all).",
    "",
  ]
  rows = []
  for name, entry in tie["signals"].items():
    row = [name, entry["auc_wrong"]]
    for z in z_mins:
      f = entry["filter"][z]
      row += [f["kept"], f["precision"]]
    rows.append(row)
  headers = ["signal", "AUC for wrong (liked)"]
  for z in z_mins:
    headers += [f"kept z>{z}", f"precision z>{z}"]
  lines.append(report.markdown_table(headers, rows, float_fmt=".3f"))
  lines += [
    '"probe 1 - p(correct)" is a monotone function of R1 itself: among liked responses (p > 0.5) it is '
    "bounded and rarely clears z_min, so it adds nothing to the R1 > T half of the rule. The semantic "
    "signals come from the policy's own samples and need no reward model. The comparison runs on the "
    "reasoning task because the synthetic world's free-text responses have no exact answers to "
    "cluster.",
    "",
  ]
  return lines
