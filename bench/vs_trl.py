"""score-rl vs TRL's GRPOTrainer on the same workload: tokens/s per training step, side by side.

The workload: the quickstart's tiny base model (configs/quickstart.yaml, built once and cached; nothing is downloaded:
HF_HUB_OFFLINE=1), the arithmetic train split, group size 4, 256 sampled sequences per step, at most 8 new tokens,
T = 1, a KL penalty against a frozen reference model, AdamW at lr 1e-4, float32, the HF generate path (no vLLM).

- score-rl: 32 problems x 4 samples x 2 turns (SCoRe's two attempts) = 256 sampled sequences per step; the step is
  rollout -> shaping (reference log-probs for the KL) -> learn -> weight sync (Trainer.train_step).
- TRL: 64 prompts x 4 generations, single turn (the turn-1 prompt) = 256 sampled sequences per step, beta = 0.04 (the
  reference model is loaded and run every step); reward = the arithmetic env's verifier on the completion; 4
  micro-batches of 64 completions (gradient accumulation 4, one generation and one optimizer step per step), as
  score-rl's learner.micro_batch_size = 64 sequences per forward pass.

tokens/s = completion tokens of the step (every sampled token, EOS included, each trained once: both trainers train on
all of the step's samples once) / the step's wall time. score-rl's turn 2 is conditioned on the turn-1 prompt and
attempt, so its sequences are longer than TRL's; tokens/s counts only sampled (= trained) tokens in both.

Each (configuration, round) is a fresh subprocess; rounds are interleaved (A, B, C, ..., A, B, C, ...); the first
--warmup steps are not timed; a run's tokens/s is its --steps timed steps' tokens over their time, then the median (and
range) of those over the rounds; ratios are of the medians (and, in brackets, the range of the per-round ratios).
score-rl's step time: wall time around Trainer.train_step (its time/* metrics are the breakdown); TRL's: the time
between successive on_step_end callbacks. Start-up (imports, model and reference loading,
Ray and DeepSpeed start, up to the first step) is reported separately. "others' CPUs": how many CPUs processes outside
the run kept busy meanwhile (on a shared machine, a run with a high value is suspect). TRL ships gradient_checkpointing
on; its rows here turn it off as score-rl has none, except trl-gc (TRL's own default), reported apart.

    .venv/bin/python bench/vs_trl.py                        # 6 configurations x 3 rounds; ~6 min on 2 idle cores
    .venv/bin/python bench/vs_trl.py --rounds 1 --steps 3   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()  # start-up is counted from here (the interpreter itself is not)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUICKSTART = str(ROOT / "configs/quickstart.yaml")

PROBLEMS, SAMPLES, TURNS = 32, 4, 2  # score-rl: 256 sampled sequences per step
TRL_PROMPTS, TRL_MICRO_BATCH = 64, 64  # TRL: 64 x 4 = 256 completions, 4 micro-batches of 64
TRL_BETA = 0.04

# name: (trainer, torch threads (None: the trainer's own default), score-rl overrides, description)
CONFIGS = {
    "score-rl": ("score-rl", None, [], "score-rl defaults (Ray actors, CPUs sized to the machine)"),
    "score-rl-overlap": ("score-rl", None, ["trainer.off_policy_steps=1"],
                         "score-rl defaults + trainer.off_policy_steps=1 (rollout overlaps learning)"),
    "score-rl-inproc-1t": ("score-rl", 1, ["ray.enabled=false", "rollout.cpus_per_worker=1", "learner.cpus_per_rank=1"],
                           "score-rl in-process, 1 thread"),
    "score-rl-inproc-2t": ("score-rl", 2, ["ray.enabled=false", "rollout.cpus_per_worker=2", "learner.cpus_per_rank=2"],
                           "score-rl in-process, 2 threads"),
    "trl-1t": ("trl", 1, [], "TRL GRPOTrainer, 1 thread"),
    "trl": ("trl", None, [], "TRL GRPOTrainer, its default threads"),
    # TRL ships gradient_checkpointing=True; the other TRL rows turn it off (score-rl does not checkpoint)
    "trl-gc": ("trl", None, [], "TRL GRPOTrainer, default threads, gradient checkpointing on (TRL's default)"),
}
DEFAULT_CONFIGS = ["score-rl", "score-rl-overlap", "score-rl-inproc-1t", "score-rl-inproc-2t", "trl-1t", "trl"]
# (numerator, denominator, what the ratio compares)
RATIOS = [
    ("score-rl", "trl", "each at its own defaults"),
    ("score-rl-overlap", "trl", "score-rl overlapped vs TRL's defaults"),
    ("score-rl-overlap", "score-rl", "overlap on vs off (score-rl)"),
    ("score-rl-inproc-1t", "trl-1t", "equal thread budget: 1 thread"),
    ("score-rl-inproc-2t", "trl", "equal thread budget: 2 threads"),
    ("score-rl", "score-rl-inproc-2t", "Ray vs in-process (score-rl)"),
    ("trl-gc", "trl", "TRL gradient checkpointing on vs off"),
]


def offline_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}


# --- one run, in a fresh process -------------------------------------------------------------------------------
def run_score_rl(name: str, warmup: int, steps: int) -> dict:
    _, threads, overrides, _ = CONFIGS[name]
    from score_rl.config import load_config
    from score_rl.train.trainer import Trainer
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(QUICKSTART, overrides + [
            f"rollout.problems_per_step={PROBLEMS}", f"rollout.samples_per_problem={SAMPLES}",
            f"rollout.num_turns={TURNS}", "rollout.max_new_tokens=8", "rollout.temperature=1.0", "learner.lr=1e-4",
            "model.dtype=float32", "rollout.engine=hf", f"trainer.steps={warmup + steps}",
            "trainer.eval_before_after=false", "trainer.progress_bar=false", "trainer.checkpoint_every=0",
            f"trainer.run_dir={tmp}/run"])
        trainer = Trainer(cfg, log=lambda *_: None)
        cfg = trainer.cfg  # the CPU settings as resolved for this machine
        startup = time.perf_counter() - T0
        captured = []
        step_episodes = trainer.step_episodes

        def capture(step):
            episodes = step_episodes(step)
            captured.append(episodes)
            return episodes

        trainer.step_episodes = capture
        rows = []
        for step in range(warmup + steps):
            start = time.perf_counter()
            metrics = trainer.train_step(step)
            seconds = time.perf_counter() - start
            episodes = captured.pop()
            turns = [t for ep in episodes for t in ep.turns]
            rows.append(dict(
                seconds=seconds, sequences=len(turns), tokens=sum(len(t.response_ids) for t in turns if t.trained),
                context_tokens=sum(len(t.prompt_ids) for t in turns),
                **{k[5:]: v for k, v in metrics.items() if k.startswith("time/")}))
        start = time.perf_counter()
        trainer.close()
        if cfg.ray.enabled:
            import ray

            ray.shutdown()
        shutdown = time.perf_counter() - start
    rc, lc = cfg.rollout, cfg.learner
    return dict(startup_s=startup, shutdown_s=shutdown, steps=rows[warmup:],
                threads=threads if threads else f"{rc.num_workers} worker x ({rc.cpus_per_worker:g} CPU, "
                f"{rc.torch_threads} threads), {lc.num_ranks} rank x ({lc.cpus_per_rank:g} CPU, {lc.torch_threads} "
                f"threads)")


def run_trl(name: str, warmup: int, steps: int) -> dict:
    _, threads, _, _ = CONFIGS[name]
    import torch

    if threads:
        torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from score_rl.config import load_config
    from score_rl.envs import make_env
    from score_rl.train.base_model import resolve_model_path
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    cfg = load_config(QUICKSTART)
    model_path = resolve_model_path(cfg, log=lambda *_: None)
    env = make_env(cfg.env, cfg.prompt)
    dataset = Dataset.from_list([{"prompt": env.first_attempt_prompt(p), "reference": p.reference}
                                 for p in env.problems("train")])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = list(dataset["prompt"])
    prompt_tokens = {text: len(ids) for text, ids in zip(prompts, tokenizer(prompts)["input_ids"])}
    tokens = {"completion": 0, "sequences": 0, "context": 0}

    def arithmetic_verifier(prompts, completions, completion_ids, reference, **_):
        tokens["completion"] += sum(len(ids) for ids in completion_ids)
        tokens["sequences"] += len(completion_ids)
        tokens["context"] += sum(prompt_tokens[p] for p in prompts)
        return [v.reward for v in env.verify_batch(completions, reference)]

    times, rows = [], []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())
            rows.append(dict(seconds=times[-1] - times[-2], sequences=tokens["sequences"],
                             tokens=tokens["completion"], context_tokens=tokens["context"]))
            tokens.update(completion=0, sequences=0, context=0)

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=TRL_MICRO_BATCH,
            gradient_accumulation_steps=TRL_PROMPTS * SAMPLES // TRL_MICRO_BATCH, num_generations=SAMPLES,
            max_completion_length=8, temperature=1.0, beta=TRL_BETA, learning_rate=1e-4, bf16=False, fp16=False,
            use_cpu=True, gradient_checkpointing=name == "trl-gc", max_steps=warmup + steps, logging_steps=1000,
            report_to="none", save_strategy="no", disable_tqdm=True, seed=0, use_vllm=False,
            model_init_kwargs={"dtype": "float32"})
        trainer = GRPOTrainer(model=model_path, reward_funcs=arithmetic_verifier, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Timer()])
        trainer.train()
        startup = times[0] - T0
        start = time.perf_counter()
        del trainer
        shutdown = time.perf_counter() - start
    return dict(startup_s=startup, shutdown_s=shutdown, steps=rows[warmup:],
                threads=threads if threads else f"torch default {torch.get_num_threads()}")


# --- the driver ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def held(lock: str | None):
    """With --lock: hold an flock on that file while a measured run executes (serialises heavy jobs on a shared box)."""
    if not lock:
        yield
        return
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _proc_times() -> dict:
    """pid -> (parent pid, CPU seconds so far) of every process (/proc)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


