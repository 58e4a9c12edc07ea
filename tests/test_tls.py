"""TLS and mutual TLS: real handshakes with certificates made here."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobqueue_grpc import TLS, AsyncClient, JobContext, Worker
from jobqueue_grpc.config import Settings
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.tls import channel_credentials
from tests.conftest import ServerFactory
from tests.support import run_cli, wait_until


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pem(path / "cert.pem", path / "key.pem")


class CA:
    """A throwaway certificate authority that signs server and client certificates."""

    def __init__(self, name: str, where: Path) -> None:
        self.where = where / name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _write(self.where, self.cert, self.key)

    def issue(self, cn: str, *, server: bool) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return _write(self.where / cn, builder.sign(self.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: CA
    server: Pem
    client: Pem
    rogue_client: Pem  # signed by a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca, rogue = CA("jobqueue-test-ca", where), CA("rogue-ca", where)
    return Pki(
        ca,
        ca.issue("localhost", server=True),
        ca.issue("worker-1", server=False),
        rogue.issue("intruder", server=False),
    )


async def _healthy(channel: grpc.aio.Channel) -> bool:
    resp = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    await job_service_pb2_grpc.JobServiceStub(channel).ListJobs(
        job_service_pb2.ListJobsRequest(), timeout=10
    )
    return resp.status == health_pb2.HealthCheckResponse.SERVING


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return err.value.code()


async def test_tls_handshake_succeeds_with_the_ca(make_server: ServerFactory, pki: Pki) -> None:
    srv = await make_server(tls_cert=pki.server.cert, tls_key=pki.server.key)
    creds = channel_credentials(ca=pki.ca.pem.cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        assert await _healthy(ch)
    async with grpc.aio.secure_channel(f"localhost:{srv.port}", creds) as ch:
        assert await _healthy(ch)


async def test_plaintext_client_is_refused_by_a_tls_server(
    make_server: ServerFactory, pki: Pki
) -> None:
    srv = await make_server(tls_cert=pki.server.cert, tls_key=pki.server.key)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_client_that_does_not_trust_the_server_is_refused(
    make_server: ServerFactory, pki: Pki, tmp_path: Path
) -> None:
    srv = await make_server(tls_cert=pki.server.cert, tls_key=pki.server.key)
    other = CA("other-ca", tmp_path)
    creds = channel_credentials(ca=other.pem.cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_client_without_a_certificate(
    make_server: ServerFactory, pki: Pki
) -> None:
    srv = await make_server(
        tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.pem.cert
    )
    creds = channel_credentials(ca=pki.ca.pem.cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_certificate_from_another_ca(
    make_server: ServerFactory, pki: Pki
) -> None:
    srv = await make_server(
        tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.pem.cert
    )
    creds = channel_credentials(
        ca=pki.ca.pem.cert, cert=pki.rogue_client.cert, key=pki.rogue_client.key
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_a_client_certificate_from_the_ca(
    make_server: ServerFactory, pki: Pki
) -> None:
    srv = await make_server(
        tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.pem.cert
    )
    creds = channel_credentials(ca=pki.ca.pem.cert, cert=pki.client.cert, key=pki.client.key)
    async with grpc.aio.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        assert await _healthy(ch)


async def test_tls_and_tokens_together(make_server: ServerFactory, pki: Pki) -> None:
    srv = await make_server(
        tls_cert=pki.server.cert, tls_key=pki.server.key, auth_tokens="producer:tls-and-token"
    )
    creds = channel_credentials(ca=pki.ca.pem.cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListJobs(job_service_pb2.ListJobsRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        md = [("authorization", "Bearer tls-and-token")]
        await stub.ListJobs(job_service_pb2.ListJobsRequest(), metadata=md, timeout=10)


@pytest.mark.parametrize(
    "fields",
    [
        {"tls_cert": "cert.pem"},
        {"tls_key": "key.pem"},
        {"tls_client_ca": "ca.pem"},
    ],
)
def test_half_configured_tls_is_refused_at_start(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Settings(**fields)  # type: ignore[arg-type]


def test_client_certificate_needs_its_key(pki: Pki) -> None:
    with pytest.raises(ValueError):
        channel_credentials(ca=pki.ca.pem.cert, cert=pki.client.cert)


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_cli(*args, env={**os.environ, **(env or {})})


async def test_sdk_worker_and_cli_with_tokens_over_mtls(
    make_server: ServerFactory, pki: Pki, tmp_path: Path
) -> None:
    """The issue's 'done when': tokens + mTLS; authorised calls served, the rest refused."""
    srv = await make_server(
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.pem.cert,
        auth_tokens="producer:p-tok,worker:w-tok,admin:a-tok",
    )
    address = f"localhost:{srv.port}"
    tls = TLS(ca=pki.ca.pem.cert, cert=pki.client.cert, key=pki.client.key)
    async with AsyncClient(address, token="p-tok", tls=tls) as client:
        made = await client.enqueue("greet", {"name": "ada"})
        worker = Worker(address, token="w-tok", tls=tls)

        @worker.handler("greet")
        async def greet(ctx: JobContext) -> dict[str, object]:
            return {"hello": ctx.payload["name"]}

        task = asyncio.create_task(worker.run())
        try:

            async def done() -> bool:
                job = await client.get_job(made.job.id)
                return bool(job.state == job_pb2.JOB_STATE_SUCCEEDED)

            await wait_until(done, within=15, interval=0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
        # A worker token cannot enqueue, a producer token cannot lease.
        async with AsyncClient(address, token="w-tok", tls=tls) as wrong:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await wrong.enqueue("greet", {})
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    token_file = tmp_path / "admin-token"
    token_file.write_text("a-tok\n")
    tls_flags = ["--tls-ca", str(pki.ca.pem.cert), "--tls-cert", str(pki.client.cert)]
    tls_flags += ["--tls-key", str(pki.client.key)]
    code, out, err = await _cli(
        "jobs", "get", made.job.id, "--json", "--address", address, "--token-file",
        str(token_file), *tls_flags,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["result"] == {"hello": "ada"}
    # The token from the environment works too; no token at all is refused.
    code, out, err = await _cli(
        "queues", "list", "--json", "--address", address, *tls_flags,
        env={"JOBQUEUE_TOKEN": "a-tok"},
    )  # fmt: skip
    assert code == 0, err
    code, _, err = await _cli("queues", "list", "--address", address, *tls_flags)
    assert code == 1 and "UNAUTHENTICATED" in err
    # Without a client certificate the handshake itself fails.
    code, _, err = await _cli(
        "queues", "list", "--address", address, "--tls-ca", str(pki.ca.pem.cert),
        env={"JOBQUEUE_TOKEN": "a-tok"},
    )  # fmt: skip
    assert code == 1 and "UNAVAILABLE" in err
