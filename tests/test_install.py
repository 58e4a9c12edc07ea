"""The SDK installs on its own: `pip install jobqueue-grpc` is the client, the worker SDK and the
admin CLI over gRPC; `pip install 'jobqueue-grpc[server]'` adds what serving needs.

The fast tests check the import chains and pyproject. The slow one builds a fresh venv with a real
`pip install .` (once per session; the pip cache makes it quick) and drives a real server from it.
Where the package index cannot be reached it skips, saying so, except under CI=true, where it
fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import uuid
from pathlib import Path

import asyncpg
import pytest

from jobqueue_grpc.server import JobQueueServer
from tests.test_clients import run

ROOT = Path(__file__).resolve().parent.parent
SERVER_MODULES = {
    "asyncpg",
    "pgserver",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "connectrpc",
    "uvicorn",
}
SERVER_DISTS = {
    "asyncpg",
    "pgserver",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "prometheus-client",
    "grpcio-health-checking",
    "grpcio-reflection",
    "connectrpc",
    "uvicorn",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-grpc",
}
NEEDS_EXTRA = "jobqueue-grpc {} needs the server extra: pip install 'jobqueue-grpc[server]'\n"
SDK_IMPORTS = "import jobqueue_grpc, jobqueue_grpc.client, jobqueue_grpc.worker, jobqueue_grpc.cli"
LOADED = f"""
{SDK_IMPORTS}
import sys
print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(SERVER_MODULES)!r}
             or m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation"))))
"""
PIP_TIMEOUT = 600
# pip's words when the index cannot be reached (as opposed to a resolution or build error).
UNREACHABLE = (
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Max retries exceeded",
    "Could not fetch URL",
)


def dist_name(requirement: str) -> str:
    name = re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


# -- fast ---------------------------------------------------------------------------------------


def test_importing_the_sdk_and_the_cli_loads_nothing_of_the_server() -> None:
    r = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "[]"), r.stderr


def test_base_dependencies_are_the_sdk_and_the_server_extra_adds_the_rest() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {dist_name(d) for d in project["dependencies"]}
    extras = project["optional-dependencies"]
    server = {dist_name(d) for d in extras["server"]}
    assert base == {
        "grpcio",
        "protobuf",
        "grpcio-status",
        "googleapis-common-protos",
        "opentelemetry-api",  # the API only: the SDK and exporters are the server's
    }
    assert not base & SERVER_DISTS
    assert {"asyncpg", "pgserver", "pydantic-settings", "prometheus-client"} <= server
    assert {"grpcio-health-checking", "grpcio-reflection"} <= server
    assert {"opentelemetry-sdk", "opentelemetry-instrumentation-grpc"} <= server
    # A contributor's `pip install -e '.[dev]'` still runs the tests, which start servers.
    assert "jobqueue-grpc[server]" in extras["dev"]
    assert "'.[server,dev]'" in (ROOT / "Makefile").read_text()


BLOCK_SERVER = """
import sys
from jobqueue_grpc.cli import main

