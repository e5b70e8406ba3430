r"""Per-device memory of the SFT and Bradley-Terry steps on a mesh, compiled ahead of time on CPU (docs/scaling.md).

  python benchmarks/scaling_memory.py --devices=16 --mesh=1,16,1 --model=llama_1b_like --batch=32 --length=512

Forces ``--devices`` host CPU devices, builds the (data, fsdp, tensor) mesh,
and lowers and compiles the stages' own jitted steps (``jit_sft_step``,
``jit_bt_step``, with the train state's shardings from ``state_shardings``) on
abstract shapes: nothing is allocated. Prints one JSON line per step with
``compiled.memory_analysis()``, which describes one device's program:

* ``argument_bytes``: that device's shard of the train state (parameters,
  AdamW moments) and of the batch -- exact for any backend, since the
  shardings are the same;
* ``output_bytes`` / ``alias_bytes``: the new state (donated: aliased to the
  arguments) and the metrics;
* ``temp_bytes``: XLA:CPU's temporaries (activations, gradients,
  all-gathered parameters). XLA:TPU and XLA:GPU fuse and schedule
  differently, so on an accelerator this is an estimate, not a measurement.

Parameters are float32 (AdamW state likewise), compute bfloat16, as the
accelerator configs run them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", type=int, required=True, help="host CPU devices to force (the mesh's size)")
  parser.add_argument("--mesh", required=True, help="data,fsdp,tensor (one entry may be -1)")
  parser.add_argument("--model", default="llama_1b_like", help="a shape of benchmarks/accelerator.py's SHAPES")
  parser.add_argument("--batch", type=int, default=32, help="sequences (SFT) / pairs (BT) per step, global")
  parser.add_argument("--length", type=int, default=512, help="tokens per sequence")
  parser.add_argument("--members", type=int, default=1, help="reward ensemble members (BT step)")
  parser.add_argument("--remat", default="full", choices=("none", "dots", "full"))
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  repo = pathlib.Path(__file__).resolve().parents[1]
  sys.path.insert(0, str(repo))
  # After XLA_FLAGS: importing jax fixes the device count.
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from advrm_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  from advrm_jax.models.lm import jit_sft_step  # pylint: disable=import-outside-toplevel
  from advrm_jax.models.transformer import Transformer  # pylint: disable=import-outside-toplevel
  from advrm_jax.reward.losses import jit_bt_step  # pylint: disable=import-outside-toplevel
  from advrm_jax.reward.model import RewardEnsemble  # pylint: disable=import-outside-toplevel
  from advrm_jax.train_state import (
    TrainState,
    abstract_module,
    make_optimizer,  # pylint: disable=import-outside-toplevel
    state_shardings,
  )
  from benchmarks.accelerator import SHAPES  # pylint: disable=import-outside-toplevel

  cfg = SHAPES[args.model].replace(dtype="bfloat16", param_dtype="float32", remat=args.remat)
  mesh = shd.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
  shd.check_batch_divisible(args.batch, mesh, "--batch")
  optimizer = make_optimizer(learning_rate=1e-5, schedule="constant", weight_decay=0.0)

  def abstract_state(factory):
    graphdef, params, axes = abstract_module(factory)
    shardings = state_shardings(optimizer, params, axes, mesh)
    state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), params)
    placed = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    return graphdef, placed, shardings

  tokens = jax.ShapeDtypeStruct((args.batch, args.length), jnp.int32)
  rng = jax.random.key(0)
  steps = {}
  graphdef, state, shardings = abstract_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  steps["sft"] = (
    jit_sft_step(graphdef, optimizer, shardings, mesh),
    state,
    dict(tokens=tokens, mask=tokens, loss_mask=tokens),
  )
  graphdef, state, shardings = abstract_state(lambda: RewardEnsemble(cfg, args.members, rngs=nnx.Rngs(0)))
  steps["bt"] = (
    jit_bt_step(graphdef, optimizer, shardings, mesh),
    state,
    dict(chosen_tokens=tokens, chosen_mask=tokens, rejected_tokens=tokens, rejected_mask=tokens),
  )
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  for name, (step, state, batch) in steps.items():
    analysis = step.lower(state, batch, rng).compile().memory_analysis()
    print(
      json.dumps(
        {
          "step": name,
          "model": args.model,
          "params": num_params if name == "bt" else None,
          "mesh": dict(mesh.shape),
          "batch": args.batch,
          "length": args.length,
          "members": args.members if name == "bt" else None,
          "remat": args.remat,
          "argument_bytes": int(analysis.argument_size_in_bytes),
          "output_bytes": int(analysis.output_size_in_bytes),
          "alias_bytes": int(analysis.alias_size_in_bytes),
          "temp_bytes": int(analysis.temp_size_in_bytes),
        }
      ),
      flush=True,
    )


if __name__ == "__main__":
  main()
