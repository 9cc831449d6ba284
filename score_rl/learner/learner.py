"""Learner: a DeepSpeed engine (policy) + a frozen reference model, one data-parallel rank per instance.

A plain class; Ray wraps it at the call site. ``setup()`` joins the process group (gloo on CPU, nccl on GPU) and
builds the engine; ``train_step()`` is exactly one optimizer update over the step's episodes:

* every rank splits its shard into the same number k of micro-batches (DeepSpeed's ``gradient_accumulation_steps``)
  and calls ``engine.backward`` + ``engine.step`` once per micro-batch, so DeepSpeed applies the update at its
  accumulation boundary, the k-th micro-batch, on every training step;
* the loss is normalised globally: each micro-batch's summed loss is divided by the step's token (or turn) count over
  *all* ranks (``loss_denominator``), times the rank count because data parallelism averages gradients over ranks.
  The update is therefore the same for any micro-batch size, rank count and ZeRO stage (tests/learner/).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, List, Optional, Sequence

import torch

from score_rl.algos.losses import ppo_kl_loss, reinforce_kl_loss, value_loss
from score_rl.learner.batch import collate
from score_rl.config import Config
from score_rl.episode import Episode
from score_rl.learner.logprobs import (SharedPrefix, first_response_target, probe_shared_prompt, shared_prompt_off,
                                       token_logprobs)
from score_rl.compat import unwrap
from score_rl.utils import disable_dropout, load_model, load_tokenizer, quiet_libraries, set_threads


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
        disable_dropout(model)  # before LoRA: lora.dropout is the adapter's own, as configured
        self.grad_accum = max(1, -(-self.episodes_per_rank // cfg.micro_batch_size))
        lora = self.cfg.model.lora
        if lora.r > 0:  # only the adapter trains; the reference is the same weights with the adapter disabled
            model = with_lora(model, lora, seed=self.cfg.trainer.seed)
            self.engine = self._engine(deepspeed, model, cfg.lr)
            self.reference = AdapterDisabled(self.engine.module)
        else:
            self.engine = self._engine(deepspeed, model, cfg.lr)
            self._setup_reference(deepspeed, device)
        self.critic = None
        if self.cfg.algo.name == "ppo":  # the critic sits beside the policy: same ranks, ZeRO stage, micro-batches
            critic = load_critic(self.cfg.algo.critic.path or self.model_path, self.cfg.model.dtype)
            self.critic = self._engine(deepspeed, critic, self.cfg.algo.critic.lr)

    def _setup_reference(self, deepspeed, device) -> None:
        reference = load_model(self.model_path, self.cfg.model.dtype).eval().requires_grad_(False)
        disable_dropout(reference)  # (eval mode already: for a ZeRO 3 engine, which train() would switch back)
        if self.cfg.learner.zero_stage == 3:  # the frozen reference is sharded over the ranks too: an engine without optimizer
            self.reference, *_ = deepspeed.initialize(model=reference, config=self._ds_config(1))
            self.reference.eval()
        else:
            self.reference = reference.to(device)

    def _engine(self, deepspeed, model, lr: float):
        cfg = self.cfg.learner
        trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapter only
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(trainable, lr=lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.AdamW(
                trainable, lr=lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
            )
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self._ds_config(self.grad_accum))
        engine.train()
        return engine

    def _ds_config(self, grad_accum: int) -> Dict:
        cfg = self.cfg.learner
        return {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": cfg.micro_batch_size * grad_accum * self.world_size,
            "gradient_clipping": cfg.grad_clip,  # >= 0 (validated); 0 = off
            "zero_optimization": {"stage": cfg.zero_stage,
                                  "stage3_param_persistence_threshold": cfg.zero3_param_persistence_threshold},
            "zero_allow_untested_optimizer": cfg.optimizer == "sgd",  # plain SGD is correct under ZeRO 1-3
            "bf16": {"enabled": self.cfg.model.dtype == "bfloat16"},
            "fp16": {"enabled": self.cfg.model.dtype == "float16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logprobs(self, episodes: Sequence[Episode]) -> List[List[List[float]]]:
        """Reference log-probs of every response token: ``out[i][t]`` lists those of episode i's turn t+1.

        Computed once per step when the KL sits in the reward: the trainer stores them on the turns
        (``Turn.ref_logprobs``) for the penalty, and ``train_step`` reuses them instead of a second reference pass.
        """
        out = []
        for start in range(0, len(episodes), self.cfg.learner.micro_batch_size):
            chunk = episodes[start:start + self.cfg.learner.micro_batch_size]
            b = self._to_device(collate(chunk, self.tokenizer.pad_token_id))
            ref, _ = token_logprobs(self.reference, b["input_ids"], b["attention_mask"], self.cfg.rollout.temperature,
                                    first_target=first_response_target(b["turn"]), shared=self._shared(chunk))
            out.extend(_per_turn(ref.cpu().tolist(), chunk))
        return out

    def train_step(self, episodes: Sequence[Episode], denominator: float) -> Dict[str, float]:
        """One REINFORCE update over this rank's episodes. ``denominator``: ``loss_denominator`` of the whole step.

        Returns sums and counts (``reduce_rank_stats`` turns the ranks' results into the step's metrics).
        """
        return self._update(episodes, denominator, ppo=False)

    def ppo_update(self, episodes: Sequence[Episode], denominator: float) -> Dict[str, float]:
        """One PPO update of policy and critic over this rank's share of a minibatch (its turns carry old_logprobs,
        values, token_advantages and returns). ``denominator``: ``loss_denominator`` of the whole minibatch."""
        if self.critic is None:
            raise RuntimeError("ppo_update needs the critic (algo.name=ppo)")
        return self._update(episodes, denominator, ppo=True)

    @torch.no_grad()
    def ppo_forward(self, minibatches: Sequence[Sequence[Episode]]) -> Dict[str, list | Dict[str, float]]:
        """log π_old, V and log π_ref of every response token before the step's first update: ``rows[m][i][t]`` =
        (old log-probs, values, reference log-probs) of turn t+1 of episode i of minibatch m (the reference ones are
        kept on the turns, so the K × M updates need no reference pass of their own). Micro-batched exactly as ``ppo_update`` will see
        the first epoch's minibatches, so the first update's ratio is exactly 1. ``stats``: sums describing the
        policy before the step (what ``train_step`` logs for REINFORCE), for ``reduce_rank_stats``-style merging."""
        temperature = self.cfg.rollout.temperature
        rows: List[list] = []
        stats = dict.fromkeys(POLICY_STATS, 0.0)
        for episodes in minibatches:
            out = []
            for chunk in self._micro_batches(episodes):
                b = self._to_device(collate(chunk, self.tokenizer.pad_token_id))
                first, shared = first_response_target(b["turn"]), self._shared(chunk)
                logp, _ = token_logprobs(self.engine, b["input_ids"], b["attention_mask"], temperature,
                                         first_target=first, shared=shared)
                values = self._values(b)
                ref_logp = b["ref_logprobs"] if "ref_logprobs" in b else token_logprobs(
                    self.reference, b["input_ids"], b["attention_mask"], temperature, first_target=first,
                    shared=shared)[0]
                _add_policy_stats(stats, b, logp, ref_logp, _loss_mask(b), _shared_rows(self.engine, shared))
                per_turn = [_per_turn(x.cpu().tolist(), chunk) for x in (logp, values, ref_logp)]
                out.extend([list(zip(*turns)) for turns in zip(*per_turn)])
            rows.append(out)
        return {"rows": rows, "stats": stats}

    def _values(self, b: Dict[str, torch.Tensor]) -> torch.Tensor:
        """V(state before each target token), aligned with the targets like the log-probs: [B, L-1]."""
        return self.critic(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1, 0].float()

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

    def _micro_batches(self, episodes: Sequence[Episode]) -> List[Sequence[Episode]]:
        size = self.cfg.learner.micro_batch_size
        return [episodes[i:i + size] for i in range(0, len(episodes), size)]

    def _update(self, episodes: Sequence[Episode], denominator: float, ppo: bool) -> Dict[str, float]:
        """One optimizer update (of the policy, and with ``ppo`` of the critic) over this rank's episodes: every
        micro-batch's loss is summed over its tokens and divided by the update's count over all ranks."""
        algo = self.cfg.algo
        temperature = self.cfg.rollout.temperature
        if len(episodes) != self.episodes_per_rank:  # then there are exactly grad_accum micro-batches
            raise ValueError(f"rank {self.rank} got {len(episodes)} episodes; expected {self.episodes_per_rank}")
        micro = self._micro_batches(episodes)
        # DP averages gradients over ranks: scale each rank's share up so the applied gradient is Σ_ranks / denominator
        rank_denominator = max(denominator, 1.0) / self.world_size
        full = algo.kl_estimator == "full"
        stats = {"loss": 0.0, "pg_loss_sum": 0.0, **dict.fromkeys(POLICY_STATS, 0.0)}
        if ppo:
            stats.update(value_loss_sum=0.0, clipped_sum=0.0, approx_kl_sum=0.0, ratio_dev_sum=0.0)
        off_policy = not ppo and self.cfg.trainer.off_policy_steps > 0
        if off_policy:
            stats.update(is_weight_sum=0.0, is_clipped_sum=0.0)
        engines = [self.engine, self.critic] if ppo else [self.engine]
        pre_clip_norms = None
        for i, chunk in enumerate(micro):
            b = self._to_device(collate(chunk, self.tokenizer.pad_token_id))
            # the logits before `first` are not computed, nor a shared prompt twice (neither with `full`)
            first, shared = first_response_target(b["turn"]), self._shared(chunk)
            logp, logits = token_logprobs(self.engine, b["input_ids"], b["attention_mask"], temperature, full, first,
                                          shared)
            ref_logits = None
            if "ref_logprobs" in b and not full:  # computed once this step already (the reward's KL penalty)
                ref_logp = b["ref_logprobs"]
            else:
                with torch.no_grad():
                    ref_logp, ref_logits = token_logprobs(
                        self.reference, b["input_ids"], b["attention_mask"], temperature, full, first, shared
                    )
            mask = _loss_mask(b)
            kl = dict(kl_estimator=algo.kl_estimator, kl_in_loss=not algo.kl_in_the_reward(), loss_agg=algo.loss_agg,
                      denominator=rank_denominator, logits=logits, ref_logits=ref_logits)
            if ppo:
                loss, parts = ppo_kl_loss(logp, b["old_logprobs"], ref_logp, b["advantage"], b["kl_coef"], mask,
                                          algo.ppo.clip_eps, **kl)
                v_loss, v_parts = value_loss(self._values(b), b["values"], b["returns"], mask, algo.ppo.value_clip,
                                             algo.loss_agg, rank_denominator)
                parts.update(v_parts)
                losses = [loss, v_loss]
            else:
                if off_policy:  # the batch was sampled one update ago: importance-weight it to the current policy
                    kl.update(sampling_logp=b["sampling_logprobs"], is_clip=algo.is_clip)
                loss, parts = reinforce_kl_loss(logp, ref_logp, b["advantage"], b["kl_coef"], mask, **kl)
                losses = [loss]
            for engine, engine_loss in zip(engines, losses):
                engine.backward(engine_loss, scale_wrt_gas=False)
            if i == len(micro) - 1:
                if not all(e.is_gradient_accumulation_boundary() for e in engines):  # never: k micro-batches, GAS = k
                    raise RuntimeError("learner: the last micro-batch is not DeepSpeed's accumulation boundary")
                if self.cfg.learner.zero_stage == 0:  # ZeRO 0: the all-reduced gradient sits on the parameters
                    pre_clip_norms = [_grad_norm(e) for e in engines]
            for engine in engines:
                engine.step()  # applies the update at the boundary (the last micro-batch), else only counts
            with torch.no_grad():
                _add_policy_stats(stats, b, logp.detach(), ref_logp, mask, _shared_rows(self.engine, shared))
                stats["loss"] += float(loss.detach()) / self.world_size
                stats["pg_loss_sum"] += float(parts["pg"])
                if ppo:
                    for key in ("value_loss", "clipped", "approx_kl", "ratio_dev"):
                        stats[f"{key}_sum"] += float(parts[key])
                if off_policy:
                    for key in ("is_weight", "is_clipped"):
                        stats[f"{key}_sum"] += float(parts[key])
        names = ["grad_norm", "critic_grad_norm"]
        for k, engine in enumerate(engines):
            norm = engine.get_global_grad_norm() if pre_clip_norms is None else pre_clip_norms[k]
            stats[names[k]] = float(norm) if norm is not None else float("nan")
        return stats

    # ------------------------------------------------------------------------------------------------------------
    def state_dict(self, critic: bool = False, rank0_only: bool = False) -> Dict[str, torch.Tensor] | None:
        """Full policy (or critic) weights on CPU. ZeRO 0-2 keep full parameters on every rank; under ZeRO 3 they are
        gathered one parameter at a time (a collective: every rank must call this). ``rank0_only``: other ranks
        return None (what the weight sync needs)."""
        module = (self.critic if critic else self.engine).module
        if self.cfg.learner.zero_stage != 3:
            if rank0_only and self.rank != 0:
                return None
            if not critic and self.cfg.model.lora.r > 0:  # the weights the workers sample with: base + adapter
                module = merged_model(module)
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        deepspeed = _import_deepspeed()
        params = dict(module.named_parameters(remove_duplicate=False))
        out = {}
        keep = self.rank == 0 or not rank0_only  # the other ranks only take part in the gathers
        for key, value in module.state_dict().items():
            if key in params:
                with deepspeed.zero.GatheredParameters([params[key]]):
                    if keep:
                        out[key] = params[key].detach().to("cpu", copy=True)
            elif keep:  # a buffer: never partitioned
                out[key] = value.detach().to("cpu", copy=True)
        return out if keep else None

    def _sync_sources(self) -> Dict[str, Any]:
        """Cached: the parameter (or LoRA layer) objects stay the same for the learner's life; only their values
        change. ``_find_sync_sources`` computes them."""
        if getattr(self, "_sources", None) is None:
            self._sources = self._find_sync_sources()
        return self._sources

    def _find_sync_sources(self) -> Dict[str, Any]:
        """What the rollout workers sample with, by Hugging Face name: every weight of the policy (a tensor shared
        by two names, e.g. tied embeddings, once). With LoRA an adapted layer's weight is sent merged,
        W + (alpha / r) · B A, and with the HF engine only those (the workers start from the same base model, whose
        other weights never change); vLLM gets every weight, as it re-processes a fused layer (qkv_proj, or
        gate_up_proj) only once all of its weights, biases included, have arrived."""
        module = self.engine.module
        adapted: Dict[str, Any] = {}
        prefix = "base_model.model."
        if self.cfg.model.lora.r > 0:
            from peft.tuners.lora import LoraLayer

            adapted = {f"{name.removeprefix(prefix)}.weight": layer for name, layer in module.named_modules()
                       if isinstance(layer, LoraLayer)}
            if self.cfg.rollout.engine == "hf":
                return adapted
        sources, seen = {}, set()
        for name, tensor in module.state_dict(keep_vars=True).items():
            if "lora_" in name or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            name = name.removeprefix(prefix).replace(".base_layer.", ".") if adapted else name
            sources[name] = adapted.get(name, tensor)
        return sources

    def weight_sync_plan(self, bucket_bytes: int) -> List[List[str]]:
        """The weights of ``_sync_sources`` in buckets of at most ``bucket_bytes`` (a larger weight is a bucket of
        its own), in a fixed order: every rank computes the same plan (ZeRO 3 gathers bucket by bucket)."""
        buckets: List[List[str]] = [[]]
        size = 0
        for name, source in self._sync_sources().items():
            tensor = source.base_layer.weight if not isinstance(source, torch.Tensor) else source
            nbytes = getattr(tensor, "ds_numel", tensor.numel()) * tensor.element_size()
            if buckets[-1] and size + nbytes > bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append(name)
            size += nbytes
        return [b for b in buckets if b]

    @torch.no_grad()
    def weight_bucket(self, names: Sequence[str]) -> Dict[str, torch.Tensor] | None:
        """CPU copies of the named weights (a bucket of ``weight_sync_plan``) on rank 0; None on the other ranks,
        which under ZeRO 3 only take part in the gathers (every rank must call this with the same names)."""
        sources = self._sync_sources()
        keep = self.rank == 0
        out: Dict[str, torch.Tensor] = {}
        if self.cfg.learner.zero_stage != 3:
            if not keep:
                return None
            for name in names:
                source = sources[name]
                if isinstance(source, torch.Tensor):
                    out[name] = source.detach().to("cpu", copy=True)
                else:  # a LoRA layer: its merged weight
                    adapter = source.active_adapters[0]
                    out[name] = (source.base_layer.weight + source.get_delta_weight(adapter)).to("cpu", copy=True)
            return out
        deepspeed = _import_deepspeed()
        for name in names:
            tensor = sources[name]
            with deepspeed.zero.GatheredParameters([tensor], enabled=hasattr(tensor, "ds_id")):
                if keep:
                    out[name] = tensor.detach().to("cpu", copy=True)
        return out if keep else None

    def save_pretrained(self, out_dir: str, critic_dir: str | None = None) -> None:
        """The policy (a Hugging Face model directory); with ``critic_dir`` and a critic, the critic too (loadable
        as ``algo.critic.path``). Call it on every rank (ZeRO 3 gathers the weights); rank 0 writes."""
        saves = [(self.engine.module, out_dir, False)]
        if critic_dir is not None and self.critic is not None:
            saves.append((self.critic.module, critic_dir, True))
        for module, directory, is_critic in saves:
            if not is_critic and self.cfg.model.lora.r > 0:  # final/: the merged model; final/adapter: the adapter
                if self.rank == 0:  # (LoRA runs with ZeRO 0-2: nothing to gather)
                    merged_model(module).save_pretrained(directory)
                    module.save_pretrained(os.path.join(directory, "adapter"))
            else:
                weights = self.state_dict(critic=is_critic, rank0_only=True)  # ZeRO 3: every rank gathers
                if self.rank == 0:
                    module.save_pretrained(directory, state_dict=weights)
            if self.rank == 0:
                self.tokenizer.save_pretrained(directory)

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

    def _tagged_engines(self, tag: str):
        return [(self.engine, tag)] + ([(self.critic, f"{tag}_critic")] if self.critic is not None else [])

    def _to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}


# sums describing the policy on a batch (reduce_rank_stats turns them into logprob_mismatch, entropy_proxy, kl_turn*)
POLICY_STATS = ("logprob_mismatch_sum", "neg_logp_sum", "tokens", "kl_turn1_sum", "kl_turn2_sum", "tokens_turn1",
                "tokens_turn2", "shared_rows")


def _per_turn(rows: List[List[float]], episodes: Sequence[Episode]) -> List[List[List[float]]]:
    """Per-token values of collated rows (aligned with the targets) cut into each episode's turns: ``out[i][t]``
    lists those of episode i's turn t+1 (the token at position p sits at target index p-1, as collate places it)."""
    return [[row[start - 1:end - 1] for start, end in ep.response_spans()] for row, ep in zip(rows, episodes)]


