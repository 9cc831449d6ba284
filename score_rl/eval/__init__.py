"""Evaluation: K-turn eval, self-correction metrics, inference-time scaling, plots and offline ``score-rl score``."""
