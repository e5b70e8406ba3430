"""Hugging Face reward models in and out: reward parity with transformers' ``*ForSequenceClassification``.

Tiny random checkpoints of the three architectures are built in-process with
transformers and torch (weights re-drawn at O(1/sqrt(fan_in)) scale by
``tests/test_hf_checkpoints._randomise_``, so a layout bug moves the rewards
by far more than the 1e-4 tolerance). The reference is transformers'
``logits[:, 0]``: on the right-padded batch itself, and for left padding on
each row run alone without padding (what the reward of a left-padded row
means; see ``advrm_jax/checkpoints/hf_reward.py``).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from advrm_jax import export  # noqa: E402
from advrm_jax.pipelines import workdir as wd  # noqa: E402
from advrm_jax.checkpoints import hf, hf_reward  # noqa: E402
from advrm_jax.reward.model import reward_scores  # noqa: E402
from tests.test_hf_checkpoints import _randomise_  # noqa: E402

VOCAB = 96
PAD = 0  # never drawn as a real token below, so transformers and advrm_jax read the same position
ATOL = 1e-4

ARCHS = {
  "llama": (
    "LlamaConfig",
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=16,
      max_position_embeddings=64,
      rms_norm_eps=1e-5,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
  ),
  "qwen2": (
    "Qwen2Config",
    dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=1,
      max_position_embeddings=64,
      tie_word_embeddings=True,
      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
  ),
  "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32)),
}


def _reward_model(arch: str, seed: int, **overrides):
  config_cls, kwargs = ARCHS[arch]
  config = getattr(transformers, config_cls)(
    **{**kwargs, "num_labels": 1, "pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 2, **overrides}
  )
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
  _randomise_(model)  # always the same draw: models of other seeds are scaled element-wise by 1 +- 0.5
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():
      if seed:
        param.mul_(1.0 + 0.5 * torch.randn(param.shape, generator=gen))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """arch -> (torch model, its directory)."""
  out = {}
  for arch in ARCHS:
    model = _reward_model(arch, seed=0)
    path = tmp_path_factory.mktemp(f"{arch}_rm")
    model.save_pretrained(path)
    out[arch] = (model, path)
  return out


@pytest.fixture(scope="module")
def score_fn():
  return jax.jit(reward_scores, static_argnums=0)


def _batch(padding: str) -> tuple[np.ndarray, np.ndarray]:
  """Three rows of width 12: full, 5 pad slots, 9 pad slots on the given side."""
  rng = np.random.default_rng(7)
  tokens = rng.integers(3, VOCAB, size=(3, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  for row, num_pad in ((1, 5), (2, 9)):
    if padding == "right":
      mask[row, tokens.shape[1] - num_pad :] = 0
    else:
      mask[row, :num_pad] = 0
  tokens[mask == 0] = PAD
  return tokens, mask


def _hf_rewards(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return (
      model(input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask).long())
      .logits[:, 0]
      .numpy()
    )


def _hf_rewards_unpadded(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Each row run alone, without its padding."""
  return np.concatenate(
    [_hf_rewards(model, row[m == 1][None], np.ones((1, int(m.sum())), np.int64)) for row, m in zip(tokens, mask)]
  )


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_rewards_equal_transformers(checkpoints, score_fn, arch, padding):
  model, path = checkpoints[arch]
  graphdef, params, info = hf_reward.load_hf_reward_model([path])
  assert (info["ensemble"], info["num_members"]) == ("shared", 1)
  tokens, mask = _batch(padding)
  ours = np.asarray(score_fn(graphdef, params, tokens, mask))[0]
  reference = _hf_rewards_unpadded(model, tokens, mask)
  np.testing.assert_allclose(ours, reference, atol=ATOL, rtol=0)
  assert np.ptp(reference) > 0.1  # the rows are told apart, so the comparison means something
  if padding == "right":  # transformers' own batched, padded reading: logits[:, 0]
    np.testing.assert_allclose(ours, _hf_rewards(model, tokens, mask), atol=ATOL, rtol=0)


