"""Stage `inspect`: what the adversary found, beside the policy's own answers.

Real text has no gold reward, so after `attack` and `filter` on your own model
the result to read is the adversary's answers themselves. This stage puts
three groups of responses to the attack prompt pool side by side:

  reference     the policy's own answers (prefs/reference.npz: every attack
                prompt, ``prefs.reference_samples`` each);
  adversary     the final adversary's answers (attack/round_<r>/final_samples.npz);
  adversarial   what the filter kept: the rejected side of
                filter/round_<r>/adversarial_pairs.jsonl, matched back to
                their tokens in attack/round_<r>/collected.npz.

For every response it computes the rewards of every RM round that exists
(RM round 0, and RM round 1 once `advtrain` has run: does the hardened RM
still over-score what beat RM round 0?): the ensemble mean, the spread of
the members (std), the attacked member R1 against T(x) (recomputed per RM
round, as an attack on that round would), and whether the ensemble mean
beats the mean of the reference answers to the same prompt; and the
automatic quality checks of ``evaluation/quality.py`` (repetition, missing
final punctuation, prompt copying, empty answers, no EOS, perplexity under
the reference policy).

Artefacts in WORKDIR/inspect/:

* ``report.json``: per-group summaries, the headline margins, the examples;
* ``REPORT.md``: the summary table (metric x group) and ``inspect.num_examples``
  prompts with the adversarial answer beside the reference answer, their
  rewards and quality flags;
* ``responses.jsonl``: every response with its rewards, checks and flags;
* ``DONE``. A finished stage is skipped unless an RM round it did not score
  (e.g. round 1, trained since) now exists: then it is recomputed.

Config: ``inspect.round`` (the attack round, default 0),
``inspect.num_examples`` (8), ``inspect.batch_size`` (rows per jitted
perplexity call); a config without an ``inspect`` node gets these defaults.
"""

from __future__ import annotations

import dataclasses
from etils import epath
import html
import json
from typing import Any

from absl import logging
import numpy as np

from advrm_jax import inference
from advrm_jax.config_node import ConfigError, from_node
from advrm_jax.adversarial.objective import per_prompt_threshold
from advrm_jax.evaluation import quality
from advrm_jax.evaluation.report import markdown_table
from advrm_jax.pipelines import workdir as wd

STAGE = "inspect"
REPORT_FILE = "report.json"
MARKDOWN_FILE = "REPORT.md"
RESPONSES_FILE = "responses.jsonl"
GROUPS = ("reference", "adversary", "adversarial")
GROUP_TITLES = {
  "reference": "reference (the policy's own answers)",
  "adversary": "adversary (final answers)",
  "adversarial": "adversarial (kept by the filter)",
}
GROUP_NOUNS = {
  "reference": "policy's own answers",
  "adversary": "final adversary's answers",
  "adversarial": "adversarial answers the filter kept",
}
# "high perplexity": this many times the reference answers' median perplexity.
PERPLEXITY_FACTOR = 4.0
# Characters of a response / prompt shown in REPORT.md.
MAX_CHARS = 400


@dataclasses.dataclass(frozen=True)
class InspectConfig:
  """The `inspect` config node (configs/advrm_own.py); a config without one gets these defaults."""

  # The attack round whose samples are inspected.
  round: int = 0
  # Prompts shown in REPORT.md.
  num_examples: int = 8
  # Rows per jitted perplexity call.
  batch_size: int = 16

  def __post_init__(self):
    if self.round < 0 or self.num_examples < 0 or self.batch_size < 1:
      raise ConfigError(f"config.inspect: round and num_examples must be >= 0 and batch_size >= 1, got {self}")


def _require(path: epath.Path, what: str) -> epath.Path:
  if not path.exists():
    raise FileNotFoundError(f"inspect: {path} not found; run {what} first")
  return path


