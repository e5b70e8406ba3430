r"""Calibrate the RL regime and the world's exploit exposure on conventional RLHF only, then run the method.

  python launch/calibrate.py --out /tmp/calib                       # the protocol of docs/calibration.md
  python launch/calibrate.py --out /tmp/c --arg small --seeds 0,1 --exposures 0.0 \
      --settings 1e-3:0.1,3e-4:0.5 --jobs 2                          # a minute-scale rehearsal

The protocol (docs/calibration.md, fixed before any run):

1. Per realisation (``--config.seed`` s) and exposure e: the stages sft, prefs, rm once (``base``).
2. Per RL setting (learning rate, per-token KL coefficient): conventional RLHF alone (``rlhf.only``) on a
   copy of that base. A seed passes when conventional RLHF's seed-mean smoothed gold first rises at least
   ``--min_rise`` above the reference policy's gold and then hacks (the evaluate stage's detector fires on
   the seed-mean curves). Adv-RM is never run in this phase.
3. The (exposure, setting) with the most passing seeds wins (ties: the larger mean rise, then the smaller
   exposure). Nothing else is looked at to choose.
4. With ``--full``: the whole default experiment with the winner for every seed, and a table of the
   method checks per seed (the outcome columns come after, for the reader; they chose nothing).

Everything runs as subprocesses of ``python -m advrm_jax.main`` (``--jobs`` at once), sharing one JAX
compilation cache. Results: OUT/calibration.json, OUT/calibration.md, and each run's work dir.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from advrm_jax.evaluation import hacking  # pylint: disable=wrong-import-position
from advrm_jax.metrics import read_metrics  # pylint: disable=wrong-import-position


def _settings(text: str) -> list[tuple[float, float]]:
  """ "lr:kl,lr:kl" -> [(lr, kl)]."""
  out = []
  for item in text.split(","):
    lr, kl = item.split(":")
    out.append((float(lr), float(kl)))
  return out


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x.strip()]


def rl_overrides(lr: float, kl: float) -> list[str]:
  """One RL regime for RLHF and the adversary (configs/synthetic.py shares it the same way)."""
  return [
    f"--config.{node}.{key}={value}"
    for node in ("rlhf", "attack")
    for key, value in (("optimizer.learning_rate", lr), ("rl.kl_coef", kl))
  ]


def run_main(args, workdir: pathlib.Path, overrides: list[str], log: pathlib.Path) -> float:
  """One ``python -m advrm_jax.main`` run; returns its wall time; raises with the log's tail on failure."""
  config = f"{args.config}:{args.arg}" if args.arg else args.config
  command = [
    sys.executable,
    "-m",
    "advrm_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--config.compilation_cache_dir={args.out / 'jax_cache'}",
  ] + overrides
  start = time.time()
  remaining = args.deadline - start
  if remaining < 30:
    raise RuntimeError(f"not started: the --deadline_s budget is spent ({workdir})")
  with open(log, "w") as f:
    try:
      result = subprocess.run(
        command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=os.environ, check=False, timeout=remaining
      )
    except subprocess.TimeoutExpired as e:
      raise RuntimeError(f"stopped at the --deadline_s budget: {workdir}") from e
  if result.returncode:
    tail = log.read_text().splitlines()[-15:]
    raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n" + "\n".join(tail))
  return time.time() - start


def base_job(args, seed: int, exposure: float) -> dict:
  work = args.out / f"e{exposure:g}_s{seed}" / "base"
  work.mkdir(parents=True, exist_ok=True)
  seconds = run_main(
    args,
    work,
    [f"--config.seed={seed}", f"--config.world.exploit_exposure={exposure}", "--config.stages=('sft','prefs','rm')"],
    work.parent / "base.log",
  )
  return {"seed": seed, "exposure": exposure, "seconds": seconds}


def conventional_curve(run_dir: pathlib.Path, num_seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, seed-mean gold, seed-mean proxy) of an RLHF run's logged rows."""
  rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "gold_reward" in r]
  steps = np.array([r["step"] for r in rows])
  gold = np.array([np.mean([r[f"gold_reward/seed{s}"] for s in range(num_seeds)]) for r in rows])
  proxy = np.array([np.mean([r[f"proxy_reward/seed{s}"] for s in range(num_seeds)]) for r in rows])
  return steps, gold, proxy


