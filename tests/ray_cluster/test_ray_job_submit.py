"""docs/cluster.md's "Joining a running Ray cluster", run as written against a real Ray 2.60 cluster on this machine:
token authentication (`RAY_AUTH_MODE=token`, a token made by `ray get-auth-token --generate`), a head and a second
node, `ray status`, a 2-step training submitted with `ray job submit --working-dir .` and one run as a driver.

The commands are read from the docs and must be exactly the ones listed in DOCUMENTED (so the docs and CI cannot drift
apart). The test changes them only where one machine and a shared CI host require it, and says so:
- HEAD_IP and 6379 become this machine's IP and a free port;
- each `ray start` gets its own --temp-dir and ports (dashboard, client server, dashboard agent), so that it neither
  meets nor disturbs another Ray on the machine;
- `ray stop` (which stops every Ray on the machine) becomes: stop exactly this cluster's processes;
- the commands run from a copy of the repository (its tracked and unignored files, what `--working-dir .` uploads
  from a checkout), with HOME in a temporary directory (the token is made from scratch, ~/.ray is not touched), the
  venv's bin first on PATH (an activated venv), and the training commands get the tiny-model overrides below.

The cluster test has the marker `ray_cluster`: deselected by default, `.ci/run` runs `pytest -m ray_cluster`. It needs
about 2 free cores. The check that the docs list exactly these commands runs in the default suite.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES, tiny_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DOC = REPO / "docs" / "cluster.md"
VENV_BIN = Path(sys.executable).parent
SECTION = "## Joining a running Ray cluster"

# the code block of SECTION, comments dropped, continuation lines joined: what this test runs, in this order
DOCUMENTED = [
    "export RAY_AUTH_MODE=token",
    "ray get-auth-token --generate",
    "ray start --head --port=6379",
    "ray start --address=HEAD_IP:6379",
    "export RAY_ADDRESS=HEAD_IP:6379",
    "ray status",
    "ray job submit --working-dir . -- score-rl train configs/quickstart.yaml ray.address=auto "
    "trainer.run_dir=$PWD/runs/quickstart-ray",
    "score-rl train configs/quickstart.yaml ray.address=auto trainer.run_dir=$PWD/runs/quickstart-driver",
    "ray stop",
]

# appended to both training commands: the tiny model, two steps, no evaluation (runs in seconds on 2 cores)
TRAIN_OVERRIDES = [*TINY_OVERRIDES, "trainer.steps=2", "trainer.eval_before_after=false"]


def documented_commands() -> list:
    text = CLUSTER_DOC.read_text()
    assert SECTION in text, f"docs/cluster.md lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_docs_list_exactly_the_commands_this_test_runs():
    assert documented_commands() == DOCUMENTED


def _free_ports(n: int) -> list:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Runs the documented commands in one shell-like environment; knows its own processes, to stop only those."""

    def __init__(self, workdir: Path, home: Path, temp_dir: Path):
        self.workdir, self.temp_dir = workdir, temp_dir
        import ray._private.services as services

        self.ip = services.get_node_ip_address()
        self.port, *self.extra_ports = _free_ports(5)
        self.gcs = f"{self.ip}:{self.port}"
        keep = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS, token, mode
        self.env = {**keep, "HOME": str(home), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        self.env.pop("VIRTUAL_ENV", None)
        self.killed = []

    def substitute(self, command: str) -> str:
        return command.replace("HEAD_IP", self.ip).replace("6379", str(self.port))

    def isolation_flags(self, head: bool) -> list:
        dashboard, client, head_agent, worker_agent = self.extra_ports
        flags = [f"--temp-dir={self.temp_dir}"]
        if head:
            flags += [f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                      f"--dashboard-agent-listen-port={head_agent}"]
        else:
            flags += [f"--dashboard-agent-listen-port={worker_agent}"]
        return flags

    def run(self, argv_or_line, timeout: float, env: dict = None) -> subprocess.CompletedProcess:
        shell = isinstance(argv_or_line, str)  # a documented line with $PWD: bash expands it, as for the user
        return subprocess.run(argv_or_line if not shell else ["bash", "-c", argv_or_line], cwd=self.workdir,
                              env=env or self.env, capture_output=True, text=True, timeout=timeout)

    def processes(self) -> list:
        """This cluster's processes: every Ray daemon with an argument naming our temp dir or GCS address (the client
        server names only the latter), and everything they started (workers, agents, the job's driver)."""
        import psutil

        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}

        def ours(args):
            values = [a.split("=", 1)[1] for a in args if a.startswith("-") and "=" in a]
            return any(v == str(self.temp_dir) or v.startswith(f"{self.temp_dir}/") or v == self.gcs for v in values)

        roots = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid not in mine and ours(p.info["cmdline"] or []):
                    roots.append(p)
            except psutil.Error:
                continue
        found = {}
        for r in roots:
            try:
                for p in [r, *r.children(recursive=True)]:
                    found[p.pid] = p
            except psutil.Error:
                continue
        return list(found.values())

    def stop(self) -> list:
        """`ray stop`, for this cluster only: SIGTERM, then SIGKILL after 10 s (ray stop: 16 s). Returns the pids
        still there afterwards."""
        import psutil

        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        self.killed = [" ".join(p.cmdline())[:60] for p in alive if p.is_running()]
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        return [p.pid for p in self.processes()]