def rm_rounds(config: Any, workdir: epath.Path) -> list[int]:
  """The RM rounds that exist: 0 (the `rm` stage) and every finished `advtrain` round after it."""
  rounds = []
  for r in range(wd.num_rounds(config) + 1):
    meta = wd.rm_path(workdir, r) / "rm_meta.json"
    if not meta.exists() or (r > 0 and not wd.is_done(wd.round_dir(workdir, "advtrain", r))):
      break
    rounds.append(r)
  return rounds


def prompt_text(prompt: Any) -> str:
  """A prompt as text: a string as is, chat messages as their contents (the role markup is not the user's text)."""
  if isinstance(prompt, str):
    return prompt
  if isinstance(prompt, list):
    return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
  return str(prompt)


def _prompt_key(prompt: Any) -> str:
  return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def _fit(array: np.ndarray, width: int, left: bool) -> np.ndarray:
  """Pads (or checks) the column count, on the left for prompts and the right for responses."""
  if array.shape[1] == width:
    return array
  if array.shape[1] > width:
    raise ValueError(f"inspect: rows {array.shape[1]} wide do not fit {width} columns")
  pad = np.zeros((array.shape[0], width - array.shape[1]), array.dtype)
  return np.concatenate([pad, array] if left else [array, pad], axis=1)


def adversarial_rows(
  collected: dict[str, np.ndarray],
  keep: np.ndarray,
  pairs: list[dict[str, Any]],
  pool_prompts: list[Any],
  tokenizer: Any,
  pairs_file: epath.Path,
) -> np.ndarray:
  """Rows of collected.npz behind the filter's adversarial pairs (the first kept row of each (prompt, text))."""
  kept = np.flatnonzero(keep)
  texts = inference.decode_responses(collected["response_tokens"][kept], collected["response_mask"][kept], tokenizer)
  by_key: dict[tuple[str, str], int] = {}
  for row, text in zip(kept, texts):
    by_key.setdefault((_prompt_key(pool_prompts[collected["prompt_index"][row]]), text), int(row))
  rows = []
  for i, pair in enumerate(pairs):
    row = by_key.get((_prompt_key(pair["prompt"]), pair["rejected"]))
    if row is None:
      raise ValueError(
        f"inspect: pair {i} of {pairs_file} is not among the kept samples of the round's "
        "collected.npz; the attack was rerun after the filter: rerun the `filter` stage"
      )
    rows.append(row)
  return np.asarray(rows, np.int64)


