"""A run's saved config.yaml and what may change when the same run directory is used again.

``run_config_changes`` is the one comparison of a config with a saved run's config: (key, saved, new) for every key
that differs, ignoring NOT_THE_RUN (how the run was started and where it runs) and whatever else the caller names.
Resuming may in addition change RESUMABLE_KEYS (``check_resume_config``); a sweep, whose finished runs are reported
under their config, accepts no other change.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from score_rl.config.schema import Config
from score_rl.errors import ConfigError

# never part of what a run is: trainer.allow_config_change (always saved false: it lets one resume through) and
# ray (placement; a sweep's Ray backend adds ray.address=auto to runs it launches)
NOT_THE_RUN = ("trainer.allow_config_change", "ray")

# what a resumed run may change besides NOT_THE_RUN: its length, logging, evaluation, where it runs and how fast / in
# how much memory (micro-batch size, generation batch, weight-sync buckets, vLLM memory: the update does not depend
# on them), not what it trains
RESUMABLE_KEYS = NOT_THE_RUN + (
    "trainer.steps", "trainer.checkpoint_every", "trainer.progress_bar", "trainer.run_dir",
    "trainer.eval_before_after", "trainer.eval_problems", "eval", "logging", "trainer.keep_checkpoints",
    "trainer.eval_every", "trainer.progress_interval_s", "rollout.cpus_per_worker", "rollout.gpus_per_worker",
    "learner.cpus_per_rank", "learner.gpus_per_rank", "learner.torch_threads", "rollout.torch_threads",
    "model.cache_dir", "learner.micro_batch_size", "learner.share_prompt_prefix", "rollout.generation_batch_size",
    "rollout.kv_cache_reuse", "learner.weight_sync", "learner.weight_sync_bucket_mb",
    "learner.zero3_param_persistence_threshold", "rollout.vllm.gpu_memory_utilization", "rollout.vllm.kv_cache_mb",
    "rollout.vllm.enforce_eager", "rollout.vllm.enable_prefix_caching", "trainer.max_bad_steps")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _run_yaml(cfg: Config) -> str:
    """The YAML of ``cfg`` as a run saves it: trainer.allow_config_change false (it lets one resume through, it is
    not a property of the run)."""
    allow = cfg.trainer.allow_config_change
    cfg.trainer.allow_config_change = False
    try:
        return to_yaml(cfg)
    finally:
        cfg.trainer.allow_config_change = allow


def save_config(cfg: Config, path: str | Path) -> None:
    """Atomically (a reader, e.g. a sweep planning its runs, never sees half a file), as ``_run_yaml`` writes it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(_run_yaml(cfg))
    tmp.replace(path)


def config_tree(cfg: Config) -> Dict[str, Any]:
    """The plain tree save_config writes: what a checkpoint records as the config it was trained with."""
    return OmegaConf.to_container(OmegaConf.create(_run_yaml(cfg)))


def saved_config_tree(path: Path | Dict[str, Any]) -> Dict[str, Any]:
    """A saved config.yaml (or a tree a checkpoint recorded) as a plain tree, over the current schema's defaults: a key
    added to the schema after it was written counts as its default (the value the older code ran with), not as a
    difference."""
    def merge(base, over):
        if isinstance(base, dict) and isinstance(over, dict):
            return {k: merge(base.get(k), over[k]) if k in over else base[k] for k in set(base) | set(over)}
        return over

    saved = path if isinstance(path, dict) else OmegaConf.to_container(OmegaConf.load(path))
    return merge(OmegaConf.to_container(OmegaConf.create(to_yaml(Config()))), saved)


def config_differences(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    """The dotted keys whose values differ between two config trees (plain dicts), in sorted order."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from config_differences(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def same_auto_dtype(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """``new`` with model.dtype ``auto`` taken as the saved run's dtype: a run saved with float32 (the default before
    ``auto``) is the same run under ``auto``, which resumes in the dtype it trained in (Trainer)."""
    if new.get("model", {}).get("dtype") == "auto" and "dtype" in old.get("model", {}):
        new["model"]["dtype"] = old["model"]["dtype"]
    return new


def run_config_changes(cfg: Config | Dict[str, Any], saved: Path | Dict[str, Any],
                       ignore: Sequence[str] = ()) -> List[Tuple[str, Any, Any]]:
    """(key, saved value, new value) for every key, sorted, where ``cfg`` (a Config or a plain tree) differs from the
    saved config.yaml ``saved`` (or a tree a checkpoint recorded), ignoring NOT_THE_RUN and ``ignore`` (a key or a
    section: "eval" covers "eval.*").

    A missing file: no changes ([]). model.dtype auto equals the saved dtype (same_auto_dtype); a key missing from
    one side reads None. An unreadable file raises what OmegaConf raised."""
    if not isinstance(saved, dict):
        saved = Path(saved)
        if not saved.is_file():
            return []
    old = saved_config_tree(saved)
    tree = copy.deepcopy(cfg) if isinstance(cfg, dict) else OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)))
    new = same_auto_dtype(old, tree)
    skipped = tuple(NOT_THE_RUN) + tuple(ignore)
    return [(key, _tree_value(old, key), _tree_value(new, key)) for key in config_differences(old, new)
            if not any(key == s or key.startswith(s + ".") for s in skipped)]


def _tree_value(tree: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else ():
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_resume_config(cfg: Config, saved: Path) -> None:
    """Resuming a run whose saved config (``saved``, its config.yaml) differs in anything but RESUMABLE_KEYS is a
    ConfigError naming the keys, unless trainer.allow_config_change."""
    if cfg.trainer.allow_config_change or not saved.is_file():
        return
    try:
        changes = run_config_changes(cfg, saved, RESUMABLE_KEYS)
    except Exception as err:  # a damaged file is reported, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"the run being resumed has an unreadable {saved} ({first}); set "
                          f"trainer.allow_config_change=true to resume with the new config") from None
    keys = [key for key, _, _ in changes]
    if keys:
        shown = ", ".join(f"'{k}'" for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        what = f"config key {shown} differs" if len(keys) == 1 else f"config keys {shown} differ"
        raise ConfigError(f"{what} from the run being resumed in {saved.parent} (its config.yaml); "
                          f"resume with the same values, set trainer.allow_config_change=true to resume with the new "
                          f"ones, or choose another trainer.run_dir")


def check_checkpoint_config(tree: Dict[str, Any], allow: bool, recorded: Dict[str, Any],
                            checkpoint: Path) -> Optional[str]:
    """A checkpoint trained with a config (``recorded``, its trainer_state.json's) that differs from the run's
    (``tree``, config_tree's) in anything but RESUMABLE_KEYS is a ConfigError naming the first such key and the
    checkpoint; with ``allow`` (trainer.allow_config_change) the warning line to print instead. None: no difference."""
    changes = run_config_changes(tree, recorded, RESUMABLE_KEYS)
    if not changes:
        return None
    key, old, new = changes[0]
    more = f" (and {len(changes) - 1} more key{'s' if len(changes) > 2 else ''})" if len(changes) > 1 else ""
    what = f"config key '{key}' is {new!r} but checkpoint {checkpoint} was trained with {old!r}{more}"
    if allow:
        return f"warning: {what}; resuming with the new values (trainer.allow_config_change)"
    raise ConfigError(f"{what}; resume with the same values, set trainer.allow_config_change=true to resume with the "
                      f"new ones, or choose another trainer.run_dir")
