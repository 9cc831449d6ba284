"""DeepSpeed for the learner: the process group, the engine config, engines with their optimizer, the frozen reference.

    train_batch_size = micro_batch_size × gradient_accumulation_steps × ranks

Every engine of a rank accumulates over the same k micro-batches, so each applies its update at the k-th.
"""

from __future__ import annotations

import os
import socket
from typing import Dict

import torch

from score_rl.config import Config
from score_rl.utils import disable_dropout, load_model


def import_deepspeed():
    """``deepspeed``, for the CPU or CUDA accelerator (whichever this process has)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    import deepspeed
    import deepspeed.ops

    # The shared-memory all-reduce op is JIT-compiled at initialize on CPU (~1 min); gloo does the job.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_address() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # pragma: no cover - ray not running
        pass
    return "127.0.0.1"


def join_process_group(deepspeed, rank: int, world_size: int, master_addr: str, master_port: int,
                       use_cuda: bool) -> None:
    """This rank joins the learners' process group (nccl on GPU, gloo on CPU), once per process."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False)


def ds_config(cfg: Config, grad_accum: int, world_size: int) -> Dict:
    """DeepSpeed's config of an engine that accumulates ``grad_accum`` micro-batches per update."""
    learner = cfg.learner
    return {
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": learner.micro_batch_size * grad_accum * world_size,
        "gradient_clipping": learner.grad_clip,  # >= 0 (validated); 0 = off
        "zero_optimization": {"stage": learner.zero_stage,
                              "stage3_param_persistence_threshold": learner.zero3_param_persistence_threshold},
        "zero_allow_untested_optimizer": learner.optimizer == "sgd",  # plain SGD is correct under ZeRO 1-3
        # a non-finite gradient norm skips the step (fp32 and fp16 skip it already), see Learner._skip_if_not_finite
        "bf16": {"enabled": True, "check_grad_overflow": True} if cfg.model.dtype == "bfloat16" else {"enabled": False},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(deepspeed, model, lr: float, cfg: Config, grad_accum: int, world_size: int):
    """A training engine of ``model``: learner.optimizer (SGD or AdamW) over its trainable parameters, at ``lr``."""
    learner = cfg.learner
    trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapter only
    if learner.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=lr, weight_decay=learner.weight_decay)
    else:
        optimizer = torch.optim.AdamW(
            trainable, lr=lr, betas=tuple(learner.adam_betas), weight_decay=learner.weight_decay
        )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(cfg, grad_accum, world_size))
    engine.train()
    return engine


def build_reference(deepspeed, cfg: Config, model_path: str, device: torch.device, world_size: int):
    """The frozen reference model (no grad, no dropout): on ``device``, or under ZeRO 3 sharded over the ranks like
    the policy (an engine without optimizer)."""
    reference = load_model(model_path, cfg.model.dtype).eval().requires_grad_(False)
    disable_dropout(reference)  # (eval mode already: for a ZeRO 3 engine, which train() would switch back)
    if cfg.learner.zero_stage == 3:
        reference, *_ = deepspeed.initialize(model=reference, config=ds_config(cfg, 1, world_size))
        reference.eval()
        return reference
    return reference.to(device)


def grad_norm(engine) -> float:
    """Global gradient norm before clipping (ZeRO 0: full, DP-averaged gradients live on the parameters)."""
    grads = [p.grad.detach().float().norm() ** 2 for p in engine.module.parameters() if p.grad is not None]
    return float(torch.stack(grads).sum().sqrt()) if grads else 0.0


def set_hyperparameters(engine, lr: float, cfg: Config) -> None:
    """The configured lr, weight decay and (AdamW) betas on every param group of ``engine``'s optimizer: a restored
    optimizer state carries the values it was saved with, and a resume with trainer.allow_config_change trains with
    the new ones."""
    for group in engine.optimizer.param_groups:  # (DeepSpeed's wrappers share the wrapped optimizer's groups)
        group["lr"], group["weight_decay"] = lr, cfg.learner.weight_decay
        if "betas" in group:
            group["betas"] = tuple(cfg.learner.adam_betas)


def skip_next_step(engine) -> None:
    """ZeRO 0: the coming ``engine.step()`` at the accumulation boundary changes neither the weights nor the optimizer
    state (the gradients are zeroed, so clipping sees a zero norm, and the optimizer's step is a no-op once), while
    DeepSpeed still counts the step and clears the gradients."""
    for param in engine.module.parameters():
        if param.grad is not None:
            param.grad.zero_()
    optimizer = engine.optimizer

    def skipped(*args, **kwargs):
        del optimizer.step  # the class's step again from the next update on

    optimizer.step = skipped
