"""The device check: one command that measures what a lent GPU machine can do with score-rl, row by row, in one table.

Rows, in order (every row is printed, on a CPU too; a row that fails prints its one-line error and the check goes on;
the exit status is 1 if any row failed):

- what score-rl imports (trl.trainer.utils included: it runs selective_log_softmax off the CPU) and the versions of
  the packages that matter (the machine's own are not the lock's);
- the matmul ceiling (bf16 TFLOP/s on a GPU, fp32 on a CPU; the "peak" of the MFU rows) and device-to-device copy GB/s
  (bytes read + written; the "bandwidth" of the decode roofline);
- per random-init Qwen2 shape (Qwen2.5-0.5B and -1.5B hyperparameters on a GPU, vocabulary 151,936, built from a
  config: nothing downloaded; ``--small``: a tiny Qwen2), with the quickstart's tokenizer and arithmetic prompts:
  (a) the sampler vs learner log-prob gap: |log-prob of the rollout engine's sampling path (RolloutWorker, HF generate,
      KV-cached decoding) − the learner's forward (token_logprobs)| over the sampled tokens, in bf16 and fp32;
  (b) the learner's shared prompt (``learner.share_prompt_prefix``, SharedPrefix) vs whole rows: the largest log-prob
      difference on the response tokens and the time of each (forward, no grad);
  (c) one SCoRe training step through the real Trainer in-process (``ray.enabled=false``), REINFORCE and PPO, ZeRO
      stage 0 and 2 on one rank (a warm-up step, then the timed one): learn-phase MFU = 6·params·tokens / learn time /
      the matmul ceiling, and learner tokens/s (tokens = every position of the episodes' rows, prompts included; for
      PPO the formula counts one pass, not its epochs nor the critic);
  (d) HF-engine decode tokens/s (the first trainer's rollout engine) vs the HBM roofline: batch × bandwidth / bytes of
      the parameters (every decode step reads every weight once; KV cache ignored);
  (e) the bucketed weight sync's time per GB (Trainer.push_weights: learner → host buckets → rollout engine);
  (d) and (e) are measured on the REINFORCE ZeRO-0 trainer right after its step (their time is in that row), so that
  it is freed before the next variant: two trainers of the 1.5B shape, one of them PPO's, would not fit an H100;
- (f) the quickstart (configs/quickstart.yaml, its tiny model) trained 60 steps on the device (``--small``: 3 steps of a
  smaller one) with its held-out Acc@t1 / Acc@t2 / Δ before and after.

    python bench/device_check.py --device cuda --out device_check.json          # the lent GPU machine, <= 8 min
    python bench/device_check.py --device cpu --small --out /tmp/dc.json        # CI (scripts/device/ci.sh), ~1-2 min

On the GPU machine, after the offline install (docs/cluster.md, "Running the device check on a GPU machine").
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("score_rl") is None:  # (installed: the venv's editable install, or install.sh's copy)
    sys.path.insert(0, str(ROOT))
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

# The real models' hyperparameters (their config.json), random-initialised here: no download.
QWEN25 = dict(vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1000000.0,
              rms_norm_eps=1e-6)
SHAPES = {
    "Qwen2.5-0.5B": dict(QWEN25, hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864),
    "Qwen2.5-1.5B": dict(QWEN25, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960),
}
# --small: a tiny Qwen2 whose vocabulary is larger than the tokenizer's, as the real shapes' is (sampled ids the
# tokenizer does not know must not break anything)
SMALL_SHAPES = {
    "tiny-qwen2": dict(QWEN25, vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128),
}
# the workload of rows (a)-(e): problems x samples two-turn episodes, <= max_new_tokens a turn
WORKLOAD = dict(problems=16, samples=4, max_new_tokens=64, micro_batch=16, decode_batch=64)
SMALL_WORKLOAD = dict(problems=4, samples=2, max_new_tokens=8, micro_batch=4, decode_batch=8)
# a tiny base model built in seconds (its tokenizer serves the Qwen2 shapes); --small's quickstart too
TINY = ["model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_layers=1",
        "model.tiny.num_heads=2", "model.tiny.warmup_examples=256", "model.tiny.warmup_epochs=1"]
SMALL_QUICKSTART = TINY + ["rollout.problems_per_step=4", "rollout.samples_per_problem=2", "trainer.eval_problems=8",
                           "learner.micro_batch_size=4", "algo.skip_no_signal=false"]
TRAIN_VARIANTS = [("reinforce", 0), ("reinforce", 2), ("ppo", 0), ("ppo", 2)]


# --- arithmetic (tests/bench/test_device_check.py checks these by hand) -------------------------------------------
def qwen2_params(hidden_size: int, num_hidden_layers: int, num_attention_heads: int, num_key_value_heads: int,
                 intermediate_size: int, vocab_size: int, tie_word_embeddings: bool = True, **_) -> int:
    """Parameters of a Qwen2 causal LM: q/k/v projections with biases, o without, a SwiGLU MLP, two RMSNorms a layer,
    the final norm, the embedding (and an untied LM head)."""
    head_dim = hidden_size // num_attention_heads
    kv = num_key_value_heads * head_dim
    layer = (hidden_size * hidden_size + hidden_size) + 2 * (hidden_size * kv + kv) + hidden_size * hidden_size \
        + 3 * hidden_size * intermediate_size + 2 * hidden_size
    embed = vocab_size * hidden_size
    return num_hidden_layers * layer + hidden_size + embed * (1 if tie_word_embeddings else 2)


def train_flops(params: int, tokens: int) -> float:
    """Forward + backward of a dense transformer: 6 FLOPs per parameter per token."""
    return 6.0 * params * tokens


def mfu(params: int, tokens: int, seconds: float, peak_flops: float) -> float:
    return train_flops(params, tokens) / seconds / peak_flops


def decode_roofline(params: int, bytes_per_param: int, bandwidth_bytes_s: float, batch: int) -> float:
    """Tokens/s if every decode step only had to read every weight once from memory (KV cache and compute ignored)."""
    return batch * bandwidth_bytes_s / (params * bytes_per_param)


def matmul_flops(n: int) -> float:
    return 2.0 * n ** 3


# --- timing --------------------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, warmup: int = 1, reps: int = 3) -> Tuple[float, object]:
    """Median wall seconds of ``reps`` calls after ``warmup`` untimed ones (the device synchronised around each)."""
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def event_timed(fn: Callable[[], object], device: str, warmup: int, reps: int) -> float:
    """Seconds per call: CUDA events on a GPU, perf_counter on a CPU."""
    import torch

    for _ in range(warmup):
        fn()
    _sync(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# --- the check -----------------------------------------------------------------------------------------------------
class Check:
    """Runs the rows, prints each as it completes (one table), keeps the JSON up to date after every row."""

    def __init__(self, args):
        self.args, self.rows, self.state = args, [], {}
        self.out = Path(args.out) if args.out else None
        self.started = time.perf_counter()
        self.meta = _meta(args)

    def header(self) -> None:
        m = self.meta
        print(f"device check: {m['device_name']} ({m['device']}), python {m['python']}, torch {m['torch']}, "
              f"transformers {m['transformers']}, deepspeed {m['deepspeed']}{', --small' if m['small'] else ''}",
              flush=True)
        print("| row | result | s |", flush=True)
        print("|---|---|---:|", flush=True)

    def row(self, name: str, fn: Callable[[], Tuple[str, Dict]]) -> None:
        start = time.perf_counter()
        deadline = getattr(self.args, "deadline_s", 0)
        if deadline and start - self.started > deadline:  # printed, not run: a later kill would lose every row
            row = dict(name=name, ok=False, result=f"SKIPPED: past --deadline-s {deadline:.0f}", values={}, seconds=0.0)
            self.rows.append(row)
            print(f"| {name} | {row['result']} | 0.0 |", flush=True)
            self.save()
            return
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the project's own progress lines: not into the table
                text, values = fn()
            row = dict(name=name, ok=True, result=text, values=values)
        except Exception as err:  # the one-line error; the traceback to stderr
            first = (str(err).strip().splitlines() or [""])[0][:300]
            row = dict(name=name, ok=False, result=f"FAILED: {type(err).__name__}: {first}", values={},
                       error=traceback.format_exc())
            traceback.print_exc(file=sys.stderr)
        row["seconds"] = round(time.perf_counter() - start, 2)
        self.rows.append(row)
        print(f"| {name} | {row['result']} | {row['seconds']:.1f} |", flush=True)
        self.save()
        _free(self.args.device)

    def save(self) -> None:
        if self.out is not None:
            failed = [r["name"] for r in self.rows if not r["ok"]]
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(dict(meta=self.meta, rows=self.rows, failed=failed), indent=2) + "\n")


def _meta(args) -> Dict:
    import torch
    import transformers

    try:
        import deepspeed

        ds = deepspeed.__version__
    except Exception as err:  # the rows that need it say so
        ds = f"not importable ({type(err).__name__})"
    name = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else \
        (platform.processor() or platform.machine())
    return dict(device=args.device, device_name=name, small=args.small, python=platform.python_version(),
                torch=torch.__version__, transformers=transformers.__version__, deepspeed=ds,
                cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


VERSIONS = ("torch", "transformers", "deepspeed", "trl", "datasets", "accelerate", "peft", "huggingface_hub",
            "tokenizers", "pyarrow", "fsspec", "typing_extensions", "pydantic", "omegaconf", "numpy")


def imports_row(check: Check) -> Tuple[str, Dict]:
    """What score-rl imports on this device, trl.trainer.utils included (selective_log_softmax off the CPU), and the
    versions: the machine's own packages are not the lock's."""
    import importlib
    import importlib.metadata as md

    for name in ("omegaconf", "deepspeed", "torch.utils.tensorboard", "trl.trainer.utils", "score_rl.train.trainer"):
        importlib.import_module(name)
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            versions[name] = "-"
    return ", ".join(f"{k} {v}" for k, v in versions.items()), versions


def matmul_row(check: Check) -> Tuple[str, Dict]:
    import torch

    device = check.args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 8192 if device == "cuda" else (512 if check.args.small else 1024)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    gpu = device == "cuda"
    seconds = event_timed(lambda: a @ b, device, warmup=5 if gpu else 2, reps=50 if gpu else 5)
    flops = matmul_flops(n) / seconds
    check.state["peak_flops"] = flops
    name = str(dtype).replace("torch.", "")
    return f"{flops / 1e12:.2f} TFLOP/s ({name} {n}x{n}x{n})", dict(tflops=flops / 1e12, dtype=name, n=n)


def copy_row(check: Check) -> Tuple[str, Dict]:
    import torch

    device = check.args.device
    mib = 1024 if device == "cuda" else (16 if check.args.small else 64)
    x = torch.empty(mib << 20, dtype=torch.uint8, device=device).fill_(1)
    y = torch.empty_like(x)
    seconds = event_timed(lambda: y.copy_(x), device, warmup=3, reps=20)
    bandwidth = 2 * x.numel() / seconds  # read + written
    check.state["bandwidth"] = bandwidth
    return f"{bandwidth / 1e9:.1f} GB/s ({mib} MiB, bytes read + written)", dict(gb_s=bandwidth / 1e9, mib=mib)


class ShapeRun:
    """One random-init Qwen2 shape: its model directory, configs and the objects rows (a)-(e) share."""

    def __init__(self, check: Check, name: str, shape: Dict, tmp: Path, tokenizer_path: str):
        self.check, self.name, self.shape, self.tmp = check, name, shape, tmp
        self.device = check.args.device
        self.work = SMALL_WORKLOAD if check.args.small else WORKLOAD
        self.params = qwen2_params(**shape)
        self.path = str(tmp / name)
        self._build(tokenizer_path)
        self.episodes = {}
        self.trainer = None
        self.measured: Dict[str, object] = {}

    def _build(self, tokenizer_path: str) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from score_rl.utils import load_tokenizer

        config = AutoConfig.from_pretrained(tokenizer_path)  # the tiny model's: its EOS / BOS / pad ids
        for key, value in self.shape.items():
            setattr(config, key, value)
        config.head_dim = self.shape["hidden_size"] // self.shape["num_attention_heads"]
        config.layer_types = ["full_attention"] * self.shape["num_hidden_layers"]
        config.use_sliding_window = False
        torch.manual_seed(0)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        with torch.device(self.device):  # random init where it is fast
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        built = sum(p.numel() for p in model.parameters())
        if built != self.params:
            raise RuntimeError(f"{self.name}: the model has {built} parameters, qwen2_params says {self.params}")
        model.save_pretrained(self.path)
        tokenizer = load_tokenizer(tokenizer_path)
        tokenizer.save_pretrained(self.path)
        self.pad_id = tokenizer.pad_token_id
        del model

    def config(self, dtype: str, extra: Sequence[str] = ()):
        from score_rl.config import load_config

        w = self.work
        gpu = ["learner.gpus_per_rank=1", "rollout.gpus_per_worker=1"] if self.device == "cuda" else []
        run = self.tmp / f"run-{self.name}-{len(list(self.tmp.glob('run-*')))}"
        return load_config(str(QUICKSTART), [
            "ray.enabled=false", f"model.path={self.path}", f"model.dtype={dtype}", f"trainer.run_dir={run}",
            f"model.cache_dir={self.tmp / 'cache'}", "trainer.eval_before_after=false", "trainer.progress_bar=false",
            "algo.skip_no_signal=false", f"rollout.problems_per_step={w['problems']}",
            f"rollout.samples_per_problem={w['samples']}", f"rollout.max_new_tokens={w['max_new_tokens']}",
            f"learner.micro_batch_size={w['micro_batch']}", *gpu, *extra])

    # (a)
    def logprob_gap(self, dtype: str) -> Tuple[str, Dict]:
        import torch

        from score_rl.learner.batch import collate
        from score_rl.learner.logprobs import first_response_target, token_logprobs
        from score_rl.rollout.worker import RolloutWorker
        from score_rl.utils import load_model

        cfg = self.config(dtype)
        worker = RolloutWorker(cfg, self.path)
        problems = worker.env.problems("train")[:self.work["problems"]]
        episodes = worker.run_episodes(problems, self.work["samples"], 1.0, seed=0)
        del worker
        _free(self.device)
        model = load_model(self.path, dtype).to(self.device).eval()
        b = collate(episodes, self.pad_id)
        with torch.no_grad():
            logp, _ = token_logprobs(model, b["input_ids"].to(self.device), b["attention_mask"].to(self.device), 1.0,
                                     first_target=first_response_target(b["turn"]))
        mask = b["turn"] > 0
        gap = (logp.cpu() - b["sampling_logprobs"]).abs()[mask]
        self.episodes[dtype] = (episodes, model)
        return (f"{dtype}: max {float(gap.max()):.2e}, mean {float(gap.mean()):.2e} over {int(mask.sum())} sampled "
                f"tokens", dict(dtype=dtype, max=float(gap.max()), mean=float(gap.mean()), tokens=int(mask.sum())))

    # (b)
    def shared_prompt(self) -> Tuple[str, Dict]:
        import torch

        from score_rl.learner.batch import collate
        from score_rl.learner.logprobs import SharedPrefix, first_response_target, shared_prompt_off, token_logprobs

        dtype = "bfloat16" if self.device == "cuda" else "float32"
        if dtype not in self.episodes:
            raise RuntimeError(f"needs row (a)'s {dtype} episodes, which failed")
        episodes, model = self.episodes[dtype]
        b = collate(episodes, self.pad_id)
        ids, mask = b["input_ids"].to(self.device), b["attention_mask"].to(self.device)
        first = first_response_target(b["turn"])
        shared = SharedPrefix.of(episodes)
        if shared is None:
            raise RuntimeError("no two episodes share a prompt")

        def run(prefix):
            with torch.no_grad():
                return token_logprobs(model, ids, mask, 1.0, first_target=first, shared=prefix)[0]

        whole_s, whole = timed(lambda: run(None), self.device)
        shared_s, part = timed(lambda: run(shared), self.device)
        off = shared_prompt_off(model)
        if off:
            raise RuntimeError(f"the shared prompt fell back to whole rows: {off}")
        resp = (b["turn"] > 0).to(self.device)
        diff = float((whole - part).abs()[resp].max())
        return (f"{dtype}: max abs Δ log-prob {diff:.2e}; shared {shared_s * 1e3:.1f} ms vs whole rows "
                f"{whole_s * 1e3:.1f} ms (x{shared_s / whole_s:.2f}); {len(episodes)} rows, "
                f"{int(shared.group.max()) + 1} prompts",
                dict(dtype=dtype, max_diff=diff, shared_s=shared_s, whole_s=whole_s, ratio=shared_s / whole_s))

    def drop_episodes(self) -> None:
        self.episodes.clear()
        _free(self.device)

    # (c)
    def train_step(self, algo: str, zero: int, keep: bool) -> Tuple[str, Dict]:
        from score_rl.train.trainer import Trainer

        dtype = "bfloat16" if self.device == "cuda" else "float32"
        cfg = self.config(dtype, [f"algo.name={algo}", f"learner.zero_stage={zero}", "trainer.steps=2"])
        trainer = Trainer(cfg, log=lambda *_: None)
        try:
            batches = []
            take = trainer.next_batch

            def next_batch(step, times):  # the step's episodes, for the token counts
                batches.append(take(step, times))
                return batches[-1]

            trainer.next_batch = next_batch
            trainer.train_step(0)  # warm-up: allocations, kernels' first launches
            _sync(self.device)
            start = time.perf_counter()
            metrics = trainer.train_step(1)
            _sync(self.device)
            wall = time.perf_counter() - start
        except BaseException:
            trainer.close()
            raise
        if keep:  # rows (d) and (e) are measured now, on this trainer, which is freed before the other variants
            self.trainer = trainer
            self.measured = {"decode": _capture(self._decode), "sync": _capture(self._weight_sync)}
        else:
            trainer.close()
        episodes = batches[-1]
        if metrics.get("update_skipped") or "loss" not in metrics:
            raise RuntimeError(f"no update was made (metrics: {sorted(metrics)})")
        tokens = sum(len(ep.turns[-1].prompt_ids) + len(ep.turns[-1].response_ids) for ep in episodes)
        sampled = sum(len(t.response_ids) for ep in episodes for t in ep.turns)
        learn = metrics["time/learn"]
        peak = self.check.state.get("peak_flops")
        util = mfu(self.params, tokens, learn, peak) if peak else float("nan")
        return (f"step {wall:.2f} s (rollout {metrics.get('time/rollout', 0):.2f}, shape {metrics['time/shape']:.2f}, "
                f"learn {learn:.2f}, sync {metrics['time/sync']:.2f}); learn MFU {100 * util:.1f}% "
                f"({tokens} tokens, {tokens / learn:,.0f} tokens/s); {sampled / wall:,.0f} sampled tokens/s; "
                f"loss {metrics['loss']:.3g}",
                dict(algo=algo, zero_stage=zero, step_s=wall, learn_s=learn, tokens=tokens, mfu=util,
                     learner_tokens_s=tokens / learn, sampled_tokens=sampled,
                     time={k[5:]: v for k, v in metrics.items() if k.startswith("time/")}))

    def _measured(self, what: str) -> Tuple[str, Dict]:
        got = self.measured.get(what)
        if got is None:
            raise RuntimeError("needs the REINFORCE ZeRO-0 training step's trainer (row c), which failed")
        if isinstance(got, BaseException):
            raise got
        return got

    def decode(self) -> Tuple[str, Dict]:
        return self._measured("decode")

    def weight_sync(self) -> Tuple[str, Dict]:
        return self._measured("sync")

    # (d), measured during the first (c) row
    def _decode(self) -> Tuple[str, Dict]:
        worker = self.trainer.workers.members[0]
        engine = worker.engine
        bandwidth = self.check.state.get("bandwidth")
        param = next(engine.model.parameters())
        bytes_per = param.element_size()
        problems = worker.env.problems("train")
        parts, values = [], {}
        for batch in (1, self.work["decode_batch"]):
            prompts = [worker.prompts.first_attempt(p) for p in problems[:batch]]
            seconds, gens = timed(lambda prompts=prompts: engine.generate(prompts, 1.0), self.device, warmup=1, reps=2)
            tokens = sum(len(g.response_ids) for g in gens)
            rate = tokens / seconds
            roof = decode_roofline(self.params, bytes_per, bandwidth, batch) if bandwidth else float("nan")
            parts.append(f"batch {batch}: {rate:,.0f} tokens/s = {100 * rate / roof:.1f}% of roofline {roof:,.0f}")
            values[f"batch_{batch}"] = dict(tokens_s=rate, roofline_tokens_s=roof, tokens=tokens, seconds=seconds)
        return "; ".join(parts) + f" ({str(param.dtype).replace('torch.', '')}, <= {engine.max_new_tokens} tokens)", \
            values

    # (e), measured during the first (c) row; closes the trainer
    def _weight_sync(self) -> Tuple[str, Dict]:
        trainer = self.trainer
        try:
            learner = trainer.learners.members[0]
            # the parameters once (a tied embedding is one tensor), in the learner's dtype
            gb = self.params * next(learner.engine.module.parameters()).element_size() / 1e9
            seconds, _ = timed(trainer.push_weights, self.device, warmup=1, reps=3)
            bucket = trainer.cfg.learner.weight_sync_bucket_mb
        finally:
            trainer.close()
            self.trainer = None
        how = trainer.cfg.learner.weight_sync
        return (f"{seconds / gb:.2f} s/GB ({seconds * 1e3:.1f} ms for {gb:.4f} GB, {how} sync, "
                f"{bucket:g} MiB buckets)", dict(s_per_gb=seconds / gb, seconds=seconds, gb=gb))


def _capture(fn: Callable[[], Tuple[str, Dict]]):
    """fn()'s result, or the exception it raised (its row re-raises it), the traceback printed now."""
    try:
        return fn()
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        return err


