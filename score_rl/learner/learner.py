"""Learner: a DeepSpeed engine (policy) + a frozen reference model, one data-parallel rank per instance.

A plain class; Ray wraps it at the call site, so its public methods are an actor API called by name. ``setup()``
joins the process group (gloo on CPU, nccl on GPU) and builds the engines; ``train_step()`` / ``ppo_update()`` are
exactly one optimizer update over the step's (or minibatch's) episodes:

* every rank splits its shard into the same number k of micro-batches (DeepSpeed's ``gradient_accumulation_steps``)
  and calls ``engine.backward`` + ``engine.step`` once per micro-batch, so DeepSpeed applies the update at its
  accumulation boundary, the k-th micro-batch, on every training step;
* the loss is normalised globally: each micro-batch's summed loss is divided by the step's token (or turn) count over
  *all* ranks (``loss_denominator``), times the rank count because data parallelism averages gradients over ranks.
  The update is therefore the same for any micro-batch size, rank count and ZeRO stage (tests/learner/).

The per-algorithm losses are in objectives.py, the engines in engine.py, the weight export in export.py.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from score_rl.compat import unwrap
from score_rl.config import Config
from score_rl.episode import Episode
from score_rl.learner.batch import collate, loss_mask, per_turn
from score_rl.learner.critic import critic_values, load_critic
from score_rl.learner.engine import (build_engine, build_reference, free_port, grad_norm, import_deepspeed,
                                     join_process_group, node_address, set_hyperparameters, skip_next_step)
from score_rl.learner.export import bucket_plan, bucket_weights, gathered_state_dict, save_model, sync_sources
from score_rl.learner.logprobs import SharedPrefix, first_response_target, probe_shared_prompt, token_logprobs
from score_rl.learner.lora import AdapterDisabled, with_lora
from score_rl.learner.objectives import Objective, Passes, make_objective
from score_rl.learner.stats import POLICY_STATS, add_policy_stats, shared_rows
from score_rl.utils import disable_dropout, load_model, load_tokenizer, quiet_libraries, set_threads

# re-exported where the trainer, tests and benchmarks import them from
from score_rl.learner.lora import check_lora_targets, merged_model  # noqa: F401
from score_rl.learner.stats import loss_denominator, reduce_rank_stats  # noqa: F401


@dataclass
class MicroBatch:
    """A micro-batch on the device: its collated tensors ``b``, the first response target (the logits before it are
    skipped) and the prompts its rows share (None: every row runs whole)."""

    b: Dict[str, torch.Tensor]
    first: int
    shared: Optional[SharedPrefix]


class Learner:
    """One data-parallel rank: the policy engine, its frozen reference and, with PPO, the critic beside them."""

    def __init__(self, cfg: Config, model_path: str, rank: int = 0, world_size: int = 1, episodes_per_rank: int = 1):
        from score_rl.launch.resources import resolve_dtype

        self.cfg = cfg = resolve_dtype(cfg)[0]  # model.dtype auto (the trainer resolves it already; tests may not)
        self.model_path = model_path
        self.rank, self.world_size = rank, world_size
        self.episodes_per_rank = episodes_per_rank
        self.use_cuda = cfg.learner.gpus_per_rank > 0 and torch.cuda.is_available()
        set_threads(cfg.learner.torch_threads or cfg.learner.cpus_per_rank or 1)
        quiet_libraries()

    def address(self) -> tuple:
        return node_address(), free_port()

    def pid(self) -> int:
        return os.getpid()

    def setup(self, master_addr: str, master_port: int) -> None:
        deepspeed = import_deepspeed()
        join_process_group(deepspeed, self.rank, self.world_size, master_addr, master_port, self.use_cuda)
        cfg = self.cfg
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.use_cuda else torch.device("cpu")
        self.tokenizer = load_tokenizer(self.model_path)
        model = load_model(self.model_path, cfg.model.dtype)
        disable_dropout(model)  # before LoRA: lora.dropout is the adapter's own, as configured
        self.grad_accum = max(1, -(-self.episodes_per_rank // cfg.learner.micro_batch_size))
        build = dict(cfg=cfg, grad_accum=self.grad_accum, world_size=self.world_size)
        if cfg.model.lora.r > 0:  # only the adapter trains; the reference is the same weights with the adapter disabled
            model = with_lora(model, cfg.model.lora, seed=cfg.trainer.seed)
            self.engine = build_engine(deepspeed, model, cfg.learner.lr, **build)
            self.reference = AdapterDisabled(self.engine.module)
        else:
            self.engine = build_engine(deepspeed, model, cfg.learner.lr, **build)
            self.reference = build_reference(deepspeed, cfg, self.model_path, self.device, self.world_size)
        self.critic = None
        if cfg.algo.name == "ppo":  # the critic sits beside the policy: same ranks, ZeRO stage, micro-batches
            critic = load_critic(cfg.algo.critic.path or self.model_path, cfg.model.dtype)
            self.critic = build_engine(deepspeed, critic, cfg.algo.critic.lr, **build)

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logprobs(self, episodes: Sequence[Episode]) -> List[List[List[float]]]:
        """Reference log-probs of every response token: ``out[i][t]`` lists those of episode i's turn t+1.

        Computed once per step when the KL sits in the reward: the trainer stores them on the turns
        (``Turn.ref_logprobs``) for the penalty, and ``train_step`` reuses them instead of a second reference pass.
        """
        out = []
        for chunk in self._micro_batches(episodes):
            mb = self._batch(chunk)
            ref, _ = self._reference_pass(mb, reuse=False)
            out.extend(per_turn(ref.cpu().tolist(), chunk))
        return out

    def train_step(self, episodes: Sequence[Episode], denominator: float) -> Dict[str, float]:
        """One REINFORCE update over this rank's episodes. ``denominator``: ``loss_denominator`` of the whole step.

        Returns sums and counts (``reduce_rank_stats`` turns the ranks' results into the step's metrics).
        """
        return self._update(episodes, denominator, make_objective("reinforce", self.cfg))

    def ppo_update(self, episodes: Sequence[Episode], denominator: float) -> Dict[str, float]:
        """One PPO update of policy and critic over this rank's share of a minibatch (its turns carry old_logprobs,
        values, token_advantages and returns). ``denominator``: ``loss_denominator`` of the whole minibatch."""
        if self.critic is None:
            raise RuntimeError("ppo_update needs the critic (algo.name=ppo)")
        return self._update(episodes, denominator, make_objective("ppo", self.cfg))

    @torch.no_grad()
    def ppo_forward(self, minibatches: Sequence[Sequence[Episode]]) -> Dict[str, list | Dict[str, float]]:
        """log π_old, V and log π_ref of every response token before the step's first update: ``rows[m][i][t]`` =
        (old log-probs, values, reference log-probs) of turn t+1 of episode i of minibatch m (the reference ones are
        kept on the turns, so the K × M updates need no reference pass of their own). Micro-batched exactly as
        ``ppo_update`` will see the first epoch's minibatches, so the first update's ratio is exactly 1. ``stats``:
        sums describing the policy before the step (what ``train_step`` logs for REINFORCE), for
        ``reduce_rank_stats``-style merging."""
        rows: List[list] = []
        stats = dict.fromkeys(POLICY_STATS, 0.0)
        for episodes in minibatches:
            out = []
            for chunk in self._micro_batches(episodes):
                mb = self._batch(chunk)
                logp, _ = self._policy_pass(mb)
                values = self._values(mb.b)
                ref_logp, _ = self._reference_pass(mb)
                add_policy_stats(stats, mb.b, logp, ref_logp, loss_mask(mb.b), shared_rows(self.engine, mb.shared))
                turns = [per_turn(x.cpu().tolist(), chunk) for x in (logp, values, ref_logp)]
                out.extend([list(zip(*episode)) for episode in zip(*turns)])
            rows.append(out)
        return {"rows": rows, "stats": stats}

    def shared_prompt_fallbacks(self) -> Dict[str, str]:
        """With learner.share_prompt_prefix on: why the policy's or the reference's passes run every row whole
        (``{"policy": reason, "reference": reason}``, the models that share left out; the trainer says so at
        start-up). A first try on a tiny batch finds what only a forward pass shows (a sliding-window cache). Every
        rank must call it (forward passes: ZeRO 3 gathers parameters)."""
        if not self.cfg.learner.share_prompt_prefix:
            return {}
        if self.cfg.algo.kl_estimator == "full":
            why = "algo.kl_estimator=full needs every position's logits"
            return {"policy": why, "reference": why}
        out = {}
        with torch.random.fork_rng(devices=[self.device] if self.use_cuda else []):  # a model with dropout draws
            for name, model in (("policy", self.engine), ("reference", self.reference)):
                reason = probe_shared_prompt(model, self.device)
                if reason:
                    out[name] = f"{type(unwrap(model)).__name__} ({reason})"
        return out

    # ------------------------------------------------------------------------------------------------------------
    def _micro_batches(self, episodes: Sequence[Episode]) -> List[Sequence[Episode]]:
        size = self.cfg.learner.micro_batch_size
        return [episodes[i:i + size] for i in range(0, len(episodes), size)]

    def _batch(self, chunk: Sequence[Episode]) -> MicroBatch:
        """A micro-batch's tensors on the device (``_shared``: a collective when there are several ranks)."""
        b = {k: v.to(self.device) for k, v in collate(chunk, self.tokenizer.pad_token_id).items()}
        return MicroBatch(b, first_response_target(b["turn"]), self._shared(chunk))

    def _policy_pass(self, mb: MicroBatch, full: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """log π of every target token, [B, L-1] (and with ``full`` every position's logits); with grad unless the
        caller disables it."""
        b = mb.b
        return token_logprobs(self.engine, b["input_ids"], b["attention_mask"], self.cfg.rollout.temperature, full,
                              mb.first, mb.shared)

    def _reference_pass(self, mb: MicroBatch, full: bool = False,
                        reuse: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """log π_ref of every target token, [B, L-1] (and with ``full`` every position's logits), without grad. With
        ``reuse`` and without ``full``, the ones the turns carry (``Turn.ref_logprobs``, computed once this step)."""
        b = mb.b
        if reuse and not full and "ref_logprobs" in b:
            return b["ref_logprobs"], None
        with torch.no_grad():
            return token_logprobs(self.reference, b["input_ids"], b["attention_mask"], self.cfg.rollout.temperature,
                                  full, mb.first, mb.shared)

    def _values(self, b: Dict[str, torch.Tensor]) -> torch.Tensor:
        """V(state before each target token), aligned with the targets like the log-probs: [B, L-1]."""
        return critic_values(self.critic, b)

    def _shared(self, episodes: Sequence[Episode]) -> Optional[SharedPrefix]:
        """The turn-1 prompts a micro-batch's episodes share (learner.share_prompt_prefix). None with the full-KL
        estimator: its passes need every position's logits, and every pass of a step must take the same path (PPO's
        first ratio is exactly 1 only when π_old and π come from the same computation)."""
        if not self.cfg.learner.share_prompt_prefix or self.cfg.algo.kl_estimator == "full":
            return None
        if self.world_size == 1:
            return SharedPrefix.of(episodes)
        # several ranks run the same passes, or the gradients go wrong: ZeRO 3 fetches parameters in the order the
        # forward passes call the modules, ZeRO 2 reduces gradient buckets in the order backward fills them. All
        # share (a rank without repeated prompts runs singleton groups) when every rank can and one of them saves
        # something; else none does
        shared = SharedPrefix.of(episodes, singletons=True)
        repeats = shared is not None and len(shared.length) < len(episodes)
        votes = torch.tensor([int(shared is not None), -int(repeats)], device=self.device)
        torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MIN)
        return shared if int(votes[0]) == 1 and int(votes[1]) == -1 else None

    def _update(self, episodes: Sequence[Episode], denominator: float, objective: Objective) -> Dict[str, float]:
        """One optimizer update of every engine ``objective`` trains (the policy, and the critic) over this rank's
        episodes: every micro-batch's loss is summed over its tokens and divided by the update's count over all
        ranks."""
        if len(episodes) != self.episodes_per_rank:  # then there are exactly grad_accum micro-batches
            raise ValueError(f"rank {self.rank} got {len(episodes)} episodes; expected {self.episodes_per_rank}")
        micro = self._micro_batches(episodes)
        # DP averages gradients over ranks: scale each rank's share up so the applied gradient is Σ_ranks / denominator
        rank_denominator = max(denominator, 1.0) / self.world_size
        full = self.cfg.algo.kl_estimator == "full"
        stats = objective.new_stats()
        trained = [self.engine, self.critic] if objective.critic else [self.engine]
        pre_clip_norms, finite = None, True
        for i, chunk in enumerate(micro):
            mb = self._batch(chunk)
            # the logits before `first` are not computed, nor a shared prompt twice (neither with `full`)
            logp, logits = self._policy_pass(mb, full)
            ref_logp, ref_logits = self._reference_pass(mb, full)
            passes = Passes(mb.b, logp, ref_logp, loss_mask(mb.b), rank_denominator, logits, ref_logits)
            losses, parts = objective.losses(passes, self._values)
            finite = finite and all(bool(torch.isfinite(loss.detach()).all()) for loss in losses)
            for engine, engine_loss in zip(trained, losses):
                engine.backward(engine_loss, scale_wrt_gas=False)
            if i == len(micro) - 1:
                if not all(e.is_gradient_accumulation_boundary() for e in trained):  # never: k micro-batches, GAS = k
                    raise RuntimeError("learner: the last micro-batch is not DeepSpeed's accumulation boundary")
                if self.cfg.learner.zero_stage == 0:  # ZeRO 0: the all-reduced gradient sits on the parameters
                    pre_clip_norms = [grad_norm(e) for e in trained]
                    self._skip_if_not_finite(finite, pre_clip_norms, trained)
            for engine in trained:
                engine.step()  # applies the update at the boundary (the last micro-batch), else only counts
            with torch.no_grad():
                add_policy_stats(stats, mb.b, logp.detach(), ref_logp, passes.mask, shared_rows(self.engine, mb.shared))
                stats["loss"] += float(losses[0].detach()) / self.world_size
                objective.add_parts(stats, parts)
        for k, (name, engine) in enumerate(zip(("grad_norm", "critic_grad_norm"), trained)):
            norm = engine.get_global_grad_norm() if pre_clip_norms is None else pre_clip_norms[k]
            stats[name] = float(norm) if norm is not None else float("nan")
        return stats

    def _skip_if_not_finite(self, finite: bool, norms: Sequence[float], trained: Sequence[Any]) -> None:
        """ZeRO 0, before the update's optimizer step: after a non-finite loss (on any rank) or gradient norm the step
        changes neither weights nor optimizer state (``skip_next_step``); the trainer sees the loss / grad_norm and
        stops the run or skips the step (trainer.max_bad_steps). ZeRO 1-3 optimizers skip a step whose gradient norm
        is not finite themselves."""
        bad = not finite or not all(math.isfinite(norm) for norm in norms)
        if self.world_size > 1:  # every rank decides the same (the norm is global, a loss is not)
            flag = torch.tensor([float(bad)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:
            for engine in trained:
                skip_next_step(engine)

    # ------------------------------------------------------------------------------------------------------------
    def state_dict(self, critic: bool = False, rank0_only: bool = False) -> Dict[str, torch.Tensor] | None:
        """Full policy (or critic) weights on CPU. ZeRO 0-2 keep full parameters on every rank; under ZeRO 3 they are
        gathered one parameter at a time (a collective: every rank must call this). ``rank0_only``: other ranks
        return None (what the weight sync needs). A LoRA policy gives the weights the workers sample with, merged."""
        module = (self.critic if critic else self.engine).module
        return gathered_state_dict(module, zero3=self.cfg.learner.zero_stage == 3,
                                   keep=self.rank == 0 or not rank0_only,
                                   merge_lora=not critic and self.cfg.model.lora.r > 0)

    def _sync_sources(self) -> Dict[str, Any]:
        """What the rollout workers sample with (``export.sync_sources``), cached: the parameter (or LoRA layer)
        objects stay the same for the learner's life; only their values change."""
        if getattr(self, "_sources", None) is None:
            self._sources = sync_sources(self.engine.module, self.cfg.model.lora.r > 0, self.cfg.rollout.engine)
        return self._sources

    def weight_sync_plan(self, bucket_bytes: int) -> List[List[str]]:
        """The weights of ``_sync_sources`` in buckets of at most ``bucket_bytes`` (a larger weight is a bucket of
        its own), in a fixed order: every rank computes the same plan (ZeRO 3 gathers bucket by bucket)."""
        return bucket_plan(self._sync_sources(), bucket_bytes)

    def weight_bucket(self, names: Sequence[str]) -> Dict[str, torch.Tensor] | None:
        """CPU copies of the named weights (a bucket of ``weight_sync_plan``) on rank 0; None on the other ranks,
        which under ZeRO 3 only take part in the gathers (every rank must call this with the same names)."""
        return bucket_weights(self._sync_sources(), names, self.cfg.learner.zero_stage == 3, keep=self.rank == 0)

    def save_pretrained(self, out_dir: str, critic_dir: str | None = None) -> None:
        """The policy (a Hugging Face model directory); with ``critic_dir`` and a critic, the critic too (loadable
        as ``algo.critic.path``). Call it on every rank (ZeRO 3 gathers the weights); rank 0 writes. With LoRA:
        ``out_dir`` holds the merged model, ``out_dir``/adapter the adapter."""
        save_model(self.engine.module, out_dir, self.tokenizer, self.rank, lora=self.cfg.model.lora.r > 0,
                   weights=lambda: self.state_dict(rank0_only=True))
        if critic_dir is not None and self.critic is not None:
            save_model(self.critic.module, critic_dir, self.tokenizer, self.rank, lora=False,
                       weights=lambda: self.state_dict(critic=True, rank0_only=True))

    def save_checkpoint(self, ckpt_dir: str, tag: str) -> None:
        for engine, engine_tag in self._tagged_engines(tag):
            engine.save_checkpoint(ckpt_dir, tag=engine_tag)

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> None:
        for engine, engine_tag in self._tagged_engines(tag):
            if engine is self.critic and not os.path.isdir(os.path.join(ckpt_dir, engine_tag)):
                raise FileNotFoundError(f"checkpoint {ckpt_dir} has no critic ('{engine_tag}'): it was saved by a run "
                                        "with algo.name=reinforce; resume it with the same algorithm")
            path, _ = engine.load_checkpoint(ckpt_dir, tag=engine_tag)
            if path is None:
                raise FileNotFoundError(f"no learner checkpoint '{engine_tag}' in {ckpt_dir}")
            # the configured values, not the saved ones (they differ only with trainer.allow_config_change)
            set_hyperparameters(engine, self.cfg.algo.critic.lr if engine is self.critic else self.cfg.learner.lr,
                                self.cfg)

    def close(self) -> None:
        """Destroy this rank's DeepSpeed engines (policy, critic, and the ZeRO 3 reference) and drop them: a ZeRO 1/2
        optimizer's gradient hooks keep its engine alive from autograd objects the garbage collector cannot see, so an
        in-process learner is never freed without this (a Ray actor frees everything when it exits). Idempotent; an
        engine of a DeepSpeed without ``destroy`` is only dropped."""
        from deepspeed.runtime.engine import DeepSpeedEngine

        for name in ("engine", "critic", "reference"):
            engine = getattr(self, name, None)
            if isinstance(engine, DeepSpeedEngine) and callable(getattr(engine, "destroy", None)):
                engine.destroy()
            if hasattr(self, name):
                setattr(self, name, None)
        self._sources = None  # the policy's parameters (weight sync), cached

    def _tagged_engines(self, tag: str):
        return [(self.engine, tag)] + ([(self.critic, f"{tag}_critic")] if self.critic is not None else [])
