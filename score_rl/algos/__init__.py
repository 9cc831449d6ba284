"""Algorithm pieces as small functions: per-turn advantage estimators, KL estimators, policy losses."""
