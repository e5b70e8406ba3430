r"""Realisations as a batch axis: one RL iteration and one Bradley-Terry step, W realisations vmapped vs serial.

  python benchmarks/realisations_vmap.py                          # default synthetic sizes, W = 1, 4, 8, 16
  python benchmarks/realisations_vmap.py --widths 1,8 --repeats 3 --json /tmp/realisations.json
  python benchmarks/realisations_vmap.py --quick                  # tiny sizes, W = 2 against one (the test)

A realisation is one (SFT policy, RM ensemble) pair: here the default
configs/synthetic.py shapes (the policy's ModelConfig, an independent RM
ensemble of rm.num_members members whose backbones start from the policy) with
random weights, a different seed per realisation, so values differ and shapes
do not. Both steps are the package's own functions, unchanged:

* RL: ``rl_driver.make_seeds_step`` around ``rl.engine.make_iteration`` with the
  `rlhf` stage's settings (rlhf.rl, rlhf.optimizer, rlhf.sampling,
  rlhf.prompts_per_step, num_seeds vmapped seeds), the "conventional" reward
  (``EnsembleMixSource``, member 0) and gold tracked as a metric: sampling,
  scoring, reference log-probs and the update, all in one program.
* BT: ``reward.losses.make_bt_step`` of the `rm` stage (independent members,
  bootstrap rows per member, rm.batch_size pairs of synthetic preference data
  per member, rm.optimizer, rm.margin, rm.centering_coef).

"one" is the production program of one realisation (``jax.jit`` of the step
as rl_driver.train_policy / rm_training.jit_bt_step build it). "serial W" is W
calls of it, one per realisation, blocked once at the end. "vmapped W" is
``jax.jit(jax.vmap(step))`` over the realisations' stacked states, reference
policies, RM weights, batches and keys (in_axes 0 everywhere), one call.
Each program is compiled once (``lower().compile()``, reported separately) and
all sides run interleaved ``--warmup`` + ``--repeats`` rounds; the table shows
medians and ratios of medians from the same run.

With random weights the policy almost never samples EOS, so every response
runs to max_new_tokens (the sampler's while_loop never stops early); a
trained policy's vmapped loop runs until the slowest realisation's last row
is done, which this benchmark does not model.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from advrm_jax import sharding as shd  # pylint: disable=wrong-import-position
from advrm_jax.config_node import from_node  # pylint: disable=wrong-import-position
from advrm_jax.data import synthetic_world as world  # pylint: disable=wrong-import-position
from advrm_jax.data.batching import step_rows  # pylint: disable=wrong-import-position
from advrm_jax.models.transformer import Transformer  # pylint: disable=wrong-import-position
from advrm_jax.pipelines import workdir as wd  # pylint: disable=wrong-import-position
from advrm_jax.pipelines.rl_driver import make_seeds_step  # pylint: disable=wrong-import-position
from advrm_jax.pipelines.nodes import PreferenceDataConfig  # pylint: disable=wrong-import-position
from advrm_jax.pipelines.rm_training import tokenize  # pylint: disable=wrong-import-position
from advrm_jax.reward.data import MemberBatches, synthetic_preference_pairs  # pylint: disable=wrong-import-position
from advrm_jax.reward.losses import jit_bt_step, make_bt_step  # pylint: disable=wrong-import-position
from advrm_jax.reward.model import init_reward_model  # pylint: disable=wrong-import-position
from advrm_jax.rl.engine import RLConfig, init_policy_params, init_rl_state, make_iteration  # pylint: disable=wrong-import-position
from advrm_jax.rl.rewards import EnsembleMixSource, aggregate_mix  # pylint: disable=wrong-import-position
from advrm_jax.rl.sampler import SamplingConfig  # pylint: disable=wrong-import-position
from advrm_jax.train_state import abstract_module, create_train_state, make_optimizer  # pylint: disable=wrong-import-position
from benchmarks import common  # pylint: disable=wrong-import-position

CONFIG_PATH = REPO / "configs" / "synthetic.py"


def load_config(quick: bool):
  """configs/synthetic.py at its default sizes; ``quick``: its ``:small`` sizes, shrunk further for a test."""
  spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("small" if quick else None)
  if quick:
    # Two seeds keep the nested (realisation, seed) vmap in the test; the rest only makes it fast.
    config.num_seeds = 2
    config.rlhf.prompts_per_step = 2
    config.rlhf.sampling.max_new_tokens = 8
    config.rm.batch_size = 4
  return config


@dataclasses.dataclass
class Bench:
  """One step function and the inputs of ``count`` realisations (lists, one entry per realisation)."""

  name: str
  step: Callable  # pure (state, *inputs) -> (state, metrics); the production program jits it as is
  production: Callable  # the jitted step one realisation runs in the pipeline (the serial side)
  states: list  # donated by the step
  inputs: list  # per realisation: the step's other arguments (a tuple)

  def stacked(self, width: int):
    """(states, inputs) of the first ``width`` realisations stacked on a new leading axis (fresh arrays)."""
    stack = lambda *xs: jnp.stack(xs)
    return (jax.tree.map(stack, *self.states[:width]), jax.tree.map(stack, *self.inputs[:width]))

  def vmapped(self):
    """The W-realisation program: the step vmapped over every argument, the state donated."""
    return jax.jit(jax.vmap(self.step), donate_argnums=(0,))


def realisation_policies(config, count: int) -> tuple[Any, Any, list]:
  """(model config, graphdef, [policy params]) of ``count`` random-init policies of config.model's shape."""
  model_config = wd.model_config_from(config)
  graphdef, _, _ = abstract_module(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
  init = jax.jit(lambda key: nnx.to_pure_dict(nnx.state(Transformer(model_config, rngs=nnx.Rngs(key)))))
  return model_config, graphdef, [init(jax.random.key(1000 + r)) for r in range(count)]


def realisation_rms(config, model_config, policies: list) -> tuple[Any, Any, list]:
  """(RM graphdef, axes, [RM params]): the `rm` stage's ensemble, backbones from each realisation's policy."""
  rm = config.rm
  out = [
    init_reward_model(
      model_config,
      rm.num_members,
      rm.ensemble,
      seed=rm.init_seed,
      head_seed=rm.head_seed + 1000 * r,
      backbone_params=policy,
    )
    for r, policy in enumerate(policies)
  ]
  return out[0][0], out[0][2], [params for _, params, _ in out]


def rl_bench(config, count: int) -> Bench:
  """The `rlhf` stage's RL step ("conventional": RM member 0) and ``count`` realisations' inputs."""
  node = config.rlhf
  model_config, graphdef, policies = realisation_policies(config, count)
  rm_graphdef, _, rm_params = realisation_rms(config, model_config, policies)
  rl_config = from_node(RLConfig, node.rl, "config.rlhf.rl")
  sampling = from_node(SamplingConfig, node.sampling, "config.rlhf.sampling")
  optimizer = make_optimizer(node.optimizer, "config.rlhf.optimizer", total_steps=node.num_steps)
  iteration = make_iteration(
    graphdef, optimizer, rl_config, sampling, EnsembleMixSource(rm_graphdef), gold_fn=world.gold_reward
  )
  step = make_seeds_step(iteration, config.num_seeds)
  mix = aggregate_mix("member", config.rm.num_members, member=0)
  prompts = world.prompt_arrays(node.num_prompts, config.seed, "rl", config.world.max_prompt_len)
  states, inputs = [], []
  for r, policy in enumerate(policies):
    # As train_policy starts its seeds: every seed from the reference policy.
    rl_params = init_policy_params(policy, model_config.d_model)
    states.append(jax.vmap(lambda _: init_rl_state(rl_params, optimizer, rl_config))(jnp.arange(config.num_seeds)))
    # Realisation r gets the prompts of step r of the run's prompt stream.
    rows = step_rows(node.num_prompts, node.prompts_per_step, config.seed + 17, r)
    batch = {k: jnp.asarray(v[rows]) for k, v in prompts.items()}
    inputs.append((policy, {"rm": rm_params[r], "mix": mix}, batch, jax.random.key(r)))
  return Bench("RL iteration", step, jax.jit(step, donate_argnums=(0,)), states, inputs)


def bt_bench(config, count: int, num_pairs: int) -> Bench:
  """The `rm` stage's BT step and ``count`` realisations' states and batches (own preference data each)."""
  rm = config.rm
  model_config, _, policies = realisation_policies(config, count)
  graphdef, axes, rm_params = realisation_rms(config, model_config, policies)
  optimizer = make_optimizer(dict(rm.optimizer))
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  tokenizer = world.WordTokenizer(unknown="unk")
  states, inputs = [], []
  for r, params in enumerate(rm_params):
    state, shardings = create_train_state(params, axes, optimizer, mesh)
    pairs = synthetic_preference_pairs(num_pairs, seed=config.seed + r, beta=config.prefs.beta)
    data = tokenize(from_node(PreferenceDataConfig, config.data, "config.data"), pairs, tokenizer, "train")
    batches = MemberBatches(
      data["chosen_tokens"].shape[0],
      rm.batch_size,
      rm.num_members,
      mode=rm.member_data,
      per_member_rows=rm.ensemble == "independent",
      seed=rm.data_seed + r,
    )
    states.append(state)
    inputs.append(({k: jnp.asarray(v) for k, v in batches.batch(data, 0).items()}, jax.random.key(r)))
  production = jit_bt_step(graphdef, optimizer, shardings, mesh, margin=rm.margin, centering_coef=rm.centering_coef)
  step = make_bt_step(graphdef, optimizer, margin=rm.margin, centering_coef=rm.centering_coef)
  return Bench("BT step", step, production, states, inputs)


def copy_tree(tree):
  return jax.tree.map(jnp.copy, tree)


def max_difference(vmapped, serial: list) -> float:
  """Largest |vmapped[r] - serial[r]| over every leaf of (state, metrics) and realisation r."""
  worst = 0.0
  for r, one in enumerate(serial):
    mine = jax.tree.map(lambda x: x[r], vmapped)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(one)):
      worst = max(worst, float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))))
  return worst