def rl_job(args, seed: int, exposure: float, lr: float, kl: float) -> dict:
  base = args.out / f"e{exposure:g}_s{seed}" / "base"
  work = args.out / f"e{exposure:g}_s{seed}" / f"rl_{lr:g}_{kl:g}"
  if work.exists():
    shutil.rmtree(work)
  shutil.copytree(base, work, ignore=shutil.ignore_patterns("jax_cache"))
  seconds = run_main(
    args,
    work,
    [
      f"--config.seed={seed}",
      f"--config.world.exploit_exposure={exposure}",
      "--config.stages=('rlhf',)",
      "--config.rlhf.only=('conventional',)",
    ]
    + rl_overrides(lr, kl),
    work.parent / f"rl_{lr:g}_{kl:g}.log",
  )
  config = json.loads((work / "config.json").read_text())
  num_seeds, window, margin = (
    config["num_seeds"],
    config["evaluate"]["hacking_window"],
    config["evaluate"]["hacking_margin"],
  )
  steps, gold, proxy = conventional_curve(work / "rlhf" / "conventional", num_seeds)
  reference_gold = json.loads((work / "prefs" / "summary.json").read_text())["reference_gold_mean"]
  smoothed = hacking.moving_average(gold, window)
  rise = hacking.gold_rise(gold, reference_gold, window)
  onset = hacking.hacking_onset(gold, proxy, margin, window, steps)
  return {
    "seed": seed,
    "exposure": exposure,
    "lr": lr,
    "kl_coef": kl,
    "seconds": seconds,
    "reference_gold": reference_gold,
    "peak_gold": float(smoothed.max()),
    "rise": rise,
    "final_gold": float(smoothed[-1]),
    "hacking_onset": onset,
    "passes": bool(rise >= args.min_rise and onset is not None),
  }


def choose(results: list[dict]) -> dict:
  """The protocol's rule: most passing seeds, then the larger mean rise, then the smaller exposure."""
  groups: dict[tuple[float, float, float], list[dict]] = {}
  for r in results:
    groups.setdefault((r["exposure"], r["lr"], r["kl_coef"]), []).append(r)
  table = [
    {
      "exposure": e,
      "lr": lr,
      "kl_coef": kl,
      "passing_seeds": sum(r["passes"] for r in rs),
      "num_seeds": len(rs),
      "mean_rise": float(np.mean([r["rise"] for r in rs])),
      "mean_final_gold": float(np.mean([r["final_gold"] for r in rs])),
    }
    for (e, lr, kl), rs in sorted(groups.items())
  ]
  best = max(table, key=lambda g: (g["passing_seeds"], g["mean_rise"], -g["exposure"]))
  return {"table": table, "chosen": best}


def full_job(args, seed: int, exposure: float, lr: float, kl: float) -> dict:
  base = args.out / f"e{exposure:g}_s{seed}" / "base"
  work = args.out / f"full_s{seed}"
  if work.exists():
    shutil.rmtree(work)
  shutil.copytree(base, work, ignore=shutil.ignore_patterns("jax_cache"))
  seconds = run_main(
    args,
    work,
    [f"--config.seed={seed}", f"--config.world.exploit_exposure={exposure}"] + rl_overrides(lr, kl),
    args.out / f"full_s{seed}.log",
  )
  report = json.loads((work / "report.json").read_text())
  rlhf = report["rlhf"]
  final = lambda name: (rlhf.get(name) or {}).get("final_gold", {}).get("mean")
  rounds = report["attack_success"]["rounds"]
  return {
    "seed": seed,
    "seconds": seconds,
    "method_checks": report["method_checks"],
    "outcomes": {
      "attack_standard_by_round": [r["Adv-RM"]["standard"]["mean"] for r in rounds],
      "final_gold": {
        name: final(name) for name in ("conventional", "adv_rm", "fresh_pairs", "ensemble_mean", "oracle_gold")
      },
      "disagreement_share": (report.get("exploits") or {}).get("disagreement_share"),
    },
  }


def _pool(args, fn, jobs: list[tuple]) -> list[dict]:
  results = []
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    futures = [pool.submit(fn, args, *job) for job in jobs]
    for future in concurrent.futures.as_completed(futures):
      try:
        results.append(future.result())
        print(json.dumps(results[-1]), flush=True)
      except RuntimeError as e:  # one failed run is reported, the others go on
        print(f"FAILED: {e}", flush=True)
        results.append({"error": str(e)})
  return results


def _write(args, state: dict) -> None:
  (args.out / "calibration.json").write_text(json.dumps(state, indent=2, default=str))
  lines = [
    "# Calibration on conventional RLHF",
    "",
    f"Command: `python launch/calibrate.py {' '.join(sys.argv[1:])}`",
    "",
  ]
  if "choice" in state:
    lines += [
      "| exposure | lr | kl_coef (per-token mean) | passing seeds | mean rise | mean final gold |",
      "|---|---|---|---|---|---|",
    ]
    lines += [
      f"| {g['exposure']:g} | {g['lr']:g} | {g['kl_coef']:g} | {g['passing_seeds']}/{g['num_seeds']} | "
      f"{g['mean_rise']:.2f} | {g['mean_final_gold']:.2f} |"
      for g in state["choice"]["table"]
    ]
    c = state["choice"]["chosen"]
    lines += ["", f"Chosen by the rule: exposure {c['exposure']:g}, lr {c['lr']:g}, kl_coef {c['kl_coef']:g}.", ""]
  full = [f for f in state.get("full", []) if "error" not in f]
  if full:
    names = [k for k in full[0]["method_checks"] if k != "all_pass"]
    lines += [
      "## Method checks per realisation",
      "",
      "| seed | " + " | ".join(names) + " | all pass |",
      "|---" * (len(names) + 2) + "|",
    ]
    for f in sorted(full, key=lambda f: f["seed"]):
      checks = f["method_checks"]
      cell = lambda c: f"{c['value']:.2f}" if isinstance(c["value"], float) else str(c["value"])
      lines.append(
        f"| {f['seed']} | "
        + " | ".join(f"{cell(checks[n])} ({'pass' if checks[n]['pass'] else 'FAIL'})" for n in names)
        + f" | {checks['all_pass']} |"
      )
  (args.out / "calibration.md").write_text("\n".join(lines) + "\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--config", default="configs/synthetic.py")
  parser.add_argument("--arg", default="", help="the config's argument, e.g. small")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--exposures", default="0.0,0.05")
  parser.add_argument(
    "--settings", default="1e-3:0.1,5e-4:0.5,3e-4:0.1", help="learning_rate:kl_coef pairs (kl_coef per-token mean)"
  )
  parser.add_argument("--min_rise", type=float, default=0.3)
  parser.add_argument("--jobs", type=int, default=2)
  parser.add_argument("--full", action="store_true", help="then run the whole experiment with the winner")
  parser.add_argument(
    "--deadline_s",
    type=float,
    default=0.0,
    help="wall-clock budget of the whole script (0: none); runs still going then are stopped "
    "and reported as such, and the results so far are written",
  )
  args = parser.parse_args()
  args.out = args.out.resolve()
  args.deadline = time.time() + args.deadline_s if args.deadline_s > 0 else float("inf")
  args.out.mkdir(parents=True, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(",")]
  exposures, settings = _floats(args.exposures), _settings(args.settings)
  state: dict = {"seeds": seeds, "exposures": exposures, "settings": settings, "min_rise": args.min_rise}
  start = time.time()
  state["base"] = _pool(args, base_job, [(s, e) for e in exposures for s in seeds])
  _write(args, state)
  ok = {(b["seed"], b["exposure"]) for b in state["base"] if "error" not in b}
  state["rl"] = _pool(args, rl_job, [(s, e, lr, kl) for (s, e) in sorted(ok) for lr, kl in settings])
  rl = [r for r in state["rl"] if "error" not in r]
  if rl:
    state["choice"] = choose(rl)
  state["seconds_calibration"] = time.time() - start
  _write(args, state)
  if args.full and "choice" in state:
    c = state["choice"]["chosen"]
    state["full"] = _pool(
      args, full_job, [(s, c["exposure"], c["lr"], c["kl_coef"]) for s in seeds if (s, c["exposure"]) in ok]
    )
    state["seconds_total"] = time.time() - start
    _write(args, state)
  print((args.out / "calibration.md").read_text())


if __name__ == "__main__":
  main()
