"""Auth never fails open: a configuration that asks for auth (JOBQUEUE_AUTH_TOKENS set at all,
a tokens file given) and yields no token stops `serve` with one line, before it serves."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.support import free_port

EXE = str(Path(sys.executable).with_name("jobqueue-grpc"))


async def _serve(db_url: str, env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """Runs `serve` until it exits; (exit code, non-empty stderr lines). A server that starts
    instead prints its listening line: then it is stopped and the test fails."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    proc = await asyncio.create_subprocess_exec(
        EXE,
        "serve",
        "--database-url",
        db_url,
        "--port",
        str(free_port()),
        "--metrics-port",
        "0",
        *args,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out = await asyncio.wait_for(proc.stdout.readline(), 60)
        if b"listening" in out:
            raise AssertionError("the server started with auth off")
        code = await asyncio.wait_for(proc.wait(), 60)
        err = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "value",
    ["", "   ", "\n\n", "# tokens go here", " , ,"],
    ids=["empty", "blank", "newlines", "comment", "separators"],
)
async def test_auth_tokens_env_without_a_token_refuses_to_start(db_url: str, value: str) -> None:
    code, lines = await _serve(db_url, {"JOBQUEUE_AUTH_TOKENS": value})
    assert code == 1
    assert len(lines) == 1, lines
    assert "JOBQUEUE_AUTH_TOKENS: no tokens" in lines[0]


@pytest.mark.parametrize("content", ["", "# nothing yet\n", "\n  \n"])
async def test_a_tokens_file_without_a_token_refuses_to_start(
    db_url: str, tmp_path: Path, content: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    code, lines = await _serve(db_url, {}, "--auth-tokens-file", str(path))
    assert code == 1
    assert len(lines) == 1, lines
    assert "no tokens" in lines[0]


async def test_a_missing_or_bad_tokens_file_refuses_to_start(db_url: str, tmp_path: Path) -> None:
    code, lines = await _serve(db_url, {}, "--auth-tokens-file", str(tmp_path / "absent"))
    assert code == 1 and len(lines) == 1, lines
    bad = tmp_path / "bad"
    bad.write_text("tok-without-a-role\n")
    code, lines = await _serve(db_url, {"JOBQUEUE_AUTH_TOKENS_FILE": str(bad)})
    assert code == 1 and len(lines) == 1, lines
    assert "tok-without-a-role" not in lines[0]
