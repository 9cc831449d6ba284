"""Nothing of a local Ray cluster outlives a SIGKILLed driver by more than a few seconds.

A driver starts a local cluster through init_ray (as `score-rl train` does) with an actor writing a file every 0.1 s (a
learner saving a checkpoint), and is SIGKILLed: every process that descended from it (GCS, raylet, the dashboard and
runtime-env agents, workers, the watchdog) must be gone (a zombie counts: it runs nothing and holds no memory) within
5 s, and the actor must have stopped writing. Before the watchdog, Ray 2.60's agents lived 60 s on (each tries to
report the raylet's death to the dead GCS with a 60 s timeout) and workers ~3 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 5.0

DRIVER = r"""
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

ref = Writer.remote().write_for.remote(sys.argv[1], 300)
while not any(pathlib.Path(sys.argv[1]).iterdir()):
    time.sleep(0.05)
print("READY", flush=True)
time.sleep(600)
"""


def _tree(pid: int) -> dict:
    import psutil

    try:
        root = psutil.Process(pid)
        return {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return {}


def _gone(proc) -> bool:
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _label(proc) -> str:
    try:
        return " ".join(proc.cmdline())[:80] or proc.name()
    except Exception:  # gone meanwhile
        return str(proc.pid)


def test_nothing_of_a_local_cluster_outlives_a_killed_driver(tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    out.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    procs: dict = {}
    try:
        line, lines = "", []
        deadline = time.monotonic() + 180
        while "READY" not in line:
            line = driver.stdout.readline()
            lines.append(line)
            assert line or driver.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the driver did not start its actor within 180 s"
        procs = _tree(driver.pid)
        procs.pop(driver.pid)
        assert any("ray::Writer" in _label(p) for p in procs.values()), [_label(p) for p in procs.values()]
        killed = time.time()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and not all(_gone(p) for p in procs.values()):
            time.sleep(0.05)
        took = time.monotonic() - t0
        alive = [_label(p) for p in procs.values() if not _gone(p)]
        assert not alive and took <= LIMIT_S, (f"{len(alive)} of the killed driver's {len(procs)} Ray processes "
                                               f"alive {took:.1f} s after its SIGKILL: {alive}")
        last = max(p.stat().st_mtime for p in out.iterdir())
        assert last - killed < LIMIT_S, f"the actor wrote {last - killed:.1f} s after its driver died"
    finally:
        if driver.poll() is None:
            driver.kill()
        for proc in procs.values():  # not left behind on a failure
            try:
                proc.kill()
            except Exception:  # gone
                pass


def test_the_watchdog_ends_with_the_gcs_and_kills_only_its_clusters_processes():
    """Without Ray: stand-ins for a cluster's GCS and a worker (with the mark) and an unmarked process. When the GCS
    ends (as on ray.shutdown) the watchdog kills the marked process, leaves the other alone and exits; it would do the
    same at once on its driver's death (EOF on its stdin)."""
    from score_rl.launch.distributed import OWNER_ENV, OrphanWatchdog

    mark = f"test-{os.getpid()}-{time.monotonic_ns()}"
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    gcs = subprocess.Popen(sleep)
    worker = subprocess.Popen(sleep, env={**os.environ, OWNER_ENV: mark})
    bystander = subprocess.Popen(sleep, env={**os.environ, OWNER_ENV: mark + "-another-cluster"})
    watchdog = OrphanWatchdog(mark)
    try:
        watchdog.proc.stdin.write(f"gcs {gcs.pid}\n".encode())
        watchdog.proc.stdin.flush()
        time.sleep(1.0)
        assert worker.poll() is None and watchdog.proc.poll() is None  # nothing happens while the GCS runs
        gcs.kill()
        gcs.wait()
        assert worker.wait(timeout=5) == -signal.SIGKILL
        assert watchdog.proc.wait(timeout=5) == 0
        assert bystander.poll() is None
    finally:
        for proc in (gcs, worker, bystander, watchdog.proc):
            if proc.poll() is None:
                proc.kill()