class CpuSampler:
    """Every 0.5 s, the CPU time that the run's process tree (its Ray actors included) and every other process used
    since the last look: ``others`` (CPUs busy outside the run, on average) flags a run disturbed by other work."""

    def __init__(self, root: int):
        import threading

        self.root, self.ours, self.others, self.stop = root, 0.0, 0.0, threading.Event()
        self.last = _proc_times()
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            self._sample()

    def _sample(self) -> None:
        now = _proc_times()
        tree, grew = {self.root}, True
        while grew:
            grew = False
            for pid, (ppid, _) in now.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for pid, (_, cpu) in now.items():
            delta = cpu - (self.last[pid][1] if pid in self.last else 0.0)  # a new process: all its CPU time
            if pid in tree:
                self.ours += delta
            elif pid != os.getpid():  # this driver (and its sampling) is neither
                self.others += delta
        self.last = now

    def finish(self) -> tuple:
        self.stop.set()
        self.thread.join()
        wall = time.perf_counter() - self.start
        return self.ours / wall, self.others / wall


def measure(name: str, warmup: int, steps: int, lock: str | None) -> dict:
    """One run in a fresh process, with the CPUs it used (``run_cpus``) and that other processes used meanwhile
    (``others_cpus``, averages over the run)."""
    with held(lock):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--one", name, "--warmup", str(warmup), "--steps",
                                 str(steps)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=offline_env())
        sampler = CpuSampler(proc.pid)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        ours, others = sampler.finish()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if out.returncode != 0:
        sys.exit(f"{name} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    step_s = statistics.median(s["seconds"] for s in r["steps"])
    tokens = statistics.median(s["tokens"] for s in r["steps"])
    r.update(step_s=step_s, tokens_per_step=tokens,
             context_per_step=statistics.median(s["context_tokens"] for s in r["steps"]),
             tokens_per_s=sum(s["tokens"] for s in r["steps"]) / sum(s["seconds"] for s in r["steps"]),
             sequences=statistics.median(s["sequences"] for s in r["steps"]), process_s=wall, others_cpus=others,
             run_cpus=ours)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each configuration once a round)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--lock", help="flock this file around each run (e.g. /tmp/heavy.lock on a shared machine)")
    parser.add_argument("--json", help="also write every run's numbers here")
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run = run_score_rl if CONFIGS[args.one][0] == "score-rl" else run_trl
        result = run(args.one, args.warmup, args.steps)
        print(json.dumps(result))
        return

    import platform

    import torch
    import transformers
    import trl

    print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__} "
          f"(default threads {torch.get_num_threads()}), transformers {transformers.__version__}, "
          f"trl {trl.__version__}")
    print(f"workload: score-rl {PROBLEMS} problems x {SAMPLES} samples x {TURNS} turns; TRL {TRL_PROMPTS} prompts x "
          f"{SAMPLES} generations x 1 turn (beta {TRL_BETA}, {TRL_PROMPTS * SAMPLES // TRL_MICRO_BATCH} micro-batches "
          f"of {TRL_MICRO_BATCH}); max 8 new tokens, T = 1, KL vs a reference, AdamW lr 1e-4, float32, HF generate; "
          f"{args.warmup} warm-up + {args.steps} timed steps; {args.rounds} interleaved rounds")
    print("tokens/s = completion tokens of a step (sampled = trained, EOS included) / its wall time; per run the "
          "timed steps' total tokens / total time")
    runs = {name: [] for name in args.configs}
    for k in range(args.rounds):
        for name in args.configs:
            r = measure(name, args.warmup, args.steps, args.lock)
            runs[name].append(r)
            extra = " ".join(f"{key} {statistics.median(s[key] for s in r['steps'] if key in s):.3f}"
                             for key in ("rollout", "shape", "learn", "rollout_wait", "sync", "step")
                             if key in r["steps"][0])
            print(f"round {k + 1} {name:>20}: {r['tokens_per_s']:7.0f} tokens/s, step {r['step_s']:.3f} s "
                  f"({r['tokens_per_step']:.0f} tokens, {r['sequences']:.0f} sequences), start-up "
                  f"{r['startup_s']:.1f} s, process {r['process_s']:.1f} s using {r['run_cpus']:.2f} CPUs, others "
                  f"{r['others_cpus']:.2f} CPUs"
                  f"{'; ' + extra if extra else ''}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    print()
    print("| configuration | threads | tokens/s median | range | step s | tokens / step | prompt tokens / step "
          "| start-up s | others' CPUs, max |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.configs:
        rates = [r["tokens_per_s"] for r in runs[name]]
        print(f"| {CONFIGS[name][3]} | {runs[name][0]['threads']} | {med(name, 'tokens_per_s'):,.0f} | "
              f"{min(rates):,.0f}-{max(rates):,.0f} | {med(name, 'step_s'):.3f} | {med(name, 'tokens_per_step'):,.0f} "
              f"| {med(name, 'context_per_step'):,.0f} | {med(name, 'startup_s'):.1f} "
              f"| {max(r['others_cpus'] for r in runs[name]):.2f} |")
    print()
    for a, b, what in RATIOS:
        if a in runs and b in runs:
            paired = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[b])]
            print(f"{a} / {b} ({what}): x{med(a, 'tokens_per_s') / med(b, 'tokens_per_s'):.2f} "
                  f"(per round x{min(paired):.2f}-x{max(paired):.2f})")
    for name in args.configs:
        if "learn" in runs[name][0]["steps"][0]:
            first = runs[name][0]["steps"][0]
            keys = [k for k in ("rollout", "shape", "learn", "rollout_wait", "sync", "step") if k in first]
            parts = {k: statistics.median(statistics.median(s[k] for s in r["steps"] if k in s) for r in runs[name])
                     for k in keys}  # rollout_wait: not on a run's last step (nothing is sampled ahead of it)
            print(f"{name} step breakdown (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
            if "rollout_wait" in parts:  # overlapped: the step vs the slower of its two sides, step by step
                ratios = [s["step"] / max(s["rollout"], s["shape"] + s["learn"])
                          for r in runs[name] for s in r["steps"]]
                print(f"{name} overlap: step time / max(rollout, shape + learn) = x{statistics.median(ratios):.2f} "
                      f"median (x{min(ratios):.2f}-x{max(ratios):.2f} over {len(ratios)} steps)")


if __name__ == "__main__":
    main()
