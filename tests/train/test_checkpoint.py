"""Checkpoints: atomic, verified, pruned; a damaged one falls back to the previous intact one; a write that fails
(disk full, read-only) is one line and leaves nothing partial."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from score_rl.train.checkpoint import (CheckpointError, checkpoint_problem, latest_checkpoint, save_checkpoint,
                                       step_checkpoints)


def _learner(size=1000):
    def save(directory, tag):
        os.makedirs(os.path.join(directory, tag))
        with open(os.path.join(directory, tag, "weights.pt"), "wb") as f:
            f.write(b"w" * size)
    return save


def _save(root, step, keep=0, learner=None):
    return save_checkpoint(root, step, {"step": step}, learner or _learner(), keep=keep)


def test_save_publishes_a_verified_checkpoint_and_latest(tmp_path):
    path = _save(tmp_path, 3)
    assert path.name == "step_0000003" and (tmp_path / "latest").read_text() == "step_0000003"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"] == {"learner/weights.pt": 1000, "trainer_state.json": len((path / "trainer_state.json")
                                                                                       .read_bytes())}
    assert checkpoint_problem(path) is None and latest_checkpoint(tmp_path) == path
    assert not list(tmp_path.glob(".*tmp")), "no temporary left behind"


def test_keep_prunes_all_but_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [3, 4]
    for step in (5, 6):
        _save(tmp_path, step, keep=0)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [3, 4, 5, 6], "keep=0 keeps every checkpoint"


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "learner" / "weights.pt").write_bytes(b"w" * 10), "truncated"),
    (lambda p: (p / "trainer_state.json").write_text(""), "trainer_state.json is unreadable"),
    (lambda p: __import__("shutil").rmtree(p / "learner"), "learner/weights.pt is missing"),
    (lambda p: __import__("shutil").rmtree(p), "directory is missing"),
], ids=["truncated-file", "empty-trainer-state", "deleted-learner-dir", "deleted-checkpoint"])
def test_a_damaged_latest_falls_back_to_the_previous_intact_one(tmp_path, damage, reason):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    damage(newest)
    warnings = []
    assert latest_checkpoint(tmp_path, warn=warnings.append) == tmp_path / "step_0000002"
    assert len(warnings) == 1 and "step_0000004" in warnings[0] and reason in warnings[0]


def test_all_damaged_is_one_line_error(tmp_path):
    only = _save(tmp_path, 1)
    (only / "trainer_state.json").write_text("{")
    with pytest.raises(CheckpointError, match="every checkpoint in .* is damaged"):
        latest_checkpoint(tmp_path, warn=lambda *_: None)


def test_no_checkpoint_is_none(tmp_path):
    assert latest_checkpoint(tmp_path / "checkpoints") is None


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_a_failed_write_is_one_line_naming_the_cause_and_leaves_nothing_partial(tmp_path, code, cause):
    previous = _save(tmp_path, 1)

    def failing(directory, tag):
        _learner()(directory, tag)  # half written, then the disk says no
        raise OSError(code, os.strerror(code))

    with pytest.raises(CheckpointError) as err:
        _save(tmp_path, 2, learner=failing)
    message = str(err.value)
    assert "\n" not in message and cause in message and "step 2" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001"], "no partial .step_2.tmp"
    assert latest_checkpoint(tmp_path) == previous


def test_torch_style_write_failure_on_a_full_disk_is_named(tmp_path):
    """A learner's torch.save failing on a full disk says 'file write failed', not ENOSPC: named from the free space."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root) to fill a disk for real")
    try:
        import torch

        def save(directory, tag):
            os.makedirs(os.path.join(directory, tag))
            torch.save(torch.zeros(200_000), os.path.join(directory, tag, "weights.pt"))  # 800 KB > 256 KB

        with pytest.raises(CheckpointError, match="no space left on device"):
            save_checkpoint(mnt / "checkpoints", 1, {"step": 1}, save)
        assert [p.name for p in (mnt / "checkpoints").iterdir()] == [], "the partial checkpoint is removed"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_after_a_fallback_the_discarded_future_is_deleted_and_the_new_checkpoints_are_kept(tmp_path):
    """keep=2; step 30 damaged → resume from 20 → new checkpoints 25 and 26: 30 must neither survive (a later resume
    would try it first) nor push the new ones out."""
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=2)
    (tmp_path / "step_0000030" / "learner" / "weights.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path, warn=lambda *_: None) == tmp_path / "step_0000020"
    _save(tmp_path, 25, keep=2)
    _save(tmp_path, 26, keep=2)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [25, 26]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_0000026"
    _save(tmp_path, 27, keep=1)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [27], "keep=1: the one just written stays"


def test_an_interrupted_save_leaves_nothing_partial(tmp_path):
    _save(tmp_path, 1)

    def interrupted(directory, tag):
        _learner()(directory, tag)
        raise KeyboardInterrupt  # a second Ctrl-C while saving

    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, learner=interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001"]
    (tmp_path / ".step_0000005.tmp").mkdir()  # left by a process that was SIGKILLed while saving
    _save(tmp_path, 3)
    assert not list(tmp_path.glob(".*.tmp"))
