"""Where score-rl meets transformers' model API, read from the installed version rather than assumed.

transformers 5.24 renamed a causal LM's K/V-cache argument and output field from ``past_key_values`` to ``cache`` (the
old name still works for a while, through ``**kwargs`` and a property, with a deprecation message). Everything in
score-rl that passes a cache to a model or reads one back goes through ``cache_kwargs`` and ``output_cache``, so the
learner's shared prompt and the HF engine's turn-2 reuse follow whichever spelling the installed version takes; the
test suite turns transformers' deprecation messages caused by score-rl's own calls into errors (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Dict, Optional

import torch

# the K/V-cache keyword of a causal LM's forward, newest spelling first
CACHE_KEYWORDS = ("cache", "past_key_values")


def unwrap(model):
    """The model under pass-through wrappers: a DeepSpeed engine's ``module``, a PEFT model's base model, the LoRA
    reference's ``model``."""
    for _ in range(8):  # wrappers nest a few deep at most
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        params = _parameters(model)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return model
        inner = getattr(model, "module", None)  # a wrapper passing **kwargs to what it wraps
        inner = inner if inner is not None else getattr(model, "model", None)
        if inner is None or not callable(inner) or inner is model:
            return model
        if isinstance(model, torch.nn.Module) and any(name in params for name in ("input_ids", "logits_to_keep")):
            return model  # a model of its own with **kwargs (a transformers causal LM), not a wrapper
        model = inner
    return model


def accepts(model, *names: str) -> bool:
    """Whether ``model`` under its wrappers (``unwrap``) takes these keyword arguments (transformers' causal LMs
    take ``logits_to_keep``, a K/V cache (``cache_keyword``) and ``position_ids``; a custom model may not)."""
    params = _parameters(unwrap(model))
    return all(name in params for name in names)


def cache_keyword(model) -> Optional[str]:
    """The keyword ``model`` (under its wrappers) takes a K/V cache by: ``cache`` (transformers >= 5.24),
    ``past_key_values`` (earlier), or None when its forward names neither."""
    params = _parameters(unwrap(model))
    return next((name for name in CACHE_KEYWORDS if name in params), None)


def cache_kwargs(model, cache) -> Dict[str, Any]:
    """``{keyword: cache}`` for ``model(...)`` or ``model.generate(...)``. ValueError for a model that takes none
    (callers check ``cache_keyword`` first where a model without one is expected)."""
    keyword = cache_keyword(model)
    if keyword is None:
        raise ValueError(f"{type(unwrap(model)).__name__}.forward takes no K/V cache argument "
                         f"(none of {', '.join(CACHE_KEYWORDS)})")
    return {keyword: cache}


def output_cache(output) -> Any:
    """The K/V cache a model's or ``generate``'s output carries (None if it has none), read by the field name its
    class declares, so no deprecated alias is touched."""
    if dataclasses.is_dataclass(output):
        names = {field.name for field in dataclasses.fields(output)}
        for name in CACHE_KEYWORDS:
            if name in names:
                return getattr(output, name)
    return None


def _parameters(model):
    call = model.forward if isinstance(model, torch.nn.Module) else model.__call__
    return inspect.signature(call).parameters