def test_left_padded_gpt2_in_transformers_needs_position_ids(checkpoints):
  """Why left padding is checked against unpadded rows: batched GPT-2 counts positions from the pad slots."""
  model, _ = checkpoints["gpt2"]
  tokens, mask = _batch("left")
  unpadded = _hf_rewards_unpadded(model, tokens, mask)
  batched = _hf_rewards(model, tokens, mask)
  assert abs(batched[2] - unpadded[2]) > 1e-2
  positions = torch.from_numpy(np.maximum(np.cumsum(mask, axis=1) - 1, 0)).long()
  with torch.no_grad():
    with_positions = (
      model(
        input_ids=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask).long(), position_ids=positions
      )
      .logits[:, 0]
      .numpy()
    )
  np.testing.assert_allclose(with_positions, unpadded, atol=ATOL, rtol=0)


def _tensors(path) -> dict[str, np.ndarray]:
  return hf.read_hf_tensors(path)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_export_reloads_in_transformers_and_is_bit_exact(checkpoints, score_fn, tmp_path, arch):
  model, path = checkpoints[arch]
  graphdef, params, info = hf_reward.load_hf_reward_model([path])
  cfg = hf.ModelConfig.from_dict(info["model"])
  out = hf_reward.save_hf_reward_member(
    tmp_path / "export", cfg, info["ensemble"], params, 0, token_ids=info["token_ids"]
  )
  original, exported = _tensors(path), _tensors(out)
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    assert exported[name].dtype == value.dtype and exported[name].tobytes() == value.tobytes(), name

  reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert type(reloaded).__name__ == type(model).__name__ and reloaded.config.num_labels == 1
  assert reloaded.config.pad_token_id == PAD
  tokens, mask = _batch("right")
  ours = np.asarray(score_fn(graphdef, params, tokens, mask))[0]
  np.testing.assert_allclose(_hf_rewards(reloaded, tokens, mask), ours, atol=ATOL, rtol=0)


def test_bfloat16_sharded_checkpoint_exports_bit_exact(tmp_path):
  model = _reward_model("qwen2", seed=3).to(torch.bfloat16)
  model.save_pretrained(tmp_path / "bf16", max_shard_size="20KB")
  assert (tmp_path / "bf16" / hf.SAFETENSORS_INDEX_FILE).exists()
  graphdef, params, info = hf_reward.load_hf_reward_model([tmp_path / "bf16"])
  assert info["model"]["param_dtype"] == "bfloat16"
  cfg = hf.ModelConfig.from_dict(info["model"])
  out = hf_reward.save_hf_reward_member(
    tmp_path / "export", cfg, "shared", params, 0, token_ids=info["token_ids"], max_shard_size="20KB"
  )
  original, exported = _tensors(tmp_path / "bf16"), _tensors(out)
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    assert exported[name].dtype == value.dtype and exported[name].tobytes() == value.tobytes(), name
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_two_directories_are_a_two_member_ensemble(checkpoints, score_fn, tmp_path):
  first, first_path = checkpoints["llama"]
  second = _reward_model("llama", seed=1)
  second.save_pretrained(tmp_path / "second")
  graphdef, params, info = hf_reward.load_hf_reward_model([first_path, tmp_path / "second"])
  assert (info["ensemble"], info["num_members"]) == ("independent", 2)
  for padding in ("right", "left"):
    tokens, mask = _batch(padding)
    ours = np.asarray(score_fn(graphdef, params, tokens, mask))
    np.testing.assert_allclose(ours[0], _hf_rewards_unpadded(first, tokens, mask), atol=ATOL, rtol=0)
    np.testing.assert_allclose(ours[1], _hf_rewards_unpadded(second, tokens, mask), atol=ATOL, rtol=0)
  assert np.abs(ours[0] - ours[1]).max() > 0.1  # two different models, not one copied
  # Member 1 exported alone is the second directory again.
  cfg = hf.ModelConfig.from_dict(info["model"])
  out = hf_reward.save_hf_reward_member(tmp_path / "m1", cfg, "independent", params, 1, token_ids=info["token_ids"])
  original, exported = _tensors(tmp_path / "second"), _tensors(out)
  assert all(exported[k].tobytes() == v.tobytes() for k, v in original.items()) and sorted(exported) == sorted(original)


