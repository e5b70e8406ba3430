"""Checkpoint import/export (Hugging Face safetensors, GGUF) and Orbax I/O."""

from advrm_jax.checkpoints.hf import hf_config_from_model_config
from advrm_jax.checkpoints.hf import hf_tensors_from_params
from advrm_jax.checkpoints.hf import load_hf_checkpoint
from advrm_jax.checkpoints.hf import load_hf_tokenizer
from advrm_jax.checkpoints.hf import model_config_from_hf
from advrm_jax.checkpoints.hf import model_from_hf_tensors
from advrm_jax.checkpoints.hf import model_from_params
from advrm_jax.checkpoints.hf import params_from_hf_tensors
from advrm_jax.checkpoints.hf import save_hf_checkpoint
