"""Local Ray clusters: with ray.address null a run starts a cluster of its own, even where a `ray start` left one on
the machine (ray.init would join it and refuse num_cpus), and two runs on one machine both complete."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import QUICKSTART, TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_local_runs_beside_a_stray_cluster_both_complete(tmp_path, tiny_model_path):
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    started = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        runs = [subprocess.Popen(
            [sys.executable, "-m", "score_rl.cli", "train", str(QUICKSTART), *TINY_OVERRIDES,
             f"model.path={tiny_model_path}", "ray.enabled=true", "ray.address=null", "trainer.steps=1",
             "trainer.eval_before_after=false", f"trainer.run_dir={tmp_path / f'run{i}'}", "ray.num_cpus=2",
             "rollout.cpus_per_worker=0.5", "learner.cpus_per_rank=0.5"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
        outputs = [p.communicate(timeout=300)[0] for p in runs]
        for p, out in zip(runs, outputs):
            assert p.returncode == 0, out[-3000:]
        assert all((tmp_path / f"run{i}" / "final" / "config.json").is_file() for i in range(2))
    finally:
        _stop_cluster(port)  # this cluster only: `ray stop` would stop every Ray on the machine, a user's included


def _stop_cluster(port: int) -> None:
    """Kill the processes of the Ray cluster whose GCS listens on ``port`` (their command lines name it) and
    everything they started (a test's own stray cluster: nothing in it needs a graceful stop, and Ray's agents take
    up to 60 s to exit on SIGTERM)."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"])
             if any(f"{port}" in arg for arg in (p.info["cmdline"] or [])) and p.pid != os.getpid()
             and any("ray" in arg for arg in (p.info["cmdline"] or []))]
    procs = {p.pid: p for root in roots for p in [root, *_children(root)]}
    for proc in procs.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs.values()), timeout=15)
    marker = Path("/tmp/ray/ray_current_cluster")  # what `ray stop` removes too, if it names this cluster
    if marker.is_file() and marker.read_text().strip().endswith(f":{port}"):
        marker.unlink()


def _children(proc):
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_local_actors_keep_freed_memory_unless_the_user_tuned_malloc(monkeypatch):
    """The local cluster's actors get glibc malloc settings that stop them page-faulting each step's memory back
    (measured); a user's own malloc settings win."""
    from score_rl.launch.distributed import actor_env_vars

    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                "GLIBC_TUNABLES", "DS_ACCELERATOR"):
        monkeypatch.delenv(key, raising=False)
    env = actor_env_vars()
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20) and env["MALLOC_TRIM_THRESHOLD_"] == str(512 << 20)
    assert env["DS_ACCELERATOR"] == "cpu" and actor_env_vars(1)["DS_ACCELERATOR"] == "cuda"
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert not any(k.startswith("MALLOC_") for k in actor_env_vars())
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert not any(k.startswith("MALLOC_") for k in actor_env_vars())