def _loss_mask(b: Dict[str, torch.Tensor]) -> torch.Tensor:
    """0 off trained turns' response tokens, else the turn's loss weight."""
    return b["loss_weight"] * ((b["turn"] > 0) & b["trained"])


def _add_policy_stats(stats: Dict[str, float], b: Dict[str, torch.Tensor], logp: torch.Tensor,
                      ref_logp: torch.Tensor, mask: torch.Tensor, shared_rows: int) -> None:
    stats["shared_rows"] += shared_rows  # rows whose policy pass ran their prompt once per group (a SharedPrefix)
    stats["logprob_mismatch_sum"] += float(((logp - b["sampling_logprobs"]).abs() * mask).sum())
    stats["neg_logp_sum"] += float((-logp * mask).sum())
    stats["tokens"] += float(mask.sum())
    for t in (1, 2):  # per-token k1 estimate of KL(π ‖ π_ref), over every response token of the turn
        m = b["turn"] == t
        stats[f"kl_turn{t}_sum"] += float(((logp - ref_logp) * m).sum())
        stats[f"tokens_turn{t}"] += float(m.sum())


def _shared_rows(model, shared: Optional[SharedPrefix]) -> int:
    """How many rows the last ``token_logprobs(model, ..., shared=shared)`` ran with their prompt shared."""
    return 0 if shared is None or shared_prompt_off(model) else len(shared.group)


