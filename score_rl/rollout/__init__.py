"""Rollout: a generation engine and the RolloutWorker that runs two-turn episodes."""
