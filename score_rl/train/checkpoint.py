"""Atomic, verified checkpoints.

A step's directory appears complete or not at all (written as ``.step_N.tmp``, renamed when complete), carries a
``manifest.json`` of every file's size, and ``latest`` names it (replaced atomically). On resume the newest checkpoint
that passes the manifest is used: a damaged one (a truncated or deleted file, an empty trainer_state.json) is skipped
with a warning. ``keep`` prunes all but the newest complete checkpoints. A checkpoint that cannot be written (disk full,
read-only, no permission) leaves nothing partial behind and raises ``CheckpointError``, one line naming the cause.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from score_rl.utils import dumps_json

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none could be read; the message is one line."""


def _files(directory: Path) -> Dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def writable_problem(directory: Path) -> Optional[str]:
    """Why files cannot be created in ``directory`` (read-only, no permission), or None. Tries, not guesses."""
    probe = directory / f".write_probe.{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        return os.strerror(err.errno) if err.errno else str(err)
    return None


def _write_failure(root: Path, step: int, err: BaseException) -> CheckpointError:
    """A one-line CheckpointError for a failed write: the cause named when it is a full disk, a read-only file system or
    a permission problem (a learner's failure reaches us wrapped, e.g. torch's 'file write failed')."""
    errnos = {getattr(e, "errno", None) for e in _chain(err)}
    text = " ".join(str(e) for e in _chain(err))
    if errno.ENOSPC in errnos or errno.EDQUOT in errnos or "No space left" in text or "Disk quota" in text:
        cause = "no space left on device"
    elif errno.EROFS in errnos or "Read-only file system" in text:
        cause = "read-only file system"
    elif errno.EACCES in errnos or errno.EPERM in errnos or "Permission denied" in text:
        cause = "permission denied"
    else:
        probe = writable_problem(root) if root.is_dir() else None
        free = shutil.disk_usage(root).free if root.is_dir() else None
        if probe:
            cause = probe.lower()
        elif free is not None and free < 64 * 2**20:
            cause = f"no space left on device ({free / 2**20:.0f} MiB free)"
        else:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            cause = f"{type(err).__name__}: {first}"
    return CheckpointError(f"could not write the checkpoint of step {step} in {root}: {cause}; nothing partial was "
                           f"kept (the previous checkpoint, if any, is intact)")


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__


def save_checkpoint(root: Path, step: int, trainer_state: Dict, save_learner: Callable[[str, str], None],
                    keep: int = 0) -> Path:
    """Write step ``step``'s checkpoint (learner state through ``save_learner(dir, tag)``, then ``trainer_state``),
    verify and publish it, then prune: checkpoints of later steps (a future a fallback resume discarded) are deleted,
    and of the rest the newest ``keep`` are kept (0 = keep all); the one just published always stays."""
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp"
    published = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step_*.tmp"):  # left by a process killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        save_learner(str(tmp), "learner")
        (tmp / "trainer_state.json").write_text(dumps_json(trainer_state, indent=2))
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": _files(tmp)}, indent=2))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        published = True
        latest_tmp = root / ".latest.tmp"
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, root / "latest")
        _fsync_dir(root)
    except BaseException as err:  # a second Ctrl-C included: nothing partial is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        (root / ".latest.tmp").unlink(missing_ok=True)
        if published and isinstance(err, KeyboardInterrupt):  # complete and verified: let `latest` name it
            try:
                (root / ".latest.tmp").write_text(final.name)
                os.replace(root / ".latest.tmp", root / "latest")
            except OSError:
                pass
        if not isinstance(err, Exception):
            raise
        raise _write_failure(root, step, err) from err
    prune(root, step, keep)
    return final


def prune(root: Path, published: int, keep: int) -> None:
    """Delete checkpoints of steps after ``published`` (they belong to a run the resume went back from: a later resume
    must not find them) and all but the newest ``keep`` of the others (0 = keep all); never ``published`` itself."""
    kept = []
    for step, path in step_checkpoints(root):
        if step > published:
            shutil.rmtree(path, ignore_errors=True)
        else:
            kept.append(path)
    if keep > 0:
        for path in kept[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def step_checkpoints(root: Path) -> List[Tuple[int, Path]]:
    """Published checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why the checkpoint directory ``path`` cannot be resumed from, or None when it is intact."""
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (ValueError, OSError) as err:
        return f"trainer_state.json is unreadable ({err.__class__.__name__})"
    manifest = path / MANIFEST
    if not manifest.is_file():  # written by an older score-rl: only the learner directory can be checked
        return None if (path / "learner").is_dir() or any(path.glob("learner*")) else "the learner state is missing"
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, OSError):
        return f"{MANIFEST} is unreadable"
    for name, size in expected.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} expected (truncated?)"
    return None


def resumable_checkpoints(root: Path, warn: Callable[[str], None] = print) -> Iterator[Path]:
    """Intact checkpoints to resume from, best first: the one ``latest`` names, then older ones, newest first. Each
    damaged one is skipped with a warning naming it and the reason."""
    candidates = [p for _, p in reversed(step_checkpoints(root))]
    marker = root / "latest"
    if marker.is_file():
        named = root / marker.read_text().strip()
        if named in candidates:  # normally the newest already; put it first in any case
            candidates.remove(named)
        candidates.insert(0, named)
    for path in candidates:
        problem = checkpoint_problem(path) if path.is_dir() else "the directory is missing"
        if problem:
            warn(f"warning: checkpoint {path} is damaged ({problem}); trying the previous one")
            continue
        yield path


def has_checkpoint(root: Path) -> bool:
    """Whether the run has written any checkpoint (a resume, as opposed to a new run)."""
    return (root / "latest").is_file() or bool(step_checkpoints(root))


def latest_checkpoint(root: Path, warn: Callable[[str], None] = print) -> Optional[Path]:
    """The newest intact checkpoint (None when the run has none); CheckpointError when all of them are damaged."""
    if not has_checkpoint(root):
        return None
    for path in resumable_checkpoints(root, warn):
        return path
    raise CheckpointError(f"every checkpoint in {root} is damaged (warnings above); nothing to resume from — move the "
                          f"directory away to start over")