def test_head_bias_is_written_as_reward_bias_and_read_back(checkpoints, score_fn, tmp_path):
  model, path = checkpoints["gpt2"]
  graphdef, params, info = hf_reward.load_hf_reward_model([path])
  params = dict(params, head_bias=params["head_bias"] + 0.75)
  cfg = hf.ModelConfig.from_dict(info["model"])
  out = hf_reward.save_hf_reward_member(tmp_path / "biased", cfg, "shared", params, 0, token_ids=info["token_ids"])
  reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert reloaded.config.reward_bias == 0.75
  tokens, mask = _batch("right")
  ours = np.asarray(score_fn(graphdef, params, tokens, mask))[0]
  np.testing.assert_allclose(_hf_rewards(model, tokens, mask) + 0.75, ours, atol=ATOL, rtol=0)
  np.testing.assert_allclose(_hf_rewards(reloaded, tokens, mask) + 0.75, ours, atol=ATOL, rtol=0)
  graphdef2, params2, _ = hf_reward.load_hf_reward_model([out])
  np.testing.assert_allclose(np.asarray(score_fn(graphdef2, params2, tokens, mask))[0], ours, atol=1e-6, rtol=0)


def test_pad_equal_to_eos_warns(tmp_path):
  model = _reward_model("gpt2", seed=0)
  model.config.pad_token_id = model.config.eos_token_id
  model.save_pretrained(tmp_path / "pad_eos")
  with pytest.warns(UserWarning, match="pad_token_id 2 is an EOS id"):
    hf_reward.load_hf_reward_model([tmp_path / "pad_eos"])


def test_bad_directories_are_named_with_what_was_expected(checkpoints, tmp_path):
  causal = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**ARCHS["llama"][1]))
  causal.save_pretrained(tmp_path / "causal")
  with pytest.raises(
    ValueError,
    match=r"causal: architectures \['LlamaForCausalLM'\] is a language model without "
    r"a reward head; expected one of .*ForSequenceClassification.* num_labels=1",
  ):
    hf_reward.load_hf_reward_model([tmp_path / "causal"])

  two_labels = _reward_model("qwen2", seed=0, num_labels=2)
  two_labels.save_pretrained(tmp_path / "two_labels")
  with pytest.raises(ValueError, match=r"two_labels: num_labels is 2 .* a reward model has one output"):
    hf_reward.load_hf_reward_model([tmp_path / "two_labels"])

  # A reward config over weights without a score head.
  no_head = tmp_path / "no_head"
  no_head.mkdir()
  config = json.loads((checkpoints["llama"][1] / "config.json").read_text())
  (no_head / "config.json").write_text(json.dumps(config))
  weights = _tensors(checkpoints["llama"][1])
  del weights["score.weight"]
  safetensors.numpy.save_file(weights, no_head / "model.safetensors")
  with pytest.raises(ValueError, match=r"no_head: no 'score.weight' tensor"):
    hf_reward.load_hf_reward_model([no_head])

  with pytest.raises(FileNotFoundError, match=r"missing: not a directory"):
    hf_reward.load_hf_reward_model([tmp_path / "missing"])

  smaller = _reward_model("llama", seed=0, hidden_size=16, head_dim=8, intermediate_size=32)
  smaller.save_pretrained(tmp_path / "smaller")
  with pytest.raises(ValueError, match=r"smaller: its backbone differs from .*d_model"):
    hf_reward.load_hf_reward_model([checkpoints["llama"][1], tmp_path / "smaller"])


# ---------------------------------------------------------------------------
# The pipeline: rm.paths as RM round 0, a round trained from it, the export.
# ---------------------------------------------------------------------------

WORDS = (
  "the cat dog sat ran on a mat rug is good bad yes no why how what when red blue big small one two three fast slow"
).split()


