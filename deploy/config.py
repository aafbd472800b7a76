"""Configuration: built-in defaults < user file < DEPLOY_* environment variables < arguments."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_DEFAULTS = Path(__file__).with_name("conf") / "defaults.toml"


def user_config_path() -> Path:
    explicit = os.environ.get("DEPLOY_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "deploy" / "config.toml"


def _coerce(raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    return raw


_parsed: dict[str, tuple[tuple, dict[str, Any]]] = {}    # path -> (file identity, contents)


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's contents (a copy); parsed again only when the file changed ({} if missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    identity = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _parsed.get(str(path))
    if cached is None or cached[0] != identity:
        try:
            with open(path, "rb") as f:
                cached = _parsed[str(path)] = (identity, tomllib.load(f))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"bad configuration file {path}: {exc}") from None
    return copy.deepcopy(cached[1])


def load() -> dict[str, Any]:
    """The effective settings: the files as they are now, the environment as it is now."""
    settings = _read_toml(_DEFAULTS)
    settings.update(_read_toml(user_config_path()))
    for key, value in list(settings.items()):
        raw = os.environ.get("DEPLOY_" + key.upper())
        if raw is not None:
            try:
                settings[key] = _coerce(raw, value)
            except ValueError:
                raise ValueError(f"DEPLOY_{key.upper()}={raw!r} is not a valid {type(value).__name__}") from None
    return settings


def get(key: str) -> Any:
    return load()[key]


def home() -> Path:
    """The private local state directory (0700), created on first use."""
    path = Path(os.environ.get("DEPLOY_HOME") or get("home")).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
