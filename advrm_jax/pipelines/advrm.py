"""Stage `advrm`: the Adv-RM rounds, and what the round stages share.

Adv-RM (Bukharin et al. 2025, arXiv 2504.06141) alternates three steps for N rounds:

  attack (round r)   an adversary trained with RL against RM round r;
  filter (round r)   its samples with R1 > T(x) and z(U) > 1.96;
  advtrain (r + 1)   RM round r + 1 trained with those samples as rejected
                     responses against reference responses as chosen.

RM round 0 is the conventional ensemble of the `rm` stage. After the last
round, the hardened RM N is attacked once more (and filtered) so that the
report can say how the attack fares after N rounds. This stage runs that
schedule by calling the `attack`, `filter` and `advtrain` stages, each of
which does every round it can and skips rounds marked DONE, so the loop
resumes wherever it was stopped.

Layout of WORKDIR (every stage hands over files, never objects):

  sft/                     reference policy (stage `sft`)
  prefs/                   preferences.jsonl (train), preferences_test.jsonl
                           (held-out, in-distribution), reference.npz (n
                           reference samples per attack prompt), summary.json
  rm/                      the conventional ensemble = RM round 0 (stage `rm`)
  attack/round_<r>/        adversary run: metrics, params, collected.npz
                           (every sample of the run), final_samples.npz,
                           summary.json
  filter/round_<r>/        adversarial_pairs.jsonl, scores.npz, summary.json
  advtrain/round_<r>/      pairs.jsonl and rm/ (RM round r, r >= 1);
                           advtrain/final links to the last round
  online/                  the online mode (stage `online`, when listed)
  rlhf/<run>/              policies trained against each RM (stage `rlhf`)
  report.json, REPORT.md, plots/   in WORKDIR itself (stage `evaluate`,
                           which has no directory of its own)

This module also holds the helpers those stages share: paths, sampling from
a policy in fixed-size jitted chunks, scoring with an RM ensemble, gold.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from absl import logging
from flax import nnx
import jax
import numpy as np

from advrm_jax.rl.sampler import SamplingConfig, concat_prompt_response, sample, sample_jit

STAGE = "advrm"
DONE = "DONE"


# ----------------------------------------------------------------------------
# Paths and small files.
# ----------------------------------------------------------------------------


def round_dir(workdir: str | pathlib.Path, stage: str, round_index: int) -> pathlib.Path:
  """WORKDIR/<stage>/round_<r>."""
  return pathlib.Path(workdir) / stage / f"round_{round_index}"


def rm_path(workdir: str | pathlib.Path, round_index: int, arm: str = "adversarial") -> pathlib.Path:
  """Where RM round r lives (what `load_reward_model` accepts); ``arm="fresh_pairs"``: the control's round."""
  if round_index == 0:
    return pathlib.Path(workdir) / "rm"
  return round_dir(workdir, "advtrain_control" if arm == "fresh_pairs" else "advtrain", round_index) / "rm"


def is_done(directory: pathlib.Path) -> bool:
  """Whether ``directory`` holds the DONE marker of a finished stage or round."""
  return (pathlib.Path(directory) / DONE).exists()


def mark_done(directory: pathlib.Path) -> None:
  """Writes the DONE marker that makes later launches skip this stage or round."""
  (pathlib.Path(directory) / DONE).write_text("ok\n")


def write_json(path: str | pathlib.Path, value: Any) -> None:
  """Atomic JSON write (NaN/Inf as null): a kill never leaves half a file."""
  from advrm_jax.evaluation.report import to_json_safe  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(to_json_safe(value), indent=2, allow_nan=False))
  os.replace(tmp, path)


def read_json(path: str | pathlib.Path, what: str) -> Any:
  """Reads a JSON artefact; FileNotFoundError says which stage (``what``) writes it."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run {what} first")
  return json.loads(path.read_text())


def write_jsonl(path: str | pathlib.Path, records: list[dict[str, Any]]) -> None:
  """Atomic JSON-lines write (NaN/Inf as null): a kill never leaves half a file."""
  from advrm_jax.evaluation.report import to_json_safe  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(to_json_safe(record), ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def save_npz(path: str | pathlib.Path, **arrays: Any) -> None:
  """Atomic ``np.savez`` (write to a temporary name, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.stem + ".tmp.npz")
  np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)


