"""config_node.from_node: typed, frozen config nodes, and one error format for unknown keys everywhere."""

import dataclasses
import json
import pathlib
import runpy

import ml_collections
import pytest

from advrm_jax.config_node import ConfigError, check_keys, from_node
from advrm_jax.models.config import ModelConfig
from advrm_jax.pipelines.inspect_stage import InspectConfig
from advrm_jax.pipelines.nodes import (
  AttackConfig,
  FilterConfig,
  PreferenceDataConfig,
  ProbeConfig,
  RMConfig,
  SyntheticPairsConfig,
  reward_model_nodes,
)
from advrm_jax.pipelines.online import OnlineStageConfig
from advrm_jax.rl.engine import RLConfig
from advrm_jax.train_state import OPTIMIZER_DEFAULTS, OptimizerConfig, make_optimizer

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Inner:
  lam: float = 1.0
  penalty: float = -5.0


@dataclasses.dataclass(frozen=True)
class Outer:
  steps: int
  inner: Inner = Inner()
  shape: tuple = ()
  extra: Inner | None = None


def test_unknown_key_names_its_path_the_known_keys_and_a_close_match():
  with pytest.raises(ConfigError) as info:
    from_node(Inner, {"lamda": 2.0}, "config.attack")
  assert str(info.value) == "config.attack.lamda: unknown key; known: lam, penalty; did you mean 'lam'?"
  with pytest.raises(ConfigError) as info:
    check_keys(["zzz", "penalti"], ["lam", "penalty"], "config.attack")
  assert str(info.value) == (
    "config.attack.penalti, config.attack.zzz: unknown keys; known: lam, penalty; did you mean 'penalty' for 'penalti'?"
  )
  with pytest.raises(ConfigError, match=r"^config.seed.x: unknown key \(config.seed holds no keys\)$"):
    check_keys(["x"], [], "config.seed")


def test_nested_nodes_are_built_with_their_own_path_and_required_keys_are_named():
  node = ml_collections.ConfigDict({"steps": 3, "inner": {"penalty": -25.0}, "shape": [1, 2]})
  built = from_node(Outer, node, "config.stage")
  assert built == Outer(steps=3, inner=Inner(lam=1.0, penalty=-25.0), shape=(1, 2))
  hash(built)  # frozen and hashable: lists became tuples
  node.inner.lamda = 0.5
  with pytest.raises(ConfigError, match=r"^config.stage.inner.lamda: unknown key"):
    from_node(Outer, node, "config.stage")
  with pytest.raises(ConfigError, match=r"^config.stage.steps: required key\(s\) missing$"):
    from_node(Outer, {}, "config.stage")
  # An optional sub-node: absent or None stays None, given it is built and checked with its path.
  assert built.extra is None and from_node(Outer, {"steps": 1, "extra": None}, "x").extra is None
  assert from_node(Outer, {"steps": 1, "extra": {"lam": 2.0}}, "x").extra == Inner(lam=2.0)
  with pytest.raises(ConfigError, match=r"^x.extra.lamda: unknown key"):
    from_node(Outer, {"steps": 1, "extra": {"lamda": 2.0}}, "x")
  # An instance passes through; overrides apply after the node's values.
  assert from_node(Outer, built, "config.stage") is built
  assert from_node(Outer, node.to_dict() | {"inner": {}}, "x", steps=7).steps == 7


