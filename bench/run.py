"""jobqueue-grpc benchmarks: `make bench`. Prints a table and a JSON line.

Everything runs on this machine: a PostgreSQL with durable commits (synchronous_commit on,
fsync on), the real server (`jobqueue-grpc serve`) as a subprocess, load generator processes and
SDK worker processes. The load generators are a Go program (bench/loadgen, built once a run into
the run's temporary directory) when `go` is on PATH: a Python gRPC client spends as much CPU per
RPC as the server does and would take it from the server on a small machine. Without Go, or with
--python-load, the Python generators below (`python run.py _unary ...`) run instead; the JSON
records which ran ("load_generator": "go" or "python"). Figures:
  enqueue_unary_jobs_per_s    Enqueue RPCs, 16 concurrent (2 processes x 8)
  enqueue_batch_jobs_per_s    EnqueueBatch, 1,000 jobs a call, 4 concurrent
  end_to_end_jobs_per_s       200,000 queued no-op jobs burned down by SDK workers over Lease
  latency_ms p50/p95/p99      enqueue (the job's created_at, set in the inserting transaction)
                              to the worker's handler starting, at a steady modest rate
  latency_enqueue_to_claim_ms_p50  of those, created_at to started_at (the lease): 0 when the
                              jobs were handed off to the waiting worker in their insert
  server_rss_mb               the server's resident memory at the end (peak too)
  cpu_s                       per phase, CPU seconds of the server (all its processes), of the load
                              generator processes, to see what the load generator took from
                              the server; for end_to_end and flow also of the SDK worker
                              processes: "workers" while the jobs were burned down (resume to
                              the last job), "workers_total" from start to exit
  workers_us_per_job          per phase with workers, their CPU ("workers") per job, in us;
  workers_net_us_per_job      less what they spend idle ("workers_idle_per_s", measured for 2 s
                              after the last job) over the burn-down's time
  flow_jobs_per_s             phase `flow` (not in the default list): queued no-op jobs over
                              10,000 concurrency keys burned down by SDK workers, with a
                              per-key limit of 2 and a queue rate limit (--flow-rate)
  flow_claim_us_per_job       the flow-controlled claim timed alone (batches of 100 slots,
                              10,000 keys, per-key limit 2), microseconds per job leased;
  plain_claim_us_per_job      and the plain claim_jobs on the same number of jobs, for scale

--workers go runs the end_to_end and flow phases' workers as one Go process (bench/goworker, the
Go SDK's worker.Run; built into the run's temporary directory) with --worker-procs Lease streams
of --worker-concurrency each, instead of --worker-procs Python SDK processes; the latency phase
keeps the Python worker. The JSON records which ran ("workers").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobqueue_grpc.embedded import EmbeddedPostgres  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qs  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qsg  # noqa: E402

BIN = Path(sys.executable).parent

# The benchmark cluster's settings (bench/peers/run.py uses them too): durable commits.
PG_SETTINGS = {"synchronous_commit": "on", "fsync": "on", "shared_buffers": "256MB"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- load generators (each runs in its own process: `python run.py _unary ...`) ----------------
async def _unary(address: str, n: int, concurrency: int, queue: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = jsg.JobServiceStub(ch)
        left = n

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await stub.Enqueue(js.EnqueueRequest(queue=queue, kind="noop"))

        await asyncio.gather(*(one() for _ in range(concurrency)))


async def _batch(address: str, n: int, concurrency: int, queue: str, size: int = 1000) -> None:
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        stub = jsg.JobServiceStub(ch)
        req = js.EnqueueBatchRequest(
            jobs=[js.EnqueueRequest(queue=queue, kind="noop") for _ in range(size)]
        )
        left = n // size

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await stub.EnqueueBatch(req)

        await asyncio.gather(*(one() for _ in range(concurrency)))


async def _steady(address: str, rate: float, seconds: float, queue: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = jsg.JobServiceStub(ch)
        start = time.monotonic()
        tasks = []
        for i in range(int(rate * seconds)):
            at = start + i / rate
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            tasks.append(
                asyncio.ensure_future(stub.Enqueue(js.EnqueueRequest(queue=queue, kind="latency")))
            )
        await asyncio.gather(*tasks)


# -- orchestration ---------------------------------------------------------------------------------
def build_loadgen(out: Path) -> Path | None:
    """Builds bench/loadgen into `out`; None when `go` is not on PATH (Python generators run)."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = out / "loadgen"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=ROOT / "bench/loadgen", check=True)
    return binary