def load_npz(path: str | pathlib.Path, what: str) -> dict[str, np.ndarray]:
  """Loads every array of an .npz artefact (no pickles); FileNotFoundError names the stage to run."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run {what} first")
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def num_rounds(config: Any) -> int:
  """``config.advrm.num_rounds``, checked to be >= 0."""
  rounds = int(config.advrm.num_rounds)
  if rounds < 0:
    raise ValueError(f"advrm.num_rounds must be >= 0, got {rounds}")
  return rounds


# ----------------------------------------------------------------------------
# Sampling, scoring, gold.
# ----------------------------------------------------------------------------


def sampling_config(node: Any) -> SamplingConfig:
  """A SamplingConfig from a config node (lists become tuples, so it stays hashable)."""
  values = dict(node)
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return SamplingConfig(**values)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  if array.shape[0] == rows:
    return array
  pad = np.zeros((rows - array.shape[0],) + array.shape[1:], array.dtype)
  return np.concatenate([array, pad])


def _sample_seeds(graphdef, params, prompt_tokens, prompt_mask, rngs, config):
  return jax.vmap(lambda p, r: sample(graphdef, p, prompt_tokens, prompt_mask, r, config))(params, rngs)


_sample_seeds_jit = jax.jit(_sample_seeds, static_argnames=("graphdef", "config"))


def sample_responses(graphdef: Any, params: Any, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                     rng: jax.Array, sampling: SamplingConfig, batch_size: int,
                     num_seeds: int | None = None) -> dict[str, np.ndarray]:
  """Samples one response per prompt row in fixed-size jitted chunks.

  Args:
    graphdef: the policy's graphdef.
    params: its parameters; with ``num_seeds`` a stack of S policies (leading
      axis), sampled at once with vmap.
    prompt_tokens: [N, P] left-padded prompts (BOS included); mask [N, P].
    rng: key; chunk i uses fold_in(rng, i) (and seed s fold_in of that).
    sampling: sampling options.
    batch_size: rows per jitted call (the last chunk is padded, so one
      compilation serves every call with the same width).
    num_seeds: S for stacked params, None for one policy.

  Returns:
    {"prompt_tokens" [N, P] (left-aligned as the sampler returns them),
    "prompt_mask", "response_tokens" [N, R], "response_mask" [N, R],
    "has_eos" [N]} numpy; with num_seeds every array gets a leading [S] axis.
  """
  num_rows = prompt_tokens.shape[0]
  outputs = []
  for index, start in enumerate(range(0, num_rows, batch_size)):
    rows = min(batch_size, num_rows - start)
    tokens = _pad_rows(np.asarray(prompt_tokens[start:start + batch_size], np.int32), batch_size)
    mask = _pad_rows(np.asarray(prompt_mask[start:start + batch_size], np.int32), batch_size)
    mask[rows:, -1] = 1  # pad rows get one real token: the sampler needs one
    key = jax.random.fold_in(rng, index)
    if num_seeds is None:
      out = sample_jit(graphdef, params, tokens, mask, key, sampling)
    else:
      out = _sample_seeds_jit(graphdef, params, tokens, mask, jax.random.split(key, num_seeds), sampling)
    out = jax.device_get(out)
    take = (lambda x: x[:rows]) if num_seeds is None else (lambda x: x[:, :rows])
    outputs.append({"prompt_tokens": take(out.prompt_tokens), "prompt_mask": take(out.prompt_mask),
                    "response_tokens": take(out.tokens), "response_mask": take(out.response_mask),
                    "has_eos": take(out.has_eos)})
  axis = 0 if num_seeds is None else 1
  return {k: np.concatenate([o[k] for o in outputs], axis=axis) for k in outputs[0]}


def _score_chunk(graphdef, params, prompt_tokens, prompt_mask, response_tokens, response_mask):
  from advrm_jax.reward.model import reward_scores  # pylint: disable=import-outside-toplevel
  # Exactly the layout the RL iteration scores (prompt left-padded, response
  # right after it), so offline scores equal what the policy was rewarded.
  tokens, mask = concat_prompt_response(prompt_tokens, prompt_mask, response_tokens, response_mask, left_pad=False)
  return reward_scores(graphdef, params, tokens, mask)


def _scores_and_hidden_chunk(graphdef, params, tokens, mask, member):
  """([K, B] rewards, [B, D] member ``member``'s last hidden state) from one forward pass."""
  model = nnx.merge(graphdef, params)
  hidden = model.last_hidden(tokens, mask)  # [B, D] shared, [K, B, D] independent
  return model.heads(hidden), (hidden if hidden.ndim == 2 else hidden[member])


_score_chunk_jit = jax.jit(_score_chunk, static_argnames=("graphdef",))
_scores_and_hidden_chunk_jit = jax.jit(_scores_and_hidden_chunk, static_argnames=("graphdef", "member"))


def _map_rows(fn, graphdef: Any, params: Any, arrays: tuple[np.ndarray, ...], batch_size: int,
              row_axes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
  """``fn`` over rows of (tokens, mask, ...) array pairs in fixed-size chunks (one compilation).

  ``fn`` returns a tuple; output i has its rows on ``row_axes[i]`` and is
  joined there. The last chunk is padded with rows holding one real token,
  which are dropped again.
  """
  num_rows = arrays[0].shape[0]
  if num_rows == 0:
    raise ValueError("no rows to score (an empty pair or sample file?)")
  chunks = []
  for start in range(0, num_rows, batch_size):
    rows = min(batch_size, num_rows - start)
    part = [_pad_rows(np.asarray(a[start:start + batch_size]), batch_size) for a in arrays]
    for i in range(0, len(part), 2):
      part[i], part[i + 1] = part[i].astype(np.int32), part[i + 1].astype(bool)
    part[1][rows:, -1] = True  # no all-masked pad row
    outs = jax.device_get(fn(graphdef, params, *part))
    chunks.append([np.take(np.asarray(o), np.arange(rows), axis=ax) for o, ax in zip(outs, row_axes)])
  return tuple(np.concatenate([c[i] for c in chunks], axis=ax).astype(np.float32) for i, ax in enumerate(row_axes))


def score_members(graphdef: Any, params: Any, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                  response_tokens: np.ndarray, response_mask: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Every ensemble member's reward of (prompt, response) rows: [K, N] numpy."""
  if prompt_tokens.shape[0] == 0:
    return np.zeros((0, 0), np.float32)
  fn = lambda *args: (_score_chunk_jit(*args),)
  return _map_rows(fn, graphdef, params, (prompt_tokens, prompt_mask, response_tokens, response_mask), batch_size,
                   row_axes=(1,))[0]


def scores_and_hidden(graphdef: Any, params: Any, tokens: np.ndarray, mask: np.ndarray, member: int = 0,
                      batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Of full sequences (e.g. ``held_out_pairs`` rows), in one pass: every member's reward [K, N] and the
  RM's last hidden state [N, D] where it reads the reward (member ``member``'s for independent backbones).

  Rows of (prompt, response) go through ``concat_prompt_response(...,
  left_pad=False)`` first, the layout ``score_members`` scores.
  """
  fn = lambda g, p, t, m: _scores_and_hidden_chunk_jit(g, p, t, m, member)
  return _map_rows(fn, graphdef, params, (tokens, mask), batch_size, row_axes=(1, 0))


# The helpers below take the run's policy tokenizer (``policy_tokenizer``):
# None is the synthetic world (word tokenizer, exact gold); an imported
# policy's rows are decoded with its own tokenizer and have no gold.


def policy_tokenizer(workdir: str | pathlib.Path) -> Any:
  """The tokenizer of a policy imported by the `sft` stage; None for the synthetic world's policy."""
  from advrm_jax.pipelines import sft  # pylint: disable=import-outside-toplevel
  meta_path = pathlib.Path(workdir) / "sft" / sft.POLICY_META_FILE
  if not meta_path.exists():
    return None
  from advrm_jax.pipelines.rm import load_tokenizer  # pylint: disable=import-outside-toplevel
  return load_tokenizer(json.loads(meta_path.read_text()))


def require_synthetic_policy(workdir: str | pathlib.Path, stage: str) -> None:
  """Stops a stage that needs the synthetic world's prompts or gold when the policy is an imported checkpoint."""
  from advrm_jax.pipelines import sft  # pylint: disable=import-outside-toplevel
  if (pathlib.Path(workdir) / "sft" / sft.POLICY_META_FILE).exists():
    raise ValueError(f"{stage}: needs the synthetic world (its prompts and exact gold reward), but the policy in "
                     f"{pathlib.Path(workdir) / 'sft'} is an imported checkpoint; on your own model run the stages "
                     "sft, prefs, rm, attack, filter and advtrain (configs/advrm_own.py)")


def gold_of(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, response_tokens: np.ndarray,
            response_mask: np.ndarray, tokenizer: Any = None) -> np.ndarray:
  """The synthetic world's exact gold reward of token rows: [N] numpy.

  With an imported policy's ``tokenizer`` the rows are real text, which has
  no gold: all NaN (null in JSON; the stages' summaries then report None).
  """
  if tokenizer is not None:
    return np.full(np.shape(response_tokens)[0], np.nan, np.float32)
  from advrm_jax.data import synthetic_world as world  # pylint: disable=import-outside-toplevel
  gold, _ = world.score_batch({"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
                               "response_tokens": response_tokens, "response_mask": response_mask})
  return gold


def decode_prompts(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, tokenizer: Any = None) -> list[str]:
  """Prompt texts of prompt rows (BOS and padding dropped); ``tokenizer`` None = the synthetic world's."""
  if tokenizer is not None:
    return [tokenizer.decode([int(t) for t, m in zip(row, mask) if m and t != tokenizer.bos_id])
            for row, mask in zip(prompt_tokens, prompt_mask)]
  from advrm_jax.data import synthetic_world as world  # pylint: disable=import-outside-toplevel
  return [world.TOKENIZER.decode([t for t, m in zip(row, mask) if m and t != world.BOS_ID])
          for row, mask in zip(prompt_tokens, prompt_mask)]


def decode_responses(response_tokens: np.ndarray, response_mask: np.ndarray, tokenizer: Any = None) -> list[str]:
  """Response texts (up to the first EOS; an unterminated response is cut where it stopped)."""
  if tokenizer is not None:
    texts = []
    for row, mask in zip(response_tokens, response_mask):
      ids = [int(t) for t, m in zip(row, mask) if m]
      if tokenizer.eos_id in ids:
        ids = ids[:ids.index(tokenizer.eos_id)]
      texts.append(tokenizer.decode(ids))
    return texts
  from advrm_jax.data import synthetic_world as world  # pylint: disable=import-outside-toplevel
  return [world.TOKENIZER.decode_response([t for t, m in zip(row, mask) if m])
          for row, mask in zip(response_tokens, response_mask)]


def sample_table(samples: dict[str, np.ndarray], tokenizer: Any, limit: int = 4) -> str:
  """A markdown table of an RL step's sample responses, decoded with an imported policy's ``tokenizer``.

  The ``text_fn`` of RL runs on an imported policy (``rlhf.train_policy``
  defaults to the synthetic world's decoder).
  """
  prompts = samples["samples/prompt_tokens"].reshape(-1, samples["samples/prompt_tokens"].shape[-1])[:limit]
  responses = samples["samples/response_tokens"].reshape(-1, samples["samples/response_tokens"].shape[-1])[:limit]
  proxy = samples["samples/proxy_reward"].reshape(-1)[:limit]
  # Sample tables carry no masks: padding is the tokenizer's pad id.
  prompt_texts = decode_prompts(prompts, prompts != tokenizer.pad_id, tokenizer)
  response_texts = decode_responses(responses, np.ones_like(responses, bool), tokenizer)
  clean = lambda text: text.replace("|", "\\|").replace("\n", " ")
  rows = ["| prompt | response | proxy |", "|---|---|---|"]
  for prompt, response, score in zip(prompt_texts, response_texts, proxy):
    rows.append(f"| {clean(prompt)} | {clean(response)} | {float(score):.2f} |")
  return "\n".join(rows)


def reference_prompts(reference: dict[str, np.ndarray]) -> list[Any]:
  """The attack pool's prompts as a preference file holds them (text, or chat messages)."""
  if "prompts_json" in reference:
    # Chat-message prompts of your own data do not fit a numpy string array.
    return [json.loads(str(p)) for p in reference["prompts_json"]]
  return [str(p) for p in reference["prompts"]]


def load_reference(workdir: str | pathlib.Path, heldout: bool = False) -> dict[str, np.ndarray]:
  """The `prefs` stage's reference samples on the attack prompt pool (``heldout``: on the held-out pool).

  Returns prompt_tokens [P, Lp], prompt_mask, prompts [P] (text),
  response_tokens [P, n, R], response_mask [P, n, R], gold [P, n] (NaN for
  an imported policy); from your own data also prompts_json [P] (see
  ``reference_prompts``).
  """
  name = "reference_heldout.npz" if heldout else "reference.npz"
  return load_npz(pathlib.Path(workdir) / "prefs" / name, "the `prefs` stage")


def has_heldout_reference(workdir: str | pathlib.Path) -> bool:
  """Whether the `prefs` stage wrote a held-out attack pool (``prefs.num_heldout_prompts``)."""
  return (pathlib.Path(workdir) / "prefs" / "reference_heldout.npz").exists()


def member_standardization(workdir: str | pathlib.Path, round_index: int, rm_graphdef: Any, rm_params: Any,
                           reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """RM round r's per-member mean and std over the reference samples (``objective.member_standardization``).

  Stored with the RM round (``reference_standardization.json`` in its directory) the first time it is
  needed, so the adversary, the filter and the evaluation all read the same z units.
  Returns {"loc": [K], "scale": [K]} float32.
  """
  from advrm_jax.adversarial.objective import member_standardization as stats  # pylint: disable=import-outside-toplevel
  path = rm_path(workdir, round_index) / "reference_standardization.json"
  if not path.exists():
    loc, scale = stats(reference_member_scores(workdir, rm_graphdef, rm_params, reference))
    write_json(path, {"loc": np.asarray(loc).tolist(), "scale": np.asarray(scale).tolist(),
                      "population": "prefs/reference.npz (the reference policy's samples on the attack pool)"})
  value = read_json(path, "the `attack` stage")
  return {"loc": np.asarray(value["loc"], np.float32), "scale": np.asarray(value["scale"], np.float32)}


def reward_units(config: Any, workdir: str | pathlib.Path, round_index: int, rm_graphdef: Any, rm_params: Any,
                 reference: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
  """RM round r's reference z units when ``attack.standardize`` (see ``member_standardization``), else None."""
  if not config.attack.get("standardize", False):
    return None
  return member_standardization(workdir, round_index, rm_graphdef, rm_params, reference)


def in_units(scores: np.ndarray, units: dict[str, np.ndarray] | None) -> np.ndarray:
  """[K, ...] member rewards in the units the adversary and the filter use (raw, or reference z)."""
  from advrm_jax.adversarial.objective import standardize_members  # pylint: disable=import-outside-toplevel
  if units is None:
    return np.asarray(scores, np.float32)
  return np.asarray(standardize_members(scores, units["loc"], units["scale"]))


def held_out_pairs(workdir: str | pathlib.Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
  """The `prefs` stage's held-out pairs tokenised as the RM described by ``meta`` (rm_meta.json) was trained.

  Returns ``tokenize_pairs`` output (chosen/rejected tokens and masks, [N, L]).
  """
  from advrm_jax.data.batching import tokenize_pairs  # pylint: disable=import-outside-toplevel
  from advrm_jax.data.preferences import read_preferences  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines import prefs  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines.rm import load_tokenizer  # pylint: disable=import-outside-toplevel
  pairs = list(read_preferences(pathlib.Path(workdir) / prefs.STAGE / prefs.TEST_FILE))
  seq = meta["sequence"]
  return tokenize_pairs(pairs, load_tokenizer(meta), seq["max_prompt_len"], seq["max_response_len"],
                        padding_side=seq["padding_side"], on_overlength="truncate", add_bos=seq["add_bos"],
                        use_chat_template=seq.get("use_chat_template", False))


def reference_member_scores(workdir: str | pathlib.Path, rm_graphdef: Any, rm_params: Any,
                            reference: dict[str, np.ndarray]) -> np.ndarray:
  """Every member's reward of every reference sample: [K, P, n]."""
  num_prompts, n, width = reference["response_tokens"].shape
  del workdir
  scores = score_members(rm_graphdef, rm_params, np.repeat(reference["prompt_tokens"], n, axis=0),
                         np.repeat(reference["prompt_mask"], n, axis=0),
                         reference["response_tokens"].reshape(-1, width),
                         reference["response_mask"].reshape(-1, width))
  return scores.reshape(scores.shape[0], num_prompts, n)


# ----------------------------------------------------------------------------
# The stage: N rounds of attack -> filter -> advtrain, then a last attack.
# ----------------------------------------------------------------------------


def run(config: Any, workdir: pathlib.Path) -> None:
  """Stage `advrm`: every round of the schedule, resuming at the first unfinished step."""
  from advrm_jax.pipelines import advtrain, attack, filter as filter_stage  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  rounds = num_rounds(config)
  for r in range(rounds + 1):
    attack.run_round(config, workdir, r)
    filter_stage.run_round(config, workdir, r)
    if r < rounds:
      advtrain.run_rounds(config, workdir, r + 1)
  logging.info("advrm: %d rounds done; the hardened RM is %s", rounds, rm_path(workdir, rounds))
