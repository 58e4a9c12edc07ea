"""An embedded PostgreSQL for `serve` without a database URL, and for the test suite.

Why our own launcher over `pgserver.get_server`: we need postgres settings (connections, fsync for
throwaway test clusters) and a clean stop on SIGTERM; pgserver only stops at interpreter exit. We
still take PostgreSQL's binaries from the `pgserver` wheel, so a fresh machine with nothing but
Python gets a working database from `pip install`, and reuse its helpers for running as root
(PostgreSQL refuses root, so the cluster runs as an unprivileged system user).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

_SOCKET_MAX = 100  # unix socket paths must stay under ~107 bytes


def _bin_dir() -> Path:
    with warnings.catch_warnings():  # pgserver's import warns about XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class AlreadyRunning(RuntimeError):
    """The data directory's PostgreSQL is alive, so another server owns it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user (the cluster's own user)
        return True
    return True


def _is_postmaster_of(pid: int, datadir: str) -> bool | None:
    """Whether `pid` runs postgres on `datadir` (pg_ctl starts it with `-D datadir`); None where
    /proc cannot tell."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    program = os.path.basename(argv[0].decode(errors="replace"))
    return program.startswith("postgres") and datadir.encode() in argv


def _socket_answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(path))
    except OSError:
        return False
    return True


def live_postmaster(pidfile_lines: list[str]) -> tuple[int, int] | None:
    """(pid, port) of the postmaster a postmaster.pid names, if it is alive; else None.

    Alive means its PID runs postgres on that data directory, or its unix socket accepts a
    connection (a reused PID of some other program, or of another cluster, does not count).
    """
    try:
        pid = int(pidfile_lines[0])
        port = int(pidfile_lines[3]) if len(pidfile_lines) > 3 else 5432
    except (IndexError, ValueError):
        return None  # half-written or garbage: nobody can be using it
    datadir = pidfile_lines[1].strip() if len(pidfile_lines) > 1 else ""
    socket_dir = pidfile_lines[4].strip() if len(pidfile_lines) > 4 else ""
    if pid > 0 and _pid_alive(pid) and _is_postmaster_of(pid, datadir) is not False:
        return pid, port
    if socket_dir and _socket_answers(Path(socket_dir) / f".s.PGSQL.{port}"):
        return pid, port
    return None


class EmbeddedPostgres:
    """One PostgreSQL cluster in `pgdata`, listening on a unix socket only."""

    def __init__(self, pgdata: Path, *, settings: dict[str, str] | None = None) -> None:
        self.pgdata = pgdata.resolve()
        self.settings = {"max_connections": "200", "listen_addresses": "''"}
        self.settings.update(settings or {})
        self.user: str | None = None
        self.socket_dir = self.pgdata
        self._started = False

    # -- running as root ----------------------------------------------------
    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        self.user = "pgserver"
        ensure_user_exists(self.user)
        bindir = _bin_dir()
        ensure_prefix_permissions(bindir)
        ensure_folder_permissions(bindir, 0o055)
        ensure_folder_permissions(bindir.parent / "lib", 0o044)
        ensure_prefix_permissions(self.pgdata)
        entry = pwd.getpwnam(self.user)
        for path in (self.pgdata, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, exe: str, *args: str, timeout: float = 120) -> None:
        cmd = [str(_bin_dir() / exe), *args]
        res = subprocess.run(
            cmd, user=self.user, capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"{exe} failed ({res.returncode}): {res.stderr.strip()}")

    # -- a cluster already running here ---------------------------------------
    def _check_not_running(self) -> None:
        """Refuses a data directory whose postmaster is alive; clears a dead one's pid file.

        Another `serve` (from any clone: the default data directory is per user) may be using
        this cluster; stopping it would leave that server without its database. A pid file left
        by a postmaster that died (kill -9, a reboot) only names a dead or reused PID: it is
        removed, so that PostgreSQL does not mistake an unrelated process for its owner.
        """
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            return
        running = live_postmaster(lines)
        if running is not None:
            pid, port = running
            raise AlreadyRunning(
                f"an embedded PostgreSQL is already running in {self.pgdata} (pid {pid}, "
                f"port {port}): another jobqueue-grpc serve is using this data directory; "
                "stop it, or give this one its own --data-dir (or a --database-url)"
            )
        log.info("removing the stale postmaster.pid of a PostgreSQL that is gone")
        pidfile.unlink(missing_ok=True)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> str:
        """Initialises the cluster if new, starts it, returns its connection URL."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._check_not_running()
        if len(str(self.pgdata / ".s.PGSQL.5432")) > _SOCKET_MAX:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="jqpg-"))
        self._prepare_user()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded PostgreSQL in %s", self.pgdata)
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        opts += f" -k {self.socket_dir}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.pgdata / "postgres.log"),
            "-o",
            opts,
            "start",
        )
        self._started = True
        log.info("embedded PostgreSQL running in %s", self.pgdata)
        return self.url()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", timeout=60)
        except RuntimeError:
            pidfile = self.pgdata / "postmaster.pid"
            try:
                lines = pidfile.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if lines and live_postmaster(lines) is not None:
                raise
            # It died under us (killed, out of memory): nothing to stop but its pid file.
            log.warning("embedded PostgreSQL in %s was no longer running", self.pgdata)
            pidfile.unlink(missing_ok=True)
        if self.socket_dir != self.pgdata:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        log.info("embedded PostgreSQL stopped")

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
