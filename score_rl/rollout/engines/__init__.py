"""Generation engines behind the rollout worker (Hugging Face ``generate`` today)."""
