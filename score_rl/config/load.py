"""load_config = validate(schema defaults ← YAML file ← dotlist overrides), every failure one ConfigError line.

Unknown keys and wrong types name the key and the closest valid one; malformed YAML names the file and the line.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from score_rl.config.schema import Config, config_keys
from score_rl.config.validate import validate
from score_rl.errors import ConfigError


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Config:
    """Schema defaults <- YAML file <- dotlist overrides, validated and resolved. Raises ConfigError."""
    _register_resolvers()
    schema = OmegaConf.structured(Config)
    try:
        layers = [schema]
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            loaded = _load_yaml(p)
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"config file {p} must hold a mapping at the top level")
            layers.append(loaded)
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not of the form key=value")
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        OmegaConf.resolve(merged)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _translate(err) from None
    validate(cfg)
    return cfg


def _register_resolvers() -> None:
    """${now:FORMAT}: the load time, formatted (trainer.run_dir's default); resolved once per load."""
    if not OmegaConf.has_resolver("now"):
        from datetime import datetime

        import warnings

        with warnings.catch_warnings():  # omegaconf 2.4 renamed the API; this call works on 2.3 and 2.4
            warnings.simplefilter("ignore")
            OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt), use_cache=True)


def _load_yaml(p: Path) -> Any:
    """OmegaConf.load, with malformed YAML / undecodable bytes / an unreadable file as one ConfigError naming the
    file and the line."""
    import yaml

    try:
        return OmegaConf.load(p)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        what = ": ".join(str(s) for s in (err.context, err.problem) if s) or type(err).__name__
        raise ConfigError(f"config file {where}: not valid YAML ({what})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p}: not valid YAML ({' '.join(str(err).split())})") from None
    except UnicodeDecodeError as err:
        data = p.read_bytes()  # the error's offset is into whatever the reader decoded: find it in the whole file
        try:
            data.decode("utf-8")
            start = min(err.start, len(data) - 1)
        except UnicodeDecodeError as whole:
            start = whole.start
        line = data[:start].count(b"\n") + 1
        raise ConfigError(f"config file {p}:{line}: not UTF-8 text (byte {data[start]:#04x} at byte offset {start} "
                          f"of the file)") from None
    except OSError as err:
        raise ConfigError(f"config file {p} cannot be read ({err.strerror or err})") from None


def _translate(err: OmegaConfBaseException) -> ConfigError:
    """An OmegaConf error as one line: an unknown key with the closest valid one, a wrong type with the expected."""
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError) or "not in" in msg:
        return ConfigError(f"unknown config key '{key}'{_closest(key)}")
    if isinstance(err, ValidationError):
        m = re.search(r"Value '(.*?)' (?:of type '(.*?)' )?could not be converted to (\w+)", msg)
        if m:
            expected = {"Integer": "int", "Float": "float", "Boolean": "bool", "String": "str"}.get(m.group(3),
                                                                                                    m.group(3))
            return ConfigError(f"config key '{key}' expects {expected}, got '{m.group(1)}'")
        return ConfigError(f"config key '{key}': {msg}")
    return ConfigError(f"config error at '{key}': {msg}")


def _closest(key: str) -> str:
    """' (did you mean 'KEY'?)' for the valid key closest to ``key`` (whole key, then same leaf, then similar leaf)."""
    valid = config_keys()
    leaf = key.split(".")[-1]
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5) or [
        k for k in valid if k.split(".")[-1] == leaf
    ][:1] or difflib.get_close_matches(leaf, [k.split(".")[-1] for k in valid], n=1, cutoff=0.6)
    if not match:
        return ""
    best = match[0]
    if "." not in best:  # a leaf name matched; report its full key
        best = next(k for k in valid if k.split(".")[-1] == best)
    return f" (did you mean '{best}'?)"