def _group_rows(config: Any, workdir: epath.Path, round_index: int, tokenizer: Any) -> dict[str, Any]:
  """The three groups' rows concatenated: tokens, masks, prompt index, group name, per-row extras."""
  attack_dir = wd.round_dir(workdir, "attack", round_index)
  filter_dir = wd.round_dir(workdir, wd.FILTER, round_index)
  attack_what = f"the `attack` stage (round {round_index})"
  filter_what = f"the `filter` stage (round {round_index})"
  for name in ("collected.npz", "final_samples.npz", wd.DONE):
    _require(attack_dir / name, attack_what)
  for name in (wd.FILTER_SCORES_FILE, wd.FILTER_PAIRS_FILE, wd.DONE):
    _require(filter_dir / name, filter_what)
  collected = wd.load_npz(attack_dir / "collected.npz", attack_what)
  final = wd.load_npz(attack_dir / "final_samples.npz", attack_what)
  scores = wd.load_npz(filter_dir / wd.FILTER_SCORES_FILE, filter_what)
  pairs_file = filter_dir / wd.FILTER_PAIRS_FILE
  pairs = wd.read_jsonl(pairs_file, filter_what)
  reference = wd.load_reference(workdir)
  pool_prompts = wd.reference_prompts(reference)
  adv = adversarial_rows(collected, scores["keep"], pairs, pool_prompts, tokenizer, pairs_file)

  num_prompts, n, _ = reference["response_tokens"].shape
  parts = {
    "reference": {
      "prompt_tokens": np.repeat(reference["prompt_tokens"], n, axis=0),
      "prompt_mask": np.repeat(reference["prompt_mask"], n, axis=0),
      "response_tokens": reference["response_tokens"].reshape(num_prompts * n, -1),
      "response_mask": reference["response_mask"].reshape(num_prompts * n, -1),
      "prompt_index": np.repeat(np.arange(num_prompts), n),
      "gold": reference["gold"].reshape(-1),
      "sample": np.tile(np.arange(n), num_prompts),
    },
    "adversary": {
      k: final[k]
      for k in ("prompt_tokens", "prompt_mask", "response_tokens", "response_mask", "prompt_index", "gold", "seed")
    },
    "adversarial": dict(
      {
        k: collected[k][adv]
        for k in (
          "prompt_tokens",
          "prompt_mask",
          "response_tokens",
          "response_mask",
          "prompt_index",
          "gold",
          "seed",
          "step",
        )
      },
      pair=np.arange(len(pairs)),
      filter_r1=np.array([p["r1"] for p in pairs], np.float32),
      filter_z=np.array([p["z"] for p in pairs], np.float32),
    ),
  }
  prompt_width = max(p["prompt_tokens"].shape[1] for p in parts.values())
  response_width = max(p["response_tokens"].shape[1] for p in parts.values())
  rows: dict[str, Any] = {"group": np.concatenate([np.full(len(p["prompt_index"]), g) for g, p in parts.items()])}
  for key, width, left in (
    ("prompt_tokens", prompt_width, True),
    ("prompt_mask", prompt_width, True),
    ("response_tokens", response_width, False),
    ("response_mask", response_width, False),
  ):
    rows[key] = np.concatenate([_fit(np.asarray(p[key]), width, left) for p in parts.values()])
  rows["prompt_mask"] = rows["prompt_mask"].astype(bool)
  rows["response_mask"] = rows["response_mask"].astype(bool)
  rows["prompt_index"] = np.concatenate([p["prompt_index"] for p in parts.values()]).astype(np.int64)
  rows["gold"] = np.concatenate([p["gold"] for p in parts.values()]).astype(np.float32)
  # Per-row extras of one group (seed, step, the filter's R1 and z): NaN / -1 elsewhere.
  for key in ("seed", "step", "sample", "pair", "filter_r1", "filter_z"):
    float_key = key.startswith("filter_")
    rows[key] = np.concatenate(
      [
        np.asarray(p[key], np.float32 if float_key else np.int64)
        if key in p
        else np.full(len(p["prompt_index"]), np.nan if float_key else -1, np.float32 if float_key else np.int64)
        for p in parts.values()
      ]
    )
  rows["pool_prompts"] = pool_prompts
  rows["pairs"] = pairs
  rows["num_collected"] = int(collected["response_tokens"].shape[0])
  rows["num_pool"] = num_prompts
  return rows


def _score(rows: dict[str, Any], config: Any, workdir: epath.Path, rounds: list[int]) -> dict[int, dict[str, Any]]:
  """Every response's rewards under each RM round: members, ensemble mean/spread, R1 vs T(x), vs the reference."""
  target, threshold_kind = config.attack.target, config.attack.threshold
  is_reference = rows["group"] == "reference"
  num_pool = rows["num_pool"]
  out = {}
  for r in rounds:
    graphdef, params, meta = wd.load_reward_model(wd.rm_path(workdir, r))
    if not 0 <= target < meta["num_members"]:
      raise ValueError(f"attack.target={target} is not a member of RM round {r} ({meta['num_members']} members)")
    members = inference.score_members(
      graphdef, params, rows["prompt_tokens"], rows["prompt_mask"], rows["response_tokens"], rows["response_mask"]
    )  # [K, N]
    # R1 against T(x) in the adversary's units (reference z when attack.standardize); the reference group is
    # every answer of prefs/reference.npz, the population the units are measured on.
    units = inference.reward_units(config, workdir, r, members[:, is_reference])
    members = inference.in_units(members, units)
    mean = members.mean(axis=0)
    # The reference answers per prompt, [P, n], in prompt order (the reference group is prompt-major).
    reference_r1 = members[target][is_reference].reshape(num_pool, -1)
    reference_mean = mean[is_reference].reshape(num_pool, -1).mean(axis=1)
    threshold = np.asarray(
      per_prompt_threshold(reference_r1, kind=threshold_kind, constant=config.attack.get("tau", 0.0))
    )[rows["prompt_index"]]
    out[r] = {
      "members": members,
      "mean": mean,
      "spread": members.std(axis=0),
      "r1": members[target],
      "threshold": threshold,
      "reference_mean": reference_mean[rows["prompt_index"]],
    }
    del params
  return out


