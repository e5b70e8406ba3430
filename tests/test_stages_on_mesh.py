"""The RL driver of the `attack` and `rlhf` stages on a multi-device mesh (as colab/03_tpu.ipynb runs it).

The reference policy is read onto the mesh split by its logical axes and the
RL state laid out the same way (fsdp x tensor); a reward weight on one device
is placed on the mesh too, where jit would otherwise refuse it next to the
mesh-resident RL state ("incompatible devices").
"""

import jax
import numpy as np
import pytest
from flax import nnx

from advrm_jax.pipelines import rl_driver
from advrm_jax.pipelines import workdir as wd
from advrm_jax.data import synthetic_world as world
from advrm_jax.checkpoints.orbax_io import save_params
from advrm_jax.models.transformer import Transformer
from advrm_jax.pipelines import load_config
from advrm_jax.rl.rewards import FunctionSource
from advrm_jax.train_state import split_module


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests force 8 host CPU devices)")
def test_train_policy_runs_on_a_data_fsdp_tensor_mesh(tmp_path):
  config = load_config("configs/synthetic.py:small")
  config.mesh.shape = (2, 2, 2)
  node = config.rlhf
  node.num_steps, node.log_every, node.checkpoint_every = 1, 1, 1
  # A random reference policy in the `sft` stage's layout.
  model_config = wd.model_config_from(config)
  wd.save_model_config(tmp_path / "sft", model_config)
  save_params(tmp_path / "sft" / "params", split_module(Transformer(model_config, rngs=nnx.Rngs(0)))[1])
  prompts = world.prompt_arrays(16, 0, "rl", config.world.max_prompt_len)
  state = rl_driver.train_policy(
    "mesh",
    tmp_path / "run",
    tmp_path / "sft",
    config,
    node,
    FunctionSource(world.gold_reward),
    None,
    prompts,
    num_seeds=1,
  )
  assert int(np.asarray(state.step)[0]) == 1
  assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8
  # The driver's policy is split like SFT's: embed over fsdp, heads over tensor (seed axis first, whole).
  q = state.params["policy"]["layers"]["q_kernel"]  # [S, L, D, H, Dh]
  assert tuple(q.sharding.spec)[:4] == (None, None, "fsdp", "tensor")
  assert q.addressable_shards[0].data.shape[2] == q.shape[2] // 2
