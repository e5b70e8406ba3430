"""Batched sampling and scoring that several stages share.

Sampling from a policy and scoring with an RM ensemble in fixed-size jitted
chunks (one compilation per shape), the reference z units of an RM round,
gold and decoding of token rows, and the attack's per-seed success. The
helpers that take a ``tokenizer`` take the run's policy tokenizer
(``workdir.policy_tokenizer``): None is the synthetic world (word tokenizer,
exact gold); an imported policy's rows are decoded with its own tokenizer and
have no gold.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from etils import epath
from flax import nnx
import jax
import numpy as np

from advrm_jax import sharding as shd
from advrm_jax.adversarial.filtering import standardize, uncertainty
from advrm_jax.adversarial.objective import member_standardization as member_stats
from advrm_jax.adversarial.objective import standardize_members
from advrm_jax.data import synthetic_world as world
from advrm_jax.data import tables
from advrm_jax.evaluation.attack import attack_success
from advrm_jax.pipelines import workdir as wd
from advrm_jax.reward.model import reward_scores
from advrm_jax.rl.sampler import SamplingConfig, concat_prompt_response, sample, sample_jit


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


# Outputs replicated on the params' mesh: every host of a multi-process job reads the samples whole.
_sample_seeds_jit = shd.jit_host_readable(_sample_seeds, static_argnames=("graphdef", "config"))


def _mesh_sampler(graphdef: Any, params: Any, sampling: SamplingConfig, mesh: Any, num_seeds: int | None):
  """The chunk sampler jitted for ``mesh`` with explicit shardings: the params as they lie (split by their
  logical axes), prompt rows over data x fsdp, the outputs replicated (every host reads them whole)."""
  rows = shd.batch_sharding(mesh)
  if num_seeds is None:
    fn = lambda p, tokens, mask, key: sample(graphdef, p, tokens, mask, key, sampling)
  else:
    fn = lambda p, tokens, mask, keys: _sample_seeds(graphdef, p, tokens, mask, keys, sampling)
  return jax.jit(
    fn,
    in_shardings=(shd.shardings_on(params, mesh), rows, rows, shd.replicated(mesh)),
    out_shardings=shd.replicated(mesh),
  )


def sample_responses(
  graphdef: Any,
  params: Any,
  prompt_tokens: np.ndarray,
  prompt_mask: np.ndarray,
  rng: jax.Array,
  sampling: SamplingConfig,
  batch_size: int,
  num_seeds: int | None = None,
  mesh: Any = None,
) -> dict[str, np.ndarray]:
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
    mesh: sample on this mesh (``batch_size`` divisible by its data x fsdp
      size; the caller checks it, naming its config key); None: where the
      params lie.

  Returns:
    {"prompt_tokens" [N, P] (left-aligned as the sampler returns them),
    "prompt_mask", "response_tokens" [N, R], "response_mask" [N, R],
    "has_eos" [N]} numpy; with num_seeds every array gets a leading [S] axis.
  """
  num_rows = prompt_tokens.shape[0]
  on_mesh = None if mesh is None else _mesh_sampler(graphdef, params, sampling, mesh, num_seeds)
  outputs = []
  for index, start in enumerate(range(0, num_rows, batch_size)):
    rows = min(batch_size, num_rows - start)
    tokens = _pad_rows(np.asarray(prompt_tokens[start : start + batch_size], np.int32), batch_size)
    mask = _pad_rows(np.asarray(prompt_mask[start : start + batch_size], np.int32), batch_size)
    mask[rows:, -1] = 1  # pad rows get one real token: the sampler needs one
    key = jax.random.fold_in(rng, index)
    keys = key if num_seeds is None else jax.random.split(key, num_seeds)
    if on_mesh is not None:
      placed = shd.shard_batch({"tokens": tokens, "mask": mask}, mesh)  # each process its own rows
      out = on_mesh(params, placed["tokens"], placed["mask"], keys)
    elif num_seeds is None:
      out = sample_jit(graphdef, params, tokens, mask, key, sampling)
    else:
      out = _sample_seeds_jit(graphdef, params, tokens, mask, keys, sampling)
    out = jax.device_get(out)
    take = (lambda x: x[:rows]) if num_seeds is None else (lambda x: x[:, :rows])
    outputs.append(
      {
        "prompt_tokens": take(out.prompt_tokens),
        "prompt_mask": take(out.prompt_mask),
        "response_tokens": take(out.tokens),
        "response_mask": take(out.response_mask),
        "has_eos": take(out.has_eos),
      }
    )
  axis = 0 if num_seeds is None else 1
  return {k: np.concatenate([o[k] for o in outputs], axis=axis) for k in outputs[0]}