def _stats(values: np.ndarray) -> float | None:
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else None


def summarize(
  rows: dict[str, Any], rewards: dict[int, dict[str, Any]], checks: dict[str, np.ndarray], group: str
) -> dict[str, Any]:
  """One group's metrics: rewards per RM round and the quality checks (fractions in [0, 1])."""
  sel = rows["group"] == group
  summary: dict[str, Any] = {
    "num_responses": int(sel.sum()),
    "num_prompts": int(np.unique(rows["prompt_index"][sel]).size),
  }
  for r, reward in rewards.items():
    summary[f"rm_round_{r}"] = {
      "reward_mean": _stats(reward["mean"][sel]),
      "member_spread": _stats(reward["spread"][sel]),
      "r1_mean": _stats(reward["r1"][sel]),
      "margin_vs_reference": _stats(reward["mean"][sel] - reward["reference_mean"][sel]),
      "beats_reference": _stats(reward["mean"][sel] > reward["reference_mean"][sel]),
      "above_threshold": _stats(reward["r1"][sel] > reward["threshold"][sel]),
    }
  perplexity = checks["perplexity"][sel]
  finite = perplexity[np.isfinite(perplexity)]
  summary.update(
    {
      "repeated_ngram_fraction": _stats(checks["repeated_ngram_fraction"][sel]),
      "longest_run": _stats(checks["longest_run"][sel]),
      "repetitive": _stats(checks["repetitive"][sel]),
      "missing_final_punctuation": _stats(checks["no_final_punctuation_flag"][sel]),
      "prompt_copy_fraction": _stats(checks["prompt_copy_fraction"][sel]),
      "copies_prompt": _stats(checks["copies_prompt_flag"][sel]),
      "empty_or_near_empty": _stats(checks["near_empty"][sel]),
      "no_eos": _stats(~checks["has_eos"][sel]),
      "perplexity_median": float(np.median(finite)) if finite.size else None,
      "perplexity_mean": float(finite.mean()) if finite.size else None,
      "high_perplexity": _stats(checks["high_perplexity"][sel]),
      "num_tokens": _stats(checks["num_tokens"][sel]),
      "num_words": _stats(checks["num_words"][sel]),
      "flagged": _stats(checks["num_flags"][sel] > 0),
      "gold_mean": _stats(rows["gold"][sel]),
    }
  )
  return summary


def _quality(
  rows: dict[str, Any],
  texts: list[str],
  perplexity: np.ndarray,
  eos_ids: set[int],
) -> tuple[list[dict[str, Any]], list[list[str]], dict[str, np.ndarray]]:
  """Per-row text checks and flags, and their columns as arrays."""
  prompts = [prompt_text(rows["pool_prompts"][p]) for p in rows["prompt_index"]]
  is_reference = rows["group"] == "reference"
  reference_ppl = perplexity[is_reference & np.isfinite(perplexity)]
  limit = PERPLEXITY_FACTOR * float(np.median(reference_ppl)) if reference_ppl.size else None
  metrics, flags = [], []
  for i, (text, prompt) in enumerate(zip(texts, prompts)):
    ids = [int(t) for t, m in zip(rows["response_tokens"][i], rows["response_mask"][i]) if m]
    has_eos = bool(ids) and ids[-1] in eos_ids
    tokens = [t for t in ids if t not in eos_ids]
    row = dict(
      quality.text_quality(text, prompt, tokens),
      has_eos=has_eos,
      num_tokens=len(tokens),
      perplexity=float(perplexity[i]),
    )
    metrics.append(row)
    flags.append(quality.quality_flags(row, perplexity_limit=limit))
  columns = {k: np.array([m[k] for m in metrics]) for k in metrics[0]} if metrics else {}
  # Group shares count the flags, so the summary table and the examples agree (an empty answer is "empty",
  # not also "no final punctuation").
  for column, flag in (
    ("copies_prompt_flag", "copies prompt"),
    ("repetitive", "repetitive"),
    ("high_perplexity", "high perplexity"),
    ("no_final_punctuation_flag", "no final punctuation"),
  ):
    columns[column] = np.array([flag in f for f in flags], bool)
  columns["num_flags"] = np.array([len(f) for f in flags])
  return metrics, flags, columns


