"""Markdown tables of an RL step's sampled responses (the ``text_fn`` tables RL runs log)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

RowDecoder = Callable[[np.ndarray], Sequence[str]]


def sample_table(
  samples: Mapping[str, np.ndarray],
  decode_prompts: RowDecoder,
  decode_responses: RowDecoder,
  reward_column: str = "proxy",
  limit: int = 4,
) -> str:
  """A markdown table of the first ``limit`` sampled responses: prompt, response and proxy reward.

  ``samples`` holds prompt_tokens [..., P], response_tokens [..., T] and proxy_reward [...] (leading axes
  flattened). The tables carry no masks: ``decode_prompts`` / ``decode_responses`` turn [n, P] / [n, T]
  token rows into one cell text a row, dropping padding themselves. The reward is shown to 2 decimals.
  """
  prompts = samples["prompt_tokens"].reshape(-1, samples["prompt_tokens"].shape[-1])[:limit]
  responses = samples["response_tokens"].reshape(-1, samples["response_tokens"].shape[-1])[:limit]
  proxy = samples["proxy_reward"].reshape(-1)[:limit]
  rows = [f"| prompt | response | {reward_column} |", "|---|---|---|"]
  for prompt, response, score in zip(decode_prompts(prompts), decode_responses(responses), proxy):
    rows.append(f"| {prompt} | {response} | {float(score):.2f} |")
  return "\n".join(rows)
