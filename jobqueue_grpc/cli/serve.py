"""`serve` and `migrate`. Flags beat JOBQUEUE_* environment variables, which beat defaults."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from jobqueue_grpc.logs import setup_logging

if TYPE_CHECKING:
    from jobqueue_grpc.config import Settings

# What `pip install 'jobqueue-grpc[server]'` adds to the SDK install. The server's modules are
# imported inside the commands, so the client, the worker and the admin CLI never load them.
SERVER_MODULES = (
    "asyncpg",
    "pgserver",
    "pydantic_settings",
    "prometheus_client",
    "grpc_health",
    "grpc_reflection",
    "connectrpc",
    "uvicorn",
)

# flag -> Settings field; each flag's env twin is JOBQUEUE_<FIELD>.
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--host", "host", str, "address to listen on (127.0.0.1)"),
    ("--port", "port", int, "gRPC port (50051)"),
    ("--database-url", "database_url", str, "PostgreSQL URL; unset starts an embedded one"),
    ("--data-dir", "data_dir", str, "embedded PostgreSQL's home (~/.local/share/jobqueue-grpc)"),
    ("--metrics-port", "metrics_port", int, "Prometheus /metrics port; 0 turns it off (9464)"),
    (
        "--http-port",
        "http_port",
        int,
        "Connect/gRPC-Web/JSON + dashboard port; 0 turns it off (8080)",
    ),
    (
        "--http-cors-origins",
        "http_cors_origins",
        str,
        "origins (comma-separated, or *) allowed to call the HTTP port cross-origin (none)",
    ),
    ("--grace-period", "grace_period", float, "seconds to drain on SIGTERM (10)"),
    (
        "--processes",
        "processes",
        int,
        "server processes sharing the gRPC port, one event loop each (1)",
    ),
    ("--metrics-host", "metrics_host", str, "address /metrics binds to (127.0.0.1)"),
    ("--log-format", "log_format", str, "json or text (text)"),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING, ERROR (INFO)"),
    # Tokens come from a file or JOBQUEUE_AUTH_TOKENS, never a flag: argv is visible in ps.
    ("--auth-tokens-file", "auth_tokens_file", str, "file of role:token lines; turns auth on"),
    ("--tls-cert", "tls_cert", str, "PEM server certificate; with --tls-key turns TLS on"),
    ("--tls-key", "tls_key", str, "PEM private key of --tls-cert"),
    ("--tls-client-ca", "tls_client_ca", str, "PEM CA; clients must present a cert it signed"),
]


def _add_flags(p: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    for flag, field, typ, help_ in _FLAGS:
        if only is None or field in only:
            p.add_argument(
                flag,
                dest=field,
                type=typ,
                default=None,
                help=f"{help_}; env JOBQUEUE_{field.upper()}",
            )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a module set to None
        return False


def server_extra_missing(command: str) -> bool:
    """True, after one line on stderr, when the server extra is not installed."""
    if all(_installed(m) for m in SERVER_MODULES):
        return False
    print(
        f"jobqueue-grpc {command} needs the server extra: pip install 'jobqueue-grpc[server]'",
        file=sys.stderr,
    )
    return True


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    from jobqueue_grpc.config import Settings

    given = {f: getattr(args, f) for _, f, _, _ in _FLAGS if getattr(args, f, None) is not None}
    return Settings(**given, **extra)


def _serve(args: argparse.Namespace) -> int:
    if server_extra_missing("serve"):
        return 2
    from jobqueue_grpc.server import run

    extra = {"reflection": False} if args.no_reflection else {}
    settings = settings_from(args, **extra)
    setup_logging(settings)
    return asyncio.run(run(settings))


def _migrate(args: argparse.Namespace) -> int:
    if server_extra_missing("migrate"):
        return 2
    from jobqueue_grpc.store import Store

    settings = settings_from(args)
    setup_logging(settings)
    if settings.database_url is None:
        raise SystemExit("migrate needs --database-url or JOBQUEUE_DATABASE_URL")

    async def go() -> int:
        store = await Store.connect(settings.database_url or "", min_size=1, max_size=1)
        try:
            applied = await store.migrate()
        finally:
            await store.close()
        print(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is current")
        return 0

    return asyncio.run(go())


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gRPC server")
    _add_flags(p)
    p.add_argument("--no-reflection", action="store_true", help="turn server reflection off")
    p.set_defaults(func=_serve)
    m = sub.add_parser("migrate", help="apply schema migrations to a database and exit")
    m.add_argument(
        "--database-url",
        dest="database_url",
        default=None,
        help="PostgreSQL URL to migrate (required; serve migrates its embedded PostgreSQL "
        "itself); env JOBQUEUE_DATABASE_URL",
    )
    m.set_defaults(func=_migrate)