def select_examples(
  rows: dict[str, Any], rewards: dict[int, dict[str, Any]], texts: np.ndarray, chosen_texts: dict[int, str], limit: int
) -> list[tuple[int, int]]:
  """(adversarial row, reference row) pairs to show: the largest first-RM-round margins, one per prompt first.

  The adversarial side is the filter's kept samples, or the final adversary's
  answers when the filter kept none. The reference side is the pair's chosen
  answer (what adversarial training used), else the prompt's reference answer
  the round-0 ensemble likes best.
  """
  group = "adversarial" if np.any(rows["group"] == "adversarial") else "adversary"
  candidates = np.flatnonzero(rows["group"] == group)
  reward = rewards[min(rewards)]
  gain = reward["mean"][candidates] - reward["reference_mean"][candidates]
  order = candidates[np.argsort(-gain, kind="stable")]
  reference_rows = np.flatnonzero(rows["group"] == "reference")
  by_prompt = {}
  for p in np.unique(rows["prompt_index"][reference_rows]):
    mine = reference_rows[rows["prompt_index"][reference_rows] == p]
    nonempty = mine[texts[mine] != ""] if np.any(texts[mine] != "") else mine
    by_prompt[int(p)] = (mine, nonempty[np.argmax(reward["mean"][nonempty])])

  def reference_row(row: int) -> int:
    mine, best = by_prompt[int(rows["prompt_index"][row])]
    chosen = chosen_texts.get(row)
    if chosen is not None:
      match = mine[texts[mine] == chosen]
      if match.size:
        return int(match[0])
    return int(best)

  picked, seen = [], set()
  for distinct_first in (True, False):
    for row in order:
      prompt = int(rows["prompt_index"][row])
      if len(picked) >= limit:
        break
      if (distinct_first and prompt in seen) or any(row == p for p, _ in picked):
        continue
      seen.add(prompt)
      picked.append((int(row), reference_row(row)))
  return picked


# ----------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------


def _text_cell(text: str, limit: int = MAX_CHARS) -> str:
  """Response/prompt text for a markdown table cell: HTML-escaped, newlines as <br>, long text cut."""
  if len(text) > limit:
    text = text[:limit] + f" [... {len(text) - limit} more characters]"
  if not text.strip():
    return "_(empty)_"
  return html.escape(text, quote=False).replace("\r", "").replace("\n", "<br>")


def _percent(value: float | None) -> str | None:
  return None if value is None else f"{100.0 * value:.1f}"


