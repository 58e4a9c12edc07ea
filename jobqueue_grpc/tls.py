"""TLS credentials from PEM files, for the server and for the SDK and CLI.

Server: certificate + key turn TLS on; a client CA on top requires every client to present a
certificate that CA signed (mutual TLS). Client: a CA to trust (else the system roots), and a
certificate + key when the server asks for one.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from jobqueue_grpc.config import Settings

PathLike = str | Path


def _read(path: PathLike | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None when TLS is off (plaintext, for a trusted network or a TLS-terminating proxy)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    key, cert = _read(settings.tls_key), _read(settings.tls_cert)
    assert key is not None and cert is not None
    ca = _read(settings.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(
    ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None
) -> grpc.ChannelCredentials:
    """Client side: trust `ca` (or the system roots); present cert/key for mutual TLS."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )
