"""The Colab notebooks in colab/: valid nbformat, and each runs top to bottom.

They are executed with nbclient in a fresh kernel, with a cell injected
after their parameters cell (tagged "parameters") that shrinks them: 01 to
the `:small` synthetic config with one Adv-RM round and no RLHF runs, 02 to
a tiny random Llama checkpoint and a made-up preference file written here,
03 (written for a Colab TPU) to the same small run on 4 forced CPU devices,
so its mesh is (1, 2, 2) with parameters really split. The checks read what
the notebooks produced (report files, tables, printed shardings), not only
that they finished. Each notebook's first cell installs the package from
REPO_URL or the checkout it sits in; here advrm_jax is already importable,
so that cell installs nothing.
"""

import json
import pathlib
import re
import resource
import textwrap
import time

import pytest

from tests.tiny_own_model import write_tiny_checkpoint_and_pairs

nbformat = pytest.importorskip("nbformat")

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
NOTEBOOKS = ("01_synthetic_advrm.ipynb", "02_attack_your_rm.ipynb", "03_tpu.ipynb")
# No LLVM optimisation: compiling dominates these tiny runs, executing does not.
KERNEL_XLA_FLAGS = "--xla_backend_optimization_level=0"


def _read(name: str):
  return nbformat.read(COLAB / name, as_version=4)


def _code_without_magics(source: str) -> str:
  """Cell source with IPython-only lines (`!cmd`, `%magic`) replaced by `pass` at their indentation."""
  lines = []
  for line in source.splitlines():
    stripped = line.lstrip()
    lines.append(line[: len(line) - len(stripped)] + "pass" if stripped.startswith(("!", "%")) else line)
  return "\n".join(lines)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_its_code_compiles(name):
  notebook = _read(name)
  nbformat.validate(notebook)
  assert notebook.nbformat == 4
  code_cells = [c for c in notebook.cells if c.cell_type == "code"]
  assert code_cells and not any(c.outputs for c in code_cells), "commit notebooks without outputs"
  for index, cell in enumerate(code_cells):
    compile(_code_without_magics(cell.source), f"{name}[code cell {index}]", "exec")
  tagged = [c for c in code_cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "exactly one code cell tagged 'parameters'"


def _execute(name: str, parameters: str, tmp_path: pathlib.Path, monkeypatch, devices: int = 1) -> tuple[object, float]:
  """Runs a notebook with ``parameters`` injected after its parameters cell, on ``devices`` CPU devices.

  One device unless the notebook is about the mesh. Returns the executed notebook and the seconds taken.
  """
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  notebook = _read(name)
  index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell(textwrap.dedent(parameters).strip())
  injected.metadata["tags"] = ["injected-parameters"]
  notebook.cells.insert(index + 1, injected)
  # The kernel is a fresh process: it takes its devices from these variables.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={devices} {KERNEL_XLA_FLAGS}")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  client = nbclient.NotebookClient(
    notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
  )
  start, children_start = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
  client.execute()  # starts the kernel and, at the end, shuts it down and waits for it
  seconds, children = time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (children.ru_utime + children.ru_stime) - (children_start.ru_utime + children_start.ru_stime)
  print(f"{name}: executed in {seconds:.1f}s wall, {cpu:.1f}s CPU (kernel)")
  nbformat.write(notebook, tmp_path / name)  # with outputs, for a look after a failure
  return notebook, seconds


def _outputs_text(notebook) -> str:
  texts = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream":
        texts.append(output.text)
      elif "data" in output:
        texts.append(output.data.get("text/markdown", "") or output.data.get("text/plain", ""))
  return "\n".join(texts)


def _has_image(notebook) -> bool:
  return any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.slow  # the whole synthetic loop in a kernel (compiles dominate)
def test_synthetic_notebook_runs_the_loop_and_shows_the_report(tmp_path, monkeypatch):
  workdir = tmp_path / "synthetic"
  notebook, _ = _execute(
    "01_synthetic_advrm.ipynb",
    f"""
      SMALL = True
      WORKDIR = {str(workdir)!r}
      # Below :small, whose every stage tests/test_advrm_e2e.py runs (RLHF included): one Adv-RM round of
      # short attacks, no RLHF runs and fewer checkpoints keep the notebook to about a minute.
      OVERRIDES = {{"advrm.num_rounds": 1, "attack.num_steps": 2, "attack.log_every": 1, "prefs.num_prompts": 128,
                   "prefs.num_attack_prompts": 16, "attack.final_samples_per_prompt": 1,
                   "sft.checkpoint_every": 20, "rm.checkpoint_every": 20}}
      RLHF_RUNS = []
      """,
    tmp_path,
    monkeypatch,
  )

  report = json.loads((workdir / "report.json").read_text())
  assert {"attack_success", "filter", "rlhf", "examples", "targets", "plots", "in_distribution_accuracy"} <= set(report)
  assert report["num_rounds"] == 1
  assert [entry["round"] for entry in report["attack_success"]["rounds"]] == [0, 1]
  assert report["rlhf"] == {}
  assert set(report["plots"]) == {"attack_success_per_round.png", "uncertainty_vs_gold.png"}
  for plot in report["plots"]:
    assert (workdir / "plots" / plot).stat().st_size > 0
  assert (workdir / "advtrain" / "round_1" / "DONE").exists()

  text = _outputs_text(notebook)
  assert "Table 1" in text  # REPORT.md, shown inline
  # The notebook's own attack-success table has one row per round.
  assert re.search(r"^\| 0 \| [\d.]+ ± ", text, re.M) and re.search(r"^\| 1 \| [\d.]+ ± ", text, re.M)
  assert "| RLHF run | final gold |" in text
  assert "| prompt | adversarial response | R1 (reference mean) |" in text
  assert _has_image(notebook)


