"""The import structure of advrm_jax: no cycles, and no imports hidden inside functions.

Walks every module's syntax tree (nothing is imported), so it runs in well
under a second and fails with the cycle or the offending line.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = "advrm_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# Third-party packages that may be imported inside a function: optional, or slow to import and needed by
# few paths. The line must name one of them (and say why in its comment).
DEFERRED = ("torch", "gguf", "xmanager", "tensorboardX", "transformers", "tokenizers", "matplotlib")


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
  """The modules an import statement names (``from a import b`` names a.b when that is a module)."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  assert isinstance(node, ast.ImportFrom)
  if node.level:
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    prefix = ".".join(base + ([node.module] if node.module else []))
  else:
    prefix = node.module or ""
  return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
  """module -> the advrm_jax modules it imports (at any depth of its syntax tree)."""
  known = modules()
  graph = {}
  for name, path in known.items():
    tree = ast.parse(path.read_text(), str(path))
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target in imported_names(node, name, path.name == "__init__.py"):
          # ``import a.b.c`` runs a/__init__, a/b/__init__ and a/b/c.
          parts = target.split(".")
          targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known)
    targets.discard(name)
    # A package's own __init__ runs before its submodules; importing a submodule is not a cycle through it.
    graph[name] = {t for t in targets if not name.startswith(t + ".")}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: finished
  for start in sorted(graph):
    if state.get(start):
      continue
    path, stack = [start], [iter(sorted(graph[start]))]
    state[start] = 1
    while stack:
      child = next(stack[-1], None)
      if child is None:
        state[path.pop()] = 2
        stack.pop()
      elif state.get(child) == 1:
        return path[path.index(child) :] + [child]
      elif not state.get(child):
        state[child] = 1
        path.append(child)
        stack.append(iter(sorted(graph.get(child, ()))))
  return None


def test_find_cycle_sees_a_cycle_and_a_dag():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_reads_relative_and_package_imports():
  graph = import_graph()
  assert "advrm_jax.pipelines.workdir" in graph["advrm_jax.inference"]
  assert "advrm_jax.sharding" in graph["advrm_jax.models.lm"]


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def function_imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, text) of every import inside a function or method of ``path``."""
  text = path.read_text()
  lines = text.splitlines()
  found = []
  for node in ast.walk(ast.parse(text, str(path))):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for inner in ast.walk(node):
        if isinstance(inner, (ast.Import, ast.ImportFrom)):
          found.append((inner.lineno, lines[inner.lineno - 1].strip()))
  return sorted(set(found))


def deferred_ok(line: str) -> bool:
  """An import of a DEFERRED package whose comment says why (more than a pylint directive)."""
  statement, _, comment = line.partition("#")
  words = statement.split()
  reason = " ".join(part for part in comment.split("#") if "pylint:" not in part).strip()
  return len(words) >= 2 and words[1].split(".")[0] in DEFERRED and bool(reason)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_import_inside_functions(name):
  path = modules()[name]
  bad = [
    f"{path.relative_to(ROOT.parent)}:{line}: {text}" for line, text in function_imports(path) if not deferred_ok(text)
  ]
  assert not bad, (
    "imports inside functions (move them to the top; only "
    + ", ".join(DEFERRED)
    + " may be deferred, with the reason in a comment on the line):\n"
    + "\n".join(bad)
  )


def test_deferred_rule_needs_the_package_and_a_reason():
  assert deferred_ok("import torch  # optional: only the parity tests have it")
  assert deferred_ok("import torch  # pylint: disable=g-import-not-at-top  # deferred: optional")
  assert not deferred_ok("import torch")
  assert not deferred_ok("import torch  # pylint: disable=g-import-not-at-top")
  assert not deferred_ok("from advrm_jax.pipelines import rm  # pylint: disable=import-outside-toplevel")


def test_no_stage_imports_another_stage():
  """Stage modules share code through workdir, inference and the library, never through each other.

  The `advrm` stage is the round schedule and `study` the realisations' schedule: calling the stages
  is their job (and no stage calls them).
  """
  graph = import_graph()
  stages = {
    f"{PACKAGE}.pipelines.{m}"
    for m in (
      "sft",
      "rlhf",
      "rm",
      "empo",
      "probes",
      "prefs",
      "attack",
      "filter_stage",
      "advtrain",
      "inspect_stage",
      "online",
      "evaluate",
    )
  }
  schedules = {f"{PACKAGE}.pipelines.advrm", f"{PACKAGE}.pipelines.study"}
  bad = sorted(
    (a, b) for a in stages | schedules for b in graph.get(a, ()) if b in stages | schedules and a not in schedules
  )
  assert not bad, bad


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_the_repo_follows_its_one_formatter_and_linter_config(command):
  """pyproject.toml's [tool.ruff] is the style: `ruff format .` and `ruff check --fix .` mend a failure."""
  repo = pathlib.Path(__file__).resolve().parent.parent
  result = subprocess.run(
    [sys.executable, "-m", "ruff", *command, "."], cwd=repo, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
