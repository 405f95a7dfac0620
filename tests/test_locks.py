"""The image's lock is requirements.lock without the dev group.

``make lock`` exports both files from one resolution: ``requirements.lock`` with every group
(what ``make install`` and the tests use) and ``deploy/requirements.runtime.lock`` without the
dev group (what ``deploy/Dockerfile`` installs). These checks hold the second to the first, pin
for pin and hash for hash, and to what the runtime dependencies actually need, read from the
installed packages' metadata: a stale export, a hand edit or a dev tool in the image fails here.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "deploy" / "requirements.runtime.lock"
#: Exported from the lock as the project itself (``--no-emit-project``, ``--no-emit-package``).
PROJECTS = frozenset({"jobq", "jobq-client"})
PIN = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*)==(?P<version>\S+)(?: ; (?P<marker>[^\\]+?))?$")


@dataclass(frozen=True, slots=True)
class Pin:
    version: str
    marker: str
    hashes: frozenset[str]


@functools.cache
def pins(path: Path) -> dict[str, Pin]:
    """A ``uv export`` requirements file: each package's version, markers and hashes."""
    found: dict[str, Pin] = {}
    name = ""
    for line in path.read_text().splitlines():
        stripped = line.strip().removesuffix("\\").strip()
        if match := PIN.match(stripped):
            name = match["name"]
            found[name] = Pin(match["version"], match["marker"] or "", frozenset())
        elif stripped.startswith("--hash="):
            pin = found[name]
            found[name] = Pin(pin.version, pin.marker, pin.hashes | {stripped})
    return found


@functools.cache
def runtime_needs() -> frozenset[str]:
    """Every distribution jobq needs at run time on this platform, walking the installed
    packages' requirements from jobq's own, with the extras each one asks for."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [("jobq", frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return frozenset(name for name, _ in seen) - PROJECTS


def dev_group() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {canonicalize_name(Requirement(r).name) for r in pyproject["dependency-groups"]["dev"]}


def test_both_locks_parse_and_every_pin_has_hashes() -> None:
    for path in (LOCK, RUNTIME_LOCK):
        assert len(pins(path)) > 50, f"{path.name} parsed to almost nothing"
        assert all(pin.hashes for pin in pins(path).values()), f"{path.name} has an unhashed pin"


def test_the_runtime_lock_was_exported_without_the_dev_group() -> None:
    header = RUNTIME_LOCK.read_text().splitlines()[1]
    assert "uv export" in header
    assert "--no-dev" in header


def test_every_runtime_pin_is_the_same_pin_in_requirements_lock_with_the_same_hashes() -> None:
    full = pins(LOCK)
    for name, pin in pins(RUNTIME_LOCK).items():
        assert full.get(name) == pin, f"{name} differs from requirements.lock"


def test_the_runtime_lock_holds_no_dev_tool() -> None:
    runtime = set(pins(RUNTIME_LOCK))
    assert not runtime & {"pytest", "mypy", "ruff", "celery", "dramatiq", "schemathesis"}
    # A dev-group package may be there only because a runtime one needs it (uvicorn[standard]
    # reads PyYAML log configs).
    assert runtime & dev_group() <= runtime_needs()


def test_the_runtime_lock_holds_everything_the_runtime_dependencies_need() -> None:
    missing = runtime_needs() - set(pins(RUNTIME_LOCK))
    assert not missing, "re-export with `make lock`"


def test_the_runtime_lock_holds_nothing_else_this_platform_installs() -> None:
    extra = {
        name
        for name, pin in pins(RUNTIME_LOCK).items()
        if name not in runtime_needs() and (not pin.marker or Marker(pin.marker).evaluate())
    }
    assert not extra, "in the runtime lock but needed by no runtime dependency"