@pytest.mark.slow  # rm -> attack -> filter -> advtrain on a checkpoint, in a kernel
def test_attack_your_rm_notebook_on_a_tiny_checkpoint(tmp_path, monkeypatch):
  checkpoint, pairs = write_tiny_checkpoint_and_pairs(tmp_path)
  workdir = tmp_path / "own"
  notebook, _ = _execute(
    "02_attack_your_rm.ipynb",
    f"""
      CHECKPOINT = {str(checkpoint)!r}
      PAIRS = {str(pairs)!r}
      WORKDIR = {str(workdir)!r}
      SMALL = True
      # z_min far below any z: every sample above T(x) is kept, so adversarial training gets pairs.
      OVERRIDES = {{"filter.z_min": -1e9}}
      ATTACK_HARDENED_RM = False  # the same stages once more (about 10 s); the cell is compiled above
      """,
    tmp_path,
    monkeypatch,
  )

  for stage in ("sft", "prefs", "attack/round_0", "filter/round_0", "advtrain/round_1"):
    assert (workdir / stage / "DONE").exists(), stage
  attack = json.loads((workdir / "attack" / "round_0" / "summary.json").read_text())
  assert attack["final"]["standard"] == [None]  # real text: no gold, no made-up success rate
  assert 0.0 <= attack["final"]["above_threshold"] <= 1.0
  kept = [json.loads(line) for line in (workdir / "filter" / "round_0" / "adversarial_pairs.jsonl").open()]
  assert kept and all({"prompt", "chosen", "rejected", "r1", "uncertainty", "z"} <= set(r) for r in kept)
  assert all(r["prompt"].startswith("tell me about ") for r in kept)
  advtrain = json.loads((workdir / "advtrain" / "round_1" / "summary.json").read_text())
  assert advtrain["num_adversarial_used"] >= 1
  assert (workdir / "advtrain" / "round_1" / "rm" / "eval_summary.json").exists()

  text = _outputs_text(notebook)
  # The table of what the adversary found: a header and at least one decoded row with its rewards.
  table = re.findall(
    r"^\| tell me about \w+ please \| .* \| -?[\d.]+ \| -?[\d.]+ \| -?[\d.]+ \| -?[\d.]+ \|", text, re.M
  )
  assert table, text[-3000:]
  assert "| prompt | adversarial response | R1 |" in text
  assert "# What the adversary found (attack round 0)" in text  # the inspect stage's REPORT.md, inline
  assert _has_image(notebook)


@pytest.mark.slow  # the shrunk synthetic loop on a 4-device mesh, in a kernel
def test_tpu_notebook_runs_on_a_cpu_mesh(tmp_path, monkeypatch):
  workdir = tmp_path / "tpu"
  notebook, _ = _execute(
    "03_tpu.ipynb",
    f"""
      WORKDIR = {str(workdir)!r}
      SMALL = True
      MESH_SHAPE = None  # 4 devices: (4 // 4, 2, 2)
      # As for 01: one Adv-RM round of short attacks and no RLHF stage keep the run to about a minute.
      OVERRIDES = {{"advrm.num_rounds": 1, "attack.num_steps": 2, "attack.log_every": 1, "prefs.num_prompts": 128,
                   "prefs.num_attack_prompts": 16, "attack.final_samples_per_prompt": 1,
                   "sft.checkpoint_every": 20, "rm.checkpoint_every": 20,
                   "stages": ("sft", "prefs", "rm", "advrm", "evaluate")}}
      """,
    tmp_path,
    monkeypatch,
    devices=4,
  )

  text = _outputs_text(notebook)
  assert "backend: cpu" in text and "4 devices" in text
  assert "mesh: {'data': 1, 'fsdp': 2, 'tensor': 2}" in text and "every batch divides the mesh" in text
  # The sharding table: the embedding is split over the mesh, and some optimizer state with it.
  embed_row = next(l for l in text.splitlines() if l.startswith("['embed']"))
  assert embed_row.rstrip().endswith("split"), embed_row
  split = re.search(r"optimizer state: (\d+) arrays, (\d+) of them split", text)
  assert split and int(split.group(2)) >= 1
  report = json.loads((workdir / "report.json").read_text())
  assert [entry["round"] for entry in report["attack_success"]["rounds"]] == [0, 1]
  assert re.search(r"^round 1: Adv-RM attack success [\d.]+% standard", text, re.M)
  assert (workdir / "advtrain" / "round_1" / "DONE").exists()
  assert _has_image(notebook)
