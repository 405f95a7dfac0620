"""Stored credentials, so that people type a secret once (``jobq login``) and never on a
command line: ``$JOBQ_CONFIG_DIR/profiles.json`` (by default ``$XDG_CONFIG_HOME/jobq``, else
``~/.config/jobq``), readable by its owner only."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from jobq.calls import Credentials
from jobq.errors import JobqError


def config_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("JOBQ_CONFIG_DIR"):
        return Path(env["JOBQ_CONFIG_DIR"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jobq"


def _path(env: Mapping[str, str]) -> Path:
    return config_dir(env) / "profiles.json"


def _read(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    path = _path(env)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise JobqError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def load(name: str = "default", env: Mapping[str, str] = os.environ) -> Credentials:
    """The credentials stored as ``name``; ``JobqError`` saying how to store them if none."""
    entry = _read(env).get(name)
    if not entry:
        raise JobqError(f"no profile {name!r} in {_path(env)}: run `jobq login`")
    return Credentials(entry["url"], entry["client_id"], entry["client_secret"])


def save(
    credentials: Credentials, name: str = "default", env: Mapping[str, str] = os.environ
) -> Path:
    """Store ``credentials`` as ``name`` (mode 0600; the directory 0700)."""
    path = _path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    profiles = _read(env)
    profiles[name] = {
        "url": credentials.url,
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(profiles, out, indent=2)
    tmp.replace(path)
    return path