def _word_tokenizer():
  """A word-level transformers tokenizer (<pad> 0, <s> 1, </s> 2, <unk> 3), built offline."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel

  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
  backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
  )


def _advrm_own_config(paths, num_steps=2):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location(
    "advrm_own_config", pathlib.Path(__file__).resolve().parents[1] / "configs" / "advrm_own.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("small")
  config.mesh.shape = (1, 1, 1)
  config.rm.paths = tuple(str(p) for p in paths)
  config.data.use_chat_template = False
  config.data.test_fraction = 0.3
  config.rm.num_steps = num_steps
  config.rm.batch_size = config.rm.eval_batch_size = 4
  return config


def test_rm_paths_are_rm_round_0_and_export_back(tmp_path, score_fn):
  from advrm_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines import advtrain, rm as rm_stage  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines.rm_training import train_reward_model  # pylint: disable=import-outside-toplevel
  from advrm_jax.data.batching import tokenize_pairs  # pylint: disable=import-outside-toplevel
  from advrm_jax.data.preferences import read_preferences  # pylint: disable=import-outside-toplevel

  tokenizer = _word_tokenizer()
  dirs = []
  for seed in (0, 1):
    model = _reward_model("llama", seed=seed)
    dirs.append(tmp_path / f"rm_{seed}")
    model.save_pretrained(dirs[-1])
  tokenizer.save_pretrained(dirs[0])  # the second directory has none: the first one's is used
  workdir = tmp_path / "run"
  rng = np.random.default_rng(0)
  pairs = [
    {
      "prompt": " ".join(rng.choice(WORDS, 5)),
      "chosen": " ".join(rng.choice(WORDS, 4)),
      "rejected": " ".join(rng.choice(WORDS, 3)),
    }
    for _ in range(24)
  ]
  (workdir / "prefs").mkdir(parents=True)
  (workdir / "prefs" / "preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))

  config = _advrm_own_config(dirs)
  summary = rm_stage.run(config, workdir)
  assert summary["num_members"] == 2 and summary["test"]["accuracy"]["mean"] is not None
  graphdef, params, meta = wd.load_reward_model(workdir)
  assert meta["hf_paths"] == [str(d.resolve()) for d in dirs] and meta["ensemble"] == "independent"
  assert meta["tokenizer"]["backbone_path"] == str(dirs[0]) and meta["tokenizer"]["vocab_size"] == 4 + len(WORDS)
  # The stage's rows, scored by the loaded RM, are each HF model's rewards.
  data = tokenize_pairs(
    list(read_preferences(workdir / "prefs" / "preferences.jsonl"))[:6],
    wd.load_tokenizer(meta),
    16,
    8,
    padding_side="right",
  )
  tokens, mask = data["chosen_tokens"], data["chosen_mask"]
  ours = np.asarray(score_fn(graphdef, params, tokens, mask))
  for k, d in enumerate(dirs):
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
    np.testing.assert_allclose(ours[k], _hf_rewards(hf_model, tokens, mask), atol=ATOL, rtol=0)

  # Export of the imported round: the same files again, plus the tokenizer; also from the command line.
  written = export.export_reward_model(workdir / "rm", tmp_path / "export")
  assert [p.name for p in written] == ["member_0", "member_1"]
  for d, out in zip(dirs, written):
    original, exported = _tensors(d), _tensors(out)
    assert sorted(exported) == sorted(original)
    assert all(exported[k].tobytes() == v.tobytes() and exported[k].dtype == v.dtype for k, v in original.items())
    assert (out / "tokenizer.json").exists()
  assert export.main(["export", "--rm_dir", str(workdir), "--out", str(tmp_path / "cli")]) == 0
  assert (tmp_path / "cli" / "member_1" / "model.safetensors").exists()
  assert export.main(["export", "--rm_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2

  # An advtrain round continues the imported RM (not rm.backbone's checkpoint); its export is what it scores.
  round_dir = tmp_path / "round_1"
  rm, data = advtrain.round_config(config, workdir / "prefs" / "preferences.jsonl", str(workdir / "rm"), workdir)
  train_reward_model(rm, data, round_dir, mesh=shd.make_mesh(tuple(config.mesh.shape)), seed=config.seed)
  graphdef1, params1, meta1 = wd.load_reward_model(round_dir)
  assert "hf_paths" not in meta1 and (meta1["ensemble"], meta1["num_members"]) == ("independent", 2)
  assert not np.allclose(np.asarray(params1["head_kernel"]), np.asarray(params["head_kernel"]))  # it trained
  hardened = export.export_reward_model(round_dir, tmp_path / "hardened")
  ours1 = np.asarray(score_fn(graphdef1, params1, tokens, mask))
  for k, out in enumerate(hardened):
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert reloaded.config.num_labels == 1 and reloaded.config.pad_token_id == 0
    bias = getattr(reloaded.config, "reward_bias", 0.0)
    np.testing.assert_allclose(_hf_rewards(reloaded, tokens, mask) + bias, ours1[k], atol=ATOL, rtol=0)


def test_rm_paths_config_errors_name_the_key(tmp_path, checkpoints):
  from advrm_jax.pipelines import rm as rm_stage  # pylint: disable=import-outside-toplevel

  config = _advrm_own_config([tmp_path / "missing"])
  with pytest.raises(wd.ConfigError, match=r"rm.paths: .*missing: not a directory"):
    rm_stage.run(config, tmp_path / "run")
  config = _advrm_own_config([checkpoints["llama"][1]])
  config.advtrain.init = "scratch"
  with pytest.raises(wd.ConfigError, match=r"rm.paths: advtrain.init='scratch'"):
    rm_stage.run(config, tmp_path / "run")


@pytest.mark.slow  # sft -> prefs -> rm (imported) -> attack -> filter -> advtrain on a tiny checkpoint: ~2 min
def test_attack_and_harden_your_own_reward_models(tmp_path):
  """configs/advrm_own.py with rm.paths: the adversary attacks the imported RMs; the hardened RM goes back to HF."""
  from advrm_jax.pipelines import advtrain, attack, load_config, prefs, sft  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines import rm as rm_stage  # pylint: disable=import-outside-toplevel
  from advrm_jax.pipelines import filter_stage  # pylint: disable=import-outside-toplevel
  from tests.tiny_own_model import EOS_ID, PAD_ID, write_tiny_checkpoint_and_pairs  # pylint: disable=import-outside-toplevel

  checkpoint, pairs = write_tiny_checkpoint_and_pairs(tmp_path)
  vocab_size = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
  dirs = []
  for seed in (0, 1):  # no tokenizer files: the policy's (rm.backbone) tokenizer is used
    _reward_model("llama", seed=seed, vocab_size=vocab_size, pad_token_id=PAD_ID, eos_token_id=EOS_ID).save_pretrained(
      tmp_path / f"rm_{seed}"
    )
    dirs.append(tmp_path / f"rm_{seed}")
  config = load_config("configs/advrm_own.py:hf,small")
  config.model.path, config.prefs.path = str(checkpoint), str(pairs)
  config.attack.sampling.eos_id, config.attack.sampling.pad_id = EOS_ID, PAD_ID
  config.data.add_bos = True
  config.prefs.num_attack_prompts = 4
  config.mesh.shape = (1, 1, 1)
  config.filter.z_min = -1e9  # keep every sample above T(x), so advtrain has adversarial pairs
  config.rm.paths = tuple(str(d) for d in dirs)
  workdir = tmp_path / "run"
  for stage in (sft, prefs, rm_stage, attack, filter_stage, advtrain):
    stage.run(config, workdir)

  # The adversary's samples were scored by the imported models themselves.
  collected = wd.load_npz(workdir / "attack" / "round_0" / "collected.npz", "attack")
  rows = slice(0, 6)
  tokens = np.concatenate([collected["prompt_tokens"][rows], collected["response_tokens"][rows]], axis=1)
  mask = np.concatenate([collected["prompt_mask"][rows], collected["response_mask"][rows]], axis=1)
  for k, d in enumerate(dirs):
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
    np.testing.assert_allclose(
      collected["member_scores"][k][rows], _hf_rewards_unpadded(hf_model, tokens, mask), atol=ATOL, rtol=0
    )

  # The advtrain stage wrote the hardened RM (round 1) as HF directories (advtrain.export_hf), scoring as
  # advrm_jax does.
  hardened = sorted((workdir / "advtrain" / "round_1" / "hf").glob("member_*"))
  assert [p.name for p in hardened] == ["member_0", "member_1"]
  graphdef, params, _ = wd.load_reward_model(wd.rm_path(workdir, 1))
  ours = np.asarray(reward_scores(graphdef, params, tokens, mask))
  for k, out in enumerate(hardened):
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    bias = getattr(reloaded.config, "reward_bias", 0.0)
    np.testing.assert_allclose(_hf_rewards_unpadded(reloaded, tokens, mask) + bias, ours[k], atol=ATOL, rtol=0)
