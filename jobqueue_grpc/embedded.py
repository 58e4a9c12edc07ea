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

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> str:
        """Initialises the cluster if new, starts it, returns its connection URL."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
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
        if (self.pgdata / "postmaster.pid").exists():
            # A previous run died without stopping it; pg_ctl stop is a no-op when it is gone.
            subprocess.run(
                [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "stop"],
                user=self.user,
                capture_output=True,
                check=False,
                timeout=60,
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
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", timeout=60)
        if self.socket_dir != self.pgdata:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        log.info("embedded PostgreSQL stopped")

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
