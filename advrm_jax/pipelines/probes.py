"""Stage `probes`: correctness probes, early exit, and uncertainty signals for Adv-RM's filter.

On the reasoning task, with the reference policy of stage `empo` (trained
here if absent) or, by ``config.probes.policy``, seed 0 of an `empo` run:

1. sample ``samples_per_prompt`` responses per prompt ("rl" split for probe
   training, "test" split held out), run the backbone over prompt+response
   and take the last-layer hidden state at every intermediate answer
   ("now X": the X token), labelled correct/wrong exactly;
2. train the probe (linear or one hidden layer) with class-weighted BCE and
   report ROC-AUC, ECE and Brier on the held-out intermediates (all, and the
   candidate final answers only) plus a reliability diagram;
3. early-exit decoding: stop at the first candidate answer whose probe
   confidence passes a threshold; accuracy vs tokens saved per threshold;
4. tie-in with Adv-RM's filter (``advrm_jax/adversarial/filtering.py``): the
   probe plays the reward model ("this answer is correct"), a bootstrap
   ensemble of probes gives the ensemble disagreement U (std over members,
   ``filtering.uncertainty(kind="std")``); semantic entropy
   (``rl.empo.semantic_uncertainty``) and probe confidence
   (``evaluation.probes.probe_uncertainty``) are compared with U as the
   uncertainty of the filter ``R1 > T and z(U) > z_min``, by how well each
   finds the responses the reward wrongly likes (R1 > 0, answer wrong).

Writes WORKDIR/empo/probes/{summary.json, reliability.png, early_exit.png}
and re-renders WORKDIR/empo/REPORT.md.
"""

from __future__ import annotations

from typing import Any

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax.adversarial import filtering
from advrm_jax.checkpoints.orbax_io import load_params
from advrm_jax.data import reasoning_world as rw
from advrm_jax.evaluation import probes as pr
from advrm_jax.evaluation import report
from advrm_jax.pipelines import reasoning
from advrm_jax.pipelines import workdir as wd
from advrm_jax.rl import empo
from advrm_jax.rl.sampler import SamplingConfig, concat_prompt_response, sample

STAGE = "probes"


def _policy_params(config: Any, workdir: epath.Path) -> tuple[nnx.GraphDef, Any, str]:
  """(graphdef, params, description) of the probed policy."""
  sft_dir = reasoning.ensure_reference_policy(config, workdir)
  _, graphdef, ref_params = wd.load_policy(sft_dir)
  which = config.probes.policy
  if which == "sft":
    return graphdef, ref_params, "reference (SFT) policy"
  if not which.startswith("empo/"):
    raise ValueError(f"probes.policy: unknown {which!r}; expected 'sft' or 'empo/<run name>'")
  run_dir = epath.Path(workdir) / which
  if not wd.is_done(run_dir):
    raise FileNotFoundError(f"probes.policy={which!r}: {run_dir}/DONE not found; run stage empo first")
  target = jax.tree.map(lambda x: jnp.zeros((config.num_seeds,) + x.shape, x.dtype), ref_params)
  stacked = load_params(run_dir / "params", target)
  return graphdef, jax.tree.map(lambda x: x[0], stacked), f"{which} policy, seed 0"


