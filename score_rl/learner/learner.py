"""Learner: a DeepSpeed engine (policy) + a frozen reference model, one data-parallel rank per instance.

A plain class; Ray wraps it at the call site. ``setup()`` joins the process group (gloo on CPU, nccl on GPU) and
builds the engine; ``train_step()`` runs one optimizer step over this rank's shard of episodes with gradient
accumulation over micro-batches, normalising the loss over the whole shard.
"""

from __future__ import annotations

import os
import socket
from typing import Dict, List, Sequence

import torch

from score_rl.algos.losses import reinforce_kl_loss
from score_rl.learner.batch import collate
from score_rl.config import Config
from score_rl.episode import Episode
from score_rl.learner.logprobs import token_logprobs
from score_rl.utils import load_model, load_tokenizer, quiet_libraries, set_threads


def _import_deepspeed():
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


class Learner:
    def __init__(self, cfg: Config, model_path: str, rank: int = 0, world_size: int = 1, episodes_per_rank: int = 1):
        self.cfg = cfg
        self.model_path = model_path
        self.rank, self.world_size = rank, world_size
        self.episodes_per_rank = episodes_per_rank
        self.use_cuda = cfg.learner.gpus_per_rank > 0 and torch.cuda.is_available()
        set_threads(cfg.learner.torch_threads or cfg.learner.cpus_per_rank)
        quiet_libraries()

    def address(self) -> tuple:
        return node_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        deepspeed = _import_deepspeed()
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        backend = "nccl" if self.use_cuda else "gloo"
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        cfg = self.cfg.learner
        device = torch.device("cuda", torch.cuda.current_device()) if self.use_cuda else torch.device("cpu")
        self.device = device
        self.tokenizer = load_tokenizer(self.model_path)
        model = load_model(self.model_path, self.cfg.model.dtype)
        self.reference = load_model(self.model_path, self.cfg.model.dtype).to(device).eval().requires_grad_(False)
        self.grad_accum = max(1, -(-self.episodes_per_rank // cfg.micro_batch_size))
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
        )
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "train_batch_size": cfg.micro_batch_size * self.grad_accum * self.world_size,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": self.cfg.model.dtype == "bfloat16"},
            "fp16": {"enabled": self.cfg.model.dtype == "float16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.engine.train()

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logprobs(self, episodes: Sequence[Episode]) -> List[List[float]]:
        """Per-turn summed k1 = log π_old − log π_ref of each episode (for a KL penalty in the reward)."""
        out = []
        for start in range(0, len(episodes), self.cfg.learner.micro_batch_size):
            chunk = episodes[start:start + self.cfg.learner.micro_batch_size]
            b = self._to_device(collate(chunk, self.tokenizer.pad_token_id))
            ref, _ = token_logprobs(self.reference, b["input_ids"], b["attention_mask"], self.cfg.rollout.temperature)
            k1 = (b["sampling_logprobs"] - ref)
            for i, ep in enumerate(chunk):
                out.append([float((k1[i] * (b["turn"][i] == t)).sum()) for t in range(1, len(ep.turns) + 1)])
        return out

    def train_step(self, episodes: Sequence[Episode]) -> Dict[str, float]:
        cfg, algo = self.cfg.learner, self.cfg.algo
        temperature = self.cfg.rollout.temperature
        micro = [episodes[i:i + cfg.micro_batch_size] for i in range(0, len(episodes), cfg.micro_batch_size)]
        if len(micro) != self.grad_accum:
            raise ValueError(f"rank {self.rank} got {len(episodes)} episodes; expected {self.episodes_per_rank}")
        batches = [self._to_device(collate(m, self.tokenizer.pad_token_id)) for m in micro]
        n_tokens = sum(float((b["turn"] > 0).sum()) for b in batches)
        n_seqs = sum(len(ep.turns) for ep in episodes)
        denominator = max(1.0, n_tokens if algo.loss_agg == "token-mean" else float(n_seqs))
        full = algo.kl_estimator == "full"
        stats = {f"kl_turn{t}": 0.0 for t in (1, 2)} | {"loss": 0.0, "pg_loss": 0.0, "logprob_mismatch": 0.0,
                                                        "entropy_proxy": 0.0}
        turn_tokens = {1: 0.0, 2: 0.0}
        for b in batches:
            logp, logits = token_logprobs(self.engine, b["input_ids"], b["attention_mask"], temperature, full)
            with torch.no_grad():
                ref_logp, ref_logits = token_logprobs(
                    self.reference, b["input_ids"], b["attention_mask"], temperature, full
                )
            mask = b["turn"] > 0
            loss, parts = reinforce_kl_loss(
                logp, ref_logp, b["advantage"], b["kl_coef"], mask, kl_estimator=algo.kl_estimator,
                kl_in_loss=not algo.kl_in_reward, loss_agg=algo.loss_agg, denominator=denominator,
                logits=logits, ref_logits=ref_logits,
            )
            self.engine.backward(loss, scale_wrt_gas=False)
            with torch.no_grad():
                k1 = (logp - ref_logp).detach()
                for t in (1, 2):
                    m = b["turn"] == t
                    stats[f"kl_turn{t}"] += float((k1 * m).sum())
                    turn_tokens[t] += float(m.sum())
                stats["loss"] += float(loss.detach())
                stats["pg_loss"] += float(parts["pg"]) / denominator
                stats["logprob_mismatch"] += float(((logp.detach() - b["sampling_logprobs"]).abs() * mask).sum())
                stats["entropy_proxy"] += float((-logp.detach() * mask).sum())
        pre_clip_norm = self._grad_norm() if self.cfg.learner.zero_stage == 0 else None
        self.engine.step()
        for t in (1, 2):  # mean per-token k1 estimate of KL(π_old ‖ π_ref) per turn
            stats[f"kl_turn{t}"] /= max(turn_tokens[t], 1.0)
        stats["logprob_mismatch"] /= max(n_tokens, 1.0)
        stats["entropy_proxy"] /= max(n_tokens, 1.0)
        norm = self.engine.get_global_grad_norm() if pre_clip_norm is None else pre_clip_norm
        stats["grad_norm"] = float(norm) if norm is not None else float("nan")
        stats["tokens"] = n_tokens
        return stats

    def _grad_norm(self) -> float:
        """Global gradient norm before clipping (ZeRO 0: full gradients live on the parameters; DP-averaged)."""
        grads = [p.grad.detach().float().norm() ** 2 for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).sum().sqrt()) if grads else 0.0

    # ------------------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Full policy weights on CPU (ZeRO 0-2 keep full parameters on every rank)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.module.state_dict().items()}

    def save_pretrained(self, out_dir: str) -> None:
        if self.rank == 0:
            self.engine.module.save_pretrained(out_dir)
            self.tokenizer.save_pretrained(out_dir)

    def save_checkpoint(self, ckpt_dir: str, tag: str) -> None:
        self.engine.save_checkpoint(ckpt_dir, tag=tag)

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(ckpt_dir, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no learner checkpoint '{tag}' in {ckpt_dir}")

    def _to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}