def _grad_norm(engine) -> float:
    """Global gradient norm before clipping (ZeRO 0: full, DP-averaged gradients live on the parameters)."""
    grads = [p.grad.detach().float().norm() ** 2 for p in engine.module.parameters() if p.grad is not None]
    return float(torch.stack(grads).sum().sqrt()) if grads else 0.0


def check_lora_targets(lora, model_config) -> None:
    """LoRA on the embedding or output head of a model that ties them (one weight, two layers) would change both."""
    from score_rl.config import ConfigError

    tied = sorted(t for t in lora.target_modules if t.split(".")[-1] in ("lm_head", "embed_tokens"))
    if lora.r > 0 and tied and getattr(model_config, "tie_word_embeddings", False):
        raise ConfigError(f"config key 'model.lora.target_modules': {tied} of a model with tied input / output "
                          f"embeddings (one weight, two layers): adapting one would change both; leave them out")


def with_lora(model, lora, seed: int):
    """``model`` with peft LoRA adapters on ``lora.target_modules`` (B = 0: at first the policy is the base model).
    A is drawn from a generator seeded by ``seed`` (peft draws from torch's global one, which a Ray actor never seeds:
    the same trainer.seed must give the same adapter in every process)."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(lora, model.config)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def merged_model(peft_model):
    """A plain Hugging Face model with W + (alpha / r) · B A in every adapted layer (a copy: the policy keeps training
    its adapter)."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


