"""How long a local Ray cluster's processes outlive a SIGKILLed driver, and whether its actors still write files.

A driver subprocess starts a local Ray cluster through score-rl's own start-up (``init_ray``), waits until its actors
run, and is SIGKILLed; then every process that descended from it (GCS, raylet, dashboard and runtime-env agents,
workers, the orphan watchdog) is polled every 0.05 s until it is gone (a zombie counts as gone: it holds no memory and
runs nothing). Printed: the seconds until each kind of process was gone and until all were, and the last write in the
run's directory after the kill.

Drivers: ``minimal`` (init_ray and one actor writing a file every 0.1 s, standing for a learner saving a checkpoint when
its driver dies; ~15 s) and ``train`` (``score-rl train configs/quickstart.yaml`` with a checkpoint every step, killed
while a checkpoint is being written if it catches one; ~1 min). ``--code DIR`` runs another checkout's score_rl
(e.g. ``git worktree add /tmp/wt_old HEAD`` for the code before a change) with this venv.

    flock /tmp/heavy.lock .venv/bin/python bench/ray_orphans.py --driver minimal
    flock /tmp/heavy.lock .venv/bin/python bench/ray_orphans.py --driver train --code /tmp/wt_old
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = r"""
import pathlib, sys, time
from score_rl.launch.distributed import init_ray
init_ray(None, 1, 0, 2)
import ray

@ray.remote(num_cpus=1)
class Writer:
    def write_for(self, path, seconds):
        end, i = time.time() + seconds, 0
        while time.time() < end:
            pathlib.Path(path, "part_%d" % i).write_text("x")
            i += 1
            time.sleep(0.1)

writer = Writer.remote()
ref = writer.write_for.remote(sys.argv[1], 300)
while not any(pathlib.Path(sys.argv[1]).iterdir()):
    time.sleep(0.05)
print("READY", flush=True)
time.sleep(600)
"""


def tree(pid: int) -> dict:
    try:
        root = psutil.Process(pid)
        return {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return {}


def name_of(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline() or [proc.name()]
    except psutil.Error:  # gone meanwhile
        return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if "-c" in cmd and any("select.select" in a for a in cmd):
        return "score-rl watchdog"
    for arg in cmd[:3]:
        base = os.path.basename(arg)
        if base in ("gcs_server", "raylet") or base.endswith(".py"):
            return base
    return os.path.basename(cmd[0])


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def last_write(directory: Path) -> float:
    latest = 0.0
    for path in directory.rglob("*"):
        try:
            latest = max(latest, path.lstat().st_mtime)
        except OSError:
            pass
    return latest


def run(driver: str, code: Path, timeout: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    work = Path(tempfile.mkdtemp(prefix="ray_orphans_"))
    out_dir = work / "out"
    out_dir.mkdir()
    if driver == "minimal":
        cmd = [sys.executable, "-c", MINIMAL, str(out_dir)]
    else:
        cmd = [sys.executable, "-m", "score_rl.cli", "train", str(code / "configs" / "quickstart.yaml"),
               "ray.enabled=true", "trainer.steps=100000", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=2",
               "trainer.eval_before_after=false", "trainer.progress_bar=false", f"trainer.run_dir={out_dir}"]
    log = open(work / "driver.log", "w")
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    procs: dict = {}
    start = time.monotonic()
    ckpt = out_dir / "checkpoints"
    try:
        while True:  # until the actors run (the minimal driver says READY; training wrote a first checkpoint)
            procs.update(tree(proc.pid))
            if proc.poll() is not None:
                raise SystemExit(f"the driver exited ({proc.returncode}); see {work / 'driver.log'}")
            if time.monotonic() - start > 600:
                raise SystemExit(f"the driver was not ready within 600 s; see {work / 'driver.log'}")
            text = (work / "driver.log").read_text()
            if (driver == "minimal" and "READY" in text) or \
                    (driver == "train" and ckpt.is_dir() and any(ckpt.glob("step_*"))):
                break
            time.sleep(0.05)
        caught = False
        if driver == "train":  # kill while a checkpoint is being written, if one shows within 20 s
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not caught:
                caught = any(ckpt.glob(".step_*.tmp"))
                time.sleep(0.005)
        procs.update(tree(proc.pid))
        procs.pop(proc.pid, None)
        procs = {pid: p for pid, p in procs.items() if not gone(p)}  # short-lived ones that already ended
        names = {pid: name_of(p) for pid, p in procs.items()}
        killed_at = time.time()
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone_after: dict = {}
        while len(gone_after) < len(procs) and time.monotonic() - t0 < timeout:
            for pid, p in procs.items():
                if pid not in gone_after and gone(p):
                    gone_after[pid] = time.monotonic() - t0
            time.sleep(0.05)
        survivors = [pid for pid in procs if pid not in gone_after]
        by_name: dict = {}
        for pid, seconds in gone_after.items():
            by_name[names[pid]] = max(by_name.get(names[pid], 0.0), seconds)
        print(f"driver={driver} code={code}: {len(procs)} processes of the Ray session")
        for name, seconds in sorted(by_name.items(), key=lambda kv: kv[1]):
            print(f"  {name:28s} gone {seconds:6.2f} s after the SIGKILL")
        for pid in survivors:
            print(f"  {names[pid]:28s} pid {pid} STILL ALIVE after {timeout:.0f} s")
        total = max(gone_after.values(), default=0.0)
        print(f"all gone: {'no' if survivors else f'{total:.2f} s'} after the SIGKILL")
        written = last_write(out_dir) - killed_at
        print(f"last write in the run directory: {written:+.2f} s after the kill "
              f"({'written after the driver died' if written > 0.5 else 'none after the driver died'})")
        if driver == "train":
            stray = sorted(p.name for p in ckpt.glob(".step_*.tmp"))
            print(f"killed during a checkpoint write: {caught}; stray checkpoint dirs left: {stray or 'none'}")
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in procs.values():  # whatever is still alive after the timeout: not left on a shared machine
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["minimal", "train"], default="minimal")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose score_rl runs (default: this one)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the processes to go")
    args = parser.parse_args()
    run(args.driver, args.code.resolve(), args.timeout)


if __name__ == "__main__":
    main()
