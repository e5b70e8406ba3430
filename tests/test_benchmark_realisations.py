"""benchmarks/realisations_vmap.py --quick: realisations as a vmapped batch axis give the serial results.

One run of the benchmark's quick mode (tiny sizes, W = 2) per module. For the
RL iteration and the BT step, the vmapped program's output for realisation r
must equal the production step's output on realisation r alone, for every
state and metric leaf; the two realisations must differ from each other (else
a batch axis that broadcast realisation 0 would pass).
"""

import jax
import numpy as np
import pytest

from benchmarks import realisations_vmap


pytestmark = pytest.mark.slow  # four RL/BT compiles: 2-3 min on the 2-core CPU at load average 8-10


@pytest.fixture(scope="module")
def quick():
  return realisations_vmap.main(["--quick"])


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


@pytest.mark.parametrize("part", ["rl", "bt"])
def test_vmapped_width_two_equals_two_serial_calls(quick, part):
  check = quick[part]["check"]
  assert check["width"] == 2
  for r, serial in enumerate(check["serial"]):
    vmapped = jax.tree.map(lambda x: x[r], check["vmapped"])
    mine, theirs = _leaves(vmapped), _leaves(serial)
    assert [p for p, _ in mine] == [p for p, _ in theirs]
    for (path, a), (_, b) in zip(mine, theirs):
      np.testing.assert_allclose(
        np.asarray(a),
        np.asarray(b),
        rtol=1e-5,
        atol=1e-6,
        err_msg=f"{part} realisation {r} {jax.tree_util.keystr(path)}",
      )
  # One step was taken by each side.
  state0, _ = check["serial"][0]
  assert np.all(np.asarray(state0.step) == 1)
  # The realisations differ: their updated parameters are not the same.
  params = [jax.tree.leaves(state.params) for state, _ in check["serial"]]
  assert any(not np.allclose(a, b) for a, b in zip(*params))


def test_rl_samples_are_identical_tokens(quick):
  # Sampling is discrete: equal tokens show the vmapped sampler drew exactly the serial draws.
  check = quick["rl"]["check"]
  for r, (_, out) in enumerate(check["serial"]):
    np.testing.assert_array_equal(check["vmapped"][1].samples["response_tokens"][r], out.samples["response_tokens"])


def test_table_rows(quick):
  for part in ("rl", "bt"):
    (row,) = quick[part]["rows"]
    assert row["width"] == 2 and row["vmapped_s"] > 0 and row["serial_s"] > 0
    assert row["vmapped_over_one"] == pytest.approx(row["vmapped_s"] / quick[part]["median_s"]["serial_1"])
