"""The admin CLI as a subprocess against a real server: every command, tables and --json, errors,
confirmation and progress for bulk work."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from tests.operators import T0, seed_dead_letter, seed_job
from tests.support import run_cli


class Cli:
    def __init__(self, port: int) -> None:
        self.address = f"127.0.0.1:{port}"

    async def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        """Runs `jobqueue-grpc ARGS --address ...`; returns (exit code, stdout, stderr)."""
        env = {**os.environ, "JOBQUEUE_ADDRESS": "127.0.0.1:1"}  # the flag must win
        return await run_cli(*args, "--address", self.address, stdin=stdin, env=env)

    async def json(self, *args: str, stdin: str = "") -> Any:
        code, out, err = await self(*args, "--json", stdin=stdin)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(server: JobQueueServer) -> Cli:
    return Cli(server.port)


async def test_jobs_enqueue_get_list_cancel(cli: Cli, db: asyncpg.Connection) -> None:
    made = await cli.json(
        "jobs", "enqueue", "send_email", "--queue", "mail", "--payload", '{"to": "a@b.c"}',
        "--priority", "3", "--idempotency-key", "k1",
    )  # fmt: skip
    assert made["created"] is True
    job_id = made["job"]["id"]
    assert (made["job"]["queue"], made["job"]["payload"], made["job"]["priority"]) == (
        "mail",
        {"to": "a@b.c"},
        3,
    )
    again = await cli.json(
        "jobs", "enqueue", "send_email", "--queue", "mail", "--idempotency-key", "k1"
    )
    assert (again["created"], again["job"]["id"]) == (False, job_id)
    code, out, _ = await cli("jobs", "enqueue", "later", "--run-at", "2999-01-01T00:00:00Z")
    assert code == 0 and out.startswith("enqueued ") and "SCHEDULED" in out

    got = await cli.json("jobs", "get", job_id)
    assert (got["id"], got["state"]) == (job_id, "JOB_STATE_QUEUED")
    code, out, _ = await cli("jobs", "get", job_id)
    assert code == 0 and "id:" in out and "QUEUED" in out and "mail" in out

    listed = await cli.json("jobs", "list", "--queue", "mail")
    assert [j["id"] for j in listed] == [job_id]
    code, out, _ = await cli("jobs", "list")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "QUEUE", "KIND", "STATE"] and len(lines) == 3
    assert await cli.json("jobs", "list", "--state", "scheduled", "--limit", "5") != []
    assert await cli.json("jobs", "list", "--state", "running") == []

    code, out, _ = await cli("jobs", "cancel", job_id)
    assert (code, out.strip()) == (0, f"{job_id}: cancelled")
    assert await db.fetchval(
        "SELECT state FROM jobqueue.jobs WHERE id = $1", uuid.UUID(job_id)
    ) == ("cancelled")
    code, out, err = await cli("jobs", "cancel", job_id)
    assert code == 1 and out == ""
    assert err.startswith("error: FAILED_PRECONDITION: ") and "[JOB_TERMINAL]" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


async def test_errors_are_one_line_with_code_and_reason(cli: Cli) -> None:
    code, _, err = await cli("jobs", "get", str(uuid.uuid4()))
    assert code == 1 and "NOT_FOUND" in err and "[JOB_NOT_FOUND]" in err
    code, _, err = await cli("jobs", "get", "not-a-uuid")
    assert code == 1 and "INVALID_ARGUMENT" in err and "[MALFORMED_ID]" in err
    code, _, err = await cli("jobs", "enqueue", "Bad Kind")
    assert code == 1 and "INVALID_ARGUMENT" in err
    code, _, err = await cli("jobs", "enqueue", "k", "--payload", "[1]")
    assert code == 2 and "JSON object" in err
    code, _, err = await cli("dlq", "show", str(uuid.uuid4()))
    assert code == 1 and "[DEAD_LETTER_NOT_FOUND]" in err
    code, _, err = await cli("queues", "show", "ghost")
    assert code == 1 and "NOT_FOUND" in err and "[QUEUE_NOT_FOUND]" in err
    code, _, err = await cli("dlq", "purge")  # no filter, no --all: refused before any call
    assert code == 2 and "--all" in err
    code, _, err = await run_cli("queues", "list", "--address", "127.0.0.1:1")
    assert code == 1 and err.startswith("error: UNAVAILABLE")


async def test_dlq_list_show_stats(cli: Cli, db: asyncpg.Connection) -> None:
    ids = [
        await seed_dead_letter(
            db,
            queue=("mail", "billing")[i % 2],
            kind=("send", "charge")[i % 2],
            failed_at=T0 + timedelta(minutes=i),
        )
        for i in range(7)
    ]
    want = [str(r["job_id"]) for r in await db.fetch(
        "SELECT job_id FROM jobqueue.dead_letters ORDER BY failed_at DESC, job_id DESC"
    )]  # fmt: skip
    listed = await cli.json("dlq", "list")
    assert [d["job_id"] for d in listed] == want
    assert [d["job_id"] for d in await cli.json("dlq", "list", "--limit", "3")] == want[:3]
    mail = await cli.json("dlq", "list", "--queue", "mail")
    assert {d["job_id"] for d in mail} == {str(i) for i in ids[0::2]}
    cut = (T0 + timedelta(minutes=3)).isoformat()
    before = await cli.json("dlq", "list", "--failed-before", cut)
    assert {d["job_id"] for d in before} == {str(i) for i in ids[:3]}
    after = await cli.json("dlq", "list", "--failed-after", cut, "--kind", "charge")
    assert {d["job_id"] for d in after} == {str(ids[3]), str(ids[5])}
    assert await cli.json("dlq", "list", "--failed-after", "1m") == []  # T0 is hours ago
    code, out, _ = await cli("dlq", "list")
    assert out.splitlines()[0].split()[:3] == ["JOB", "ID", "QUEUE"] and len(out.splitlines()) == 8

    shown = await cli.json("dlq", "show", str(ids[0]))
    assert [e["message"] for e in shown["errors"]] == ["boom 1", "boom 2", "boom 3"]
    code, out, _ = await cli("dlq", "show", str(ids[0]))
    assert code == 0 and "attempts:" in out and "boom 2" in out and "errors:" in out

    stats = await cli.json("dlq", "stats")
    assert stats["total"] == 7
    assert {c["name"]: c["count"] for c in stats["by_queue"]} == {"mail": 4, "billing": 3}
    assert {c["name"]: c["count"] for c in stats["by_kind"]} == {"send": 4, "charge": 3}
    code, out, _ = await cli("dlq", "stats", "--queue", "billing")
    assert code == 0 and "total:" in out and "billing" in out and "mail" not in out


async def test_dlq_requeue_and_delete_one(cli: Cli, db: asyncpg.Connection) -> None:
    a, b = await seed_dead_letter(db, queue="mail"), await seed_dead_letter(db)
    job = await cli.json("dlq", "requeue", str(a))
    assert (job["id"], job["state"], job["attempt"]) == (str(a), "JOB_STATE_QUEUED", 0)
    code, out, _ = await cli("dlq", "delete", str(b))
    assert (code, out.strip()) == (0, f"deleted {b}")
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 0
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE id = $1", b) == 0
    code, _, err = await cli("dlq", "requeue", str(a))
    assert code == 1 and "[DEAD_LETTER_NOT_FOUND]" in err


async def test_dlq_bulk_requeue_dry_run_confirm_and_progress(
    cli: Cli, store: Store, db: asyncpg.Connection
) -> None:
    for i in range(23):
        await seed_dead_letter(db, queue=("mail", "billing")[i % 3 == 0], failed_at=T0)
    want = await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters WHERE queue = 'mail'")
    dry = await cli.json("dlq", "requeue", "--queue", "mail", "--dry-run")
    assert dry == {"count": want, "dry_run": True}
    code, out, _ = await cli("dlq", "requeue", "--queue", "mail", "--dry-run")
    assert out.strip() == f"would requeue {want} dead letter(s) (queue=mail)"
    # No answer (or "n") changes nothing.
    code, out, err = await cli("dlq", "requeue", "--queue", "mail", stdin="n\n")
    assert code == 1 and f"requeue {want} dead letter(s) (queue=mail)? [y/N]" in err
    assert "aborted" in err
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 23
    code, out, err = await cli("dlq", "requeue", "--queue", "mail", "--chunk", "4", stdin="y\n")
    assert code == 0, err
    assert out.strip() == f"requeued {want} dead letter(s) (queue=mail)"
    steps = [line for line in err.splitlines() if line.startswith("requeue [")]
    assert len(steps) == -(-want // 4) and steps[-1].endswith(f"{want}/{want}")
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters WHERE queue = 'mail'") == 0
    n = await db.fetchval("SELECT count(*) FROM jobqueue.jobs WHERE state = 'queued'")
    assert n == want
    # --all with --yes: the rest, no prompt.
    rest = await cli.json("dlq", "requeue", "--all", "--yes")
    assert rest == {"count": 23 - want, "dry_run": False}
    code, out, _ = await cli("dlq", "requeue", "--all", "--yes")
    assert (code, out.strip()) == (0, "nothing to do")


async def test_dlq_purge_by_age(cli: Cli, db: asyncpg.Connection) -> None:
    for i in range(12):
        await seed_dead_letter(db, failed_at=T0 + timedelta(minutes=i))
    cut = (T0 + timedelta(minutes=8)).isoformat()
    dry = await cli.json("dlq", "purge", "--failed-before", cut, "--dry-run")
    assert dry == {"count": 8, "dry_run": True}
    code, _, err = await cli("dlq", "purge", "--failed-before", cut)  # stdin closed: no
    assert code == 1 and "aborted" in err
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 12
    done = await cli.json("dlq", "purge", "--failed-before", cut, "--yes", "--chunk", "3")
    assert done == {"count": 8, "dry_run": False}
    assert await db.fetchval("SELECT count(*) FROM jobqueue.dead_letters") == 4
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs") == 4


async def test_queues_list_show_pause_resume(cli: Cli, db: asyncpg.Connection) -> None:
    for state in ("queued", "queued", "running", "succeeded"):
        await seed_job(db, queue="mail", state=state)
    await seed_job(db, queue="billing", state="failed")
    listed = await cli.json("queues", "list")
    assert [q["name"] for q in listed] == ["billing", "mail"]
    assert listed[1]["counts"] == {
        "queued": 2, "scheduled": 0, "running": 1, "retrying": 0, "succeeded": 1, "failed": 0,
        "cancelled": 0,
    }  # fmt: skip
    code, out, _ = await cli("queues", "list")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "PAUSED", "QUEUED", "SCHEDULED", "RUNNING", "RETRYING",
                              "SUCCEEDED", "FAILED", "CANCELLED"]  # fmt: skip
    assert rows[1].split() == ["mail", "no", "2", "0", "1", "0", "1", "0", "0"]

    code, out, _ = await cli("queues", "pause", "mail")
    assert code == 0 and out.startswith("paused mail") and "yes, since" in out
    assert await db.fetchval("SELECT paused FROM jobqueue.queues WHERE name = 'mail'") is True
    shown = await cli.json("queues", "show", "mail")
    assert shown["paused"] is True and shown["counts"]["queued"] == 2
    pre = await cli.json("queues", "pause", "not-yet")  # operators may pre-pause
    assert pre["paused"] is True
    code, out, _ = await cli("queues", "resume", "mail")
    assert code == 0 and out.startswith("resumed mail") and "paused:" in out
    assert await db.fetchval("SELECT paused FROM jobqueue.queues WHERE name = 'mail'") is False
    code, out, _ = await cli("queues", "show", "billing")
    assert code == 0 and "failed:" in out and "paused:" in out and "no" in out


async def test_queues_limit_sets_shows_and_clears(cli: Cli, db: asyncpg.Connection) -> None:
    code, out, _ = await cli("queues", "limit", "exports", "--key-max-running", "3", "--rate", "50")
    assert code == 0 and out.startswith("limits of exports set")
    assert "max 3 running per key, 50/s (burst 50)" in out
    row = await db.fetchrow("SELECT * FROM jobqueue.queue_limits WHERE queue = 'exports'")
    assert (row["key_max_running"], row["rate"], row["burst"]) == (3, 50.0, 50.0)
    shown = await cli.json("queues", "show", "exports", "--by-key")
    assert {k: v for k, v in shown["limits"].items() if v} == {
        "key_max_running": 3, "rate": 50.0, "burst": 50.0
    }  # fmt: skip
    code, _, err = await cli("queues", "limit", "exports", "--burst", "5")  # burst needs a rate
    assert code != 0 and "burst" in err
    code, out, _ = await cli("queues", "limit", "exports", "--clear")
    assert code == 0 and out.startswith("limits of exports cleared")
    assert await db.fetchval("SELECT count(*) FROM jobqueue.queue_limits") == 0


async def test_queues_limit_kind_sets_shows_and_clears(cli: Cli, db: asyncpg.Connection) -> None:
    code, out, _ = await cli("queues", "limit", "exports", "--kind", "pdf", "--max-running", "2")
    assert code == 0 and out.startswith("limits of kind pdf in exports set")
    assert "limits[kind pdf]:" in out and "max 2 running" in out
    row = await db.fetchrow("SELECT * FROM jobqueue.kind_limits WHERE queue = 'exports'")
    assert (row["kind"], row["max_running"]) == ("pdf", 2)
    shown = await cli.json("queues", "show", "exports")
    assert "limits" not in shown  # the queue's own: none
    ((kind, lim),) = [(k["kind"], k["limits"]) for k in shown["kind_limits"]]
    assert (kind, {k: v for k, v in lim.items() if v}) == ("pdf", {"max_running": 2})
    code, _, err = await cli("queues", "limit", "exports", "--kind", "PDF!", "--max-running", "1")
    assert code != 0 and "kind" in err
    code, out, _ = await cli("queues", "limit", "exports", "--kind", "pdf", "--clear")
    assert code == 0 and out.startswith("limits of kind pdf in exports cleared")
    assert await db.fetchval("SELECT count(*) FROM jobqueue.queue_limits") == 0
