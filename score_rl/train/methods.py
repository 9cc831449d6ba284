"""What a training step does for each ``method.name``: which batch it samples and how its turns are rewarded.

The registry ``STEP_METHODS`` mirrors score_rl/algos/methods.py's ``METHODS`` (what each method declares: two attempts,
policy gradient, trains); the trainer calls only ``start``, ``steps``, ``batch`` and ``rewards``, so it has no branch
on the method. The policy-gradient methods' batches then get the KL penalty and advantages from the trainer
(score_rl/train/trainer.py); STaR and Pair-SFT set their SFT targets here (advantage 1, no KL).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Dict, List, Sequence, Tuple

from score_rl import rundir, seeds
from score_rl.algos import methods
from score_rl.algos.methods import METHODS
from score_rl.config import Config
from score_rl.episode import Episode, episode_from_dict
from score_rl.errors import ConfigError
from score_rl.shaping import shape_episodes, stage_at
from score_rl.train.sampler import ProblemSampler
from score_rl.utils import dumps_json


class Method:
    """A method that samples its batch from the current policy with ``rollout.num_turns`` attempts (two: y1, then the
    correction instruction, then y2)."""

    name = ""
    samples_policy = True  # the batch is the policy's samples: its accuracies are logged as training metrics

    def __init__(self, cfg: Config, run):
        self.cfg, self.run = cfg, run  # run: the Trainer (its sampler, rollout pool, run directory, log)
        self.spec = METHODS[self.name]

    @property
    def steps(self) -> int:
        """How many steps the run trains (0: a prompting-only method)."""
        return self.cfg.trainer.steps if self.spec.trains else 0

    @property
    def num_turns(self) -> int:
        return self.cfg.rollout.num_turns

    def start(self) -> None:
        """Once, before a resume loads trained weights."""

    def batch(self, step: int) -> List[Episode]:
        """The step's episodes, sampled from the current policy."""
        return self.run.rollout(self.run.sampler.next(self.cfg.rollout.problems_per_step), step, self.num_turns)

    def rewards(self, episodes: Sequence[Episode], step: int) -> Tuple[int, Dict[str, float]]:
        """Fill each turn's reward, KL coefficient and (SFT methods) loss mask; (stage, extra metrics)."""
        raise NotImplementedError


class SCoRe(Method):
    """Stage I (Eq. 3) for ``shaping.stage1_steps`` steps, then Stage II (Eq. 4): score_rl/shaping.py."""

    name = "score"

    def rewards(self, episodes, step):
        stage = stage_at(step, self.cfg.shaping)
        shape_episodes(episodes, stage, self.cfg.shaping)
        return stage, {}


class SingleTurnRL(Method):
    """One attempt per episode, rewarded r1 with the β1 KL (attempt 2 is still evaluated)."""

    name = "single_turn_rl"
    num_turns = 1

    def rewards(self, episodes, step):
        methods.shape_single_turn(episodes, self.cfg.shaping.beta1)
        return 0, {}


class STaR(Method):
    """Two-attempt traces filtered by ``method.star_keep``; attempt 2 of the kept ones is an SFT target."""

    name = "star"

    def rewards(self, episodes, step):
        kept = methods.select_star(episodes, self.cfg.method.star_keep)
        return 0, {"sft_kept": kept / len(episodes)}


class PairSFT(Method):
    """The base model's wrong first attempts paired with its right ones (problem + wrong + instruction → right),
    sampled once and saved to ``run_dir/pairs.json``, so a resumed run trains on the very same pairs."""

    name = "pair_sft"
    samples_policy = False  # fixed pairs: their accuracies would say nothing about the policy

    def start(self) -> None:
        self.pairs, self.contexts = self.collect_pairs()

    def collect_pairs(self):
        """(pairs, turn-2 contexts): first attempts of ``method.pair_sft_problems`` train problems sampled from the
        base model, paired wrong → right within each problem; reloaded from ``pairs.json`` when it exists."""
        cfg, run = self.cfg, self.run
        saved = run.run_dir / rundir.PAIRS
        if saved.is_file():
            data = json.loads(saved.read_text())
            return [(episode_from_dict(w), episode_from_dict(r)) for w, r in data["pairs"]], data["contexts"]
        problems = ProblemSampler(run.env.problems("train"), seeds.pair_sft_problems(cfg.trainer.seed)).next(
            cfg.method.pair_sft_problems)
        samples = run.pool.sample(problems, cfg.rollout.samples_per_problem, cfg.rollout.temperature,
                                  seeds.pair_sft_rollout(cfg.trainer.seed), 1)
        pairs = methods.pair_sft_pairs(samples, cfg.trainer.seed)
        if not pairs:
            raise ConfigError(f"Pair-SFT found no problem among {len(problems)} with both a wrong and a right sampled "
                              "first attempt; raise method.pair_sft_problems or rollout.samples_per_problem")
        contexts = run.pool.workers.call_one(0, "correction_prompts", [
            (w.turns[0].prompt_ids, w.turns[0].response_ids, w.problem_id) for w, _ in pairs])
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(dumps_json({"pairs": [[asdict(w), asdict(r)] for w, r in pairs], "contexts": contexts},
                                  default=str))
        tmp.replace(saved)
        run.log(f"Pair-SFT: {len(pairs)} wrong→right pairs from {len(samples)} base-model first attempts "
                f"of {len(problems)} problems")
        return pairs, contexts

    def batch(self, step: int) -> List[Episode]:
        """The step's ``episodes_per_step`` pairs: shuffled passes over the pairs (the ProblemSampler's order), taken
        from the step's position alone, so a resumed run sees exactly the pairs an uninterrupted one would."""
        n, size = len(self.pairs), self.run.episodes_per_step
        order = ProblemSampler(range(n), self.cfg.trainer.seed)
        order.load({"epoch": step * size // n, "position": step * size % n})
        return [methods.pair_episode(*self.pairs[k], self.contexts[k], i)
                for i, k in enumerate(order.next(size), start=step * size)]

    def rewards(self, episodes, step):
        return 0, {}  # the pairs are SFT targets already


class SelfRefine(Method):
    """No training: the base model prompted with the correction instruction (evaluated only)."""

    name = "self_refine"

    def rewards(self, episodes, step):
        raise RuntimeError("self_refine trains no step")


STEP_METHODS = {cls.name: cls for cls in (SCoRe, SingleTurnRL, STaR, PairSFT, SelfRefine)}


def make_method(cfg: Config, run) -> Method:
    return STEP_METHODS[cfg.method.name](cfg, run)
