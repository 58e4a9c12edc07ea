"""`jobqueue-grpc worker MODULE:ATTR`: runs a Worker defined in your code.

ATTR names a `Worker`, or a function returning one. `--address` and `--concurrency` override
what the code set; SIGTERM/SIGINT stop it gracefully.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from jobqueue_grpc.worker import Worker


def load(spec: str) -> Worker:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"expected MODULE:ATTR, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    obj: Any = getattr(importlib.import_module(module_name), attr)
    if callable(obj) and not isinstance(obj, Worker):
        obj = obj()
    if not isinstance(obj, Worker):
        raise SystemExit(f"{spec} is not a jobqueue_grpc.Worker")
    return obj


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("JOBQUEUE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    worker = load(args.spec)
    if args.address:
        worker.address = args.address
    if args.concurrency:
        worker.concurrency = args.concurrency
    worker.run_sync()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a Worker from your code: MODULE:ATTR")
    p.add_argument("spec", help="module:attribute naming a Worker (or a function returning one)")
    p.add_argument("--address", default=os.environ.get("JOBQUEUE_ADDRESS"), help="server address")
    p.add_argument("--concurrency", type=int, default=None, help="jobs run at once")
    p.set_defaults(func=_run)
