"""Configuration: built-in defaults < user file < DEPLOY_* environment variables < arguments.

Every value is checked against its default's type as it is read, so a typo in a key, a
word where a number belongs or a NaN fails here, naming the file or variable, instead of
deep inside a job.
"""
from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_DEFAULTS = Path(__file__).with_name("conf") / "defaults.toml"
_POSITIVE = {"max_tasks", "lease_seconds", "heartbeat_seconds"}   # the rest may also be 0
_COUNTS = {"max_tasks", "worker_retries"}          # integers; other numbers may have a fraction
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def user_config_path() -> Path:
    explicit = os.environ.get("DEPLOY_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "deploy" / "config.toml"


def _coerce(key: str, raw: str, like: Any) -> Any:
    """A DEPLOY_* variable's text as the type of the setting's default (ValueError if not)."""
    if isinstance(like, bool):
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(raw)
        return word in _TRUE
    if isinstance(like, (int, float)):
        return int(raw) if key in _COUNTS else float(raw)
    return raw


def _check(key: str, value: Any, like: Any) -> str | None:
    """Why `value` cannot stand for setting `key` (default `like`), or None when it can."""
    if key == "progress":
        ok = isinstance(value, bool) or str(value).lower() in ("auto",) + _TRUE + _FALSE
        return None if ok else "must be auto, true or false"
    if isinstance(like, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(like, (int, float)):
        kinds = int if key in _COUNTS else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return "must be " + ("an integer" if kinds is int else "a number")
        if not math.isfinite(value) or value < 0 or (value == 0 and key in _POSITIVE):
            return "must be a finite number " + ("> 0" if key in _POSITIVE else ">= 0")
        return None
    if isinstance(like, str):
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string"
    return None


_parsed: dict[str, tuple[tuple, dict[str, Any]]] = {}    # path -> (file identity, contents)


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's contents (a copy); parsed again only when the file changed ({} if missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    identity = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _parsed.get(str(path))
    if cached is None or cached[0] != identity:
        try:
            with open(path, "rb") as f:
                cached = _parsed[str(path)] = (identity, tomllib.load(f))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"bad configuration file {path}: {exc}") from None
    return copy.deepcopy(cached[1])


def load() -> dict[str, Any]:
    """The effective settings: the files as they are now, the environment as it is now."""
    settings = _read_toml(_DEFAULTS)
    path = user_config_path()
    for key, value in _read_toml(path).items():
        if key not in settings:
            raise ConfigError(f"bad configuration file {path}: unknown setting {key!r}; known: "
                              + ", ".join(sorted(settings)))
        problem = _check(key, value, settings[key])
        if problem:
            raise ConfigError(f"bad configuration file {path}: {key} {problem}, got {value!r}")
        settings[key] = value
    for key, default in list(settings.items()):
        raw = os.environ.get("DEPLOY_" + key.upper())
        if raw is None:
            continue
        try:
            value = _coerce(key, raw, default)
        except ValueError:
            value = raw
        problem = _check(key, value, default)
        if problem:
            raise ConfigError(f"DEPLOY_{key.upper()}={raw!r} is not a valid {key}: it {problem}")
        settings[key] = value
    return settings


def get(key: str) -> Any:
    return load()[key]


def home() -> Path:
    """The private local state directory (0700), created on first use."""
    path = Path(os.environ.get("DEPLOY_HOME") or get("home")).expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as the deploy home (DEPLOY_HOME or 'home' "
                          f"setting): {exc.strerror}") from None
    return path
