"""bfloat16 vs float32 where the models run: matmul throughput at the quickstart model's shapes, and the log-prob gap
between the sampler (HF generate, KV-cached decoding) and the learner (one forward pass over the whole sequence).

``model.dtype: auto`` picks bfloat16 only where bfloat16 math is fast (a GPU that supports it, a CPU with AVX512-BF16
or AMX); this script shows why, on the machine it runs on, and what bfloat16 does to the sampler/learner agreement the
trainer relies on (it logs the same gap as ``logprob_mismatch`` every step).

    .venv/bin/python bench/bf16.py            # ~1 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_gflops(dtype, m: int, k: int, n: int, repeats: int) -> float:
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def logprob_gap(dtype_name: str, problems: int, samples: int) -> dict:
    """Mean and max |log π_sampler − log π_learner| over the sampled tokens of two-turn episodes."""
    import torch

    from score_rl.config import load_config
    from score_rl.learner.batch import collate
    from score_rl.learner.logprobs import token_logprobs
    from score_rl.rollout.worker import RolloutWorker
    from score_rl.train.base_model import resolve_model_path
    from score_rl.utils import load_model

    cfg = load_config(str(ROOT / "configs/quickstart.yaml"), [f"model.dtype={dtype_name}", "ray.enabled=false",
                                                              "rollout.cpus_per_worker=2"])
    path = resolve_model_path(cfg, log=lambda *_: None)
    worker = RolloutWorker(cfg, path)
    problems_ = worker.env.problems("train")[:problems]
    start = time.perf_counter()
    episodes = worker.run_episodes(problems_, samples, 1.0, seed=0)
    rollout_s = time.perf_counter() - start
    learner_model = load_model(path, dtype_name).eval()
    b = collate(episodes, worker.tokenizer.pad_token_id)
    start = time.perf_counter()
    with torch.no_grad():
        logp, _ = token_logprobs(learner_model, b["input_ids"], b["attention_mask"], 1.0)
    forward_s = time.perf_counter() - start
    mask = b["turn"] > 0
    gap = (logp - b["sampling_logprobs"]).abs()[mask]
    return dict(mean=float(gap.mean()), max=float(gap.max()), tokens=int(mask.sum()), rollout_s=rollout_s,
                forward_s=forward_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from score_rl.launch.resources import bf16_is_fast
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(2)
    fast, why = bf16_is_fast(gpu=False)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}; bfloat16 fast: {fast} ({why}); 2 threads")
    print("| matmul (quickstart shapes) | float32 GFLOP/s | bfloat16 GFLOP/s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for m, k, n, what in ((7040, 128, 512, "MLP up: tokens x 128 @ 128 x 512"),
                          (7040, 512, 128, "MLP down: tokens x 512 @ 512 x 128"),
                          (7040, 128, 128, "attention projection: tokens x 128 @ 128 x 128")):
        fp32 = matmul_gflops(torch.float32, m, k, n, 10)
        bf16 = matmul_gflops(torch.bfloat16, m, k, n, 3)
        print(f"| {what} | {fp32:.1f} | {bf16:.1f} | x{bf16 / fp32:.2f} |")
    print()
    print("| dtype | sampler vs learner mean abs log-prob gap | max | tokens | rollout s | learner forward s |")
    print("|---|---:|---:|---:|---:|---:|")
    for dtype in ("float32", "bfloat16"):
        r = logprob_gap(dtype, args.problems, args.samples)
        print(f"| {dtype} | {r['mean']:.2e} | {r['max']:.2e} | {r['tokens']} | {r['rollout_s']:.2f} | "
              f"{r['forward_s']:.2f} |")


if __name__ == "__main__":
    main()
