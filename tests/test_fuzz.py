"""Hostile input, searched for by Hypothesis: generated and byte-mutated requests to every unary RPC
of JobService, DeadLetterService and QueueService, and generated sequences of Lease messages,
against one real `jobqueue-grpc serve` process over a seeded database.

Requests are generated from the protobuf descriptors (odd unicode, huge strings, extreme ints,
timestamps and durations, deep Structs, forged page tokens) or are valid requests whose serialized
bytes were mutated (flipped, cut, spliced, invalid UTF-8, unknown fields), sent through a
bytes-level channel call. After every call:

- the server still answers health SERVING;
- a refusal is a clean status with google.rpc details: an ErrorInfo (domain jobqueue-grpc), never
  UNKNOWN, never INTERNAL (INTERNAL means a server fault), and the call is answered in time;
- a refused call wrote nothing: the rows of jobqueue.jobs, dead_letters and queues (counts, and a
  digest of the columns only API calls change) are as before. Calls run one at a time, so nothing
  else writes meanwhile; the Lease streams open only queues that hold no job and "default" is
  paused, so no stream is ever given a job and a whole sequence must write nothing.

Derandomized, no example database and no shrinking, with bounded example counts: the same examples
run on every machine and the module takes well under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import string
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor, message, message_factory, text_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jobqueue_grpc.domain import pagination
from jobqueue_grpc.gen.jobqueue.v1 import (
    dead_letter_service_pb2,
    job_service_pb2,
    queue_service_pb2,
    worker_service_pb2,
)
from tests.operators import seed_dead_letter, seed_job
from tests.support import Processes, free_port, scratch_database, wait_until_sync

Desc = descriptor.Descriptor
FD = descriptor.FieldDescriptor

SERVICES = [
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    dead_letter_service_pb2.DESCRIPTOR.services_by_name["DeadLetterService"],
    queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"],
]
# Unary RPCs; the server-streaming watches (WatchJob, WatchJobs) have tests of their own.
UNARY = [
    m for s in SERVICES for m in s.methods if not m.client_streaming and not m.server_streaming
]
LEASE = "/jobqueue.v1.WorkerService/Lease"
LEASE_REQUEST = worker_service_pb2.LeaseRequest.DESCRIPTOR

CALL_TIMEOUT = 15.0  # a bound on a hung server, not a speed assertion
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # the server's limit; one huge value goes just past it
SEEDED_QUEUE = "seeded"
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
LEASE_QUEUES = ("lease-fuzz-a", "lease-fuzz-b")  # no job is ever enqueued to these

FUZZ = settings(
    max_examples=int(os.environ.get("JQ_FUZZ_EXAMPLES", "25")),
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)


# -- the server under test ------------------------------------------------------------------------
@dataclass
class Target:
    """One server process, a blocking channel to it, and a connection to its database."""

    channel: grpc.Channel
    conn: asyncpg.Connection
    loop: asyncio.AbstractEventLoop
    ids: list[str]  # seeded jobs and dead letters, so ids hit real rows
    tokens: list[str]  # page tokens the server issued
    health: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def fingerprint(self) -> tuple[Any, ...]:
        """Row counts and a digest of the columns only API calls change (a due scheduled job
        counts as queued: the scheduler promotes it meanwhile)."""
        row = self.loop.run_until_complete(self.conn.fetchrow(FINGERPRINT))
        assert row is not None
        return tuple(row)

    def check_readable(self, where: str) -> None:
        """Every row can still be read back: all pages of ListJobs and ListDeadLetters, and
        ListQueues, answer OK (an accepted value the reads choke on is a fault too)."""
        for path, req_cls, resp_cls in READS:
            token = ""
            while True:
                call = self.channel.unary_unary(
                    path,
                    request_serializer=req_cls.SerializeToString,
                    response_deserializer=resp_cls.FromString,
                )
                try:
                    resp = call(req_cls(page_size=500, page_token=token), timeout=CALL_TIMEOUT)
                except grpc.RpcError as err:
                    assert isinstance(err, grpc.Call)
                    raise AssertionError(
                        f"{where} was accepted, then {path} fails: {err.code()} {err.details()}"
                    ) from None
                token = resp.next_page_token
                if not token:
                    break
        queues = self.channel.unary_unary(
            "/jobqueue.v1.QueueService/ListQueues",
            request_serializer=queue_service_pb2.ListQueuesRequest.SerializeToString,
            response_deserializer=queue_service_pb2.ListQueuesResponse.FromString,
        )
        try:
            queues(queue_service_pb2.ListQueuesRequest(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            raise AssertionError(
                f"{where} was accepted, then ListQueues fails: {err.code()}"
            ) from None

    def serving(self) -> bool:
        try:
            resp = self.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        except grpc.RpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


READS: list[tuple[str, Any, Any]] = [
    (
        "/jobqueue.v1.JobService/ListJobs",
        job_service_pb2.ListJobsRequest,
        job_service_pb2.ListJobsResponse,
    ),
    (
        "/jobqueue.v1.DeadLetterService/ListDeadLetters",
        dead_letter_service_pb2.ListDeadLettersRequest,
        dead_letter_service_pb2.ListDeadLettersResponse,
    ),
]

FINGERPRINT = """
SELECT
  (SELECT count(*) FROM jobqueue.jobs) AS jobs,
  (SELECT count(*) FROM jobqueue.dead_letters) AS dead_letters,
  (SELECT count(*) FROM jobqueue.queues) AS queues,
  (SELECT md5(coalesce(string_agg(concat_ws('|', id, queue, kind, payload, priority,
                   max_attempts, idempotency_key, cancel_requested, errors, result, lease_token,
                   finished_at, CASE state WHEN 'scheduled' THEN 'queued' ELSE state END),
                   ',' ORDER BY id), '')) FROM jobqueue.jobs) AS jobs_digest,
  (SELECT md5(coalesce(string_agg(d::text, ',' ORDER BY job_id), ''))
     FROM jobqueue.dead_letters d) AS dead_letters_digest,
  (SELECT md5(coalesce(string_agg(name || ':' || paused, ',' ORDER BY name), ''))
     FROM jobqueue.queues) AS queues_digest