def collect(
  graphdef: nnx.GraphDef,
  params: Any,
  prompts: dict[str, np.ndarray],
  num_samples: int,
  sampling: SamplingConfig,
  rng: jax.Array,
  chunk: int = 512,
) -> dict[str, np.ndarray]:
  """Samples responses and reads hidden states and labels (host arrays).

  Returns (B = prompts x num_samples rows, prompt-major; N response columns):
    "hidden" [B, N, D] last-layer hidden state at each response column;
    "is_answer", "candidate", "correct" [B, N] bool; "value" [B, N];
    "final" [B] final answer (-1 none); "truth" [B]; "length" [B].
  """
  prompt_len = prompts["tokens"].shape[1]

  @jax.jit
  def run(tokens, mask, key):
    out = sample(graphdef, params, tokens, mask, key, sampling)
    full, full_mask = concat_prompt_response(
      out.prompt_tokens, out.prompt_mask, out.tokens, out.response_mask, pad_id=sampling.pad_id, left_pad=False
    )
    hidden = nnx.merge(graphdef, params)(full, full_mask, compute_logits=False).hidden[:, prompt_len:]
    labels = rw.intermediate_labels(out.prompt_tokens, out.prompt_mask, out.tokens, out.response_mask)
    final, _ = rw.final_answer(out.tokens, out.response_mask)
    return {
      "hidden": hidden,
      "is_answer": labels["is_answer"],
      "candidate": labels["candidate"],
      "correct": labels["correct"],
      "value": labels["value"],
      "final": final,
      "truth": rw.true_answer(out.prompt_tokens, out.prompt_mask),
      "length": out.lengths,
    }

  tokens = np.repeat(prompts["tokens"], num_samples, axis=0)
  mask = np.repeat(prompts["mask"], num_samples, axis=0)
  parts = []
  for i, start in enumerate(range(0, tokens.shape[0], chunk)):
    # Whole prompt groups per chunk (chunk is a multiple of num_samples).
    parts.append(
      jax.device_get(run(tokens[start : start + chunk], mask[start : start + chunk], jax.random.fold_in(rng, i)))
    )
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _positions(data: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
  rows, cols = np.nonzero(data["is_answer"])
  return rows, cols


def early_exit_table(
  confidence: np.ndarray, data: dict[str, np.ndarray], thresholds: tuple[float, ...]
) -> list[dict[str, float]]:
  """Accuracy and tokens per threshold (plus "never": the full responses)."""
  full_tokens = data["length"].astype(np.float64)
  rows = []
  for threshold in list(thresholds) + [float("inf")]:
    out = jax.device_get(
      pr.early_exit(confidence, data["candidate"], data["value"], data["final"], data["length"], threshold)
    )
    tokens = out["tokens"].astype(np.float64)
    rows.append(
      {
        "threshold": None if threshold == float("inf") else float(threshold),
        "accuracy": float(np.mean(out["answer"] == data["truth"])),
        "mean_tokens": float(tokens.mean()),
        "tokens_saved": float(1.0 - tokens.sum() / full_tokens.sum()),
        "exit_rate": float(np.mean(out["exited"])),
      }
    )
  return rows


def _last_candidate(values: np.ndarray, candidate: np.ndarray, fill: float) -> np.ndarray:
  """[B] the value at each row's last candidate column (`fill` when it has none)."""
  cols = np.arange(candidate.shape[1])
  last = np.max(np.where(candidate, cols[None], -1), axis=1)
  picked = values[np.arange(values.shape[0]), np.maximum(last, 0)]
  return np.where(last >= 0, picked, fill)


def filter_comparison(
  member_logits: np.ndarray, data: dict[str, np.ndarray], num_samples: int, z_mins: tuple[float, ...]
) -> dict[str, Any]:
  """Which uncertainty finds responses the (probe) reward wrongly likes?

  Args:
    member_logits: [K, B, N] logits of the K ensemble probes at every column.
    data: `collect` output for the B responses (G = num_samples per prompt).
    num_samples: G.
    z_mins: z cut-offs of `filtering.filter_mask`.

  Returns:
    {"base_rate", "num_liked", "signals": {name: {"auc_wrong", "filter":
    {z_min: {"kept", "precision"}}}}}: R1 is member 0's logit at the
    response's final candidate answer, T = 0 (the probe says "correct");
    "precision" is the fraction of kept responses whose final answer is
    wrong (the target of an adversarial example), "auc_wrong" the ROC-AUC of
    the signal for "wrong" among the liked responses.
  """
  wrong = data["final"] != data["truth"]
  scores = np.stack([_last_candidate(m, data["candidate"], -10.0) for m in member_logits])  # [K, B]
  r1 = scores[0]
  liked = r1 > 0.0
  valid = data["final"] >= 0
  confidence = 1.0 / (1.0 + np.exp(-r1))
  signals = {
    "ensemble disagreement (std)": filtering.uncertainty(scores, kind="std"),
    "ensemble R1 - R2": filtering.uncertainty(scores, kind="r1_minus_r2"),
    "semantic surprisal -log p(c|q)": empo.semantic_uncertainty(data["final"], valid, num_samples, "response"),
    "semantic entropy H(q)": empo.semantic_uncertainty(data["final"], valid, num_samples, "prompt"),
    "probe 1 - p(correct)": pr.probe_uncertainty(confidence),
  }
  out: dict[str, Any] = {
    "base_rate": float(wrong[liked].mean()) if liked.any() else None,
    "num_liked": int(liked.sum()),
    "num_responses": int(wrong.size),
    "signals": {},
  }
  for name, u in signals.items():
    u = np.asarray(u, np.float64)
    z = filtering.standardize(u)
    entry = {"auc_wrong": pr.roc_auc(u[liked], wrong[liked]) if liked.any() else None, "filter": {}}
    for z_min in z_mins:
      keep = np.asarray(filtering.filter_mask(r1, 0.0, z, z_min))
      entry["filter"][str(z_min)] = {
        "kept": int(keep.sum()),
        "precision": float(wrong[keep].mean()) if keep.any() else None,
      }
    out["signals"][name] = entry
  return out


def plot_reliability(path: epath.Path, probs: np.ndarray, labels: np.ndarray, num_bins: int, title: str) -> epath.Path:
  """Reliability diagram of probe confidences (fraction correct per bin) as a PNG."""
  bins = pr.reliability_bins(probs, labels, num_bins)
  fig, (ax,) = report.figure()
  centres = (np.arange(num_bins) + 0.5) / num_bins
  filled = bins["count"] > 0
  ax.bar(
    centres[filled], bins["accuracy"][filled], width=1.0 / num_bins, alpha=0.6, edgecolor="k", label="fraction correct"
  )
  ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
  ax.set(xlabel="probe p(correct)", ylabel="fraction correct", xlim=(0, 1), ylim=(0, 1), title=title)
  ax.legend(fontsize="small")
  return report.save_figure(fig, path)


def plot_early_exit(path: epath.Path, table: list[dict[str, float]]) -> epath.Path:
  """Final-answer accuracy vs tokens saved, one point per early-exit threshold, as a PNG."""
  fig, (ax,) = report.figure()
  saved = [100 * r["tokens_saved"] for r in table]
  acc = [100 * r["accuracy"] for r in table]
  ax.plot(saved, acc, marker="o")
  for r, x, y in zip(table, saved, acc):
    ax.annotate(
      "no exit" if r["threshold"] is None else f"{r['threshold']:g}",
      (x, y),
      fontsize="small",
      textcoords="offset points",
      xytext=(4, 4),
    )
  ax.set(
    xlabel="tokens saved (%)", ylabel="final-answer accuracy (%)", title="probe-driven early exit (labels: threshold)"
  )
  return report.save_figure(fig, path)


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `probes` (module docstring)."""
  workdir = epath.Path(workdir)
  out_dir = workdir / reasoning.EMPO_DIR / STAGE
  if wd.skip_if_done(out_dir, "probes"):
    reasoning.write_report(workdir)
    return
  node = config.probes
  reasoning.check_world(config)
  graphdef, params, policy = _policy_params(config, workdir)
  g = node.samples_per_prompt
  sampling = SamplingConfig(
    max_new_tokens=config.world.max_response_len, temperature=node.temperature, eos_id=rw.EOS_ID, pad_id=rw.PAD_ID
  )
  key = jax.random.fold_in(jax.random.key(config.seed), 1234)
  chunk = max(g, (512 // g) * g)
  train, test = (
    collect(graphdef, params, reasoning.prompt_pool(config, num, pool), g, sampling, jax.random.fold_in(key, i), chunk)
    for i, (num, pool) in enumerate(((node.num_train_prompts, "rl"), (node.num_test_prompts, "test")))
  )
  tr_rows, tr_cols = _positions(train)
  te_rows, te_cols = _positions(test)
  x_train = train["hidden"][tr_rows, tr_cols]
  y_train = train["correct"][tr_rows, tr_cols].astype(np.float32)
  logging.info(
    "probes: %d train / %d test intermediate answers (%.2f / %.2f correct)",
    len(y_train),
    len(te_rows),
    y_train.mean(),
    test["correct"][te_rows, te_cols].mean(),
  )
  probe_kwargs = dict(
    hidden=node.hidden, num_steps=node.num_steps, learning_rate=node.learning_rate, weight_decay=node.weight_decay
  )
  params_probe, losses = pr.train_probe(jax.random.fold_in(key, 2), x_train, y_train, **probe_kwargs)

  def logits_at_all_columns(p: dict[str, Any], data: dict[str, np.ndarray]) -> np.ndarray:
    b, n, d = data["hidden"].shape
    return np.asarray(pr.probe_logits(p, data["hidden"].reshape(b * n, d))).reshape(b, n)

  test_logits = logits_at_all_columns(params_probe, test)
  test_probs = 1.0 / (1.0 + np.exp(-test_logits))
  y_test = test["correct"][te_rows, te_cols]
  cand = test["candidate"][te_rows, te_cols]
  metrics = {
    "all_intermediates": pr.classification_metrics(test_probs[te_rows, te_cols], y_test, node.ece_bins),
    "candidate_answers": pr.classification_metrics(test_probs[te_rows, te_cols][cand], y_test[cand], node.ece_bins),
    "train_all_intermediates": pr.classification_metrics(
      1.0 / (1.0 + np.exp(-logits_at_all_columns(params_probe, train)[tr_rows, tr_cols])), y_train, node.ece_bins
    ),
  }
  exit_table = early_exit_table(test_probs, test, tuple(node.thresholds))

  # Tie-in: a bootstrap ensemble of probes (member 0 is the probe above).
  rng = np.random.default_rng(config.seed)
  members = [test_logits]
  for k in range(1, node.ensemble_size):
    counts = np.bincount(rng.integers(0, len(y_train), len(y_train)), minlength=len(y_train))
    p_k, _ = pr.train_probe(jax.random.fold_in(key, 10 + k), x_train, y_train, sample_weights=counts, **probe_kwargs)
    members.append(logits_at_all_columns(p_k, test))
  comparison = filter_comparison(np.stack(members), test, g, tuple(node.z_mins))

  summary = {
    "policy": policy,
    "probe": {
      "kind": "linear" if not node.hidden else f"one hidden layer ({node.hidden})",
      "num_steps": node.num_steps,
      "final_train_loss": float(losses[-1]),
    },
    "data": {
      "train_prompts": node.num_train_prompts,
      "test_prompts": node.num_test_prompts,
      "samples_per_prompt": g,
      "temperature": node.temperature,
      "train_intermediates": int(len(y_train)),
      "test_intermediates": int(len(y_test)),
      "test_response_accuracy": float(np.mean(test["final"] == test["truth"])),
    },
    "metrics": metrics,
    "early_exit": exit_table,
    "filter_tie_in": comparison,
  }
  report.write_report_json(out_dir / "summary.json", summary)
  plot_reliability(
    out_dir / "reliability.png",
    test_probs[te_rows, te_cols],
    y_test,
    node.ece_bins,
    f"held-out intermediate answers (ECE {metrics['all_intermediates']['ece']:.3f})",
  )
  plot_early_exit(out_dir / "early_exit.png", exit_table)
  reasoning.write_report(workdir)
  wd.mark_done(out_dir)
