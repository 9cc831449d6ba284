"""score-rl: SCoRe (multi-turn RL for self-correction). Package map: docs/architecture.md."""