"""


@pytest.fixture(scope="module")
async def fuzz_db(pg_url: str, template_db: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A migrated database seeded with jobs in every state and dead letters; yields its URL and
    the seeded ids."""
    async with scratch_database(pg_url, prefix="fuzz_", template=template_db) as url:
        conn = await asyncpg.connect(url)
        try:
            ids = [
                str(await seed_job(conn, queue=SEEDED_QUEUE, state=state))
                for state in ("queued", "scheduled", "succeeded", "cancelled")
            ]
            ids += [str(await seed_dead_letter(conn, queue=SEEDED_QUEUE)) for _ in range(3)]
            # No Lease stream may ever be given a job: "default" (where an empty queue name goes)
            # is paused, and the streams open only LEASE_QUEUES.
            await conn.execute(
                "INSERT INTO jobqueue.queues (name, paused) VALUES ('default', true)"
            )
        finally:
            await conn.close()
        yield url, ids


@pytest.fixture(scope="module")
def target(
    fuzz_db: tuple[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    url, ids = fuzz_db
    procs = Processes(tmp_path_factory.mktemp("fuzz"))
    port = free_port()
    env = {
        "JOBQUEUE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        # No pruning: only the calls under test change rows.
        "JOBQUEUE_RETENTION_SUCCEEDED": "0",
        "JOBQUEUE_RETENTION_CANCELLED": "0",
        "JOBQUEUE_RETENTION_FAILED": "0",
    }
    server = procs.server(url, port, grace=1, **env)
    loop = asyncio.new_event_loop()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        conn = loop.run_until_complete(asyncpg.connect(url))
        t = Target(channel, conn, loop, ids, [])

        def up() -> bool:
            assert server.poll() is None, procs.output(server)
            return t.serving()

        wait_until_sync(up, within=60, interval=0.1, what="the server to serve")
        t.tokens = issued_tokens(channel)
        yield t
        loop.run_until_complete(conn.close())
    finally:
        channel.close()
        loop.close()
        procs.cleanup()
        # What a reader of the logs would see (issue 12 item 2: tracebacks per refused request).
        log = procs.output(server)
        print(f"\nfuzzed server logged {log.count('Traceback')} traceback(s)")


def issued_tokens(channel: grpc.Channel) -> list[str]:
    """Real page tokens (pages of one row), to be forged and mutated."""
    jobs = channel.unary_unary(
        "/jobqueue.v1.JobService/ListJobs",
        request_serializer=job_service_pb2.ListJobsRequest.SerializeToString,
        response_deserializer=job_service_pb2.ListJobsResponse.FromString,
    )(job_service_pb2.ListJobsRequest(page_size=1), timeout=CALL_TIMEOUT)
    dead = channel.unary_unary(
        "/jobqueue.v1.DeadLetterService/ListDeadLetters",
        request_serializer=dead_letter_service_pb2.ListDeadLettersRequest.SerializeToString,
        response_deserializer=dead_letter_service_pb2.ListDeadLettersResponse.FromString,
    )(dead_letter_service_pb2.ListDeadLettersRequest(page_size=1), timeout=CALL_TIMEOUT)
    tokens = [jobs.next_page_token, dead.next_page_token]
    assert all(tokens), "the seed fills more than one page"
    return tokens


# -- values ---------------------------------------------------------------------------------------
ODD = [
    "",
    " ",
    "Bad",
    "sp ace",
    "a" * 64,
    "a" * 65,
    "a" * 129,
    "é",
    "\u0000",
    "\u0007",
    "\u202e",  # right-to-left override
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "\U0001f600",
    "e\u0301",  # combining accent
    "\u0130",  # İ: changes length when lowercased
    "'; DROP TABLE jobqueue.jobs; --",
    "%s%n%x",
    "../../etc/passwd",
    "{}",
    "null",
    "00000000-0000-0000-0000-000000000000",
    "nope",
    SEEDED_QUEUE,
]
HUGE_SIZES = [257, 4097, 70_000, 1 << 20, MAX_MESSAGE_BYTES + 1]


def huge_strings() -> st.SearchStrategy[str]:
    return st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "é", "\U0001f600", "\u0000", "-"]),
        st.sampled_from(HUGE_SIZES),
    )  # fmt: skip


