// Runs the TypeScript client against a live jobqueue-grpc server whose address is in
// JOBQUEUE_ADDRESS (host:port); without it every test skips. tests/test_clients.py starts a
// server and runs `npm test` with the address set.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import type { JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate, durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  CancelOutcome,
  FailureClass,
  JobState,
  PermanentError,
  RetryAfterError,
  connect,
  runWorker,
  waitForJob,
  watchJob,
  type Job,
  type JobQueueClients,
} from "../src/index.js";

const ADDRESS = process.env.JOBQUEUE_ADDRESS;
const skip = ADDRESS
  ? false
  : "JOBQUEUE_ADDRESS is not set: these tests need a running jobqueue-grpc server (tests/test_clients.py starts one and sets it)";
const DEADLINE_MS = 20_000;

const queueName = () => "ts-" + randomBytes(6).toString("hex");

async function waitForState(c: JobQueueClients, id: string, want: JobState): Promise<Job> {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const { job } = await c.jobs.getJob({ id });
    assert.ok(job);
    if (job.state === want) return job;
    if (Date.now() > end) {
      assert.fail(`job ${id} (${job.kind}) is ${JobState[job.state]}, want ${JobState[want]}`);
    }
    await delay(20); // poll interval, not synchronisation
  }
}

async function expectCode(p: Promise<unknown>, code: Code): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ConnectError, `not a ConnectError: ${err}`);
    assert.equal(err.code, code, `got ${Code[err.code]}, want ${Code[code]}: ${err.message}`);
    return true;
  });
}

