"""The learner: a DeepSpeed policy engine with its frozen reference, token log-probs and episode batching."""
