"""The learner's weights out of its engines: full state dicts, the rollout workers' weight sync, Hugging Face saves.

Under ZeRO 3 a parameter lives sharded over the ranks: every rank takes part in each gather (``GatheredParameters``),
in the same order, and only rank 0 keeps the copy. ZeRO 0-2 hold full parameters on every rank.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Sequence

import torch

from score_rl.learner.engine import import_deepspeed
from score_rl.learner.lora import merged_model, merged_weight


def gathered_state_dict(module, zero3: bool, keep: bool, merge_lora: bool = False) -> Dict[str, torch.Tensor] | None:
    """CPU copies of ``module``'s full weights where ``keep``, else None (under ZeRO 3 the rank still gathers, one
    parameter at a time). ``merge_lora``: W + (alpha / r) · B A in every adapted layer (LoRA runs with ZeRO 0-2)."""
    if not zero3:
        if not keep:
            return None
        if merge_lora:
            module = merged_model(module)
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    deepspeed = import_deepspeed()
    params = dict(module.named_parameters(remove_duplicate=False))
    out = {}
    for key, value in module.state_dict().items():
        if key in params:
            with deepspeed.zero.GatheredParameters([params[key]]):
                if keep:
                    out[key] = params[key].detach().to("cpu", copy=True)
        elif keep:  # a buffer: never partitioned
            out[key] = value.detach().to("cpu", copy=True)
    return out if keep else None


def sync_sources(module, lora: bool, rollout_engine: str) -> Dict[str, Any]:
    """What the rollout workers sample with, by Hugging Face name: every weight of the policy (a tensor shared
    by two names, e.g. tied embeddings, once). With LoRA an adapted layer's weight is sent merged,
    W + (alpha / r) · B A, and with the HF engine only those (the workers start from the same base model, whose
    other weights never change); vLLM gets every weight, as it re-processes a fused layer (qkv_proj, or
    gate_up_proj) only once all of its weights, biases included, have arrived."""
    adapted: Dict[str, Any] = {}
    prefix = "base_model.model."
    if lora:
        from peft.tuners.lora import LoraLayer

        adapted = {f"{name.removeprefix(prefix)}.weight": layer for name, layer in module.named_modules()
                   if isinstance(layer, LoraLayer)}
        if rollout_engine == "hf":
            return adapted
    sources, seen = {}, set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if "lora_" in name or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        name = name.removeprefix(prefix).replace(".base_layer.", ".") if adapted else name
        sources[name] = adapted.get(name, tensor)
    return sources


def bucket_plan(sources: Dict[str, Any], bucket_bytes: int) -> List[List[str]]:
    """The names of ``sources`` in buckets of at most ``bucket_bytes`` (a larger weight is a bucket of its own), in
    their fixed order: every rank computes the same plan (ZeRO 3 gathers bucket by bucket)."""
    buckets: List[List[str]] = [[]]
    size = 0
    for name, source in sources.items():
        tensor = source.base_layer.weight if not isinstance(source, torch.Tensor) else source
        nbytes = getattr(tensor, "ds_numel", tensor.numel()) * tensor.element_size()
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(name)
        size += nbytes
    return [b for b in buckets if b]


@torch.no_grad()
def bucket_weights(sources: Dict[str, Any], names: Sequence[str], zero3: bool,
                   keep: bool) -> Dict[str, torch.Tensor] | None:
    """CPU copies of the named weights of ``sources`` where ``keep``, else None (under ZeRO 3 the rank still takes part
    in the gathers). A LoRA layer gives its merged weight."""
    out: Dict[str, torch.Tensor] = {}
    if not zero3:
        if not keep:
            return None
        for name in names:
            source = sources[name]
            if isinstance(source, torch.Tensor):
                out[name] = source.detach().to("cpu", copy=True)
            else:
                out[name] = merged_weight(source).to("cpu", copy=True)
        return out
    deepspeed = import_deepspeed()
    for name in names:
        tensor = sources[name]
        with deepspeed.zero.GatheredParameters([tensor], enabled=hasattr(tensor, "ds_id")):
            if keep:
                out[name] = tensor.detach().to("cpu", copy=True)
    return out if keep else None


def save_model(module, directory: str, tokenizer, rank: int, lora: bool,
               weights: Callable[[], Dict[str, torch.Tensor] | None]) -> None:
    """``module`` as a Hugging Face model directory with ``tokenizer``, written by rank 0. ``lora``: the merged model,
    and the adapter in ``directory``/adapter (LoRA runs with ZeRO 0-2: nothing to gather); else the full weights
    from ``weights()``, which every rank calls (ZeRO 3 gathers)."""
    if lora:
        if rank == 0:
            merged_model(module).save_pretrained(directory)
            module.save_pretrained(os.path.join(directory, "adapter"))
    else:
        state = weights()
        if rank == 0:
            module.save_pretrained(directory, state_dict=state)
    if rank == 0:
        tokenizer.save_pretrained(directory)