def _num(value: float | int | None) -> str | None:
  """A number with as many decimals as its size needs (rewards 0.123, perplexities 4404)."""
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, int):
    return str(value)
  magnitude = abs(value)
  return f"{value:.0f}" if magnitude >= 1000 else f"{value:.1f}" if magnitude >= 10 else f"{value:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
  """REPORT.md from ``report.json``'s contents (pure: a report dict in, markdown out)."""
  groups = [g for g in GROUPS if g in report["groups"]]
  rounds = report["rm_rounds"]
  attack_round = report["round"]
  num_kept = report["groups"].get("adversarial", {}).get("num_responses", 0)
  lines = [f"# What the adversary found (attack round {attack_round})", ""]
  lines += [
    f"The adversary of attack round {attack_round} was trained against RM round {attack_round}. It drew "
    f"{report['num_collected']} samples; the filter kept {num_kept} distinct ones as adversarial pairs. "
    f"Each group answers prompts of the attack pool "
    f"({report['num_prompts']} prompts); real text has no gold reward, so read the answers below.",
    "",
  ]
  for sentence in report["headline"]:
    lines.append(f"* {sentence}")
  lines.append("")
  headers = ["metric"] + [GROUP_TITLES[g] for g in groups]
  table = [["responses"] + [report["groups"][g]["num_responses"] for g in groups]]
  for r in rounds:
    name = f"RM round {r}" + (" (conventional)" if r == 0 else " (adversarially trained)")
    key = f"rm_round_{r}"
    get = lambda g, k, key=key: report["groups"][g][key][k]
    table += [
      [f"{name}: reward, ensemble mean"] + [_num(get(g, "reward_mean")) for g in groups],
      [f"{name}: member spread (std)"] + [_num(get(g, "member_spread")) for g in groups],
      [f"{name}: margin over the prompt's reference answers"] + [_num(get(g, "margin_vs_reference")) for g in groups],
      [f"{name}: beats the reference answers (%)"] + [_percent(get(g, "beats_reference")) for g in groups],
      [f"{name}: R1 > T(x) (%)"] + [_percent(get(g, "above_threshold")) for g in groups],
    ]
  percent_rows = (
    ("repetitive (%)", "repetitive"),
    ("no final punctuation (%)", "missing_final_punctuation"),
    ("copies the prompt (%)", "copies_prompt"),
    ("empty or near-empty (%)", "empty_or_near_empty"),
    ("no EOS: stopped at the length limit (%)", "no_eos"),
    (f"high perplexity: > {PERPLEXITY_FACTOR:g}x the reference median (%)", "high_perplexity"),
    ("any flag (%)", "flagged"),
  )
  value_rows = (
    ("repeated word 3-grams (mean share)", "repeated_ngram_fraction"),
    ("longest run of one token (mean)", "longest_run"),
    ("prompt 3-grams copied (mean share)", "prompt_copy_fraction"),
    ("perplexity under the policy (median)", "perplexity_median"),
    ("length (tokens, mean)", "num_tokens"),
    ("length (words, mean)", "num_words"),
  )
  table += [[label] + [_num(report["groups"][g][key]) for g in groups] for label, key in value_rows]
  table += [[label] + [_percent(report["groups"][g][key]) for g in groups] for label, key in percent_rows]
  if any(report["groups"][g]["gold_mean"] is not None for g in groups):
    table.append(["gold reward (synthetic world)"] + [_num(report["groups"][g]["gold_mean"]) for g in groups])
  lines += ["## Summary", "", markdown_table(headers, table)]
  lines += [
    f"The reference group is every reference answer in prefs/reference.npz; margins compare each answer "
    f"with the mean reward of the reference answers to its own prompt. R1 is member "
    f"{report['attack_target']}, T(x) its `{report['threshold']}` reward of the reference answers "
    f"(recomputed for each RM round). Flags: repetitive (repeated 3-gram share > "
    f"{quality.MAX_REPEATED_FRACTION:g} or a run of >= {quality.MAX_RUN} identical tokens), copies the prompt "
    f"(> {quality.MAX_COPY_FRACTION:g} of its 3-grams from the prompt, or >= {quality.MIN_COPY_SPAN} prompt "
    f"words verbatim), near-empty (< {quality.MIN_WORDS} words).",
    "",
  ]

  examples = report["examples"]
  lines += ["## Examples", ""]
  if not examples:
    lines += ["_No responses to show._", ""]
  else:
    source = (
      "the filter's adversarial pairs"
      if report["examples_from"] == "adversarial"
      else "the final adversary's answers (the filter kept none)"
    )
    lines += [
      f"From {source}, largest RM round {rounds[0]} margin over the reference answer first. The reference "
      "answer is the pair's chosen side (else the prompt's reference answer the round-0 ensemble likes "
      "best).",
      "",
    ]
  for i, example in enumerate(examples, 1):
    adversarial, reference = example["adversarial"], example["reference"]
    lines += [f"### {i}. {_text_cell(prompt_text(example['prompt']), 200)}", ""]
    table = [["response", _text_cell(adversarial["response"]), _text_cell(reference["response"])]]
    for r in rounds:
      cell = lambda side, r=r: f"{side['rewards'][str(r)]['mean']:.3f} ± {side['rewards'][str(r)]['spread']:.3f}"
      table.append([f"RM round {r}: mean ± spread", cell(adversarial), cell(reference)])
    table.append(["perplexity under the policy", _num(adversarial["perplexity"]), _num(reference["perplexity"])])
    table.append(["tokens", adversarial["num_tokens"], reference["num_tokens"]])
    table.append(["flags", ", ".join(adversarial["flags"]) or "-", ", ".join(reference["flags"]) or "-"])
    if adversarial.get("filter_z") is not None:
      table.append(["filter: R1, z(U)", f"{adversarial['filter_r1']:.3f}, {adversarial['filter_z']:.2f}", "-"])
    lines += [markdown_table(["", "adversarial", "reference"], table)]
  return "\n".join(lines).rstrip() + "\n"


