"""Nothing of a local Ray cluster outlives a SIGKILLed driver by more than a few seconds.

A driver starts a local cluster through init_ray (as `score-rl train` does) with an actor writing a file every 0.1 s (a
learner saving a checkpoint), and is SIGKILLed: every process that descended from it (GCS, raylet, the dashboard and
runtime-env agents, workers, the watchdog) must be gone (a zombie counts: it runs nothing and holds no memory) within
5 s, and the actor must have stopped writing. Before the watchdog, Ray 2.60's agents lived 60 s on (each tries to
report the raylet's death to the dead GCS with a 60 s timeout) and workers ~3 s.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 5.0
# the driver and the process helpers of bench/ray_orphans.py (which measures the same thing), loaded from its file
_spec = importlib.util.spec_from_file_location("ray_orphans", REPO / "bench" / "ray_orphans.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_nothing_of_a_local_cluster_outlives_a_killed_driver(tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out"
    out.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", bench.MINIMAL, str(out)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs: dict = {}
    try:
        line, lines = "", []
        deadline = time.monotonic() + 180
        while "READY" not in line:
            line = driver.stdout.readline()
            lines.append(line)
            assert line or driver.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the driver did not start its actor within 180 s"
        procs = bench.tree(driver.pid)
        procs.pop(driver.pid)
        names = [bench.name_of(p) for p in procs.values()]
        assert any(name.startswith("ray::Writer") for name in names), names
        killed = time.time()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and not all(bench.gone(p) for p in procs.values()):
            time.sleep(0.05)
        took = time.monotonic() - t0
        alive = [bench.name_of(p) for p in procs.values() if not bench.gone(p)]
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
