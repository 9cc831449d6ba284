"""Training: ``Trainer.fit()`` (the loop), the local base-model build, checkpoints and run logging."""
