"""Numbered plain-SQL migrations, applied in order under an advisory lock.

Several replicas may start at once: each takes the same advisory lock, so one applies what is
missing and the others then find nothing left to do.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from jobqueue_grpc.store.pool import Conn
from jobqueue_grpc.store.queries import q

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x6A6F6271  # "jobq"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migration_files() -> list[tuple[int, str, Path]]:
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        out.append((int(m.group(1)), m.group(2), path))
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number: {versions}")
    return out


def latest_version() -> int:
    files = migration_files()
    return files[-1][0] if files else 0


async def current_version(conn: Conn) -> int:
    return int(await conn.fetchval(q("schema_version")))


async def migrate(conn: Conn) -> list[int]:
    """Applies every missing migration; returns the versions it applied."""
    applied: list[int] = []
    await conn.execute(q("advisory_lock"), _LOCK_KEY)
    try:
        await conn.execute(q("migrations_bootstrap"))
        done = {r["version"] for r in await conn.fetch(q("applied_migrations"))}
        for version, name, path in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(q("record_migration"), version, name)
            log.info("applied migration %04d_%s", version, name)
            applied.append(version)
    finally:
        await conn.execute(q("advisory_unlock"), _LOCK_KEY)
    return applied
