"""Small shared helpers: model/tokenizer loading, threads, seeding."""

from __future__ import annotations

import os
import random
import sys
from typing import Optional

# torch (~2 s to import) and numpy are imported where they are used: the commands that need neither (score, plot,
# sweep's launcher) import this module for quiet_libraries


def _dtypes() -> dict:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def __getattr__(name: str):
    if name == "DTYPES":  # {"float32": torch.float32, ...}, built when asked for
        return _dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=_dtypes()[dtype])


def finite_or_none(obj):
    """``obj`` with every NaN / ±inf float replaced by None, through dicts, lists and tuples: JSON has no NaN (Python
    writes it, strict parsers such as JavaScript's JSON.parse refuse the file). An undefined rate — the break rate
    when no first attempt was right — is written as null."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(value) for value in obj]
    return obj


def dumps_json(obj, **kwargs) -> str:
    """``json.dumps`` that writes valid JSON only: non-finite floats become null (``finite_or_none``)."""
    import json

    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def nan_for_none(metrics: dict) -> dict:
    """The other way, for a flat dict of metrics read back: null → NaN, so arithmetic and formatting go on."""
    return {key: float("nan") if value is None else value for key, value in metrics.items()}


def disable_dropout(model) -> int:
    """Switch off every dropout of ``model`` in place, whatever its config says (GPT-2, OPT, Phi and many fine-tunes
    keep 0.1): the learner runs its models in train mode, and a dropout there makes the distribution trained on differ
    from the one sampled from (the sampler runs without). Both kinds: ``nn.Dropout`` modules, and the float
    attributes attention layers pass to their kernels (``attention_dropout``, ``attn_pdrop``, ...), on the modules and
    on their model configs (some layers read the rate from the config at forward time). Returns how many it switched
    off."""
    import torch

    def zero_rates(obj) -> int:
        rates = [name for name, value in list(vars(obj).items())
                 if isinstance(value, float) and value > 0 and ("dropout" in name or name.endswith("pdrop"))]
        for name in rates:
            setattr(obj, name, 0.0)
        return len(rates)

    changed, configs = 0, {}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            module.p = 0.0
            changed += 1
        changed += zero_rates(module)
        config = getattr(module, "config", None)  # a rate read from the config at forward time, too
        if config is not None and hasattr(config, "__dict__"):
            configs[id(config)] = config
    for config in configs.values():
        changed += zero_rates(config)
    return changed


def set_threads(n: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def quiet_libraries() -> None:
    """Silence library chatter (progress bars of weight loading, deprecation warnings) in drivers and actors."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    if "transformers" not in sys.modules:
        # Not imported yet (~1 s; a Ray driver never needs it): the same two settings as the environment variables that
        # transformers and huggingface_hub read when they are imported, in this process or one started from it
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if "huggingface_hub" in sys.modules:  # it has read its environment already
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def iter_jsonl_objects(path, what: str = ""):
    """(line number, object) for each non-blank line of a JSONL file, read one line at a time (memory flat in the
    file's length). A bad line (not JSON, not an object, not UTF-8) is a ConfigError naming the file and the line;
    ``what`` (e.g. "math data file ") prefixes the file's name in the message."""
    import json

    from score_rl.errors import ConfigError

    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{what}{path}:{line_no}: not UTF-8 text (byte {raw[err.start]:#04x} at byte offset "
                                  f"{offset + err.start} of the file)") from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{what}{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{what}{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def read_jsonl_objects(path, what: str = ""):
    """[(line number, object)] of a JSONL file; a bad line is a ConfigError naming file and line."""
    return list(iter_jsonl_objects(path, what))



def cache_gap(cache) -> Optional[str]:
    """Why ``cache`` cannot be continued or shared (a short reason for a log line), or None when it holds every
    position it was fed."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if cache is None:
        return "no K/V cache came back (gradient checkpointing, or the model ignores use_cache)"
    if not isinstance(cache, DynamicCache):
        return f"its {type(cache).__name__} is not a plain DynamicCache"
    if getattr(cache, "offloading", False):
        return "its K/V cache is offloaded"
    kinds = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer})
    if not cache.layers or kinds:
        return f"its K/V cache keeps not every position ({', '.join(kinds) or 'no layers'}: a sliding window?)"
    return None