def measure(bench: Bench, widths: list[int], repeats: int, warmup: int) -> dict[str, Any]:
  """Compile seconds and median wall seconds of "one", vmapped W and serial W at every width.

  Before timing, the smallest width above 1 is checked: one call of the
  compiled vmapped program against one production call per realisation,
  from copies of the same states; ``check`` holds both outputs (host
  arrays; ``vmapped`` with the leading realisation axis, ``serial`` a list)
  and ``check_max_abs_diff``.
  """
  out: dict[str, Any] = {"compile_s": {}}
  out["compile_s"]["one"], production = common.compile_seconds(
    bench.production, copy_tree(bench.states[0]), *bench.inputs[0]
  )
  vmapped: dict[int, dict[str, Any]] = {}
  for width in widths:
    states, inputs = bench.stacked(width)
    out["compile_s"][f"vmapped_{width}"], compiled = common.compile_seconds(bench.vmapped(), states, *inputs)
    vmapped[width] = {"fn": compiled, "states": states, "inputs": inputs}

  check_width = min((w for w in widths if w > 1), default=None)
  if check_width is not None:
    states, inputs = bench.stacked(check_width)
    together = jax.device_get(vmapped[check_width]["fn"](states, *inputs))
    alone = [jax.device_get(production(copy_tree(bench.states[r]), *bench.inputs[r])) for r in range(check_width)]
    out["check"] = {"width": check_width, "vmapped": together, "serial": alone}
    out["check_max_abs_diff"] = max_difference(together, alone)

  serial_states = [copy_tree(s) for s in bench.states[: max(widths)]]

  def vmapped_side(width):
    holder = vmapped[width]

    def run():
      start = time.perf_counter()
      holder["states"], metrics = holder["fn"](holder["states"], *holder["inputs"])
      jax.block_until_ready((holder["states"], metrics))
      return time.perf_counter() - start

    return run

  def serial_side(width):
    def run():
      start = time.perf_counter()
      outputs = []
      for r in range(width):
        serial_states[r], metrics = production(serial_states[r], *bench.inputs[r])
        outputs.append(metrics)
      jax.block_until_ready((serial_states[:width], outputs))
      return time.perf_counter() - start

    return run

  # "one" is serial W=1: the production program on one realisation.
  sides = {"serial_1": serial_side(1)}
  for width in widths:
    sides[f"vmapped_{width}"] = vmapped_side(width)
    sides[f"serial_{width}"] = serial_side(width)
  samples = common.interleave(sides, repeats, warmup)
  out["median_s"] = {name: common.median(values) for name, values in samples.items()}
  out["raw"] = {name: common.spread(values) for name, values in samples.items()}
  one = out["median_s"]["serial_1"]
  out["rows"] = [
    {
      "width": w,
      "vmapped_s": out["median_s"][f"vmapped_{w}"],
      "serial_s": out["median_s"][f"serial_{w}"],
      "vmapped_over_one": out["median_s"][f"vmapped_{w}"] / one,
      "speedup": out["median_s"][f"serial_{w}"] / out["median_s"][f"vmapped_{w}"],
      "compile_s": out["compile_s"][f"vmapped_{w}"],
    }
    for w in widths
  ]
  return out


