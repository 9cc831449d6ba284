"""Weight sync learner -> rollout worker: time per sync and peak extra host memory, old (whole state dict through Ray's
object store, ``learner.weight_sync=full``) vs new (``bucketed``), for models from the quickstart's size to ~100M
parameters built locally (random weights; nothing is downloaded).

One learner rank and one rollout worker (HF engine) as fresh Ray actors per method, as in training. Memory: during
their first sync (nothing left from an earlier one to reuse), a thread in each process samples its resident memory
every millisecond, its own (RssAnon + RssFile: weights, copies of them, deserialised tensors) and shared (RssShmem:
object-store pages the process has touched, which stay mapped after the objects are freed); the peak above the
pre-sync level is reported in MB, "own" also as a multiple of the model's size. Time: the mean of --repeats later syncs.

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


def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _start_sampler(actor) -> list:
    """In the actor: a thread sampling its own (anonymous + file-backed) and object-store / shared (RssShmem) resident
    memory every millisecond; returns the levels before."""
    import threading

    actor._bench_stop = threading.Event()
    actor._bench_peak = {"own": 0, "RssShmem": 0}

    def sample():
        while not actor._bench_stop.is_set():
            actor._bench_peak["own"] = max(actor._bench_peak["own"], _own_kb())
            actor._bench_peak["RssShmem"] = max(actor._bench_peak["RssShmem"], _status_kb("RssShmem"))
            actor._bench_stop.wait(0.001)

    before = [_own_kb(), _status_kb("RssShmem")]
    actor._bench_thread = threading.Thread(target=sample, daemon=True)
    actor._bench_thread.start()
    return before


def _stop_sampler(actor) -> list:
    actor._bench_stop.set()
    actor._bench_thread.join()
    return [actor._bench_peak["own"], actor._bench_peak["RssShmem"]]


def _own_kb() -> int:
    """Anonymous + file-backed resident memory. File-backed counts too: transformers maps a checkpoint's weights from
    the safetensors file, and the first in-place update turns those pages into anonymous ones (copy on write), which
    is the same weights moving from one column to the other, not a new copy."""
    return _status_kb("RssAnon") + _status_kb("RssFile")


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
    actors = [learners.members[0], workers.members[0]]
    extra = []  # [first sync, a later sync] x per process [extra own MB, extra shared MB]
    for _ in range(2):  # the first sync in fresh actors (one-time effects included), then a steady-state one
        before = ray.get([a.__ray_call__.remote(_start_sampler) for a in actors])
        sync.push(learners, workers)
        peaks = ray.get([a.__ray_call__.remote(_stop_sampler) for a in actors])
        extra.append([[(p - b) / 1024 for p, b in zip(pk, bf)] for pk, bf in zip(peaks, before)])
    times = []  # time: the following syncs
    for _ in range(repeats):
        start = time.perf_counter()
        sync.push(learners, workers)
        times.append(time.perf_counter() - start)
    for a in actors:
        ray.kill(a)
    return sum(times) / len(times), extra


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
    print("extra resident MB during a sync, own (anon + file) per process, first sync in fresh actors | a later sync; "
          "shm = object-store pages touched (first sync)")
    print(f"{'model':>6} {'params':>8} {'MB':>5} | {'method':>8} {'sync s':>6} | {'first: lrn':>10} {'wrk':>5} "
          f"{'x model':>7} | {'later: lrn':>10} {'wrk':>5} {'x model':>7} | {'shm lrn':>7} {'wrk':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / size
            n = build_model(path, *SIZES[size], tokenizer_dir)
            mb = n * 4 / 2**20
            rows = {m: measure(str(path), m, args.repeats, args.bucket_mb) for m in ("full", "bucketed")}
            for method, (t, (first, later)) in rows.items():
                (fl, fls), (fw, fws) = first
                (ll, _), (lw, _) = later
                print(f"{size:>6} {n / 1e6:>7.1f}M {mb:>5.0f} | {method:>8} {t:>6.3f} | {fl:>10.0f} {fw:>5.0f} "
                      f"{(fl + fw) / mb:>6.2f}x | {ll:>10.0f} {lw:>5.0f} {(ll + lw) / mb:>6.2f}x | "
                      f"{fls:>7.0f} {fws:>5.0f}")
            (tf, (ff, lf)), (tb, (fb, lb)) = rows["full"], rows["bucketed"]
            total = lambda rows: sum(r[0] for r in rows)  # noqa: E731
            print(f"{size:>6} bucketed / full: time x{tb / tf:.2f}, extra own memory first sync "
                  f"x{total(fb) / max(total(ff), 1e-9):.2f}, later sync x{total(lb) / max(total(lf), 1e-9):.2f}")
    ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