def build_goworker(out: Path) -> Path:
    """Builds bench/goworker (the Go SDK's worker, no-op handler) into `out`."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit("--workers go needs `go` on PATH")
    binary = out / "goworker"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=ROOT / "bench/goworker", check=True)
    return binary


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="jq-bench-"))
        self.pg = EmbeddedPostgres(
            self.tmp / "pg",
            settings={**PG_SETTINGS, **dict(kv.split("=", 1) for kv in args.pg_setting)},
        )
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.db_url = ""  # the current phase's database
        self.pg_url = ""
        self.results: dict[str, Any] = {}
        self.loadgen: Path | None = None
        self.goworker: Path | None = None
        self.load_cpu = 0.0  # CPU seconds (user + system) of this phase's load generator processes
        self.worker_cpu: dict[str, float] = {}  # this phase's SDK worker processes (see cpu_s)

    def start_server(self, database: str) -> None:
        """A fresh database and a fresh server for one phase, so phases do not skew each other
        (rows and autovacuum left behind by one phase would slow the next)."""
        asyncio.run(_create_database(self.pg_url, database))
        url = self.db_url = urlunsplit(urlsplit(self.pg_url)._replace(path="/" + database))
        env = {**os.environ, "JOBQUEUE_LOG_LEVEL": "WARNING"}
        self.server = subprocess.Popen(
            [
                str(BIN / "jobqueue-grpc"),
                "serve",
                "--database-url",
                url,
                "--port",
                str(self.port),
                "--metrics-port",
                "0",
                "--http-port",
                "0",
                "--grace-period",
                "2",
                "--processes",
                str(self.args.server_processes),
            ],
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(self.address) as ch:
                    grpc.channel_ready_future(ch).result(timeout=1)
                    jsg.JobServiceStub(ch).ListJobs(js.ListJobsRequest(page_size=1))
                return
            except (grpc.RpcError, grpc.FutureTimeoutError):
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop_server(self, phase: str) -> None:
        if self.server is not None:
            cpu = self.results.setdefault("cpu_s", {})
            server = _cpu_s(self.server.pid) + sum(map(_cpu_s, _children(self.server.pid)))
            cpu[phase] = {"server": round(server, 2), "load": round(self.load_cpu, 2)}
            cpu[phase].update({k: round(v, 2) for k, v in self.worker_cpu.items()})
            self.load_cpu = 0.0
            self.worker_cpu = {}
            rss = _rss_mb(self.server.pid, "VmRSS")
            peak = _rss_mb(self.server.pid, "VmHWM")
            self.results["server_rss_mb"] = max(rss, self.results.get("server_rss_mb", 0))
            self.results["server_peak_rss_mb"] = max(
                peak, self.results.get("server_peak_rss_mb", 0)
            )
            self.server.send_signal(signal.SIGTERM)
            assert self.server.wait(60) == 0, "the server did not exit 0 on SIGTERM"
            self.server = None

    def _spawn(self, mode: str, *argv: str) -> subprocess.Popen[bytes]:
        """A load generator process: `mode` is "_unary", "_batch" or "_steady"."""
        if self.loadgen is not None:
            return subprocess.Popen([str(self.loadgen), mode.removeprefix("_"), *argv])
        return subprocess.Popen([sys.executable, __file__, mode, *argv])

    def _wait_load(self, p: subprocess.Popen[bytes]) -> None:
        """Waits for a load generator, asserts it succeeded and adds up the CPU it used."""
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        self.load_cpu += usage.ru_utime + usage.ru_stime
        assert p.returncode == 0, f"load generator exited {p.returncode}"

    @property
    def go_workers(self) -> bool:
        return bool(self.args.workers == "go")

    def unary(self) -> None:
        n, procs, per = self.args.unary_jobs, 2, 8
        t = time.monotonic()
        ps = [
            self._spawn("_unary", self.address, str(n // procs), str(per), "bench_unary")
            for _ in range(procs)
        ]
        for p in ps:
            self._wait_load(p)
        self.results["enqueue_unary_jobs_per_s"] = round(n / (time.monotonic() - t))

    def batch(self) -> None:
        n = self.args.batch_jobs
        t = time.monotonic()
        p = self._spawn("_batch", self.address, str(n), "4", "bench_batch")
        self._wait_load(p)
        self.results["enqueue_batch_jobs_per_s"] = round(n / (time.monotonic() - t))

    def _workers(
        self, queue: str, procs: int, concurrency: int, go: bool = False
    ) -> list[tuple[subprocess.Popen[bytes], Path]]:
        """`procs` Python SDK worker processes; with `go`, one Go process of `procs` streams."""
        out = []
        for i in range(1 if go else procs):
            path = self.tmp / f"{queue}-{i}.json"
            progress = self.tmp / f"{queue}-{i}.progress"
            env = {
                **os.environ,
                "JOBQUEUE_ADDRESS": self.address,
                "BENCH_QUEUE": queue,
                "BENCH_PROGRESS": str(progress),
                "BENCH_CONCURRENCY": str(concurrency),
                "BENCH_OUT": str(path),
                "JOBQUEUE_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT),
            }
            if go:
                assert self.goworker is not None
                argv = [str(self.goworker), "-streams", str(procs)]
            else:
                argv = [str(BIN / "jobqueue-grpc"), "worker", "bench.workers:make_worker"]
            p = subprocess.Popen(argv, env=env, cwd=ROOT)
            out.append((p, path))
        return out

    def _stop_workers(
        self, workers: list[tuple[subprocess.Popen[bytes], Path]]
    ) -> list[dict[str, Any]]:
        """SIGTERM (they drain), waits for each and adds up the CPU it used."""
        for p, _ in workers:
            p.send_signal(signal.SIGTERM)
        stats = []
        total = 0.0
        for p, path in workers:
            deadline = time.monotonic() + 60
            while True:  # p.wait(60), reaping it ourselves for its rusage
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(p.args, 60)
                time.sleep(0.05)
            p.returncode = os.waitstatus_to_exitcode(status)
            total += usage.ru_utime + usage.ru_stime
            stats.append(json.loads(path.read_text()) if path.exists() else {})
        self.worker_cpu["workers_total"] = total
        return stats

    def _burn_down(
        self, queue: str, workers: list[tuple[subprocess.Popen[bytes], Path]], n: int, phase: str
    ) -> float:
        """Resumes `queue`, waits for `n` jobs and returns the seconds they took; records the
        worker processes' CPU over that time (cpu_s "workers", workers_us_per_job)."""
        with grpc.insecure_channel(self.address) as ch:
            queues = qsg.QueueServiceStub(ch)
            cpu0 = sum(_cpu_ticks(p.pid) for p, _ in workers)
            t = time.time()
            queues.ResumeQueue(qs.ResumeQueueRequest(name=queue))
            elapsed = self._wait_done(queue, workers, n) - t
            spent = (sum(_cpu_ticks(p.pid) for p, _ in workers) - cpu0) / os.sysconf("SC_CLK_TCK")
            self.worker_cpu["workers"] = spent
            self.results.setdefault("workers_us_per_job", {})[phase] = round(spent / n * 1e6, 1)
            # then check what the database committed (not timed)
            while self._counts(queues, queue).succeeded < n:
                time.sleep(0.25)
            # What idle workers spend a second (the benchmark's progress file, 50 writes a
            # second, mostly): workers_net_us_per_job leaves that out of the burn-down's CPU.
            idle0, t0 = sum(_cpu_ticks(p.pid) for p, _ in workers), time.monotonic()
            time.sleep(2.0)
            idle = (sum(_cpu_ticks(p.pid) for p, _ in workers) - idle0) / os.sysconf("SC_CLK_TCK")
            rate = idle / (time.monotonic() - t0)
            self.worker_cpu["workers_idle_per_s"] = rate
            net = (spent - rate * elapsed) / n * 1e6
            self.results.setdefault("workers_net_us_per_job", {})[phase] = round(net, 1)
        return elapsed

    def _wait_done(
        self, queue: str, workers: list[tuple[subprocess.Popen[bytes], Path]], n: int
    ) -> float:
        """Waits until the workers have run `n` jobs; returns the wall time of the last one."""
        procs = len(workers)
        while True:
            gone = [p.returncode for p, _ in workers if p.poll() is not None]
            if gone:  # e.g. the server refused them: fail rather than wait for ever
                raise RuntimeError(f"a worker process exited early (codes {gone})")
            done, last = 0, 0.0
            for i in range(procs):
                path = self.tmp / f"{queue}-{i}.progress"
                if path.exists():
                    d, t = path.read_text().split()
                    done, last = done + int(d), max(last, float(t))
            if done >= n:
                return last
            time.sleep(0.02)

    def _counts(self, stub: Any, queue: str) -> Any:
        return stub.GetQueue(qs.GetQueueRequest(name=queue)).queue.counts

    def end_to_end(self) -> None:
        n, queue = self.args.e2e_jobs, "bench_e2e"
        with grpc.insecure_channel(self.address) as ch:
            queues = qsg.QueueServiceStub(ch)
            queues.PauseQueue(qs.PauseQueueRequest(name=queue))
            p = self._spawn("_batch", self.address, str(n), "4", queue)
            self._wait_load(p)
            workers = self._workers(
                queue, self.args.worker_procs, self.args.worker_concurrency, self.go_workers
            )
            time.sleep(2.0)  # let the worker processes start and open their streams
        elapsed = self._burn_down(queue, workers, n, "end_to_end")
        stats = self._stop_workers(workers)
        self.results["end_to_end_jobs_per_s"] = round(n / elapsed)
        self.results["end_to_end_jobs"] = n
        self.results["end_to_end_executions"] = sum(s.get("done", 0) for s in stats)
        messages = sum(s.get("complete_messages", 0) for s in stats)
        if messages:  # the Go worker counts them: jobs per LeaseComplete
            self.results["end_to_end_jobs_per_complete_message"] = round(n / messages, 1)

    def flow(self) -> None:
        """Flow control on: 10,000 keys, at most 2 running per key, a queue rate limit."""
        n, keys, queue = self.args.flow_jobs, self.args.flow_keys, "bench_flow"
        with grpc.insecure_channel(self.address) as ch:
            queues = qsg.QueueServiceStub(ch)
            queues.PauseQueue(qs.PauseQueueRequest(name=queue))
            limits = qs.QueueLimits(key_max_running=2, rate=self.args.flow_rate)
            queues.SetQueueLimits(qs.SetQueueLimitsRequest(name=queue, limits=limits))
            stub = jsg.JobServiceStub(ch)
            for start in range(0, n, 1000):
                reqs = [
                    js.EnqueueRequest(queue=queue, kind="noop", concurrency_key=f"k{i % keys}")
                    for i in range(start, min(n, start + 1000))
                ]
                stub.EnqueueBatch(js.EnqueueBatchRequest(jobs=reqs))
            workers = self._workers(
                queue, self.args.worker_procs, self.args.worker_concurrency, self.go_workers
            )
            time.sleep(2.0)  # let the worker processes start and open their streams
        elapsed = self._burn_down(queue, workers, n, "flow")
        self._stop_workers(workers)
        self.results["flow_jobs_per_s"] = round(n / elapsed)
        self.results["flow_jobs"] = n
        flow_us, plain_us = asyncio.run(_claim_cost(self.db_url, self.args.flow_claim_jobs, keys))
        self.results["flow_claim_us_per_job"] = flow_us
        self.results["plain_claim_us_per_job"] = plain_us

    def latency(self) -> None:
        queue, rate, seconds = "bench_latency", self.args.latency_rate, self.args.latency_seconds
        workers = self._workers(queue, 1, 50)
        time.sleep(2.0)  # worker startup
        p = self._spawn("_steady", self.address, str(rate), str(seconds), queue)
        self._wait_load(p)
        self._wait_done(queue, workers, int(rate * seconds))
        stats = self._stop_workers(workers)
        lat = sorted(x * 1000 for s in stats for x in s.get("latencies", []))
        q = statistics.quantiles(lat, n=100)
        claim = sorted(x * 1000 for s in stats for x in s.get("to_claim", []))
        if claim:
            self.results["latency_enqueue_to_claim_ms_p50"] = round(statistics.median(claim), 2)
        self.results["latency_rate_per_s"] = rate
        self.results["latency_samples"] = len(lat)
        self.results["latency_ms"] = {
            "p50": round(q[49], 2),
            "p95": round(q[94], 2),
            "p99": round(q[98], 2),
        }

    def run(self) -> dict[str, Any]:
        if not self.args.python_load:
            self.loadgen = build_loadgen(self.tmp)
        self.results["load_generator"] = "go" if self.loadgen else "python"
        print(f"  load generator: {self.results['load_generator']}", file=sys.stderr, flush=True)
        if self.go_workers:
            self.goworker = build_goworker(self.tmp)
        self.results["workers"] = self.args.workers
        self.pg_url = self.pg.start()
        try:
            for phase in self.args.phases.split(","):
                self.start_server(f"bench_{phase}")
                try:
                    getattr(self, phase)()
                finally:
                    self.stop_server(phase)
                print(f"  {phase}: done", file=sys.stderr, flush=True)
        finally:
            self.pg.stop()
            if self.args.keep:
                print(f"kept {self.tmp}", file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return self.results


async def _claim_cost(url: str, n: int, keys: int) -> tuple[float, float]:
    """Microseconds per job leased by the flow-controlled claim (n jobs over `keys` keys,
    per-key limit 2) and by the plain claim (n jobs, no limits), each timed alone: claims of
    100 slots until the queue is empty, every batch completed (not timed) before the next."""
    import uuid

    from jobqueue_grpc.domain.limits import QueueLimits
    from jobqueue_grpc.store import Store

    store = await Store.connect(url)
    try:
        await store.limits.set("cost_flow", QueueLimits(key_max_running=2))
        out = []
        for queue in ("cost_flow", "cost_plain"):
            await store.pool.execute(
                "INSERT INTO jobqueue.jobs (id, queue, kind, payload, state, max_attempts, "
                "lease_seconds, concurrency_key) SELECT gen_random_uuid(), $1, 'noop', '{}', "
                "'queued', 1, 300, 'k' || (i % $3) FROM generate_series(1, $2) i",
                queue,
                n,
                keys,
            )
            await store.pool.execute("ANALYZE jobqueue.jobs")
            slots = [(uuid.uuid4(), "w")] * 100
            spent, leased = 0.0, 0
            while leased < n:
                t = time.perf_counter()
                if queue == "cost_flow":
                    claim = await store.limits.claim(queue, None, slots)
                    jobs = claim.jobs if claim is not None else []
                else:
                    jobs = await store.leases.claim([queue], None, slots)
                spent += time.perf_counter() - t
                if not jobs:
                    break
                leased += len(jobs)
                await store.leases.settle([(j.id, j.lease_token, None) for j in jobs], [], [])
            out.append(round(spent / max(1, leased) * 1e6, 1))
        return out[0], out[1]
    finally:
        await store.close()


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _cpu_ticks(pid: int) -> int:
    """Clock ticks of CPU (user + system) a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used."""
    return round(_cpu_ticks(pid) / os.sysconf("SC_CLK_TCK"), 2)


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (serve --processes N starts N - 1)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry))
    return out


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


