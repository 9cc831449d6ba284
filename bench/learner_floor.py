"""The learner's floor on bench/vs_trl.py's workload: how long score-rl's learner takes for a step, how
long the same passes take as bare PyTorch, and how long bare passes take on the batch TRL's GRPOTrainer trains for
the same completions.

One process, in-process score-rl (ray.enabled=false), the quickstart model, float32, --threads torch threads, one
real step's batch (32 problems x 4 samples x 2 turns, sampled and shaped by score-rl at step 0), then, interleaved
--reps times after 3 warm-ups:

- score-rl: the learner's share of a step as Trainer.train_step runs it (with learner.share_prompt_prefix on, the
  default, and off) — the reference log-probs for the reward's KL (`reward_kl` in score_rl/train/algorithms.py, the
  "shape" phase) and one update (`Learner.train_step`: collate, forward, loss, backward, DeepSpeed step), on a fresh
  copy of the episodes (copied before the timing);
- bare (score-rl's batch): the same three passes on pre-collated tensors with plain torch — reference forward, policy
  forward, REINFORCE loss on the response tokens, backward, grad-norm clip, AdamW — micro-batches of 64 episodes,
  logits from each micro-batch's first response token on, as the learner computes them;
- bare (TRL's batch): the same on the batch TRL would train for the same 256 completions: one sequence per sampled
  turn, the turn-1 prompt left-padded to the batch's longest and the completion right-padded to the longest
  completion, logits of the completion positions only (TRL's logits_to_keep), micro-batches of 64 sequences.

Prints the medians (seconds) and the ratios: score-rl / bare (the framework's overhead over bare compute) and bare
score-rl / bare TRL (how much more compute SCoRe's two-turn episodes need than one-turn samples of the same tokens).

    .venv/bin/python bench/learner_floor.py            # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3  # untimed repetitions of each before the timed ones
sys.path.insert(0, str(ROOT))


def bare_step(policy, reference, optimizer, batches, temperature: float = 1.0) -> None:
    """Reference forward, policy forward, REINFORCE loss, backward, clip, AdamW: nothing but torch."""
    import torch

    for input_ids, attention_mask, keep, targets, weights in batches:
        with torch.no_grad():
            ref = reference(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits[:, :-1]
            ref.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1))
        logits = policy(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits[:, :-1]
        logp = (logits.float() / temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        (-(logp * weights).sum() / weights.numel()).backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def score_rl_batches(episodes, pad_id: int, micro: int):
    """Collated micro-batches of the episodes as score-rl's learner sees them: logits from the micro-batch's first
    response token on (the learner's logits_to_keep)."""
    from score_rl.learner.batch import collate
    from score_rl.learner.logprobs import first_response_target

    out = []
    for start in range(0, len(episodes), micro):
        b = collate(episodes[start:start + micro], pad_id)
        first = first_response_target(b["turn"])
        weights = (((b["turn"] > 0) & b["trained"]).float() * b["advantage"])[:, first:]
        out.append((b["input_ids"], b["attention_mask"], b["input_ids"].shape[1] - first,
                    b["input_ids"][:, 1 + first:], weights))
    return out


def trl_batches(episodes, pad_id: int, micro: int):
    """One sequence per sampled turn, as TRL lays out a generation batch: [left-padded turn-1 prompt | completion,
    right-padded]; logits of the completion positions only."""
    import torch

    samples = [(ep.turns[0].prompt_ids, turn.response_ids) for ep in episodes for turn in ep.turns]
    prompt_len = max(len(p) for p, _ in samples)
    completion_len = max(len(c) for _, c in samples)
    out = []
    for start in range(0, len(samples), micro):
        chunk = samples[start:start + micro]
        ids = torch.full((len(chunk), prompt_len + completion_len), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        weights = torch.zeros(len(chunk), completion_len)
        for i, (prompt, completion) in enumerate(chunk):
            ids[i, prompt_len - len(prompt):prompt_len] = torch.tensor(prompt)
            ids[i, prompt_len:prompt_len + len(completion)] = torch.tensor(completion)
            mask[i, prompt_len - len(prompt):prompt_len + len(completion)] = 1
            weights[i, :len(completion)] = 1.0
        # logits_to_keep = completion_len + 1: the last prompt position predicts the first completion token
        out.append((ids, mask, completion_len + 1, ids[:, prompt_len:], weights))
    return out



def shape(trainer, episodes) -> None:
    """Steps 2-4 of a training step: the method's per-turn rewards, the reward's KL penalty, the advantages."""
    trainer.method.rewards(episodes, 0)
    trainer.advantages(episodes, 0)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()

    import torch

    from score_rl.config import load_config
    from score_rl.learner.learner import loss_denominator as learner_denominator
    from score_rl.train.trainer import Trainer
    from score_rl.utils import load_model, quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(str(ROOT / "configs/quickstart.yaml"), [
            "ray.enabled=false", f"rollout.cpus_per_worker={args.threads}", f"learner.cpus_per_rank={args.threads}",
            "rollout.problems_per_step=32", "rollout.samples_per_problem=4", "rollout.max_new_tokens=8",
            "model.dtype=float32", "rollout.engine=hf", "trainer.eval_before_after=false",
            "trainer.progress_bar=false", f"trainer.run_dir={tmp}/run",
            "algo.skip_no_signal=false"])  # the step timed is always a full one (reference pass, update)
        trainer = Trainer(cfg, log=lambda *_: None)
        torch.set_num_threads(args.threads)
        episodes = trainer.step_episodes(0)
        shape(trainer, copy.deepcopy(episodes))  # warm the learner's reference path once
        learner = trainer.learners.members[0]
        pad_id = learner.tokenizer.pad_token_id
        shaped = copy.deepcopy(episodes)
        shape(trainer, shaped)
        micro = cfg.learner.micro_batch_size

        copies = [copy.deepcopy(episodes) for _ in range(2 * (args.reps + WARMUP))]  # made before any timing

        def score_rl(share: bool):
            def run() -> None:
                learner.cfg = replace(learner.cfg, learner=replace(learner.cfg.learner, share_prompt_prefix=share))
                batch = copies.pop()
                shape(trainer, batch)  # shaping, with the reference log-probs for the reward's KL
                learner.train_step(batch, learner_denominator(batch, cfg.algo.loss_agg))
            return run

        policy, reference = load_model(trainer.model_path), load_model(trainer.model_path).eval()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        mine, theirs = score_rl_batches(shaped, pad_id, micro), trl_batches(shaped, pad_id, micro)
        runs = {"score-rl learner (shape + learn)": score_rl(True),
                "score-rl learner, prompts not shared": score_rl(False),
                "bare passes, score-rl's batch": lambda: bare_step(policy, reference, optimizer, mine),
                "bare passes, TRL's batch": lambda: bare_step(policy, reference, optimizer, theirs)}
        times = {name: [] for name in runs}
        for rep in range(args.reps + WARMUP):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                if rep >= WARMUP:
                    times[name].append(time.perf_counter() - start)
        trainer.close()
    tokens = {"bare passes, score-rl's batch": mine, "bare passes, TRL's batch": theirs}
    trained = sum(len(t.response_ids) for ep in shaped for t in ep.turns)
    print(f"threads {args.threads}, {len(shaped)} episodes, {trained} trained tokens, median of {args.reps}")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, seconds in med.items():
        extra = ""
        if name in tokens:  # positions a pass computes (padding included), of which real tokens; logit rows
            padded = sum(b[0].numel() for b in tokens[name])
            real = sum(int(b[1].sum()) for b in tokens[name])
            logit_rows = sum(b[0].shape[0] * b[2] for b in tokens[name])
            extra = f", {padded} positions a pass ({real} tokens), {logit_rows} with logits"
        print(f"  {name:36s} {seconds:.3f} s (range {min(times[name]):.3f}-{max(times[name]):.3f}){extra}")
    names = list(med)
    print(f"score-rl, prompts shared / not shared: x{med[names[0]] / med[names[1]]:.2f}")
    print(f"score-rl, prompts not shared / bare (framework overhead): x{med[names[1]] / med[names[2]]:.2f}")
    print(f"score-rl / bare TRL: x{med[names[0]] / med[names[3]]:.2f}")
    print(f"bare score-rl / bare TRL (two-turn episodes vs one-turn samples, same trained tokens, whole rows): "
          f"x{med[names[2]] / med[names[3]]:.2f}")


if __name__ == "__main__":
    main()
