"""The trainer's state in a checkpoint, beside the learner's: step, sampler position, updates, best policy, the dtype
``model.dtype auto`` chose, the config it was trained with, and (off-policy) the batch sampled ahead of its step.

Files in ``checkpoints/step_N/``: ``trainer_state.json`` (readable), ``pending_batch.json`` (compact; only when a batch
was sampled ahead), the learner ranks' DeepSpeed state, and ``best/`` (hard links to the best policy as of step N).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from score_rl import rundir
from score_rl.config import Config, check_checkpoint_config, check_resume_config, config_tree
from score_rl.episode import Episode, episode_from_dict
from score_rl.errors import ConfigError
from score_rl.train.checkpoint import CheckpointError, has_checkpoint, resumable_checkpoints
from score_rl.utils import dumps_json

PENDING_FILE = "pending_batch.json"  # in a checkpoint: the batch sampled ahead of its step (off-policy)
STATE_FILE = "trainer_state.json"


@dataclass
class Pending:
    """A batch sampled ahead of ``step``; ``seconds`` its rollout time (None: a checkpoint that did not record it)."""

    step: int
    episodes: List[Episode]
    seconds: Optional[float]


def write_pending(directory: Path, pending: Pending) -> None:
    (Path(directory) / PENDING_FILE).write_text(dumps_json(
        {"rollout_seconds": pending.seconds, "episodes": [asdict(ep) for ep in pending.episodes]},
        separators=(",", ":")))


@dataclass
class Resumed:
    """What the newest loadable checkpoint holds for the trainer."""

    path: Path
    state: Dict
    pending: Optional[Pending]

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def updates(self) -> int:
        return self.state.get("updates", self.step)  # older checkpoints: every step counted as an update


class RunConfig:
    """The run's config as its checkpoints record it (``tree``: what config.yaml holds), and the check that a checkpoint
    being resumed was trained with it: config.yaml's (check_resume_config) and, from the checkpoint's own record,
    check_checkpoint_config's, so that neither a deleted config.yaml nor a checkpoint copied from another run mixes
    two runs. Checkpoints written before the record resume with config.yaml's check only."""

    def __init__(self, cfg: Config, run_dir: Path, log: Callable[[str], None]):
        # as trainer_state.json stores it (strict JSON: a non-finite float in env.params is null on both sides)
        self.tree = json.loads(dumps_json(config_tree(cfg)))
        self.allow, self.log = cfg.trainer.allow_config_change, log
        self.checked: set = set()
        if has_checkpoint(Path(run_dir) / rundir.CHECKPOINTS):  # a resume: before config.yaml is rewritten
            check_resume_config(cfg, Path(run_dir) / rundir.CONFIG)
            newest = newest_checkpoint(run_dir)  # the one load_newest will try first (it checks a fallback itself)
            try:
                state = json.loads((newest / STATE_FILE).read_text()) if newest else {}
            except (OSError, ValueError):  # damage: load_newest says so and falls back
                state = {}
            self.check(newest, state)

    def check(self, checkpoint: Path, state: Dict) -> None:
        """ConfigError when ``checkpoint`` (its trainer state ``state``) was trained with another config."""
        if checkpoint in self.checked or not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            return
        self.checked.add(checkpoint)
        line = check_checkpoint_config(self.tree, self.allow, state["config"], checkpoint)
        if line:
            self.log(line)


def load_newest(run_dir: Path, load_learner: Callable[[str], None], log: Callable[[str], None],
                check: Callable[[Path, Dict], None] = lambda *_: None) -> Optional[Resumed]:
    """The newest checkpoint whose trainer state and learner state both load (``load_learner(path)`` loads the ranks');
    a damaged one (missing / truncated files, a learner state that fails to load) is skipped with a warning for the one
    before it. ``check(path, state)`` may refuse a checkpoint (a ConfigError) before its learner state loads. None for a
    run without checkpoints; CheckpointError when none loads."""
    root = Path(run_dir) / rundir.CHECKPOINTS
    if not has_checkpoint(root):
        return None
    for candidate in resumable_checkpoints(root, warn=log):
        try:
            state = json.loads((candidate / STATE_FILE).read_text())
            check(candidate, state)
            pending = _read_pending(candidate, state)
            load_learner(str(candidate))
        except Exception as err:  # any failure to load is damage (Ray wraps the learner's error)
            from score_rl.launch.faults import actor_died_types

            if isinstance(err, (*actor_died_types(), ConfigError)):  # a dead learner, a refusal: not damage
                raise
            if "has no critic" in str(err):  # not damage: a run of another algorithm
                raise ConfigError(str(err).strip().splitlines()[-1]) from None
            log(f"warning: checkpoint {candidate} could not be loaded ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}); trying the previous one")
            continue
        return Resumed(candidate, state, pending)
    raise CheckpointError(f"no checkpoint in {root} could be loaded (warnings above); move the run directory away to "
                          f"start over")


def _read_pending(ckpt: Path, state: Dict) -> Optional[Pending]:
    if (ckpt / PENDING_FILE).is_file():
        data = json.loads((ckpt / PENDING_FILE).read_text())
        return Pending(state["step"], [episode_from_dict(ep) for ep in data["episodes"]], data["rollout_seconds"])
    if state.get("pending"):  # written by earlier versions, inside trainer_state.json, without its time
        return Pending(state["step"], [episode_from_dict(ep) for ep in state["pending"]], None)
    return None


def resumed_dtype(run_dir: Path) -> Optional[str]:
    """The dtype of the run being resumed: its newest checkpoint's record, else its saved config's (runs saved before
    model.dtype auto name theirs there); None for a new run."""
    from score_rl.config import saved_config_tree

    root = Path(run_dir) / rundir.CHECKPOINTS
    if not has_checkpoint(root):
        return None
    for ckpt in resumable_checkpoints(root, warn=lambda *_: None):
        try:
            recorded = json.loads((ckpt / STATE_FILE).read_text()).get("model_dtype")
        except (OSError, ValueError):
            recorded = None
        if recorded:
            return recorded
        break
    try:
        saved = saved_config_tree(Path(run_dir) / rundir.CONFIG)["model"]["dtype"]
    except Exception:  # unreadable: check_resume_config has said so already
        return None
    return saved if saved != "auto" else None


def newest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest intact checkpoint, None when there is none (for messages; damage is not reported here)."""
    root = Path(run_dir) / rundir.CHECKPOINTS
    return next(resumable_checkpoints(root, warn=lambda *_: None), None) if has_checkpoint(root) else None


def state_of(step: int, sampler_state: Dict, model_path: str, best: Optional[Dict], updates: int,
             model_dtype: str, config: Optional[Dict] = None, bad_steps_in_a_row: int = 0) -> Dict:
    """trainer_state.json's content; ``config``: RunConfig.tree, the config the checkpoint is trained with."""
    return {"step": step, "sampler": sampler_state, "model_path": model_path, "best": best, "updates": updates,
            "model_dtype": model_dtype,  # what model.dtype auto chose: a resume keeps it
            "config": config, "bad_steps_in_a_row": bad_steps_in_a_row}

