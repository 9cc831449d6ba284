"""Weight sync learner -> rollout worker: time per sync and peak extra host memory, old (whole state dict through Ray's
object store, ``learner.weight_sync=full``) vs new (``bucketed``), for models from the quickstart's size to ~100M
parameters built locally (random weights; nothing is downloaded).

One learner rank and one rollout worker (HF engine) as Ray actors, as in training. Per sync: wall time (mean of
--repeats), and the peak resident memory above the pre-sync level of the learner and the worker process (Linux
VmHWM, reset before each sync through /proc/self/clear_refs), reported in MB and as a multiple of the model's size.
The object store's own shared memory is counted where a process touches it.

    .venv/bin/python bench/weight_sync.py                     # sizes tiny, 30M, 100M; ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # name: (hidden, layers, intermediate, heads)
    "tiny": (128, 2, 512, 4),
    "30M": (512, 8, 2048, 8),
    "100M": (768, 12, 3072, 12),
}


def build_model(out: Path, hidden: int, layers: int, intermediate: int, heads: int, tokenizer_dir: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tokenizer_dir)
    config.update(dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                       num_attention_heads=heads, num_key_value_heads=heads, layer_types=["full_attention"] * layers))
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(Path(tokenizer_dir) / name, out / name)
    return sum(p.numel() for p in model.parameters())


def _reset_peak(_actor) -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def _peak(_actor) -> int:
    return _status_kb("VmHWM")


def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(model_path: str, method: str, repeats: int, bucket_mb: float):
    import ray

    from score_rl.config import load_config
    from score_rl.launch.distributed import ActorGroup
    from score_rl.launch.weight_sync import make_weight_sync
    from score_rl.learner.learner import Learner
    from score_rl.rollout.worker import RolloutWorker

    cfg = load_config(str(ROOT / "configs/quickstart.yaml"), [
        f"model.path={model_path}", f"learner.weight_sync={method}", f"learner.weight_sync_bucket_mb={bucket_mb}"])
    workers = ActorGroup(RolloutWorker, [(cfg, model_path, 0)], True, {"CPU": 0.5})
    learners = ActorGroup(Learner, [(cfg, model_path, 0, 1, 1)], True, {"CPU": 0.5})
    learners.call("setup", None, *learners.call_one(0, "address"))
    sync = make_weight_sync(cfg.learner)
    sync.push(learners, workers)  # warm-up
    actors = [learners.members[0], workers.members[0]]
    times, extra = [], []
    for _ in range(repeats):
        before = ray.get([a.__ray_call__.remote(_reset_peak) for a in actors])
        start = time.perf_counter()
        sync.push(learners, workers)
        times.append(time.perf_counter() - start)
        peaks = ray.get([a.__ray_call__.remote(_peak) for a in actors])
        extra.append([(p - b) / 1024 for p, b in zip(peaks, before)])
    for a in actors:
        ray.kill(a)
    return sum(times) / len(times), [max(e[i] for e in extra) for i in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=16.0,
                        help="bucket size of the bucketed sync (small here so that buckets < model at 100M)")
    args = parser.parse_args()
    import ray

    from score_rl.config import load_config
    from score_rl.train.base_model import resolve_model_path
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    tokenizer_dir = resolve_model_path(load_config(str(ROOT / "configs/quickstart.yaml")), log=lambda *_: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local")
    print(f"{'model':>6} {'params':>8} {'MB':>6} | {'method':>8} {'sync s':>7} {'learner +MB':>11} {'worker +MB':>10} "
          f"{'(x model)':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / size
            n = build_model(path, *SIZES[size], tokenizer_dir)
            mb = n * 4 / 2**20
            rows = {m: measure(str(path), m, args.repeats, args.bucket_mb) for m in ("full", "bucketed")}
            for method, (t, (lrn, wrk)) in rows.items():
                print(f"{size:>6} {n / 1e6:>7.1f}M {mb:>6.0f} | {method:>8} {t:>7.3f} {lrn:>11.0f} {wrk:>10.0f} "
                      f"{(lrn + wrk) / mb:>9.2f}x")
            (tf, (lf, wf)), (tb, (lb, wb)) = rows["full"], rows["bucketed"]
            print(f"{size:>6} bucketed / full: time x{tb / tf:.2f}, peak extra memory x{(lb + wb) / max(lf + wf, 1e-9):.2f}")
    ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
