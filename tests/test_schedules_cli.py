"""`jobqueue-grpc schedules ...` and `jobs cancel --queue ... --dry-run` as subprocesses against
a real server: every command, `apply` idempotent with its diff and --prune."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from jobqueue_grpc.server import JobQueueServer
from tests.test_admin_cli import Cli


@pytest.fixture
def cli(server: JobQueueServer) -> Cli:
    return Cli(server.port)


async def test_schedule_commands(cli: Cli, db: asyncpg.Connection) -> None:
    code, out, err = await cli(
        "schedules", "create", "nightly", "--cron", "0 3 * * *", "--timezone", "Europe/Berlin",
        "--kind", "report", "--queue", "reports", "--payload", '{"full": true}',
    )  # fmt: skip
    assert code == 0, err
    assert "created nightly" in out and "0 3 * * * (Europe/Berlin)" in out
    listed = await cli.json("schedules", "list")
    assert [s["id"] for s in listed] == ["nightly"]
    code, out, _ = await cli("schedules", "list")
    assert out.splitlines()[0].split()[:3] == ["ID", "TIMING", "QUEUE"]

    made = await cli.json("schedules", "trigger", "nightly")
    assert made["created"] and made["job"]["kind"] == "report"
    shown = await cli.json("schedules", "show", "nightly")
    assert shown["last_job_id"] == made["job"]["id"]

    up = await cli.json("schedules", "update", "nightly", "--every", "15m", "--priority", "2")
    assert up["every"] == "900s" and up["cron"] == "" and up["job"]["priority"] == 2
    assert up["job"]["payload"] == {"full": True}  # kept
    assert (await cli.json("schedules", "pause", "nightly"))["paused"]
    assert not (await cli.json("schedules", "resume", "nightly"))["paused"]

    code, _, err = await cli("schedules", "create", "bad", "--cron", "99 * * * *", "--kind", "k")
    assert code == 1 and "INVALID_ARGUMENT" in err and "Bad minute" in err
    assert (await cli("schedules", "delete", "nightly"))[0] == 0
    code, _, err = await cli("schedules", "show", "nightly")
    assert code == 1 and "NOT_FOUND" in err


FILE = """
schedules:
  - id: nightly-report
    cron: "0 3 * * *"
    timezone: Europe/Berlin
    missed: run_once
    job: {kind: report, queue: reports, payload: {full: true}, unique: {key: nightly}}
  - id: heartbeat
    every: 30s
    job: {kind: ping}
"""


async def test_apply_is_idempotent_prints_a_diff_and_prunes(cli: Cli, tmp_path: Path) -> None:
    await cli("schedules", "create", "stray", "--every", "1h", "--kind", "old")
    path = tmp_path / "schedules.yaml"
    path.write_text(FILE)
    code, out, err = await cli("schedules", "apply", str(path))
    assert code == 0, err
    assert out.splitlines() == [
        "+ nightly-report",
        "+ heartbeat",
        "applied: 2 created, 0 updated, 0 deleted, 0 unchanged;"
        " 1 not in the file (--prune deletes them)",
    ]
    code, out, _ = await cli("schedules", "apply", str(path))
    assert out.splitlines()[:2] == ["= nightly-report", "= heartbeat"]

    path.write_text(FILE.replace("every: 30s", "every: 1m"))
    code, out, _ = await cli("schedules", "apply", str(path), "--prune", "--dry-run")
    assert out.splitlines() == [
        "= nightly-report",
        "~ heartbeat (every)",
        "- stray",
        "would apply: 0 created, 1 updated, 1 deleted, 1 unchanged",
    ]
    code, out, _ = await cli("schedules", "apply", str(path), "--prune")
    assert out.splitlines()[-1] == "applied: 0 created, 1 updated, 1 deleted, 1 unchanged"
    assert sorted(s["id"] for s in await cli.json("schedules", "list")) == [
        "heartbeat",
        "nightly-report",
    ]
    assert (
        (await cli("schedules", "apply", str(path), "--prune"))[1]
        .splitlines()[-1]
        .endswith("0 created, 0 updated, 0 deleted, 2 unchanged")
    )
    path.write_text("schedules: [{id: x, every: soon}]")
    code, _, err = await cli("schedules", "apply", str(path))
    assert code == 2 and "not a duration" in err


async def test_jobs_cancel_by_filter(cli: Cli, db: asyncpg.Connection) -> None:
    for _ in range(3):
        await cli("jobs", "enqueue", "k", "--queue", "gone")
    await cli("jobs", "enqueue", "k", "--queue", "kept")
    code, out, _ = await cli("jobs", "cancel", "--queue", "gone", "--dry-run")
    assert (code, out.strip()) == (0, "would cancel 3 job(s)")
    code, out, _ = await cli("jobs", "cancel", "--queue", "gone", "--yes")
    assert code == 0 and out.startswith("cancelled 3 waiting job(s)")
    states = await db.fetch("SELECT queue, state FROM jobqueue.jobs ORDER BY queue")
    assert [tuple(r) for r in states] == [("gone", "cancelled")] * 3 + [("kept", "queued")]
    code, _, err = await cli("jobs", "cancel")
    assert code == 2 and "filters" in err
