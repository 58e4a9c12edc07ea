"""Bearer tokens and roles: every service x every role, missing and bad tokens, open probes."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jobqueue_grpc.api.auth import Role, load_credentials, parse_tokens, role_of
from jobqueue_grpc.config import Settings
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.server import JobQueueServer
from tests.conftest import ServerFactory
from tests.hardening import all_methods, call_empty
from tests.support import error_info

TOKENS = {
    Role.PRODUCER: "producer-token-0123456789",
    Role.WORKER: "worker-token-0123456789",
    Role.ADMIN: "admin-token-0123456789",
}
ENV_TOKENS = ",".join(f"{role.value}:{token}" for role, token in TOKENS.items())
# Which service each role may call; the matrix below checks every other pair is refused.
ALLOWED = {
    Role.PRODUCER: {"jobqueue.v1.JobService"},
    Role.WORKER: {"jobqueue.v1.WorkerService"},
    Role.ADMIN: {
        "jobqueue.v1.JobService",
        "jobqueue.v1.WorkerService",
        "jobqueue.v1.DeadLetterService",
        "jobqueue.v1.QueueService",
    },
}
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
METHODS = all_methods()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
async def secured(make_server: ServerFactory) -> JobQueueServer:
    return await make_server(auth_tokens=ENV_TOKENS)


@pytest.fixture
async def chan(secured: JobQueueServer) -> grpc.aio.Channel:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as ch:
        yield ch  # type: ignore[misc]


@pytest.mark.parametrize("role", list(Role), ids=[r.value for r in Role])
async def test_role_matrix(chan: grpc.aio.Channel, role: Role) -> None:
    """Every method of every service with this role's token."""
    wrong = []
    for service, method in METHODS:
        code = await call_empty(chan, method, bearer(TOKENS[role]))
        if service in ALLOWED[role]:
            # Past auth: whatever the method answers to an empty request, it is no auth refusal.
            ok = code not in AUTH_CODES
        else:
            ok = code == grpc.StatusCode.PERMISSION_DENIED
        if not ok:
            wrong.append(f"{service}/{method.name}: {code.name}")
    assert wrong == []


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        bearer("not-a-token"),
        bearer(TOKENS[Role.ADMIN] + "x"),
        bearer(TOKENS[Role.ADMIN][:-1]),
        [("authorization", TOKENS[Role.ADMIN])],  # no scheme
        [("authorization", f"Basic {TOKENS[Role.ADMIN]}")],
        [("authorization", "Bearer ")],
    ],
    ids=["missing", "unknown", "longer", "shorter", "no-scheme", "basic", "empty"],
)
async def test_missing_or_bad_token_is_unauthenticated(
    chan: grpc.aio.Channel, metadata: list[tuple[str, str]]
) -> None:
    """Every method of every service without a valid token."""
    codes = {f"{s}/{m.name}": (await call_empty(chan, m, metadata)).name for s, m in METHODS}
    assert set(codes.values()) == {"UNAUTHENTICATED"}, codes


async def test_refusals_carry_error_info(chan: grpc.aio.Channel) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(chan)
    req = job_service_pb2.GetJobRequest(id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetJob(req)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(missing.value).reason == "UNAUTHENTICATED"
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub.GetJob(req, metadata=bearer(TOKENS[Role.WORKER]))
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(wrong.value)
    assert info.reason == "PERMISSION_DENIED"
    assert info.domain == "jobqueue-grpc"
    # The message names the role, never the token.
    assert TOKENS[Role.WORKER] not in (wrong.value.details() or "")


async def test_refused_enqueue_writes_nothing(
    chan: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(chan)
    req = job_service_pb2.EnqueueRequest(kind="send_email")
    for md in ([], bearer("nope"), bearer(TOKENS[Role.WORKER])):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Enqueue(req, metadata=md)
        assert err.value.code() in AUTH_CODES
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs") == 0
    resp = await stub.Enqueue(req, metadata=bearer(TOKENS[Role.PRODUCER]))
    assert resp.created
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs") == 1


async def test_scheme_is_case_insensitive(chan: grpc.aio.Channel) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(chan)
    md = [("authorization", f"bearer {TOKENS[Role.PRODUCER]}")]
    resp = await stub.ListJobs(job_service_pb2.ListJobsRequest(), metadata=md)
    assert list(resp.jobs) == []


async def test_health_is_open_without_a_token(chan: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(chan)
    for service in ("", "jobqueue.v1.JobService", "jobqueue.v1.WorkerService"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_is_open_without_a_token(chan: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(chan)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    names: set[str] = set()
    async for resp in stub.ServerReflectionInfo(iter([req])):
        names |= {s.name for s in resp.list_services_response.service}
    assert "jobqueue.v1.JobService" in names


async def test_tokens_from_a_file(make_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        "# role:token, one a line\n"
        f"producer:{TOKENS[Role.PRODUCER]}\n\n"
        f"  admin:{TOKENS[Role.ADMIN]}   # the operators\n"
    )
    srv = await make_server(auth_tokens_file=path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        req = job_service_pb2.ListJobsRequest()
        await stub.ListJobs(req, metadata=bearer(TOKENS[Role.PRODUCER]))
        await stub.ListJobs(req, metadata=bearer(TOKENS[Role.ADMIN]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListJobs(req, metadata=bearer(TOKENS[Role.WORKER]))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_without_tokens_auth_is_off(channel: grpc.aio.Channel) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    await stub.ListJobs(job_service_pb2.ListJobsRequest())


def test_token_parsing() -> None:
    creds = parse_tokens("producer:a, worker:b\nADMIN:c:with:colons # note\n", "test")
    assert [c.role for c in creds] == [Role.PRODUCER, Role.WORKER, Role.ADMIN]
    assert role_of("a", creds) is Role.PRODUCER
    assert role_of("c:with:colons", creds) is Role.ADMIN
    assert role_of("c", creds) is None
    assert role_of("", creds) is None


@pytest.mark.parametrize("text", ["reader:x", "just-a-token", "admin:"])
def test_bad_token_entries_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_tokens(text, "JOBQUEUE_AUTH_TOKENS")
    if ":" not in text:
        assert text not in str(err.value)


def test_an_empty_tokens_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="no tokens"):
        load_credentials(Settings(auth_tokens_file=path))


def test_tokens_never_appear_in_settings_repr() -> None:
    s = Settings(auth_tokens=ENV_TOKENS)
    assert TOKENS[Role.ADMIN] not in repr(s)
    assert TOKENS[Role.ADMIN] not in str(s.model_dump())
