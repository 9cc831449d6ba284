"""ray.enabled=false runs need no Ray: `score-rl train` trains in-process where `import ray` fails.

The subprocess gets a sitecustomize (first on PYTHONPATH) that makes Ray look uninstalled: `import ray` (and any
``ray.*``) raises ModuleNotFoundError and ``importlib.util.find_spec("ray")`` answers None, as without the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import QUICKSTART, TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]

NO_RAY = '''
import importlib.util
import sys


class _NoRay:
    """Ray, as if it were not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoRay())
_find_spec = importlib.util.find_spec


def _find_spec_without_ray(name, package=None):
    if name == "ray" or name.startswith("ray."):
        return None
    return _find_spec(name, package)


importlib.util.find_spec = _find_spec_without_ray
'''


def test_an_in_process_run_trains_where_ray_cannot_be_imported(tmp_path, tiny_model_path):
    site = tmp_path / "no_ray"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_RAY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "TOKENIZERS_PARALLELISM": "false"}
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'ray'" in probe.stderr, probe.stderr  # the blocker works
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "score_rl.cli", "train", str(QUICKSTART), *TINY_OVERRIDES,
         f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=1", "trainer.eval_before_after=false",
         f"trainer.run_dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (run_dir / "final" / "config.json").is_file()
    assert (run_dir / "metrics.jsonl").read_text().strip()
