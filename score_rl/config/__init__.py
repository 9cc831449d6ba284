"""The one config tree: a structured OmegaConf schema, loaded from YAML + dotlist overrides, validated once.

Every field carries a one-line ``help`` (rendered into docs/config.md, kept in sync by a test). Unknown keys and
wrong types are errors that name the key and the closest valid one.

  schema     the dataclasses, their help, the allowed choices, schema_fields / config_keys / get_key
  load       load_config: YAML + overrides, OmegaConf errors as one line with the closest key
  validate   validate (every config), validate_training (a run that trains), episodes_per_step
  resume     save_config / to_yaml, and what a run directory's saved config.yaml may differ in
  reference  docs/config.md's generated table (python -m score_rl.config_docs)
"""

from score_rl.config.load import load_config
from score_rl.config.reference import config_reference
from score_rl.config.resume import (NOT_THE_RUN, RESUMABLE_KEYS, check_checkpoint_config, check_resume_config,
                                    config_differences, config_tree, run_config_changes, same_auto_dtype, save_config,
                                    saved_config_tree, to_yaml)
from score_rl.config.schema import (CHOICES, AlgoConfig, Config, CriticConfig, EnvConfig, EvalConfig, LearnerConfig,
                                    LoggingConfig, LoRAConfig, MethodConfig, ModelConfig, PPOConfig, PromptConfig,
                                    RayConfig, RolloutConfig, ShapingConfig, TinyModelConfig, TrainerConfig,
                                    VLLMConfig, config_keys, doc, get_key, schema_fields)
from score_rl.config.validate import episodes_per_step, validate, validate_training
from score_rl.errors import ConfigError

__all__ = [
    "AlgoConfig", "CHOICES", "Config", "ConfigError", "CriticConfig", "EnvConfig", "EvalConfig", "LearnerConfig",
    "LoggingConfig", "LoRAConfig", "MethodConfig", "ModelConfig", "NOT_THE_RUN", "PPOConfig", "PromptConfig",
    "RESUMABLE_KEYS", "RayConfig", "RolloutConfig", "ShapingConfig", "TinyModelConfig", "TrainerConfig", "VLLMConfig",
    "check_checkpoint_config", "check_resume_config", "config_differences", "config_keys", "config_reference",
    "config_tree", "doc", "episodes_per_step", "get_key", "load_config", "run_config_changes", "same_auto_dtype",
    "save_config", "saved_config_tree", "schema_fields", "to_yaml", "validate", "validate_training",
]