def _headline(groups: dict[str, Any], rounds: list[int]) -> list[str]:
  """One sentence per RM round: how much the adversarial answers out-score the reference, and how often."""
  sentences = []
  group = "adversarial" if groups["adversarial"]["num_responses"] else "adversary"
  for r in rounds:
    stats = groups[group][f"rm_round_{r}"]
    if stats["margin_vs_reference"] is None:
      continue
    sentences.append(
      f"RM round {r}{' (adversarially trained)' if r > 0 else ''}: the {GROUP_NOUNS[group]} score "
      f"{stats['margin_vs_reference']:+.3f} against the reference answers to the same prompts (ensemble mean); "
      f"{100 * stats['beats_reference']:.0f}% beat them, {100 * stats['above_threshold']:.0f}% have R1 > T(x)."
    )
  flagged = groups[group]["flagged"]
  if flagged is not None:
    sentences.append(
      f"{100 * flagged:.0f}% of the {GROUP_NOUNS[group]} carry a quality flag "
      f"(the reference answers: {100 * (groups['reference']['flagged'] or 0):.0f}%)."
    )
  return sentences


# ----------------------------------------------------------------------------
# The stage.
# ----------------------------------------------------------------------------


def run(config: Any, workdir: epath.Path) -> dict[str, Any] | None:
  """Stage `inspect`: writes WORKDIR/inspect/ (see module doc); returns the report (None when skipped)."""
  workdir = epath.Path(workdir)
  out = workdir / STAGE
  options = from_node(InspectConfig, config.get("inspect", None), "config.inspect")
  round_index = options.round
  # Named in pipeline order, so the first missing artefact says which stage to run.
  _require(workdir / "prefs" / "reference.npz", "the `prefs` stage")
  _require(wd.rm_path(workdir, 0) / "rm_meta.json", "the `rm` stage")
  rounds = rm_rounds(config, workdir)
  if wd.is_done(out):
    done = json.loads((out / REPORT_FILE).read_text()) if (out / REPORT_FILE).exists() else {}
    if done.get("rm_rounds") == rounds and done.get("round") == round_index:
      logging.info("inspect: %s/DONE exists, skipping", out)
      return None
    logging.info(
      "inspect: RM rounds %s now exist (the report scored %s, attack round %s): recomputing",
      rounds,
      done.get("rm_rounds"),
      done.get("round"),
    )
    (out / wd.DONE).unlink()
  out.mkdir(parents=True, exist_ok=True)

  tokenizer = wd.policy_tokenizer(workdir)  # None: the synthetic world
  rows = _group_rows(config, workdir, round_index, tokenizer)
  texts = inference.decode_responses(rows["response_tokens"], rows["response_mask"], tokenizer)
  rewards = _score(rows, config, workdir, rounds)
  _, policy_graphdef, policy_params = wd.load_policy(workdir / "sft")
  perplexity = quality.response_perplexity(
    policy_graphdef,
    policy_params,
    rows["prompt_tokens"],
    rows["prompt_mask"],
    rows["response_tokens"],
    rows["response_mask"],
    options.batch_size,
  )
  del policy_params
  eos = inference.sampling_config(config.attack.sampling).eos_id
  eos_ids = set(eos) if isinstance(eos, tuple) else {int(eos)}
  metrics, flags, checks = _quality(rows, texts, perplexity, eos_ids)

  def side(row: int) -> dict[str, Any]:
    record = {
      "group": str(rows["group"][row]),
      "prompt_index": int(rows["prompt_index"][row]),
      "response": texts[row],
      "flags": flags[row],
      "rewards": {
        str(r): {
          "mean": reward["mean"][row],
          "spread": reward["spread"][row],
          "members": reward["members"][:, row],
          "r1": reward["r1"][row],
          "threshold": reward["threshold"][row],
          "reference_mean": reward["reference_mean"][row],
        }
        for r, reward in rewards.items()
      },
    }
    record.update(metrics[row])
    for key in ("seed", "step", "sample", "pair"):
      if rows[key][row] >= 0:
        record[key] = int(rows[key][row])
    for key in ("filter_r1", "filter_z", "gold"):
      if np.isfinite(rows[key][row]):
        record[key] = float(rows[key][row])
    return record

  chosen_texts = {
    int(row): rows["pairs"][int(rows["pair"][row])]["chosen"] for row in np.flatnonzero(rows["group"] == "adversarial")
  }
  picked = select_examples(rows, rewards, np.array(texts, dtype=object), chosen_texts, options.num_examples)
  groups = {g: summarize(rows, rewards, checks, g) for g in GROUPS}
  report = {
    "round": round_index,
    "rm_rounds": rounds,
    "attack_target": config.attack.target,
    "threshold": config.attack.threshold,
    "num_collected": rows["num_collected"],
    "num_prompts": rows["num_pool"],
    "perplexity_flag_factor": PERPLEXITY_FACTOR,
    "artefacts": {
      "collected": str(wd.round_dir(workdir, "attack", round_index) / "collected.npz"),
      "final_samples": str(wd.round_dir(workdir, "attack", round_index) / "final_samples.npz"),
      "adversarial_pairs": str(wd.pairs_path(workdir, round_index)),
      "reference": str(workdir / "prefs" / "reference.npz"),
      "rms": {str(r): str(wd.rm_path(workdir, r)) for r in rounds},
    },
    "groups": groups,
    "headline": _headline(groups, rounds),
    "examples_from": "adversarial" if groups["adversarial"]["num_responses"] else "adversary",
    "examples": [
      {"prompt": rows["pool_prompts"][int(rows["prompt_index"][a])], "adversarial": side(a), "reference": side(b)}
      for a, b in picked
    ],
  }
  wd.write_jsonl(
    out / RESPONSES_FILE,
    [dict(side(i), prompt=rows["pool_prompts"][int(rows["prompt_index"][i])]) for i in range(len(texts))],
  )
  wd.write_json(out / REPORT_FILE, report)
  # Through JSON, so the markdown shows exactly what report.json holds.
  markdown = render_markdown(json.loads((out / REPORT_FILE).read_text()))
  wd.write_text_atomic(out / MARKDOWN_FILE, markdown)
  wd.mark_done(out)
  for sentence in report["headline"]:
    logging.info("inspect: %s", sentence)
  logging.info("inspect: wrote %s", out / MARKDOWN_FILE)
  return report
