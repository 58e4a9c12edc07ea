"""How the admin CLI reaches a server: the connection flags and the one function that dials.

Every admin command takes these flags; `channel` is the only place a channel is built, so
credentials (tokens, TLS) belong here too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from jobqueue_grpc._channel import TLS, metadata

DEFAULT_ADDRESS = "localhost:50051"


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=os.environ.get("JOBQUEUE_ADDRESS", DEFAULT_ADDRESS),
        help=f"server host:port (default {DEFAULT_ADDRESS}); env JOBQUEUE_ADDRESS",
    )
    add_credential_args(p)


def add_credential_args(p: argparse.ArgumentParser) -> None:
    """--token-file and the TLS flags, shared by the admin commands and `worker`.

    There is no --token: a token on a command line is visible to every user through ps.
    """
    env = os.environ.get
    p.add_argument(
        "--token-file",
        default=env("JOBQUEUE_TOKEN_FILE"),
        help="file holding the bearer token; env JOBQUEUE_TOKEN_FILE, or the token itself in "
        "JOBQUEUE_TOKEN",
    )
    p.add_argument(
        "--tls", action="store_true", help="use TLS, trusting the system's CAs (or --tls-ca)"
    )
    p.add_argument(
        "--tls-ca",
        default=env("JOBQUEUE_TLS_CA"),
        help="PEM CA that signed the server's certificate (implies --tls); env JOBQUEUE_TLS_CA",
    )
    p.add_argument(
        "--tls-cert",
        default=env("JOBQUEUE_CLIENT_CERT"),
        help="PEM client certificate for mutual TLS; env JOBQUEUE_CLIENT_CERT",
    )
    p.add_argument(
        "--tls-key",
        default=env("JOBQUEUE_CLIENT_KEY"),
        help="PEM key of --tls-cert; env JOBQUEUE_CLIENT_KEY",
    )


def token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        return Path(args.token_file).read_text().strip() or None
    return os.environ.get("JOBQUEUE_TOKEN") or None


def tls(args: argparse.Namespace) -> TLS | None:
    ca, cert, key = (getattr(args, n, None) for n in ("tls_ca", "tls_cert", "tls_key"))
    if (cert is None) != (key is None):
        raise SystemExit("error: --tls-cert and --tls-key go together")
    if not (getattr(args, "tls", False) or ca or cert):
        return None
    return TLS(
        ca=Path(ca) if ca else None,
        cert=Path(cert) if cert else None,
        key=Path(key) if key else None,
    )


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, tok: str) -> None:
        self.md = metadata(tok)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        md = list(details.metadata or ()) + list(self.md)
        return continuation(details._replace(metadata=md), request)


def channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to the server `args` name; the caller closes it."""
    creds = tls(args)
    ch = (
        grpc.secure_channel(args.address, creds.credentials())
        if creds
        else grpc.insecure_channel(args.address)
    )
    tok = token(args)
    return grpc.intercept_channel(ch, _Bearer(tok)) if tok else ch
