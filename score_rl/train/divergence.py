"""Divergence: an update whose loss or gradient norm is not finite is never applied nor pushed to the rollout workers;
a policy whose sampling distribution overflows (finite weights, inf / NaN probabilities) ends the run with one line.

    bad step  = an update with a non-finite loss, grad_norm (or, PPO, value_loss / critic_grad_norm)
    the ranks drop it before the optimizer step (Learner._skip_if_not_finite; ZeRO 1-3 optimizers skip it themselves)
    the trainer: trainer.max_bad_steps = 0 stops the run at the first (TrainingDiverged, one line naming the step, the
    metric and the last intact checkpoint); N skips up to N in a row, a warning each, and stops at the N+1-th
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict

from score_rl.launch.faults import TrainingAborted

# what an update reports that a non-finite value makes a bad step, in the order they are named
WATCHED = ("loss", "grad_norm", "value_loss", "critic_grad_norm")


class TrainingDiverged(TrainingAborted):
    """The run stopped at a non-finite update (trainer.max_bad_steps); the message is one line."""


def watched(dtype: str):
    """What makes an update bad: WATCHED; in float16 only the losses (DeepSpeed's loss scaling skips a step whose
    gradients overflow, an inf norm, and lowers the scale: routine in the first steps, not divergence)."""
    return WATCHED if dtype != "float16" else ("loss", "value_loss")


class BadSteps:
    """Counts the bad steps in a row; ``applied`` says whether a step's update stands (and may be pushed)."""

    def __init__(self, max_bad_steps: int, run_dir: Path, log: Callable[[str], None], dtype: str = "float32"):
        self.max_bad_steps, self.run_dir, self.log = max_bad_steps, Path(run_dir), log
        self.in_a_row = 0  # saved in checkpoints (a resume counts on)
        self.watched = watched(dtype)

    def applied(self, step: int, steps: int, stats: Dict[str, float]) -> bool:
        """True for a finite update; False for a bad one within trainer.max_bad_steps (skipped, with a warning);
        TrainingDiverged past it."""
        bad = next((k for k in self.watched if k in stats and not math.isfinite(stats[k])), None)
        if bad is None:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        what = f"step {step + 1} of {steps}: {bad} is {stats[bad]} (not finite)"
        if self.in_a_row <= self.max_bad_steps:
            self.log(f"warning: {what}; its update was skipped ({self.in_a_row} bad step(s) in a row of at most "
                     f"{self.max_bad_steps}, trainer.max_bad_steps)")
            return False
        from score_rl.train.state import newest_checkpoint

        last = newest_checkpoint(self.run_dir)
        where = f"the last intact checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(f"training diverged at {what}; the update was not applied and the rollout workers "
                               f"keep the policy before it; {where} (lower learner.lr and resume with "
                               f"trainer.allow_config_change=true, or set trainer.max_bad_steps to skip such steps)")


def raise_if_sampling_diverged(err: BaseException, done: int, steps: int, run_dir: Path) -> None:
    """A one-line TrainingDiverged in place of ``err`` when sampling failed on an overflowing policy (torch's
    multinomial on inf / NaN probabilities: the last update's weights are finite but too large); else nothing."""
    if "probability tensor contains either" not in str(err):
        return
    from score_rl.train.state import newest_checkpoint

    last = newest_checkpoint(run_dir)
    where = f"the last intact checkpoint is {last}" if last else "no checkpoint was written yet"
    raise TrainingDiverged(f"training diverged: sampling after step {done} of {steps} failed (the policy's "
                           f"probabilities are inf or NaN); {where} (lower learner.lr and resume with "
                           f"trainer.allow_config_change=true)") from None
