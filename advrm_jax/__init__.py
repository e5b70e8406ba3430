"""advrm_jax: robust reward models in JAX."""