def strings(ids: list[str], tokens: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(ODD),
        st.sampled_from(ids),
        st.uuids().map(str),
        st.text(string.ascii_lowercase + "-_.", min_size=1, max_size=70),
        forged_tokens(tokens),
        huge_strings(),
    )


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """JSON arrays and objects of `inner` (the extend step of st.recursive)."""
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


def jsonish() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20)
    return st.recursive(scalars, containers, max_leaves=8)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def forged_tokens(tokens: list[str]) -> st.SearchStrategy[str]:
    """Page tokens: real ones with fields replaced, hand-made JSON, deep JSON, not base64."""

    def replace(token: str, key: str, value: Any) -> str:
        """A real token's JSON with one field changed, its MAC kept (so it must be refused)."""
        signed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body, mac = signed[: -pagination.MAC_BYTES], signed[-pagination.MAC_BYTES :]
        raw = json.loads(body)
        raw[key] = value
        return b64(json.dumps(raw).encode() + mac)

    deep = st.sampled_from([10, 1000, 100_000]).map(lambda n: b64(b"[" * n + b"]" * n))
    return st.one_of(
        st.sampled_from(tokens) if tokens else st.nothing(),
        st.builds(replace, st.sampled_from(tokens) if tokens else st.nothing(),
                  st.sampled_from(["t", "k", "f", "x"]), jsonish()),
        jsonish().map(lambda v: b64(json.dumps(v).encode())),
        deep,
        st.binary(max_size=30).map(b64),
    )  # fmt: skip


INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = {lo, lo + 1, -1, 0, 1, 2, 10, 100, 1000, 1001, 10_000, 86_400, 10**6, hi - 1, hi}
    return st.sampled_from(sorted(v for v in edges if lo <= v <= hi)) | st.integers(lo, hi)


# Timestamp: 0001-01-01 and 9999-12-31 are protobuf's range; beyond it, and around the epoch.
TS_SECONDS = [
    -62135596800,
    -62135596801,
    253402300799,
    253402300800,
    -1,
    0,
    1,
    2**31,
    -(2**63),
    2**63 - 1,
]
# Duration: protobuf's range is +-10,000 years; the server caps leases and retry-afters.
DUR_SECONDS = [
    -315576000000,
    315576000000,
    315576000001,
    -1,
    0,
    1,
    86_400,
    30 * 86_400 + 1,
    2**63 - 1,
]


def timestamps() -> st.SearchStrategy[message.Message]:
    from google.protobuf import timestamp_pb2

    return st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.one_of(  # the edges twice as often as the rest
            st.sampled_from(TS_SECONDS),
            st.sampled_from(TS_SECONDS),
            st.integers(-62135596800, 253402300799),
        ),
        nanos=st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1]),
    )


def durations() -> st.SearchStrategy[message.Message]:
    from google.protobuf import duration_pb2

    return st.builds(
        duration_pb2.Duration,
        seconds=st.one_of(
            st.sampled_from(DUR_SECONDS), st.sampled_from(DUR_SECONDS), st.integers(-(10**6), 10**6)
        ),
        nanos=st.sampled_from([0, 1, 999_999_999, -1, 1_000_000_000]),
    )


def structs() -> st.SearchStrategy[message.Message]:
    from google.protobuf import struct_pb2

    def build(d: dict[str, Any]) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(d)
        return s

    scalars = st.none() | st.booleans() | st.floats() | st.text(max_size=20)
    values = st.recursive(scalars, containers, max_leaves=10)
    keys = st.text(max_size=10) | st.sampled_from(ODD)
    return st.one_of(
        st.dictionaries(keys, values, max_size=4),
        st.builds(lambda blob: {"blob": blob}, huge_strings()),  # past max_payload_bytes
    ).map(build)