TARGETS = {
    "enqueue_unary_jobs_per_s": 4000,
    "enqueue_batch_jobs_per_s": 50000,
    "end_to_end_jobs_per_s": 15000,
}


def table(r: dict[str, Any]) -> str:
    rows = [("figure", "value", "target")]
    for k, target in TARGETS.items():
        if k in r:
            rows.append((k, f"{r[k]:,}", f">= {target:,}"))
    if "latency_ms" in r:
        lat = r["latency_ms"]
        rows.append(("latency p50 (ms)", str(lat["p50"]), "<= 2"))
        rows.append(("latency p95 (ms)", str(lat["p95"]), ""))
        rows.append(("latency p99 (ms)", str(lat["p99"]), "<= 10"))
    for k in ("flow_jobs_per_s", "flow_claim_us_per_job", "plain_claim_us_per_job"):
        if k in r:
            rows.append((k, f"{r[k]:,}", ""))
    for k in ("server_rss_mb", "server_peak_rss_mb"):
        if k in r:
            rows.append((k, str(r[k]), ""))
    for phase, cpu in r.get("cpu_s", {}).items():
        gen = r.get("load_generator", "")
        rows.append((f"cpu s {phase}: server / {gen} load", f"{cpu['server']} / {cpu['load']}", ""))
        if "workers" in cpu:
            kind = r.get("workers", "python")
            us = r.get("workers_us_per_job", {}).get(phase, "")
            rows.append((f"cpu s {phase}: {kind} workers (us/job)", f"{cpu['workers']} ({us})", ""))
            net = r.get("workers_net_us_per_job", {}).get(phase, "")
            rows.append((f"workers net of idle (us/job) {phase}", str(net), ""))
    w = [max(len(x[i]) for x in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c}" for a, b, c in rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, address, *rest = sys.argv[1:]
        if mode == "_unary":
            asyncio.run(_unary(address, int(rest[0]), int(rest[1]), rest[2]))
        elif mode == "_batch":
            asyncio.run(_batch(address, int(rest[0]), int(rest[1]), rest[2]))
        elif mode == "_steady":
            asyncio.run(_steady(address, float(rest[0]), float(rest[1]), rest[2]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--phases", default="unary,batch,end_to_end,latency")
    p.add_argument("--unary-jobs", type=int, default=20_000)
    p.add_argument("--batch-jobs", type=int, default=200_000)
    p.add_argument("--e2e-jobs", type=int, default=200_000)
    p.add_argument("--worker-procs", type=int, default=2)
    p.add_argument("--server-processes", type=int, default=1, help="serve --processes N")
    p.add_argument("--worker-concurrency", type=int, default=1000)
    p.add_argument("--latency-rate", type=float, default=200)
    p.add_argument("--latency-seconds", type=float, default=10)
    p.add_argument("--flow-jobs", type=int, default=100_000)
    p.add_argument("--flow-keys", type=int, default=10_000)
    p.add_argument("--flow-rate", type=float, default=20_000, help="the flow phase's starts/s")
    p.add_argument("--flow-claim-jobs", type=int, default=20_000)
    p.add_argument("--pg-setting", action="append", default=[], help="extra postgres -c k=v")
    p.add_argument(
        "--python-load", action="store_true", help="Python load generators even when Go is there"
    )
    p.add_argument(
        "--workers",
        choices=("python", "go"),
        default="python",
        help="end_to_end and flow workers: Python SDK processes or one Go process (bench/goworker)",
    )
    p.add_argument("--keep", action="store_true", help="keep the data directory (and its log)")
    args = p.parse_args()
    results = Bench(args).run()
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
