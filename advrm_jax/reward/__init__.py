"""Reward models: ensembles, Bradley-Terry training, evaluation.

* ``model``: ``RewardEnsemble`` (shared-backbone heads or independent vmapped
  backbones), ``reward_scores`` (the one scoring API, ``[K, B]``, jittable),
  ``ensemble_aggregate``, ``ensemble_uncertainty``.
* ``losses``: ``bradley_terry_loss`` and the jitted train step.
* ``evaluation``: accuracy per member and aggregate, calibration, disagreement,
  per-prompt z-scores.
* ``data``: synthetic-world pairs, a byte tokenizer, per-member batches.

The stage that trains and saves an ensemble is ``advrm_jax.pipelines.rm``;
later stages load it with ``advrm_jax.pipelines.workdir.load_reward_model``.
"""
