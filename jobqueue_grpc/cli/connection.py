"""How the admin CLI reaches a server: the connection flags and the one function that dials.

Every admin command takes these flags; `channel` is the only place a channel is built, so
credentials (tokens, TLS) belong here too.
"""

from __future__ import annotations

import argparse
import os

import grpc

DEFAULT_ADDRESS = "localhost:50051"


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=os.environ.get("JOBQUEUE_ADDRESS", DEFAULT_ADDRESS),
        help=f"server host:port (default {DEFAULT_ADDRESS}); env JOBQUEUE_ADDRESS",
    )


def channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to the server `args` name; the caller closes it."""
    return grpc.insecure_channel(args.address)