def _score_chunk(graphdef, params, prompt_tokens, prompt_mask, response_tokens, response_mask):
  # Exactly the layout the RL iteration scores (prompt left-padded, response
  # right after it), so offline scores equal what the policy was rewarded.
  tokens, mask = concat_prompt_response(prompt_tokens, prompt_mask, response_tokens, response_mask, left_pad=False)
  return reward_scores(graphdef, params, tokens, mask)


def _scores_and_hidden_chunk(graphdef, params, tokens, mask, member):
  """([K, B] rewards, [B, D] member ``member``'s last hidden state) from one forward pass."""
  model = nnx.merge(graphdef, params)
  hidden = model.last_hidden(tokens, mask)  # [B, D] shared, [K, B, D] independent
  return model.heads(hidden), (hidden if hidden.ndim == 2 else hidden[member])


# Scores and hidden states come back replicated on the RM's mesh, readable on every host.
_score_chunk_jit = shd.jit_host_readable(_score_chunk, static_argnames=("graphdef",))


_scores_and_hidden_chunk_jit = shd.jit_host_readable(_scores_and_hidden_chunk, static_argnames=("graphdef", "member"))


def _map_rows(
  fn, graphdef: Any, params: Any, arrays: tuple[np.ndarray, ...], batch_size: int, row_axes: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
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
    part = [_pad_rows(np.asarray(a[start : start + batch_size]), batch_size) for a in arrays]
    for i in range(0, len(part), 2):
      part[i], part[i + 1] = part[i].astype(np.int32), part[i + 1].astype(bool)
    part[1][rows:, -1] = True  # no all-masked pad row
    outs = jax.device_get(fn(graphdef, params, *part))
    chunks.append([np.take(np.asarray(o), np.arange(rows), axis=ax) for o, ax in zip(outs, row_axes)])
  return tuple(np.concatenate([c[i] for c in chunks], axis=ax).astype(np.float32) for i, ax in enumerate(row_axes))


def score_members(
  graphdef: Any,
  params: Any,
  prompt_tokens: np.ndarray,
  prompt_mask: np.ndarray,
  response_tokens: np.ndarray,
  response_mask: np.ndarray,
  batch_size: int = 256,
) -> np.ndarray:
  """Every ensemble member's reward of (prompt, response) rows: [K, N] numpy."""
  if prompt_tokens.shape[0] == 0:
    return np.zeros((0, 0), np.float32)
  fn = lambda *args: (_score_chunk_jit(*args),)
  return _map_rows(
    fn, graphdef, params, (prompt_tokens, prompt_mask, response_tokens, response_mask), batch_size, row_axes=(1,)
  )[0]


def scores_and_hidden(
  graphdef: Any, params: Any, tokens: np.ndarray, mask: np.ndarray, member: int = 0, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """Of full sequences (e.g. ``held_out_pairs`` rows), in one pass: every member's reward [K, N] and the
  RM's last hidden state [N, D] where it reads the reward (member ``member``'s for independent backbones).

  Rows of (prompt, response) go through ``concat_prompt_response(...,
  left_pad=False)`` first, the layout ``score_members`` scores.
  """
  fn = lambda g, p, t, m: _scores_and_hidden_chunk_jit(g, p, t, m, member)
  return _map_rows(fn, graphdef, params, (tokens, mask), batch_size, row_axes=(1, 0))


def gold_of(
  prompt_tokens: np.ndarray,
  prompt_mask: np.ndarray,
  response_tokens: np.ndarray,
  response_mask: np.ndarray,
  tokenizer: Any = None,
) -> np.ndarray:
  """The synthetic world's exact gold reward of token rows: [N] numpy.

  With an imported policy's ``tokenizer`` the rows are real text, which has
  no gold: all NaN (null in JSON; the stages' summaries then report None).
  """
  if tokenizer is not None:
    return np.full(np.shape(response_tokens)[0], np.nan, np.float32)
  gold, _ = world.score_batch(
    {
      "prompt_tokens": prompt_tokens,
      "prompt_mask": prompt_mask,
      "response_tokens": response_tokens,
      "response_mask": response_mask,
    }
  )
  return gold


def decode_prompts(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, tokenizer: Any = None) -> list[str]:
  """Prompt texts of prompt rows (BOS and padding dropped); ``tokenizer`` None = the synthetic world's."""
  if tokenizer is not None:
    return [
      tokenizer.decode([int(t) for t, m in zip(row, mask) if m and t != tokenizer.bos_id])
      for row, mask in zip(prompt_tokens, prompt_mask)
    ]
  return world.decode_prompt_rows(prompt_tokens, prompt_mask)


def decode_responses(response_tokens: np.ndarray, response_mask: np.ndarray, tokenizer: Any = None) -> list[str]:
  """Response texts (up to the first EOS; an unterminated response is cut where it stopped)."""
  if tokenizer is not None:
    texts = []
    for row, mask in zip(response_tokens, response_mask):
      ids = [int(t) for t, m in zip(row, mask) if m]
      if tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
      texts.append(tokenizer.decode(ids))
    return texts
  return world.decode_response_rows(response_tokens, response_mask)


def sample_table(samples: dict[str, np.ndarray], tokenizer: Any, limit: int = 4) -> str:
  """A markdown table of an RL step's sample responses, decoded with an imported policy's ``tokenizer``.

  The ``text_fn`` of RL runs on an imported policy (``rl_driver.train_policy``
  defaults to the synthetic world's decoder).
  """
  # Sample tables carry no masks: padding is the tokenizer's pad id. Free text is escaped for its cell.
  clean = lambda texts: [text.replace("|", "\\|").replace("\n", " ") for text in texts]
  return tables.sample_table(
    samples,
    lambda rows: clean(decode_prompts(rows, rows != tokenizer.pad_id, tokenizer)),
    lambda rows: clean(decode_responses(rows, np.ones_like(rows, bool), tokenizer)),
    limit=limit,
  )


def member_standardization(
  workdir: epath.PathLike, round_index: int, reference_scores: np.ndarray
) -> dict[str, np.ndarray]:
  """RM round r's per-member mean and std over the reference samples (``objective.member_standardization``).

  ``reference_scores`` are RM round r's member rewards of prefs/reference.npz's samples ([K, ...], as
  ``reference_member_scores`` gives them). Stored with the RM round (``reference_standardization.json`` in
  its directory) the first time they are needed, so the adversary, the filter and the evaluation all read
  the same z units. Returns {"loc": [K], "scale": [K]} float32.
  """
  path = wd.rm_path(workdir, round_index) / "reference_standardization.json"
  if not path.exists():
    loc, scale = member_stats(reference_scores)
    wd.write_json(
      path,
      {
        "loc": np.asarray(loc).tolist(),
        "scale": np.asarray(scale).tolist(),
        "population": "prefs/reference.npz (the reference policy's samples on the attack pool)",
      },
    )
  wd.sync("reference standardization written")  # by process 0; every process reads it next
  value = wd.read_json(path, "the `attack` stage")
  return {"loc": np.asarray(value["loc"], np.float32), "scale": np.asarray(value["scale"], np.float32)}


def reward_units(
  config: Any, workdir: epath.PathLike, round_index: int, reference_scores: np.ndarray
) -> dict[str, np.ndarray] | None:
  """RM round r's reference z units when ``attack.standardize`` (see ``member_standardization``), else None."""
  if not config.attack.get("standardize", False):
    return None
  return member_standardization(workdir, round_index, reference_scores)


def in_units(scores: np.ndarray, units: dict[str, np.ndarray] | None) -> np.ndarray:
  """[K, ...] member rewards in the units the adversary and the filter use (raw, or reference z)."""
  if units is None:
    return np.asarray(scores, np.float32)
  return np.asarray(standardize_members(scores, units["loc"], units["scale"]))


def reference_member_scores(
  workdir: epath.PathLike, rm_graphdef: Any, rm_params: Any, reference: dict[str, np.ndarray]
) -> np.ndarray:
  """Every member's reward of every reference sample: [K, P, n]."""
  num_prompts, n, width = reference["response_tokens"].shape
  del workdir
  scores = score_members(
    rm_graphdef,
    rm_params,
    np.repeat(reference["prompt_tokens"], n, axis=0),
    np.repeat(reference["prompt_mask"], n, axis=0),
    reference["response_tokens"].reshape(-1, width),
    reference["response_mask"].reshape(-1, width),
  )
  return scores.reshape(scores.shape[0], num_prompts, n)


def success_by_seed(
  r1: np.ndarray,
  gold: np.ndarray,
  seeds: np.ndarray,
  prompt_index: np.ndarray,
  reference_r1: np.ndarray,
  reference_gold: np.ndarray,
  gold_std_floor: float | None = None,
) -> dict[str, Any]:
  """Attack success (standard/strict, %) of samples against their prompts' reference samples, per seed.

  Args:
    r1, gold: [M] the samples' R1 and gold. seeds, prompt_index: [M].
    reference_r1, reference_gold: [P, n] the reference samples'.
    gold_std_floor: floor of the strict test's per-prompt gold std (the pooled within-prompt std of
      the reference: the synthetic gold is discrete, and a prompt whose n samples share one gold value
      would otherwise count any worse answer as infinitely many std below).

  Without gold (all NaN: an imported policy's samples) the rates are None.
  """
  has_gold = bool(np.isfinite(gold).any())
  strict = {} if gold_std_floor is None else {"gold_std_floor": gold_std_floor}
  per_seed = []
  for seed in np.unique(seeds):
    rows = seeds == seed
    idx = prompt_index[rows]
    if not has_gold:
      per_seed.append({"standard": None, "strict": None, "num_responses": int(rows.sum())})
      continue
    per_seed.append(attack_success(r1[rows], reference_r1[idx], gold[rows], reference_gold[idx], **strict))
  return {
    "standard": [s["standard"] for s in per_seed],
    "strict": [s["strict"] for s in per_seed],
    "num_responses": [s["num_responses"] for s in per_seed],
  }


def sample_final(
  config: Any,
  policy_graphdef: Any,
  params: Any,
  pool: dict[str, np.ndarray],
  salt: int,
  rm_graphdef: Any,
  rm_params: Any,
  tokenizer: Any,
) -> dict[str, np.ndarray]:
  """The trained attackers (``params``, seeds stacked) answer every prompt of ``pool`` m times, scored by every
  member and by gold."""
  node, num_seeds = config.attack, config.num_seeds
  m = node.final_samples_per_prompt
  num_prompts = pool["prompt_tokens"].shape[0]
  mesh = shd.make_mesh(tuple(config.mesh.shape))  # the attack's mesh, where ``params`` lie
  shd.check_batch_divisible(config.prefs.sample_batch_size, mesh, "prefs.sample_batch_size")
  final = sample_responses(
    policy_graphdef,
    params,
    np.repeat(pool["prompt_tokens"], m, axis=0),
    np.repeat(pool["prompt_mask"], m, axis=0),
    jax.random.key(config.seed + salt),
    sampling_config(node.sampling),
    config.prefs.sample_batch_size,
    num_seeds=num_seeds,
    mesh=mesh,
  )
  final = {k: v.reshape((num_seeds * num_prompts * m,) + v.shape[2:]) for k, v in final.items()}
  final["seed"] = np.repeat(np.arange(num_seeds), num_prompts * m)
  final["prompt_index"] = np.tile(np.repeat(np.arange(num_prompts), m), num_seeds)
  final["member_scores"] = score_members(
    rm_graphdef,
    rm_params,
    final["prompt_tokens"],
    final["prompt_mask"],
    final["response_tokens"],
    final["response_mask"],
  )
  final["gold"] = gold_of(
    final["prompt_tokens"], final["prompt_mask"], final["response_tokens"], final["response_mask"], tokenizer
  )
  return final


def disagreement_z(units_scores: np.ndarray, reference_units: np.ndarray, target: int, r2_kind: str) -> np.ndarray:
  """z(U) of samples, U = R1 - R2 in the adversary's units, against U of the reference samples."""
  u = np.asarray(uncertainty(units_scores, "r1_minus_r2", target, r2_kind))
  reference_u = np.asarray(
    uncertainty(reference_units.reshape(reference_units.shape[0], -1), "r1_minus_r2", target, r2_kind)
  )
  return np.asarray(standardize(u, reference=reference_u))


def preference_records(
  prompts: list[str], responses_a: list[str], responses_b: list[str], beta: float, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """BT-labelled records from two responses per prompt; drops pairs that carry no preference.

  Returns (records, dropped counts by reason).
  """
  keep = [i for i in range(len(prompts)) if responses_a[i] and responses_b[i] and responses_a[i] != responses_b[i]]
  dropped = {
    "empty_response": sum(1 for i in range(len(prompts)) if not responses_a[i] or not responses_b[i]),
    "identical_responses": sum(1 for i in range(len(prompts)) if responses_a[i] and responses_a[i] == responses_b[i]),
  }
  prompts = [prompts[i] for i in keep]
  responses_a = [responses_a[i] for i in keep]
  responses_b = [responses_b[i] for i in keep]
  records = world.make_preference_records(
    prompts, responses_a, responses_b, beta=beta, rng=np.random.default_rng([int(seed), 23]), include_gold=True
  )
  return records, dropped


def sample_labelled_pairs(
  config: Any, graphdef: Any, params: Any, num_prompts: int, prompt_seed: int, key: jax.Array, label_seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Two reference-policy answers to each of ``num_prompts`` preference prompts, labelled by BT on gold.

  The `prefs` stage's pairs (``prompt_seed = label_seed = config.seed``) and the fresh-pairs control of
  `advtrain` (other seeds: new prompts, new answers, new label noise, the same rule) both come from here.
  Returns (records, dropped) as ``preference_records``.
  """
  node = config.prefs
  sampling = sampling_config(config.rlhf.sampling)
  pair_sampling = dataclasses.replace(sampling, temperature=node.pair_temperature)
  prompt_arrays = world.prompt_arrays(num_prompts, prompt_seed, "preference", config.world.max_prompt_len)
  doubled = {k: np.repeat(v, 2, axis=0) for k, v in prompt_arrays.items()}
  samples = sample_responses(
    graphdef, params, doubled["tokens"], doubled["mask"], key, pair_sampling, node.sample_batch_size
  )
  texts = decode_responses(samples["response_tokens"], samples["response_mask"])
  prompts = decode_prompts(prompt_arrays["tokens"], prompt_arrays["mask"].astype(bool))
  return preference_records(prompts, texts[0::2], texts[1::2], node.beta, label_seed)
