"""The ceiling of Python gRPC on this machine: a grpc.aio server whose Enqueue returns at once.

No database, no validation, no interceptors: what any unary call costs before our code runs.
Drive it with a compiled client, from the repository root:

    .venv/bin/python bench/bare_grpc.py 50777 &        # a second one on the same port shares it
    ghz --insecure --proto proto/jobqueue/v1/job_service.proto -i proto \\
        --call jobqueue.v1.JobService.Enqueue -d '{"kind":"x"}' -c 16 -n 20000 \\
        --connections 8 127.0.0.1:50777

(`go install github.com/bojand/ghz/cmd/ghz@latest` installs ghz.) On the 2-core development
machine: 1,500-1,650 calls/s from one process, 2,270 from two (see the README, Benchmarks).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg


class Bare(jsg.JobServiceServicer):
    async def Enqueue(  # type: ignore[override]
        self, request: js.EnqueueRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> js.EnqueueResponse:
        return js.EnqueueResponse(created=True)


async def main(port: int) -> None:
    server = grpc.aio.server()  # SO_REUSEPORT is on by default: processes can share the port
    jsg.add_JobServiceServicer_to_server(Bare(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"bare grpc.aio server on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50777))
