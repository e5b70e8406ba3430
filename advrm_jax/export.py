"""Export a trained RM ensemble as Hugging Face ``*ForSequenceClassification`` directories.

``export_reward_model(rm_dir, out_dir)``: every member of a trained RM (the
``rm`` stage's or an ``advtrain`` round's ``rm/``) as ``out_dir/member_<k>``;
also ``python -m advrm_jax.export export --rm_dir D --out O``. It sits above
``checkpoints.hf_reward`` (which writes one member) because reading an RM
round from a work dir is the pipelines' ``workdir.load_reward_model``.
"""

from __future__ import annotations

import argparse
import logging as std_logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from absl import logging

from advrm_jax.checkpoints.hf_reward import MEMBER_DIR, PathLike, save_hf_reward_member
from advrm_jax.fileio import is_remote
from advrm_jax.models.config import ModelConfig
from advrm_jax.pipelines import workdir as wd


def export_reward_model(
  rm_dir: PathLike,
  out_dir: PathLike,
  dtype: Any = None,
  max_shard_size: int | str | None = None,
  pad_token_id: int | None = None,
) -> list[pathlib.Path]:
  """Every member of a trained RM as ``out_dir/member_<k>`` (``*ForSequenceClassification``).

  Args:
    rm_dir: What ``advrm_jax.pipelines.workdir.load_reward_model`` accepts: a run's
      WORKDIR, its ``rm/``, or ``WORKDIR/advtrain/round_<r>/rm``.
    out_dir: Parent of the member directories.
    dtype: Storage dtype (default: the RM's ``param_dtype``).
    max_shard_size: Shard the weights above this size ('5GB', bytes).
    pad_token_id: The config's pad id (default: the RM tokenizer's).

  Returns:
    The member directories, in member order. Each has ``config.json``,
    the safetensors weights and, for a Hugging Face tokenizer, its files.
  """
  if is_remote(out_dir):
    raise ValueError(
      f"{out_dir}: the Hugging Face export writes local files (safetensors, tokenizer); export to a "
      "local directory and copy it to the bucket"
    )
  graphdef, params, meta = wd.load_reward_model(rm_dir)
  del graphdef
  cfg = ModelConfig.from_dict(meta["model"])
  spec = meta["tokenizer"]
  token_ids = {
    "bos_token_id": spec.get("bos_id"),
    "eos_token_id": spec.get("eos_id"),
    "pad_token_id": spec.get("pad_id") if pad_token_id is None else pad_token_id,
  }
  if token_ids["pad_token_id"] == token_ids["eos_token_id"]:
    logging.warning(
      "export_reward_model: the pad id %s is the EOS id; transformers will read rewards at the "
      "token before a trailing EOS while advrm_jax reads them at the EOS (pass pad_token_id= an id "
      "that never occurs in text)",
      token_ids["pad_token_id"],
    )
  tokenizer = wd.load_tokenizer(meta)
  hf_tokenizer = tokenizer if hasattr(tokenizer, "hf_tokenizer") else None
  out_dir = pathlib.Path(out_dir)
  if not wd.writes_artefacts():
    # In a multi-process job every process restores the RM (orbax's restore waits for all of them) and
    # process 0 alone writes the member directories; the caller's barrier (``mark_done``) follows.
    return [out_dir / MEMBER_DIR.format(k=k) for k in range(meta["num_members"])]
  return [
    save_hf_reward_member(
      out_dir / MEMBER_DIR.format(k=k),
      cfg,
      meta["ensemble"],
      params,
      k,
      token_ids=token_ids,
      tokenizer=hf_tokenizer,
      dtype=dtype,
      max_shard_size=max_shard_size,
    )
    for k in range(meta["num_members"])
  ]


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m advrm_jax.export export --rm_dir D --out O``."""
  parser = argparse.ArgumentParser(prog="python -m advrm_jax.export", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  export = sub.add_parser("export", help="write every member of a trained RM as a *ForSequenceClassification directory")
  export.add_argument("--rm_dir", required=True, help="WORKDIR, WORKDIR/rm or WORKDIR/advtrain/round_<r>/rm")
  export.add_argument("--out", required=True, help="output directory (member_<k>/ per member)")
  export.add_argument(
    "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="storage dtype (default: the RM's)"
  )
  export.add_argument("--max_shard_size", default=None, help="e.g. 5GB (default: one file)")
  export.add_argument("--pad_token_id", type=int, default=None, help="config pad id (default: the tokenizer's)")
  args = parser.parse_args(argv)
  std_logging.basicConfig(level=std_logging.INFO, format="%(message)s")
  try:
    written = export_reward_model(
      args.rm_dir, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size, pad_token_id=args.pad_token_id
    )
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