def tokenizer_model(tmp: Path) -> str:
    """The quickstart's tiny base model, built small and fast: its tokenizer serves every shape."""
    from score_rl.config import load_config
    from score_rl.train.base_model import resolve_model_path

    cfg = load_config(str(QUICKSTART), TINY + [f"model.cache_dir={tmp / 'cache'}", "ray.enabled=false"])
    return resolve_model_path(cfg, log=lambda *_: None)


def quickstart_row(check: Check, tmp: Path) -> Tuple[str, Dict]:
    from score_rl.config import load_config
    from score_rl.train.trainer import Trainer

    small = check.args.small
    steps = check.args.quickstart_steps or (3 if small else 60)
    gpu = ["learner.gpus_per_rank=1", "rollout.gpus_per_worker=1"] if check.args.device == "cuda" else []
    cache = check.args.model_cache if check.args.model_cache and not small else tmp / "quickstart-cache"
    cfg = load_config(str(QUICKSTART), (SMALL_QUICKSTART if small else []) + gpu + [
        "ray.enabled=false", f"trainer.steps={steps}", "trainer.progress_bar=false",
        f"trainer.run_dir={tmp / 'quickstart'}", f"model.cache_dir={cache}"])
    start = time.perf_counter()
    trainer = Trainer(cfg, log=lambda *_: None)
    try:
        results = trainer.fit()
    finally:
        trainer.close()
    wall = time.perf_counter() - start

    def acc(m):
        return f"Acc@t1 {100 * m['acc_t1']:.1f}, Acc@t2 {100 * m['acc_t2']:.1f}, Δ {100 * m['delta']:+.1f}"

    base, trained = results["base"], results["trained"]
    return (f"{steps} steps, {cfg.trainer.eval_problems} held-out problems: base {acc(base)} → trained "
            f"{acc(trained)} ({wall:.0f} s with the base model's build)",
            dict(steps=steps, base=base, trained=trained, seconds=wall))


