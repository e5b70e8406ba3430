"""Stage `empo`: label-free RL with semantic-entropy rewards vs the supervised reward.

On the reasoning task (``advrm_jax/data/reasoning_world.py``):

1. the reference policy is trained by SFT on the noisy corpus
   (WORKDIR/empo/sft; shared with stage `probes`, which trains it if absent);
2. for each entry of ``config.empo.runs`` (by default ``empo``: EMPO's
   semantic-cluster reward, which never sees a label, and ``correctness``:
   the supervised 1[final answer is exact]), ``config.num_seeds`` policies are
   trained at once with the one RL driver ``rl_driver.train_policy`` (vmapped
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
from typing import Any, Callable

from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from advrm_jax.config_node import from_node
from advrm_jax.data import reasoning_world as rw
from advrm_jax.data import tables
from advrm_jax.evaluation import report
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.reasoning import (
  EMPO_DIR,
  check_world,
  ensure_reference_policy,
  prompt_pool,
  summarize,
  write_report,
)
from advrm_jax.pipelines.rl_driver import train_policy
from advrm_jax.rl import empo
from advrm_jax.rl.engine import RLConfig
from advrm_jax.rl.rewards import FunctionSource
from advrm_jax.rl.sampler import SamplingConfig, sample

STAGE = EMPO_DIR
EQUIVALENCES = {"exact": empo.exact_match, "within_one": empo.within_one}


def decode_samples(samples: dict[str, np.ndarray], limit: int = 4) -> str:
  """A markdown table of sampled responses (reasoning tokenizer)."""
  return tables.sample_table(
    samples,
    lambda rows: [rw.TOKENIZER.decode([t for t in row if t != rw.BOS_ID]) for row in rows],
    lambda rows: [rw.TOKENIZER.decode_response(list(row)) for row in rows],
    reward_column="reward",
    limit=limit,
  )


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
    acc_greedy = jnp.mean(rw.correctness_reward(out.prompt_tokens, out.prompt_mask, out.tokens, out.response_mask))
    rep_tokens = jnp.repeat(tokens, num_samples, axis=0)
    rep_mask = jnp.repeat(mask, num_samples, axis=0)
    out = sample(graphdef, params, rep_tokens, rep_mask, rng, sampling)
    correct = rw.correctness_reward(out.prompt_tokens, out.prompt_mask, out.tokens, out.response_mask)
    answer, _ = rw.final_answer(out.tokens, out.response_mask)
    return {
      "accuracy_greedy": acc_greedy,
      "accuracy_sampled": jnp.mean(correct),
      "no_answer": jnp.mean((answer < 0).astype(jnp.float32)),
      "length": jnp.mean(out.lengths.astype(jnp.float32)),
    }

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


# probes.collect's signature in shape only: both take a policy, its prompts, sampling and samples per prompt.
def entropy_diagnostic(
  graphdef: nnx.GraphDef,
  params: Any,
  prompts: dict[str, np.ndarray],
  sampling: SamplingConfig,
  num_samples: int,
  rng: jax.Array,
  num_bins: int = 5,
) -> list[dict[str, Any]]:
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
    majority = jnp.take_along_axis(
      grouped, jnp.argmax(info["shares"].reshape(-1, num_samples), axis=1)[:, None], axis=1
    )[:, 0]
    return info["entropy"], majority, keys.reshape(-1, num_samples)

  entropy, majority, keys = jax.device_get(run(params, rng))
  truth = np.asarray(prompts["answer"])
  edges = np.linspace(0.0, math.log(num_samples), num_bins + 1)
  rows = []
  for b in range(num_bins):
    sel = (entropy >= edges[b]) & ((entropy < edges[b + 1]) if b < num_bins - 1 else (entropy <= edges[b + 1] + 1e-6))
    rows.append(
      {
        "lo": float(edges[b]),
        "hi": float(edges[b + 1]),
        "prompts": int(sel.sum()),
        "majority_accuracy": float(np.mean(majority[sel] == truth[sel])) if sel.any() else None,
        "sample_accuracy": float(np.mean(keys[sel] == truth[sel, None])) if sel.any() else None,
      }
    )
  return rows


# ----------------------------------------------------------------------------
# The stage.
# ----------------------------------------------------------------------------


def semantic_source(node: Any, num_samples: int) -> empo.SemanticEntropySource:
  """EMPO's semantic-entropy reward source from ``config.empo.semantic``."""
  sem = node.semantic
  if sem.equivalence not in EQUIVALENCES:
    raise ValueError(f"empo.semantic.equivalence: unknown {sem.equivalence!r}; expected one of {sorted(EQUIVALENCES)}")
  return empo.SemanticEntropySource(
    num_samples=num_samples,
    key_fn=rw.final_answer_key,
    equivalent=EQUIVALENCES[sem.equivalence],
    reward=sem.reward,
    no_answer=sem.no_answer,
    entropy_min=float(sem.entropy_min),
    entropy_max=float(sem.entropy_max),
  )


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


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `empo`: reference policy, then each run of ``config.empo.runs``, then the report."""
  workdir = epath.Path(workdir)
  check_world(config)
  sft_dir = ensure_reference_policy(config, workdir)
  node = config.empo
  rl_config = from_node(RLConfig, node.rl, "config.empo.rl")
  sampling = from_node(SamplingConfig, node.sampling, "config.empo.sampling")
  prompts = prompt_pool(config, node.num_prompts, "rl")
  train_prompts = {k: prompts[k] for k in ("tokens", "mask")}  # no labels reach the RL driver
  eval_prompts = {k: jnp.asarray(v) for k, v in prompt_pool(config, node.num_eval_prompts, "test").items()}
  _, graphdef, ref_params = wd.load_policy(sft_dir)
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
    rows = entropy_diagnostic(
      graphdef,
      ref_params,
      prompt_pool(config, node.num_eval_prompts, "test"),
      sampling,
      rl_config.num_samples,
      jax.random.fold_in(jax.random.key(config.seed), 98),
    )
    diagnostic_path.write_text(json.dumps(rows))

  for name, spec in node.runs.items():
    run_dir = stage_dir / name
    if wd.skip_if_done(run_dir, f"empo/{name}"):
      continue
    source = reward_source_for(spec, node, rl_config, f"empo.runs.{name}")

    def eval_fn(state, step):
      del step
      return _per_seed_scalars(accuracy(state.params["policy"], eval_prompts, eval_keys), "eval")

    state = train_policy(
      f"empo/{name}",
      run_dir,
      sft_dir,
      config,
      node,
      source,
      None,
      train_prompts,
      config.num_seeds,
      gold_fn=rw.correctness_reward,
      text_fn=lambda samples, step: {"samples": decode_samples(samples)},
      eval_fn=eval_fn,
      eval_every=node.eval_every,
    )
    (run_dir / "final_eval.json").write_text(json.dumps(eval_fn(state, node.num_steps)))
    wd.mark_done(run_dir)
  summary = summarize(config, workdir)
  report.write_report_json(stage_dir / "summary.json", summary)
  write_report(workdir)