def _node_count(status: str) -> int:
    active = status.split("Active:", 1)[1].split("Pending:", 1)[0]
    return len(re.findall(r"^\s*\d+ node_[0-9a-f]+", active, re.M))


def _check_run_dir(run_dir: Path, output: str) -> None:
    assert (run_dir / "final" / "config.json").is_file(), output[-3000:]
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(steps) == 2, steps
    assert (run_dir / "run_complete.json").is_file()


@pytest.mark.ray_cluster
def test_documented_ray_cluster_commands_with_token_auth_train_through_ray_job_submit(tmp_path, monkeypatch):
    from score_rl.train.base_model import resolve_model_path

    started = time.time()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")  # nothing is downloaded: the tiny model is built from the repository's code
    model_path = resolve_model_path(tiny_config(tmp_path / "model"), log=lambda *_: None)
    overrides = " ".join([*TRAIN_OVERRIDES, f"model.path={model_path}"])

    # the user's checkout: what `--working-dir .` uploads from /work/main (tracked and unignored files)
    project = tmp_path / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    home = tmp_path / "home"
    home.mkdir()
    # short: Ray's unix socket paths live under it (108-byte limit)
    temp_dir = Path(tempfile.mkdtemp(prefix="rayci-", dir="/tmp"))
    cluster = Cluster(project, home, temp_dir)
    commands = documented_commands()
    assert commands == DOCUMENTED
    log = []

    def step(line: str, result: subprocess.CompletedProcess) -> str:
        out = result.stdout + result.stderr
        log.append(f"$ {line}\n-> exit {result.returncode} after {time.time() - started:.0f} s")
        return out

    try:
        # export RAY_AUTH_MODE=token
        assert commands[0] == "export RAY_AUTH_MODE=token"
        cluster.env["RAY_AUTH_MODE"] = "token"

        # ray get-auth-token --generate  (the token is printed: not shown in any failure message)
        got = cluster.run(commands[1].split(), timeout=60)
        step(commands[1], got)
        token_file = home / ".ray" / "auth_token"
        assert got.returncode == 0 and token_file.is_file(), got.stderr[-2000:]
        token = token_file.read_text().strip()
        printed_is_saved = got.stdout.strip() == token
        assert token and printed_is_saved, "`ray get-auth-token` printed another token than it saved"

        # ray start --head --port=6379
        head = cluster.substitute(commands[2]).split() + cluster.isolation_flags(head=True)
        out = step(commands[2], res := cluster.run(head, timeout=180))
        assert res.returncode == 0, out[-3000:]

        # ray start --address=HEAD_IP:6379 (a second node, on the same machine)
        worker = cluster.substitute(commands[3]).split() + cluster.isolation_flags(head=False)
        out = step(commands[3], res := cluster.run(worker, timeout=180))
        assert res.returncode == 0, out[-3000:]

        # export RAY_ADDRESS=HEAD_IP:6379
        name, value = cluster.substitute(commands[4]).removeprefix("export ").split("=", 1)
        cluster.env[name] = value

        # ray status: both nodes, with the documented environment (it may take a few seconds to see the 2nd)
        deadline = time.time() + 60
        while True:
            out = step(commands[5], res := cluster.run(commands[5].split(), timeout=60))
            assert res.returncode == 0, out[-3000:]
            if _node_count(out) == 2 or time.time() > deadline:
                break
            time.sleep(2)
        assert _node_count(out) == 2, out
        # ... and the cluster does check the token: without RAY_AUTH_MODE, or with another token, `ray status` fails
        for broken in ({k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"},
                       {**cluster.env, "RAY_AUTH_TOKEN": "0" * len(token)}):
            res = cluster.run(["ray", "status"], timeout=60, env=broken)
            out = res.stdout + res.stderr
            assert res.returncode != 0 and "InvalidAuthToken" in out, out[-2000:]
        # (the Jobs client too: it reads RAY_AUTH_MODE, not the token file)
        res = cluster.run(["ray", "job", "submit", "--", "true"], timeout=60,
                          env={k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"})
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "InvalidAuthToken" in out, out[-2000:]

        # a relative trainer.run_dir in a job with --working-dir: refused in one line, before any work, nothing written
        relative = (f"ray job submit --working-dir . -- score-rl train configs/quickstart.yaml ray.address=auto "
                    f"trainer.run_dir=runs/relative {overrides}")
        out = step("(relative run dir)", res := cluster.run(relative, timeout=120))
        assert res.returncode == 1, out[-3000:]
        assert ("score-rl: error: trainer.run_dir=runs/relative is relative, and this Ray job runs in Ray's temporary "
                "copy of its working_dir") in out, out[-3000:]
        assert "Traceback" not in out.split("Running entrypoint", 1)[-1], out[-3000:]
        assert not list(temp_dir.glob("session_*/runtime_resources/working_dir_files/*/runs"))
        assert not (project / "runs").exists()

        # ray job submit --working-dir . -- score-rl train configs/quickstart.yaml ray.address=auto
        #     trainer.run_dir=$PWD/runs/quickstart-ray
        out = step(commands[6], res := cluster.run(f"{commands[6]} {overrides}", timeout=300))
        assert res.returncode == 0, out[-5000:]
        assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-3000:]
        assert "starting a local Ray" not in out, out[-3000:]  # it joined this cluster (ray.address=auto)
        _check_run_dir(project / "runs" / "quickstart-ray", out)  # where $PWD pointed: the user's directory
        assert not list(temp_dir.glob("session_*/runtime_resources/working_dir_files/*/runs"))

        # score-rl train configs/quickstart.yaml ray.address=auto trainer.run_dir=$PWD/runs/quickstart-driver
        out = step(commands[7], res := cluster.run(f"{commands[7]} {overrides}", timeout=300))
        assert res.returncode == 0, out[-5000:]
        assert "starting a local Ray" not in out, out[-3000:]
        _check_run_dir(project / "runs" / "quickstart-driver", out)
    finally:
        # ray stop (commands[8]), for this cluster only
        left = cluster.stop()
        log.append(f"stopped the cluster after {time.time() - started:.0f} s (SIGKILLed after 10 s: {cluster.killed}; "
                   f"left: {left})")
        print("\n".join(log))
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes of the test's Ray cluster still running: {left}"