def table(name: str, result: dict[str, Any]) -> str:
  lines = [
    f"| {name}: W | vmapped (s) | serial, W calls (s) | vmapped W / one | serial / vmapped | compile vmapped (s) |",
    "|---:|---:|---:|---:|---:|---:|",
  ]
  for row in result["rows"]:
    lines.append(
      f"| {row['width']} | {row['vmapped_s']:.3f} | {row['serial_s']:.3f} | {row['vmapped_over_one']:.2f} | "
      f"{row['speedup']:.2f} | {row['compile_s']:.1f} |"
    )
  lines.append(
    f"\none = serial W=1, {result['median_s']['serial_1']:.3f} s (the production program, compile "
    f"{result['compile_s']['one']:.1f} s)"
  )
  if "check" in result:
    lines.append(
      f"vmapped W={result['check']['width']} vs its serial calls: max |difference| "
      f"{result['check_max_abs_diff']:.2g} over every state and metric leaf"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--widths", default=None, help="comma-separated vmap widths (default 1,4,8,16; --quick 2)")
  parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick 1)")
  parser.add_argument("--warmup", type=int, default=None, help="dropped rounds (default 1; --quick 0)")
  parser.add_argument("--parts", default="rl,bt", help="comma-separated: rl, bt")
  parser.add_argument("--bt_pairs", type=int, default=256, help="preference pairs generated per realisation")
  parser.add_argument(
    "--num_seeds",
    type=int,
    default=0,
    help="RL seeds vmapped inside each realisation (default: the config's num_seeds)",
  )
  parser.add_argument("--quick", action="store_true", help="tiny sizes (configs/synthetic.py:small, shrunk)")
  parser.add_argument("--json", default="", help="also write the results here")
  args = parser.parse_args(argv)
  widths = [int(w) for w in (args.widths or ("2" if args.quick else "1,4,8,16")).split(",")]
  if widths[0] < 1 or widths != sorted(set(widths)):
    parser.error(f"--widths {args.widths}: give increasing positive widths")
  repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
  warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = sorted(set(parts) - {"rl", "bt"})
  if unknown:
    parser.error(f"--parts: unknown {unknown}; expected rl and/or bt")

  config = load_config(args.quick)
  if args.num_seeds:
    config.num_seeds = args.num_seeds
  results: dict[str, Any] = {
    "command": " ".join(["python", "benchmarks/realisations_vmap.py"] + (argv if argv is not None else sys.argv[1:])),
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "machine": common.machine_info(),
    "versions": common.versions(),
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "widths": widths,
    "repeats": repeats,
    "warmup": warmup,
    "sizes": {
      "model": dict(config.model),
      "num_seeds": config.num_seeds,
      "rl_rows_per_seed": config.rlhf.prompts_per_step * config.rlhf.rl.num_samples,
      "max_new_tokens": config.rlhf.sampling.max_new_tokens,
      "rm_members": config.rm.num_members,
      "rm_ensemble": config.rm.ensemble,
      "rm_batch_size": config.rm.batch_size,
    },
  }
  builders = {"rl": lambda: rl_bench(config, max(widths)), "bt": lambda: bt_bench(config, max(widths), args.bt_pairs)}
  for part in parts:
    bench = builders[part]()
    result = measure(bench, widths, repeats, warmup)
    results[part] = result
    print(table(bench.name, result), flush=True)
  results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
  for part in parts:
    eight = next((row for row in results[part]["rows"] if row["width"] == 8), None)
    if eight is not None:
      results[part]["target_8_within_3x_of_one"] = eight["vmapped_over_one"] <= 3.0
      print(
        f"{part}: 8 realisations vmapped in {eight['vmapped_over_one']:.2f}x the time of one "
        f"(target <= 3x: {'met' if eight['vmapped_over_one'] <= 3.0 else 'NOT met'})"
      )
  print(f"load average at start {results['machine']['load_average_at_start']}, at end {results['load_average_at_end']}")
  if args.json:
    # The check's raw outputs stay out of the file (arrays); its max difference is in it.
    saved = {k: ({kk: vv for kk, vv in v.items() if kk != "check"} if k in parts else v) for k, v in results.items()}
    for part in parts:
      if "check" in results[part]:
        saved[part]["check_width"] = results[part]["check"]["width"]
    pathlib.Path(args.json).write_text(json.dumps(saved, indent=1, default=str))
  return results


if __name__ == "__main__":
  main()
