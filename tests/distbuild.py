"""Build the sdist and the wheel as ``make dist`` does (``uv build``), once per test process."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def uv() -> str:
    """The uv of this venv (make bootstraps it into .venv; the compat venvs pin it too)."""
    here = Path(sys.executable).parent / "uv"
    found = str(here) if here.exists() else shutil.which("uv")
    if found is None:
        raise RuntimeError(f"no uv next to {sys.executable} or on PATH: run make venv")
    return found


@functools.cache
def build_dist() -> dict[str, Path]:
    """``{"sdist": ..., "wheel": ...}`` built from the checkout into a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix="iu-dist-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    done = subprocess.run(
        [uv(), "build", "--python", sys.executable, "--out-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"uv build failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}
