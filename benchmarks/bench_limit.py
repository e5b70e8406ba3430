"""The machine's limit: the FLOP/s of a large f32 matmul, in JAX (and torch for reference).

MFU elsewhere in the benchmarks is ``model FLOP/s / this peak``. The peak is
the best median over a few square sizes, so it is what XLA:CPU actually
reaches on this machine (with the same thread pool the model steps use), not
a datasheet number.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common


def run(repeats: int, warmup: int = 1, sizes=(1024, 2048, 3072)) -> dict[str, Any]:
  torch = common.setup_torch()
  out: dict[str, Any] = {"sizes": list(sizes), "jax": {}, "torch": {}}
  matmul = jax.jit(jnp.matmul)
  for n in sizes:
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    samples = common.interleave(
      {
        "jax": lambda: common.timed(lambda: jax.block_until_ready(matmul(ja, jb))),
        "torch": lambda: common.timed(lambda: torch.mm(ta, tb)),
      },
      repeats,
      warmup,
    )
    for side, values in samples.items():
      out[side][str(n)] = 2 * n**3 / common.median(values)
  out["jax_peak_flops_per_s"] = max(out["jax"].values())
  out["torch_peak_flops_per_s"] = max(out["torch"].values())
  return out