class NotInstalled:  # as if only `pip install jobqueue-grpc` had run
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.exit(main([{command!r}, "--database-url", "postgresql://127.0.0.1:1/none"]))
"""


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_server_commands_without_the_extra_say_how_to_get_it(command: str) -> None:
    blocked = sorted(SERVER_MODULES | {"grpc_health", "grpc_reflection"})
    code = BLOCK_SERVER.format(blocked=blocked, command=command)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", NEEDS_EXTRA.format(command))


# -- slow: a real `pip install .` into a fresh venv ---------------------------------------------


@pytest.fixture(scope="session")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding `pip install .` of this checkout; returns its bin directory."""
    # Install from a copy, as the Dockerfile does: an in-tree build would leave build/ behind.
    src = tmp_path_factory.mktemp("sdk-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "jobqueue_grpc",
        src / "jobqueue_grpc",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    venv = tmp_path_factory.mktemp("sdk-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    if r.returncode != 0:
        out = (r.stdout + r.stderr).strip()
        if os.environ.get("CI") != "true" and any(s in out for s in UNREACHABLE):
            pytest.skip(f"the package index is unreachable, so no fresh venv: {out[-500:]}")
        pytest.fail(f"pip install . failed ({r.returncode}):\n{out[-3000:]}")
    return venv / "bin"


WORKER_APP = """
import os
import sys

from jobqueue_grpc import JobContext, Worker

worker = Worker(queues=[os.environ["SDK_QUEUE"]], concurrency=1)


@worker.handler("sdk_install")
async def handle(ctx: JobContext) -> dict[str, object]:
    worker.stop()  # one job, then a graceful stop that reports it
    return {"n": ctx.payload["n"], "python": sys.executable}
"""


@pytest.mark.slow
@pytest.mark.timeout(PIP_TIMEOUT + 120)
def test_fresh_sdk_install_has_no_server_dependencies(sdk_venv: Path) -> None:
    r = subprocess.run(
        [str(sdk_venv / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = {dist_name(d["name"]) for d in json.loads(r.stdout)}
    assert "jobqueue-grpc" in installed and "grpcio" in installed
    assert not installed & SERVER_DISTS, sorted(installed & SERVER_DISTS)


@pytest.mark.slow
@pytest.mark.timeout(PIP_TIMEOUT + 120)
async def test_fresh_sdk_install_enqueues_works_and_inspects_against_a_server(
    sdk_venv: Path, server: JobQueueServer, db: asyncpg.Connection, tmp_path: Path
) -> None:
    python, cli = sdk_venv / "python", sdk_venv / "jobqueue-grpc"
    address = f"127.0.0.1:{server.port}"
    queue = "sdk-" + uuid.uuid4().hex[:12]

    code, out = await run(python, "-c", LOADED, cwd=tmp_path)
    assert (code, out.strip()) == (0, "[]"), out

    # The client.
    enqueue = textwrap.dedent(f"""
        from jobqueue_grpc import Client
        with Client({address!r}) as c:
            print(c.enqueue("sdk_install", {{"n": 7}}, queue={queue!r}).job.id)
    """)
    code, out = await run(python, "-c", enqueue, cwd=tmp_path)
    assert code == 0, out
    job_id = out.strip()
    row = await db.fetchrow("SELECT queue FROM jobqueue.jobs WHERE id = $1", uuid.UUID(job_id))
    assert row is not None and row["queue"] == queue

    # The worker SDK, through the CLI's `worker` command.
    (tmp_path / "sdk_app.py").write_text(WORKER_APP)
    code, out = await run(
        cli,
        "worker",
        "sdk_app:worker",
        "--address",
        address,
        cwd=tmp_path,
        env={"SDK_QUEUE": queue},
        limit=60,
    )
    assert code == 0, out
    row = await db.fetchrow(
        "SELECT state, result FROM jobqueue.jobs WHERE id = $1", uuid.UUID(job_id)
    )
    assert row is not None and row["state"] == "succeeded"
    assert json.loads(row["result"]) == {"n": 7, "python": str(python)}

    # The admin CLI, and a refusal's details (google.rpc) without the server's packages.
    code, out = await run(cli, "jobs", "get", job_id, "--address", address, "--json")
    assert code == 0, out
    assert json.loads(out)["state"] == "JOB_STATE_SUCCEEDED"
    code, out = await run(cli, "jobs", "get", "not-a-uuid", "--address", address)
    assert code != 0 and "INVALID_ARGUMENT" in out and "MALFORMED_ID" in out, out
    assert "Traceback" not in out

    # The server's commands say what to install, in one line.
    for command in ("serve", "migrate"):
        code, out = await run(cli, command, cwd=tmp_path)
        assert (code, out) == (2, NEEDS_EXTRA.format(command))
