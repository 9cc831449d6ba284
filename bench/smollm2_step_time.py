"""Where a training step on a real model goes, and what score-rl's own levers change: SmolLM2-135M-Instruct on
configs/smollm2_arithmetic.yaml, in-process (ray.enabled=false), one process, --threads torch threads.

Each lever is a fresh Trainer of --steps steps with the config's batch (8 problems x 4 samples, two turns, up to 48
new tokens a turn) and seed; the phases of the steps after the first (rollout: both turns sampled; shape: the reference
model's log-probs for the KL in the reward; learn: the policy's forward, backward and AdamW step; sync: weights to the
rollout worker) are averaged and compared with the baseline's as ratios measured in this one run:

- baseline: float32, the learner shares each problem's turn-1 prompt among its samples (learner.share_prompt_prefix)
  and computes logits only from the first response position on (``logits_to_keep``);
- share_prompt_prefix=false: whole rows;
- no logits_to_keep: the learner computes the logits of every position (the vocabulary is 49,152 wide);
- LoRA r=16 on every linear layer of the blocks (the reference is the base with the adapter off; the rollout worker
  gets merged weights);
- bfloat16 (model.dtype=bfloat16: fast where the CPU has AVX512-BF16 / AMX, emulated and slow elsewhere);
- half the batch (4 problems x 4 samples).

Every lever updates on every step (algo.skip_no_signal=false), so a step without rewards still costs a full step.
The vLLM CPU engine is measured by bench/rollout_engines.py, not here (it needs its own venv).

    .venv/bin/python bench/smollm2_step_time.py  # ~15 min on 2 cores; score-rl get-model smollm2-135m-instruct first
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVERS = {  # name: config overrides (None: the baseline's, with logits_to_keep hidden from the learner)
    "baseline": [],
    "share_prompt_prefix=false": ["learner.share_prompt_prefix=false"],
    "no logits_to_keep": None,
    "LoRA r=16": ["model.lora.r=16", "learner.lr=1e-4"],
    "bfloat16": ["model.dtype=bfloat16"],
    "half the batch": ["rollout.problems_per_step=4"],
}
PHASES = ("rollout", "shape", "learn", "sync", "step")


def run(name: str, overrides, args) -> dict:
    import score_rl.learner.logprobs as logprobs
    from score_rl.config import load_config
    from score_rl.train.trainer import Trainer

    real_accepts = logprobs.accepts
    if overrides is None:
        overrides = []
        logprobs.accepts = lambda model, name: name != "logits_to_keep" and real_accepts(model, name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(str(ROOT / "configs" / "smollm2_arithmetic.yaml"), [
                f"model.path={args.model}", "model.dtype=float32", "ray.enabled=false", f"trainer.steps={args.steps}",
                f"rollout.torch_threads={args.threads}", f"learner.torch_threads={args.threads}",
                "trainer.eval_before_after=false", "trainer.progress_bar=false", f"trainer.run_dir={tmp}/run",
                "trainer.checkpoint_every=1000", "algo.skip_no_signal=false", *overrides])
            start = time.perf_counter()
            trainer = Trainer(cfg, log=lambda *_: None)
            started = time.perf_counter() - start
            trainer.fit()
            rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    finally:
        logprobs.accepts = real_accepts
    timed = rows[1:] or rows
    out = {k: statistics.mean(r[f"time/{k}"] for r in timed) for k in PHASES}
    out.update(start_s=started, tokens=statistics.mean(r.get("tokens", 0) for r in timed),
               mismatch=statistics.mean(r["logprob_mismatch"] for r in timed),
               shared=statistics.mean(r.get("shared_prompt_rows", 0) for r in timed))
    print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in out.items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="~/.cache/score_rl/models/smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=2, help="steps per lever; the first is not timed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names of LEVERS")
    args = parser.parse_args()
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    results = {name: run(name, LEVERS[name], args) for name in args.levers.split(",")}
    base = results.get("baseline")
    print(f"\nseconds per step (mean of steps 2..{args.steps}), {args.threads} threads; ratio to the baseline")
    print("| lever | rollout | shape | learn | sync | step | × baseline step | trained tokens | log-prob gap |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = f"×{r['step'] / base['step']:.2f}" if base else "—"
        print(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in PHASES) + f" | {ratio} | {r['tokens']:.0f} | "
              f"{r['mismatch']:.1e} |")


if __name__ == "__main__":
    main()