def shape_rows(check: Check, name: str, shape: Dict, tmp: Path, tok: List[str]) -> None:
    """Rows (a)-(e) of one Qwen2 shape."""
    runs: List[ShapeRun] = []

    def build():
        if not tok:
            raise RuntimeError("needs the tokenizer (setup row), which failed")
        runs.append(ShapeRun(check, name, shape, tmp, tok[0]))
        return f"{runs[0].params / 1e6:,.1f}M parameters, random init (seed 0)", dict(params=runs[0].params)

    def on_run(fn):
        def wrapped():
            if not runs:
                raise RuntimeError(f"needs the {name} model, which failed to build")
            return fn(runs[0])
        return wrapped

    check.row(f"{name}: build", build)
    check.row(f"{name}: (a) sampler vs learner log-prob gap, bf16", on_run(lambda r: r.logprob_gap("bfloat16")))
    check.row(f"{name}: (a) sampler vs learner log-prob gap, fp32", on_run(lambda r: r.logprob_gap("float32")))
    check.row(f"{name}: (b) shared prompt vs whole rows", on_run(lambda r: r.shared_prompt()))
    if runs:
        runs[0].drop_episodes()
    for i, (algo, zero) in enumerate(TRAIN_VARIANTS):
        check.row(f"{name}: (c) training step, {'PPO' if algo == 'ppo' else 'REINFORCE'}, ZeRO {zero}",
                  on_run(lambda r, algo=algo, zero=zero, keep=i == 0: r.train_step(algo, zero, keep)))
    check.row(f"{name}: (d) HF decode vs HBM roofline", on_run(lambda r: r.decode()))
    check.row(f"{name}: (e) bucketed weight sync", on_run(lambda r: r.weight_sync()))
    if runs and runs[0].trainer is not None:
        runs[0].trainer.close()
    runs.clear()
    _free(check.args.device)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes and 3 quickstart steps (CI on a CPU)")
    parser.add_argument("--out", help="write the rows as JSON here (updated after every row)")
    parser.add_argument("--quickstart-steps", type=int, default=0, help="override row (f)'s steps (60; --small 3)")
    parser.add_argument("--deadline-s", type=float, default=0, help="rows that would start after this many seconds "
                        "are printed as SKIPPED instead of run (e.g. 450 inside a 600-s call; 0 = none)")
    carried = ROOT / ".devbundle" / "model-cache"
    parser.add_argument("--model-cache", default=str(carried) if carried.is_dir() else "",
                        help="model.cache_dir of row (f) (not with --small): a cache holding the quickstart's base "
                        "model skips its build (default: .devbundle/model-cache, filled by scripts/device/bundle.sh "
                        "where it can)")
    parser.add_argument("--shapes", default="", help="comma-separated subset of the shapes (default: all), e.g. "
                        "Qwen2.5-0.5B for a shorter run")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from score_rl.utils import quiet_libraries

    quiet_libraries()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    check = Check(args)
    check.header()
    check.row("imports and versions", lambda: imports_row(check))
    check.row("matmul ceiling", lambda: matmul_row(check))
    check.row("device-to-device copy", lambda: copy_row(check))
    shapes = SMALL_SHAPES if args.small else SHAPES
    if args.shapes:
        unknown = set(args.shapes.split(",")) - set(shapes)
        if unknown:
            parser.error(f"--shapes: unknown {sorted(unknown)}; choose from {sorted(shapes)}")
        shapes = {k: v for k, v in shapes.items() if k in args.shapes.split(",")}
    with tempfile.TemporaryDirectory(prefix="device_check-") as tmp_name:
        tmp = Path(tmp_name)
        tok: List[str] = []
        check.row("tokenizer + tiny base model (setup)", lambda: (tok.append(tokenizer_model(tmp)) or
                                                                  (f"built in {tmp}", {})))
        for name, shape in shapes.items():
            shape_rows(check, name, shape, tmp, tok)
        check.row("(f) quickstart" + (" (--small)" if args.small else ""), lambda: quickstart_row(check, tmp))
    failed = [r["name"] for r in check.rows if not r["ok"]]
    print(f"device check: {len(check.rows)} rows, {len(failed)} failed" +
          (f" ({'; '.join(failed)})" if failed else "") + (f"; JSON: {args.out}" if args.out else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