def set_field(m: message.Message, f: FD, value: Any) -> None:
    """Sets field `f` of `m` to a generated value (a map's entries come as key/value messages)."""
    target = getattr(m, f.name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        message_values = f.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE
        for v in value:
            if message_values:
                target[v.key].CopyFrom(v.value)
            else:
                target[v.key] = v.value
    elif f.is_repeated and f.type == FD.TYPE_MESSAGE:
        for v in value:
            target.add().CopyFrom(v)
    elif f.is_repeated:
        target.extend(value)
    elif f.type == FD.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(m, f.name, value)


def messages(
    desc: Desc, ids: list[str], tokens: list[str], depth: int = 0
) -> st.SearchStrategy[message.Message]:
    """Any message of type `desc`: each field unset or set to a generated value."""
    special = {
        "google.protobuf.Timestamp": timestamps,
        "google.protobuf.Duration": durations,
        "google.protobuf.Struct": structs,
    }
    if desc.full_name in special:
        return special[desc.full_name]()
    cls = message_factory.GetMessageClass(desc)
    optional = {f.name: field_values(f, ids, tokens, depth) for f in desc.fields}

    def build(values: dict[str, Any]) -> message.Message:
        m = cls()
        for name, value in values.items():
            set_field(m, desc.fields_by_name[name], value)
        return m

    return st.fixed_dictionaries({}, optional=optional).map(build)


def field_values(f: FD, ids: list[str], tokens: list[str], depth: int) -> st.SearchStrategy[Any]:
    if f.full_name == "jobqueue.v1.LeaseOpen.queues":
        # Never a queue that holds jobs (see the module docstring), but bad names are fine.
        one: st.SearchStrategy[Any] = st.sampled_from(LEASE_QUEUES) | st.sampled_from(ODD[1:8])
        return st.lists(one, min_size=1, max_size=3)
    if f.type == FD.TYPE_MESSAGE:
        if depth > 3:
            return st.nothing()
        one = messages(f.message_type, ids, tokens, depth + 1)
    elif f.type == FD.TYPE_STRING:
        one = strings(ids, tokens)
    elif f.type == FD.TYPE_BYTES:
        one = st.binary(max_size=64)
    elif f.type == FD.TYPE_BOOL:
        one = st.booleans()
    elif f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        one = st.floats(width=64 if f.type == FD.TYPE_DOUBLE else 32)
    elif f.type == FD.TYPE_ENUM:
        one = st.sampled_from([v.number for v in f.enum_type.values]) | ints(-(2**31), 2**31 - 1)
    else:
        one = ints(*INT_RANGES[f.type])
    if f.is_repeated:
        return st.lists(one, max_size=3)
    return one


def templates(ids: list[str]) -> dict[str, message.Message]:
    """A valid request of each type that has required fields, for `one_field_off`."""
    js, dl, qs = job_service_pb2, dead_letter_service_pb2, queue_service_pb2
    job, dead = ids[0], ids[-1]
    return {
        "jobqueue.v1.EnqueueRequest": js.EnqueueRequest(queue="fuzz-q", kind="fuzz_kind"),
        "jobqueue.v1.GetJobRequest": js.GetJobRequest(id=job),
        "jobqueue.v1.CancelJobRequest": js.CancelJobRequest(id=job),
        "jobqueue.v1.GetDeadLetterRequest": dl.GetDeadLetterRequest(job_id=dead),
        "jobqueue.v1.RequeueDeadLetterRequest": dl.RequeueDeadLetterRequest(job_id=dead),
        "jobqueue.v1.DeleteDeadLetterRequest": dl.DeleteDeadLetterRequest(job_id=NO_SUCH_ID),
        "jobqueue.v1.RequeueDeadLettersRequest": dl.RequeueDeadLettersRequest(dry_run=True),
        "jobqueue.v1.PurgeDeadLettersRequest": dl.PurgeDeadLettersRequest(dry_run=True),
        "jobqueue.v1.GetQueueRequest": qs.GetQueueRequest(name=SEEDED_QUEUE),
        "jobqueue.v1.PauseQueueRequest": qs.PauseQueueRequest(name="fuzz-q"),
        "jobqueue.v1.ResumeQueueRequest": qs.ResumeQueueRequest(name="fuzz-q"),
    }


def one_field_off(
    desc: Desc, ids: list[str], tokens: list[str], depth: int = 0
) -> st.SearchStrategy[message.Message]:
    """A valid request with one field (or one field of a nested message) set to a generated value,
    so that the value reaches the check, or the code past it, that it is meant for."""
    base = templates(ids).get(desc.full_name) or message_factory.GetMessageClass(desc)()
    if not desc.fields:
        return st.just(base)

    def nested(f: FD) -> st.SearchStrategy[Any]:
        if f.type != FD.TYPE_MESSAGE or f.message_type.full_name.startswith("google.") or depth:
            return field_values(f, ids, tokens, depth)
        one = one_field_off(f.message_type, ids, tokens, depth + 1)
        return st.lists(one, min_size=1, max_size=3) if f.is_repeated else one

    def build(f: FD, value: Any) -> message.Message:
        m = type(base)()
        m.CopyFrom(base)
        m.ClearField(f.name)
        set_field(m, f, value)
        return m

    return st.sampled_from(list(desc.fields)).flatmap(
        lambda f: st.builds(build, st.just(f), nested(f))
    )


# -- byte mutations -------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def deep_struct(depth: int) -> bytes:
    """A Struct nested `depth` deep, written by hand: protobuf itself refuses to build one."""
    inner = b""
    for _ in range(depth):
        value = field_bytes(5, inner)  # Value.struct_value
        entry = field_bytes(1, b"k") + field_bytes(2, value)  # map entry: key, value
        inner = field_bytes(1, entry)  # Struct.fields
    return inner


def mutations(desc: Desc) -> st.SearchStrategy[Callable[[bytes], bytes]]:
    """Edits of a serialized `desc`: each makes bytes a parser may choke on."""
    strings_ = [f.number for f in desc.fields if f.type == FD.TYPE_STRING]
    structs_ = [
        f.number
        for f in desc.fields
        if f.type == FD.TYPE_MESSAGE and f.message_type.full_name == "google.protobuf.Struct"
    ]

    def flip(pos: int, xor: int) -> Callable[[bytes], bytes]:
        return lambda b: (
            b[: pos % len(b)] + bytes([b[pos % len(b)] ^ xor]) + b[pos % len(b) + 1 :] if b else b
        )

    def cut(pos: int) -> Callable[[bytes], bytes]:
        return lambda b: b[: pos % (len(b) + 1)]

    def insert(pos: int, junk: bytes) -> Callable[[bytes], bytes]:
        return lambda b: b[: pos % (len(b) + 1)] + junk + b[pos % (len(b) + 1) :]

    def append(junk: bytes) -> Callable[[bytes], bytes]:
        return lambda b: b + junk

    ops: list[st.SearchStrategy[Callable[[bytes], bytes]]] = [
        st.builds(flip, st.integers(0, 1 << 16), st.integers(1, 255)),
        st.builds(cut, st.integers(0, 1 << 16)),
        st.builds(insert, st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
        st.builds(append, st.binary(min_size=1, max_size=32)),
        # An unknown or mistyped field: any number, any wire type, a varint that never ends.
        st.builds(lambda n, wt, tail: append(varint(n << 3 | wt) + tail),
                  st.integers(1, 2**29 - 1), st.integers(0, 7), st.binary(max_size=12)),
        st.just(append(b"\xff" * 11)),
        # A length prefix larger than what follows.
        st.builds(lambda n: append(varint(1 << 3 | 2) + varint(n) + b"x"), st.integers(2, 2**32)),
    ]  # fmt: skip
    if strings_:  # invalid UTF-8 in a string field
        bad = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b", b"\xf8\x88\x80\x80\x80"]
        ops.append(
            st.builds(
                lambda n, raw: append(field_bytes(n, raw)),
                st.sampled_from(strings_),
                st.sampled_from(bad),
            )
        )
    if structs_:  # a Struct nested deeper than protobuf parses
        ops.append(
            st.builds(
                lambda n, d: append(field_bytes(n, deep_struct(d))),
                st.sampled_from(structs_),
                st.sampled_from([99, 100, 101, 150, 1000]),
            )
        )
    return st.lists(st.one_of(ops), min_size=1, max_size=3).map(chain)


def chain(ops: list[Callable[[bytes], bytes]]) -> Callable[[bytes], bytes]:
    def run(b: bytes) -> bytes:
        for op in ops:
            b = op(b)
        return b

    return run


# -- the checks -----------------------------------------------------------------------------------
def describe(body: bytes | message.Message) -> str:
    text = (
        repr(body)
        if isinstance(body, bytes)
        else text_format.MessageToString(body, as_one_line=True)
    )
    return text if len(text) <= 600 else f"{text[:600]}... ({len(text)} chars)"


def check_refusal(where: str, err: grpc.RpcError, size: int) -> None:
    """A refusal is a clean status: not UNKNOWN or INTERNAL, answered in time, with an ErrorInfo.
    The one exception: a message over the server's max_message_bytes, which gRPC itself refuses
    (RESOURCE_EXHAUSTED) before any handler runs."""
    assert isinstance(err, grpc.Call)
    code, details = err.code(), (err.details() or "")[:300]
    if size > MAX_MESSAGE_BYTES and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
        f"{where}: {code} {details}"
    )
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{where}: no answer in {CALL_TIMEOUT}s"
    try:
        status = rpc_status.from_call(err)
    except ValueError as mismatch:
        raise AssertionError(f"{where}: {code} with inconsistent details: {mismatch}") from None
    assert status is not None, f"{where}: {code} {details!r} without google.rpc details"
    infos = []
    for d in status.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            infos.append(info)
    assert infos, f"{where}: {code} {details!r} without an ErrorInfo"
    assert infos[0].reason and infos[0].domain == "jobqueue-grpc", f"{where}: {infos[0]}"


def after_call(
    t: Target, where: str, size: int, before: tuple[Any, ...], err: grpc.RpcError | None
) -> None:
    assert t.serving(), f"{where}: the server stopped answering health SERVING"
    if err is not None:
        check_refusal(where, err, size)
        assert t.fingerprint() == before, f"{where}: a refused request changed rows"
    elif t.fingerprint() != before:
        t.check_readable(where)


def call_unary(t: Target, m: descriptor.MethodDescriptor, body: bytes) -> grpc.RpcError | None:
    path = f"/{m.containing_service.full_name}/{m.name}"
    try:
        t.channel.unary_unary(path)(body, timeout=CALL_TIMEOUT)  # bytes in, bytes out
    except grpc.RpcError as err:
        return err
    return None


def check_unary(t: Target, m: descriptor.MethodDescriptor, body: bytes, shown: str) -> None:
    before = t.fingerprint()
    err = call_unary(t, m, body)
    after_call(t, f"{m.containing_service.name}/{m.name}({shown})", len(body), before, err)


def check_lease(t: Target, bodies: list[bytes], shown: str) -> None:
    before = t.fingerprint()
    where = f"Lease[{shown}]"
    call = t.channel.stream_stream(LEASE)(iter(bodies), timeout=CALL_TIMEOUT)
    err: grpc.RpcError | None = None
    try:
        for raw in call:
            got = worker_service_pb2.LeaseResponse.FromString(raw)
            assert got.WhichOneof("msg") != "jobs", f"{where}: a stream was given a job"
    except grpc.RpcError as e:
        err = e
    after_call(t, where, max(map(len, bodies), default=0), before, err)
    assert t.fingerprint() == before, f"{where}: a Lease stream without jobs changed rows"


# -- the properties -------------------------------------------------------------------------------
class Shown:
    """A drawn value that Hypothesis prints shortened (huge strings would flood the report)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return describe(self.value) if isinstance(self.value, bytes | message.Message) else "..."


def shown(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Shown]:
    return strategy.map(Shown)


@pytest.mark.parametrize("method", UNARY, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_generated_requests_are_answered_or_cleanly_refused(
    target: Target, method: descriptor.MethodDescriptor
) -> None:
    @FUZZ
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        req = data.draw(shown(messages(method.input_type, target.ids, target.tokens)), "request")
        check_unary(target, method, req.value.SerializeToString(), repr(req))

    prop()


@pytest.mark.parametrize("method", UNARY, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_requests_with_one_bad_field_are_answered_or_cleanly_refused(
    target: Target, method: descriptor.MethodDescriptor
) -> None:
    @FUZZ
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        req = data.draw(
            shown(one_field_off(method.input_type, target.ids, target.tokens)), "request"
        )
        check_unary(target, method, req.value.SerializeToString(), repr(req))

    prop()


@pytest.mark.parametrize("method", UNARY, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_mutated_requests_are_answered_or_cleanly_refused(
    target: Target, method: descriptor.MethodDescriptor
) -> None:
    @FUZZ
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        req = data.draw(
            shown(one_field_off(method.input_type, target.ids, target.tokens)), "request"
        )
        mutate = data.draw(mutations(method.input_type), "mutation")
        body = mutate(req.value.SerializeToString())
        check_unary(target, method, body, describe(body))

    prop()


def known_hostile() -> list[Any]:
    """Requests issue 12 found by hand, so that they are tried on every run whatever is drawn."""
    from google.protobuf import timestamp_pb2

    js, qs = job_service_pb2, queue_service_pb2
    first_day = timestamp_pb2.Timestamp(seconds=TS_SECONDS[0])  # 0001-01-01T00:00:00Z
    enqueue_at = js.EnqueueRequest(queue="fuzz-q", kind="fuzz_kind", run_at=first_day)
    deep_json = b64(b"[" * 100_000 + b"]" * 100_000)
    odd_key = b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "k": 1, "f": "x"}).encode())
    cases: list[tuple[str, str, message.Message | bytes]] = [
        ("run_at-first-day", "Enqueue", enqueue_at),  # item 1
        ("run_at-first-day-batch", "EnqueueBatch", js.EnqueueBatchRequest(jobs=[enqueue_at])),
        ("not-protobuf", "GetJob", b"\xff"),  # item 2
        ("kind-not-utf8", "Enqueue", field_bytes(2, b"\xff\xfe")),  # item 2
        ("struct-101-deep", "Enqueue", field_bytes(2, b"k") + field_bytes(3, deep_struct(101))),
        ("token-int-key", "ListJobs", js.ListJobsRequest(page_token=odd_key)),  # item 4
        ("token-deep-json", "ListJobs", js.ListJobsRequest(page_token=deep_json)),  # item 4
        ("queue-name-1MiB", "GetQueue", qs.GetQueueRequest(name="q" * (1 << 20))),  # item 5
        ("job-id-1MiB", "GetJob", js.GetJobRequest(id="x" * (1 << 20))),  # item 5
    ]
    return [
        pytest.param(m, b if isinstance(b, bytes) else b.SerializeToString(), id=case)
        for case, m, b in cases
    ]


METHODS = {m.name: m for m in UNARY}


@pytest.mark.parametrize(("name", "body"), known_hostile())
def test_known_hostile_requests_are_cleanly_refused(target: Target, name: str, body: bytes) -> None:
    check_unary(target, METHODS[name], body, describe(body))


def test_a_lease_stream_that_does_not_parse_is_cleanly_refused(target: Target) -> None:
    check_lease(target, [b"\xff"], "not protobuf")  # item 2, on the stream


def lease_requests(t: Target) -> st.SearchStrategy[message.Message]:
    return messages(LEASE_REQUEST, t.ids, t.tokens)


def opens() -> st.SearchStrategy[message.Message]:
    return st.builds(
        lambda worker, queues, n: worker_service_pb2.LeaseRequest(
            open=worker_service_pb2.LeaseOpen(worker_id=worker, queues=queues, max_in_flight=n)
        ),
        st.text(max_size=20),
        st.lists(st.sampled_from(LEASE_QUEUES), min_size=1, max_size=2),
        st.integers(0, 20),
    )


@FUZZ
@given(data=st.data())
def test_lease_message_sequences_end_cleanly(target: Target, data: st.DataObject) -> None:
    first = data.draw(shown(opens() | lease_requests(target)), "first")
    rest = data.draw(st.lists(shown(lease_requests(target)), max_size=6), "then")
    msgs = [m.value for m in (first, *rest)]
    bodies = [m.SerializeToString() for m in msgs]
    # Some messages go mutated, as raw bytes on the stream.
    for i in data.draw(
        st.lists(st.integers(0, len(bodies) - 1), max_size=2, unique=True), label="mutate"
    ):
        bodies[i] = data.draw(mutations(LEASE_REQUEST), label=f"mutation {i}")(bodies[i])
    check_lease(target, bodies, " | ".join(describe(b) for b in bodies))
