"""``make`` on a machine whose python3 refuses ``pip install`` (PEP 668) and has no uv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.procs import REPO_ROOT

pytestmark = pytest.mark.e2e

SYSTEM_PATH = "/usr/bin:/bin"


def test_make_installs_uv_into_a_venv_of_its_own(tmp_path: Path) -> None:
    if shutil.which("python3", path=SYSTEM_PATH) is None or shutil.which("make") is None:
        pytest.skip("no system python3 or make")
    if shutil.which("uv", path=SYSTEM_PATH) is not None:
        pytest.skip("uv is on the system PATH: nothing to bootstrap")
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    env = {**os.environ, "PATH": SYSTEM_PATH}
    done = subprocess.run(
        [shutil.which("make") or "make", "-C", str(tmp_path), f"{tmp_path}/.uv/bin/uv"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    version = subprocess.run(
        [tmp_path / ".uv" / "bin" / "uv", "--version"], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert version.stdout.startswith("uv 0.13.9")
