"""The learner: a DeepSpeed policy engine with its frozen reference, token log-probs and episode batching.

learner.py (the Learner actor), objectives.py (per-algorithm losses of a micro-batch), engine.py (DeepSpeed),
export.py (weights out: state dicts, weight-sync buckets, saves), stats.py (per-rank statistics, loss denominator),
batch.py (episodes → tensors), logprobs.py (token log-probs, shared prompts), lora.py, critic.py.
"""