def test_every_node_checks_the_same_way():
  with pytest.raises(ConfigError, match=r"^config.rlhf.rl.kl_coeff: unknown key; known: .*did you mean 'kl_coef'\?$"):
    from_node(RLConfig, {"kl_coeff": 0.1}, "config.rlhf.rl")
  with pytest.raises(ConfigError, match=r"^config.model.d_modle: unknown key; .*did you mean 'd_model'\?$"):
    ModelConfig.from_dict({"d_modle": 8})
  with pytest.raises(ConfigError, match=r"^config.rm.backbone.model.n_layers: unknown key"):
    ModelConfig.from_dict({"n_layers": 1}, "config.rm.backbone.model")
  with pytest.raises(
    ConfigError,
    match=r"^config.sft.optimizer.lr: unknown key; known: b1, b2, eps, grad_clip, "
    r"learning_rate, schedule",
  ):
    make_optimizer({"lr": 1e-3}, "config.sft.optimizer")
  with pytest.raises(ConfigError, match=r"^config.inspect.rounds: unknown key; .*did you mean 'round'\?$"):
    from_node(InspectConfig, {"rounds": 1}, "config.inspect")
  assert from_node(InspectConfig, None, "config.inspect") == InspectConfig(round=0, num_examples=8, batch_size=16)
  with pytest.raises(ConfigError, match=r"config.inspect: round and num_examples must be >= 0"):
    InspectConfig(round=-1)


def test_the_online_node_of_the_synthetic_config_is_typed_and_complete():
  config = runpy.run_path(str(REPO / "configs" / "synthetic.py"))["get_config"]("small,online")
  node = from_node(OnlineStageConfig, config.online, "config.online")
  assert isinstance(node.rl, RLConfig) and isinstance(node.rm_optimizer, OptimizerConfig)
  # The keys the config sets, the rest OptimizerConfig's defaults (the old dict's).
  assert node.rm_optimizer == OptimizerConfig(**{**OPTIMIZER_DEFAULTS, **config.online.rm_optimizer})
  assert node.rm_optimizer.learning_rate == 3e-3 and node.rm_optimizer.total_steps == 1000
  with config.unlocked():
    del config.online["bootstrap"]
    config.online.rm_optimiser = {}
  with pytest.raises(ConfigError, match=r"^config.online.rm_optimiser: unknown key; .*'rm_optimizer'\?$"):
    from_node(OnlineStageConfig, config.online, "config.online")
  del config.online["rm_optimiser"]
  with pytest.raises(ConfigError, match=r"^config.online.bootstrap: required key\(s\) missing$"):
    from_node(OnlineStageConfig, config.online, "config.online")


def test_optimizer_defaults_are_the_dataclass_defaults():
  # The documented defaults (docs/configs.md) of a key an optimizer node leaves out.
  assert OPTIMIZER_DEFAULTS == dict(
    learning_rate=3e-4,
    schedule="cosine",
    warmup_steps=0,
    total_steps=1000,
    weight_decay=0.0,
    grad_clip=1.0,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
  )


def test_common_factories_keep_field_references():
  # configs/common.py's reward_model ties rm.optimizer.total_steps to rm.num_steps as the config files did.
  config = runpy.run_path(str(REPO / "configs" / "rm_hh.py"))["get_config"]("small")
  config.rm.num_steps = 33
  assert config.rm.optimizer.total_steps == 33
  config = runpy.run_path(str(REPO / "configs" / "advrm_own.py"))["get_config"]("hf,small")
  config.model.dtype = "bfloat16"
  config.data.max_response_len = 5
  assert config.rm.backbone.dtype == "bfloat16" and config.attack.sampling.max_new_tokens == 5


# sft/model_config.json as the `sft` stage of configs/synthetic.py:small wrote it before the field existed.
OLD_MODEL_CONFIG_JSON = """{
  "arch": "llama",
  "vocab_size": 150,
  "d_model": 32,
  "num_layers": 1,
  "num_heads": 4,
  "num_kv_heads": 2,
  "head_dim": 16,
  "d_ff": 64,
  "max_seq_len": 128,
  "norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "rope_scaling": {},
  "tie_embeddings": true,
  "qkv_bias": false,
  "param_dtype": "float32",
  "dtype": "float32",
  "attention": "auto",
  "remat": "none"
}"""


def test_fused_projections_field_old_model_config_files_load_and_default_runs_write_the_same_bytes():
  cfg = ModelConfig.from_dict(json.loads(OLD_MODEL_CONFIG_JSON))
  assert cfg.fused_projections == "cached"
  # The default is not written: model_config.json (wd.save_model_config's json.dumps(indent=2)) keeps its bytes.
  assert json.dumps(cfg.to_dict(), indent=2) == OLD_MODEL_CONFIG_JSON
  chosen = cfg.replace(fused_projections="none")
  assert chosen.to_dict()["fused_projections"] == "none"
  assert ModelConfig.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen
  with pytest.raises(ValueError, match=r"model.fused_projections: unsupported value 'some'"):
    cfg.replace(fused_projections="some")