describe("jobqueue-grpc from TypeScript", { skip }, () => {
  test("watchJob and waitForJob follow a job to its end", async () => {
    const c = connect(ADDRESS!);
    const { job } = await c.jobs.enqueue({ queue: queueName(), kind: "wait" });
    assert.ok(job);
    const signal = AbortSignal.timeout(DEADLINE_MS);
    const states: JobState[] = [];
    for await (const j of watchJob(c.jobs, job.id, { signal })) {
      states.push(j.state);
      if (j.state === JobState.QUEUED) await c.jobs.cancelJob({ id: job.id });
    }
    assert.deepEqual(states, [JobState.QUEUED, JobState.CANCELLED]);
    const done = await waitForJob(c.jobs, job.id, { signal }); // terminal already: at once
    assert.equal(done.state, JobState.CANCELLED);
  });

  test("enqueue, get, list, cancel", async () => {
    const c = connect(ADDRESS!);
    const queue = queueName();
    const req = { queue, kind: "send_email", priority: 3, idempotencyKey: queue + "-once", payload: { to: "ada@example.com" } };
    const first = await c.jobs.enqueue(req);
    assert.ok(first.created);
    assert.equal(first.job?.state, JobState.QUEUED);
    const again = await c.jobs.enqueue(req);
    assert.equal(again.created, false);
    assert.equal(again.job?.id, first.job?.id);

    const { job } = await c.jobs.getJob({ id: first.job!.id });
    assert.equal(job?.queue, queue);
    assert.equal(job?.priority, 3);
    assert.deepEqual(job?.payload, { to: "ada@example.com" });

    const list = await c.jobs.listJobs({ queue });
    assert.deepEqual(list.jobs.map((j) => j.id), [first.job!.id]);

    const cancelled = await c.jobs.cancelJob({ id: first.job!.id });
    assert.equal(cancelled.outcome, CancelOutcome.CANCELLED);
    assert.equal(cancelled.job?.state, JobState.CANCELLED);
    await expectCode(c.jobs.cancelJob({ id: first.job!.id }), Code.FailedPrecondition);
    await expectCode(c.jobs.getJob({ id: "00000000-0000-4000-8000-000000000000" }), Code.NotFound);
    await expectCode(c.jobs.getJob({ id: "not-a-uuid" }), Code.InvalidArgument);
  });

  test("the Lease protocol with the bare generated client", async () => {
    const c = connect(ADDRESS!);
    const queue = queueName();
    const ids: Record<string, string> = {};
    for (const kind of ["ok", "boom", "slow"]) {
      ids[kind] = (await c.jobs.enqueue({ queue, kind, maxAttempts: 1 })).job!.id;
    }

    // Requests are pushed as responses arrive: a tiny queue-backed async iterable.
    const pending: Parameters<typeof c.workers.lease>[0] extends AsyncIterable<infer T> ? T[] : never = [];
    let wake: (() => void) | undefined;
    let closed = false;
    const send = (m: (typeof pending)[number]) => {
      pending.push(m);
      wake?.();
    };
    const requests = (async function* () {
      for (;;) {
        const m = pending.shift();
        if (m) yield m;
        else if (closed) return;
        else await new Promise<void>((r) => (wake = r));
      }
    })();

    send({ msg: { case: "open", value: { workerId: "ts-protocol-test", queues: [queue], maxInFlight: 3 } } });
    const responses = c.workers.lease(requests)[Symbol.asyncIterator]();
    const next = async () => {
      for (;;) {
        const r = await responses.next();
        assert.ok(!r.done, "stream ended early");
        if (r.value.msg.case !== "heartbeat") return r.value;
      }
    };

    const leased = new Map<string, { id: string; token: string; expires: Date }>();
    while (leased.size < 3) {
      const m = await next();
      assert.equal(m.msg.case, "jobs");
      if (m.msg.case !== "jobs") return;
      for (const lj of m.msg.value.jobs) {
        assert.ok(lj.leaseToken && lj.leaseExpiresAt);
        assert.equal(lj.job?.state, JobState.RUNNING);
        leased.set(lj.job!.kind, { id: lj.job!.id, token: lj.leaseToken, expires: timestampDate(lj.leaseExpiresAt!) });
      }
    }

    const slow = leased.get("slow")!;
    send({
      msg: { case: "extend", value: { jobs: [{ jobId: slow.id, leaseToken: slow.token, extendBy: durationFromMs(600_000) }] } },
    });
    const ext = await next();
    assert.equal(ext.msg.case, "extended");
    if (ext.msg.case === "extended") {
      assert.equal(ext.msg.value.jobId, slow.id);
      assert.ok(timestampDate(ext.msg.value.leaseExpiresAt!) > slow.expires);
    }

    const ok = leased.get("ok")!;
    const boom = leased.get("boom")!;
    send({
      msg: {
        case: "complete",
        value: { jobs: [{ jobId: ok.id, leaseToken: ok.token, result: { sent: true } }, { jobId: slow.id, leaseToken: slow.token }] },
      },
    });
    send({
      msg: {
        case: "fail",
        value: {
          jobs: [{ jobId: boom.id, leaseToken: boom.token, error: { message: "mailbox does not exist" }, failureClass: FailureClass.DO_NOT_RETRY }],
        },
      },
    });
    assert.deepEqual((await waitForState(c, ok.id, JobState.SUCCEEDED)).result, { sent: true });
    await waitForState(c, slow.id, JobState.SUCCEEDED);
    assert.equal((await waitForState(c, boom.id, JobState.FAILED)).lastError?.message, "mailbox does not exist");

    // The lease on "ok" ended with its outcome: the same token again changes nothing.
    send({ msg: { case: "complete", value: { jobs: [{ jobId: ok.id, leaseToken: ok.token }] } } });
    const rej = await next();
    assert.equal(rej.msg.case, "rejected");
    assert.equal(rej.msg.value?.jobId, ok.id);

    closed = true;
    wake?.();
    const end = await responses.next();
    assert.ok(end.done, "the server closes the stream after the worker half-closes");
  });

  test("runWorker completes, retries, dead-letters, extends and cancels", async () => {
    const c = connect(ADDRESS!);
    const queue = queueName();
    const enqueue = async (kind: string, maxAttempts: number) =>
      (await c.jobs.enqueue({ queue, kind, maxAttempts, payload: { kind }, leaseDuration: durationFromMs(2000) })).job!.id;
    const okId = await enqueue("ok", 3);
    const flakyId = await enqueue("flaky", 3);
    const fatalId = await enqueue("fatal", 3);
    const slowId = await enqueue("slow", 1);
    const cancelId = await enqueue("cancel_me", 1);

    let flakyRuns = 0;
    let cancelStarted!: () => void;
    const started = new Promise<void>((r) => (cancelStarted = r));
    const stop = new AbortController();
    const run = runWorker(
      c.transport,
      { workerId: "ts-helper-test", queues: [queue], maxInFlight: 10, extendEveryMs: 100, signal: stop.signal },
      async (job, ctx): Promise<JsonObject | void> => {
        switch (job.kind) {
          case "ok":
            return { attempt: job.attempt };
          case "flaky":
            if (++flakyRuns === 1) throw new RetryAfterError("transient", 10);
            return;
          case "fatal":
            throw new PermanentError("bad payload");
          case "slow": {
            // Runs until the worker has extended the lease at least once, as seen by the server.
            const first = timestampDate(job.leaseExpiresAt!);
            const end = Date.now() + DEADLINE_MS;
            while (Date.now() < end) {
              const { job: now } = await c.jobs.getJob({ id: job.id });
              if (timestampDate(now!.leaseExpiresAt!) > first) return { extended: true };
              await delay(20);
            }
            throw new PermanentError("lease was never extended");
          }
          case "cancel_me":
            cancelStarted();
            await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));
            return;
        }
        throw new PermanentError(`unknown kind ${job.kind}`);
      },
    );

    await started;
    const c1 = await c.jobs.cancelJob({ id: cancelId });
    assert.equal(c1.outcome, CancelOutcome.CANCEL_REQUESTED);

    assert.deepEqual((await waitForState(c, okId, JobState.SUCCEEDED)).result, { attempt: 1 });
    const flaky = await waitForState(c, flakyId, JobState.SUCCEEDED);
    assert.equal(flaky.attempt, 2);
    assert.deepEqual(flaky.errors.map((e) => e.message), ["transient"]);
    const fatal = await waitForState(c, fatalId, JobState.FAILED);
    assert.equal(fatal.attempt, 1);
    assert.equal(fatal.lastError?.message, "bad payload");
    assert.deepEqual((await waitForState(c, slowId, JobState.SUCCEEDED)).result, { extended: true });
    await waitForState(c, cancelId, JobState.CANCELLED);

    stop.abort();
    await run; // resolves once running jobs reported and the server closed the stream
  });
});
