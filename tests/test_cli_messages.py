"""What the CLI says to a newcomer: help that matches what the commands do, and a bad setting
reported in one line (exit 2) instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "jobqueue-grpc")
ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    return subprocess.run(
        [CLI, *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["serve"], {"JOBQUEUE_PORT": "abc"}, ["port (JOBQUEUE_PORT)"]),
        (["serve", "--port", "70000"], {}, ["port (JOBQUEUE_PORT)"]),
        (
            ["serve"],
            {"JOBQUEUE_BACKOFF_BASE": "10", "JOBQUEUE_BACKOFF_CAP": "1"},
            ["backoff_cap must be >= backoff_base"],
        ),
        (["serve"], {"JOBQUEUE_LOG_LEVEL": "loud"}, ["log_level (JOBQUEUE_LOG_LEVEL)"]),
        (["serve", "--log-level", "loud"], {}, ["log_level (JOBQUEUE_LOG_LEVEL)"]),
        (["worker", "examples.worker:worker"], {"JOBQUEUE_LOG_LEVEL": "loud"}, ["log_level"]),
        (
            ["migrate", "--database-url", "postgresql://nowhere/x"],
            {"JOBQUEUE_DB_POOL_MIN": "x", "JOBQUEUE_GRACE_PERIOD": "-1"},
            ["db_pool_min (JOBQUEUE_DB_POOL_MIN)", "grace_period (JOBQUEUE_GRACE_PERIOD)"],
        ),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], names: list[str]
) -> None:
    r = cli(*args, **env)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"jobqueue-grpc {args[0]}: invalid configuration: "), lines[0]
    for name in names:
        assert name in lines[0]
    assert "Traceback" not in r.stderr


def test_a_bad_token_setting_is_not_echoed() -> None:
    r = cli("serve", JOBQUEUE_PORT="s3cret-not-a-port")
    assert r.returncode == 2, r
    assert "s3cret" not in r.stderr


def test_migrate_help_says_what_migrate_does() -> None:
    r = cli("migrate", "--help")
    assert r.returncode == 0, r
    text = " ".join(r.stdout.split())
    assert "unset starts an embedded" not in text
    assert "required" in text
    # ... and migrate indeed refuses to run without one.
    r = cli("migrate")
    assert r.returncode != 0 and "--database-url" in r.stderr


def test_top_level_help_lists_every_command() -> None:
    r = cli("--help")
    assert r.returncode == 0, r
    text = " ".join(r.stdout.split())
    assert "as they land" not in text
    for command in ("serve", "migrate", "worker", "jobs", "dlq", "queues", "schedules"):
        assert command in text.split("usage:")[1].split("options:")[0].replace("{", " ")