@pytest.mark.parametrize("config_file,arg", [("synthetic.py", "small"), ("advrm_own.py", "small")])
def test_attack_and_filter_nodes_of_both_adversarial_configs_are_typed(config_file, arg):
  config = runpy.run_path(str(REPO / "configs" / config_file))["get_config"](arg)
  attack = from_node(AttackConfig, config.attack, "config.attack")
  assert isinstance(attack.rl, RLConfig) and isinstance(attack.optimizer, OptimizerConfig)
  # advrm_own.py sets neither the floor nor z units: the synthetic world's keys default off.
  expected = (-1.0, True, 2) if config_file == "synthetic.py" else (0.0, False, 0)
  assert (attack.tau, attack.standardize, attack.snapshot_every) == expected
  filt = from_node(FilterConfig, config.filter, "config.filter")
  assert filt.probe == ProbeConfig(hidden=0, num_steps=500, learning_rate=1e-2, weight_decay=1e-2)
  config.attack.lamda = 0.5  # not locked: a misspelt key is added, and the node names it
  with pytest.raises(ConfigError, match=r"^config.attack.lamda: unknown key; .*did you mean 'lam'\?$"):
    from_node(AttackConfig, config.attack, "config.attack")
  config.filter.probe.hiden = 8
  with pytest.raises(ConfigError, match=r"^config.filter.probe.hiden: unknown key; .*did you mean 'hidden'\?$"):
    from_node(FilterConfig, config.filter, "config.filter")


@pytest.mark.parametrize("config_file,arg", [("synthetic.py", "small"), ("rm_hh.py", "small,synthetic")])
def test_rm_and_data_nodes_are_typed_and_every_nested_key_is_checked(config_file, arg):
  config = runpy.run_path(str(REPO / "configs" / config_file))["get_config"](arg)
  rm, data = reward_model_nodes(config)
  assert isinstance(rm, RMConfig) and isinstance(rm.optimizer, OptimizerConfig) and rm.paths == ()
  assert isinstance(data, PreferenceDataConfig)
  # rm_hh.py has the synthetic world's generator node; synthetic.py reads the `prefs` stage's file.
  expected = SyntheticPairsConfig(**config.data.synthetic) if config_file == "rm_hh.py" else None
  assert data.synthetic == expected
  # The optimizer as configs/common.py wrote it (every OptimizerConfig field), total_steps tied to num_steps.
  assert dataclasses.asdict(rm.optimizer) == dict(config.rm.optimizer) and rm.optimizer.total_steps == rm.num_steps
  # The backbone's model is a copy: changing the config afterwards does not change the node.
  config.rm.backbone.model.d_model = 999
  assert rm.backbone.model["d_model"] != 999
  for node, key, where in (
    (config.rm, "learning_rate", "config.rm"),
    (config.rm.backbone, "pth", "config.rm.backbone"),
    (config.rm.eval, "bins", "config.rm.eval"),
    (config.data, "max_prompt_length", "config.data"),
  ):
    with config.unlocked():
      setattr(node, key, 1)
    with pytest.raises(ConfigError, match=rf"^{where}.{key}: unknown key; known: "):
      reward_model_nodes(config)
    del node[key]
  if data.synthetic is not None:
    config.data.synthetic.num_pair = 3
    with pytest.raises(ConfigError, match=r"^config.data.synthetic.num_pair: unknown key; .*'num_pairs'\?$"):
      reward_model_nodes(config)
    del config.data.synthetic["num_pair"]
  config.rm.keep_checkpoints = 0
  with pytest.raises(ConfigError, match=r"^rm.keep_checkpoints must be >= 1, got 0$"):
    reward_model_nodes(config)
