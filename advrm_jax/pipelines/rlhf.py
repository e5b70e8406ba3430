"""Stage `rlhf`: policies trained against reward models, tracked by gold.

``rl_driver.train_policy`` (shared with `attack`, `online` and `empo`)
starts S seeds from the SFT reference policy, vmaps the jitted RL iteration
over them, streams prompts deterministically by step, and logs
proxy reward, gold reward (when the world has one: a metric only, never a
training signal unless the run is the labelled oracle baseline), KL,
entropy, clip fractions, value explained variance, response length and a
sample table every ``log_every`` steps.

``run`` trains one policy group per entry of ``config.rlhf.runs`` (e.g. the
conventional RM, the ensemble mean, worst-case min, uncertainty-weighted,
the Adv-RM RM), each in WORKDIR/rlhf/<name>/.
"""

from __future__ import annotations

from typing import Any

from etils import epath

from advrm_jax import sharding as shd
from advrm_jax.data import synthetic_world as world
from advrm_jax.pipelines import workdir as wd
from advrm_jax.pipelines.rl_driver import train_policy
from advrm_jax.rl.rewards import EnsembleMixSource, FunctionSource, aggregate_mix

STAGE = "rlhf"


def reward_source_for(run: Any, workdir: epath.Path, where: str, mesh: Any = None) -> tuple[Any, Any]:
  """(source, params) for one entry of config.rlhf.runs; RM weights on ``mesh``, split by their logical axes."""
  kind = run.get("source", "rm")
  if kind == "gold":
    # Oracle baseline: the policy optimises the exact gold reward.
    return FunctionSource(world.gold_reward), None
  if kind != "rm":
    raise ValueError(f"{where}.source: unknown {kind!r}; expected 'rm' or 'gold'")
  rm_graphdef, rm_params, meta = wd.load_reward_model(workdir / run.rm_stage, mesh=mesh)
  # The aggregate travels as data: every RM run (same ensemble shape) reuses one compiled iteration.
  mix = aggregate_mix(
    run.get("aggregate", "mean"), meta["num_members"], coef=run.get("coef", 1.0), member=run.get("member", 0)
  )
  return EnsembleMixSource(rm_graphdef), {"rm": rm_params, "mix": mix}


def run(config: Any, workdir: epath.Path) -> None:
  """Stage `rlhf`: one policy group per ``config.rlhf.runs`` entry."""
  workdir = epath.Path(workdir)
  wd.require_synthetic_policy(workdir, "rlhf")
  node = config.rlhf
  prompts = world.prompt_arrays(node.num_prompts, config.seed, "rl", config.world.max_prompt_len)
  only = tuple(node.get("only", ()))
  unknown = sorted(set(only) - set(node.runs))
  if unknown:
    raise ValueError(f"rlhf.only: unknown run(s) {unknown}; the runs are {sorted(node.runs)}")
  mesh = shd.make_mesh(tuple(config.mesh.shape))
  for name, run_spec in node.runs.items():
    if only and name not in only:
      continue
    run_dir = workdir / STAGE / name
    if wd.skip_if_done(run_dir, f"rlhf/{name}"):
      continue
    source, params = reward_source_for(run_spec, workdir, f"rlhf.runs.{name}", mesh)
    train_policy(f"rlhf/{name}", run_dir, workdir / wd.SFT, config, node, source, params, prompts, config.num_seeds)
    wd.mark_done(run_dir)