class AdapterDisabled:
    """The reference model of a LoRA policy: the policy's own base weights with the adapter switched off (peft's
    ``disable_adapter``), so the reference is not a second copy of the weights. Called like a model, without grad."""

    def __init__(self, peft_model):
        self.model = peft_model

    def __call__(self, **inputs):
        with torch.no_grad(), self.model.disable_adapter():
            return self.model(**inputs)


def load_critic(path: str, dtype: str = "float32"):
    """A value model: the backbone of the model at ``path`` with a scalar head on its last hidden state
    (``AutoModelForTokenClassification`` with one label, no dropout). A head missing from ``path`` (a causal LM)
    starts at zero, so every initial value is 0 and the same on every rank."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    from score_rl.utils import DTYPES

    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # set after loading: the config class may drop unknown keyword arguments
    model, info = AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=DTYPES[dtype], output_loading_info=True
    )
    disable_dropout(model)  # the head's and the backbone's: values must be deterministic
    if any(key.startswith("score.") for key in info["missing_keys"]):
        with torch.no_grad():
            model.score.weight.zero_()
            if model.score.bias is not None:
                model.score.bias.zero_()
    return model


def loss_denominator(episodes: Sequence[Episode], loss_agg: str) -> float:
    """What the step's summed loss is divided by, over all ranks: trained response tokens (token-mean) or trained
    turns with at least one response token (seq-mean-token-sum), each counted with its turn's ``loss_weight``.
    Turns with ``trained`` unset count for nothing."""
    if loss_agg == "token-mean":
        return float(sum(t.loss_weight * len(t.response_ids) for ep in episodes for t in ep.turns if t.trained))
    if loss_agg == "seq-mean-token-sum":
        return float(sum(t.loss_weight for ep in episodes for t in ep.turns if t.trained and t.response_ids))
    raise ValueError(f"unknown loss aggregation '{loss_agg}'")


def reduce_rank_stats(per_rank: Sequence[Dict[str, float]], denominator: float) -> Dict[str, float]:
    """The ranks' sums and counts → the step's metrics, weighted by tokens (not a mean of per-rank means).
    ``denominator``: the step's ``loss_denominator``."""
    total = {k: sum(r[k] for r in per_rank) for k in per_rank[0]}
    tokens = max(total["tokens"], 1.0)
    out = {
        "loss": total["loss"],
        "pg_loss": total["pg_loss_sum"] / max(denominator, 1.0),
        "logprob_mismatch": total["logprob_mismatch_sum"] / tokens,
        "entropy_proxy": total["neg_logp_sum"] / tokens,
        "grad_norm": per_rank[0]["grad_norm"],  # the global norm: the same on every rank
        "tokens": total["tokens"],
        "shared_prompt_rows": total["shared_rows"],  # learner.share_prompt_prefix at work: 0 when it is off
    }
    for t in (1, 2):  # mean per-token k1 estimate of KL(π_old ‖ π_ref) per turn
        out[f"kl_turn{t}"] = total[f"kl_turn{t}_sum"] / max(total[f"tokens_turn{t}"], 1.0)
    if "value_loss_sum" in total:  # PPO: per-token means over the update's trained tokens (weighted as in the loss)
        out["value_loss"] = total["value_loss_sum"] / max(denominator, 1.0)
        for key in ("clipped", "approx_kl", "ratio_dev"):
            out[{"clipped": "clip_frac"}.get(key, key)] = total[f"{key}_sum"] / tokens
        out["critic_grad_norm"] = per_rank[0]["critic_grad_norm"]
    if "is_weight_sum" in total:  # one-step off-policy: the importance weights, per trained token (weighted as the loss)
        out["is_weight"] = total["is_weight_sum"] / tokens
        out["is_clip_frac"] = total["is_clipped_sum"] / tokens
    return out
