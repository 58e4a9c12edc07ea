// The client side of WorkerService.Lease: one bidirectional stream, jobs pushed by the server,
// each handled concurrently, its outcome reported on the same stream. The generated stubs are
// enough to speak the protocol; this saves every worker from writing the same loop: lease
// extension while a handler runs, cancel notices turned into AbortSignals, graceful drain.
import type { JsonObject, MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Transport } from "@connectrpc/connect";
import { createClient } from "@connectrpc/connect";
import type { Job } from "./gen/jobqueue/v1/job_pb.js";
import {
  FailureClass,
  LeaseRequestSchema,
  WorkerService,
  type LeasedJob,
} from "./gen/jobqueue/v1/worker_service_pb.js";

type LeaseRequestInit = MessageInitShape<typeof LeaseRequestSchema>;

/** Fail the job for good: it goes to the dead-letter queue whatever attempts remain. */
export class PermanentError extends Error {
  override name = "PermanentError";
}

/** Fail this attempt and ask for the next one no sooner than `afterMs` from now. */
export class RetryAfterError extends Error {
  override name = "RetryAfterError";
  constructor(
    message: string,
    readonly afterMs: number,
  ) {
    super(message);
  }
}

export interface JobContext {
  /** Aborts when the job's cancel is requested (JobService.CancelJob) or the stream ends. */
  signal: AbortSignal;
  leaseToken: string;
  /** Replaces the job's progress, visible in GetJob. */
  progress(progress: JsonObject): void;
}

/** Resolves to the job's result (or nothing) to complete it; throws to fail the attempt. */
export type Handler = (job: Job, ctx: JobContext) => Promise<JsonObject | void>;

export interface WorkerOptions {
  workerId?: string;
  queues?: string[];
  kinds?: string[];
  maxInFlight?: number;
  /** How often a running job's lease is extended; default half the job's lease_duration. */
  extendEveryMs?: number;
  /** Aborting it drains: no new jobs, running ones finish and report, then runWorker resolves. */
  signal?: AbortSignal;
  onRejected?: (jobId: string, reason: string) => void;
}

/** An async iterable whose items are pushed from outside: the request side of the stream. */
class Outbox implements AsyncIterable<LeaseRequestInit> {
  private items: LeaseRequestInit[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;

  push(item: LeaseRequestInit): void {
    if (this.ended) return;
    this.items.push(item);
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<LeaseRequestInit> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
      } else if (this.ended) {
        return;
      } else {
        await new Promise<void>((resolve) => (this.waiter = resolve));
      }
    }
  }
}

const CANCEL_REQUESTED = "jobqueue: cancel requested";

/**
 * Opens a Lease stream and works jobs until `options.signal` aborts or the server drains; then
 * lets running handlers finish and report, and resolves once the server closes the stream
 * (call it again to reconnect). Rejects with the stream's error otherwise.
 */
export async function runWorker(
  transport: Transport,
  options: WorkerOptions,
  handler: Handler,
): Promise<void> {
  const client = createClient(WorkerService, transport);
  const outbox = new Outbox();
  const running = new Map<string, AbortController>();
  const tasks = new Set<Promise<void>>();
  let draining = false;

  const maybeFinish = () => {
    if (draining && running.size === 0) outbox.end();
  };
  const drain = (tellServer: boolean) => {
    if (!draining && tellServer) outbox.push({ msg: { case: "drain", value: {} } });
    draining = true;
    maybeFinish();
  };
  const onAbort = () => drain(true);
  options.signal?.addEventListener("abort", onAbort, { once: true });

  outbox.push({
    msg: {
      case: "open",
      value: {
        workerId: options.workerId ?? "",
        queues: options.queues ?? [],
        kinds: options.kinds ?? [],
        maxInFlight: options.maxInFlight ?? 0,
      },
    },
  });
  if (options.signal?.aborted) drain(true);

  const start = (lj: LeasedJob) => {
    const job = lj.job;
    if (!job) return;
    const token = lj.leaseToken;
    const abort = new AbortController();
    running.set(job.id, abort);
    const leaseMs = job.leaseDuration
      ? Number(job.leaseDuration.seconds) * 1000 + job.leaseDuration.nanos / 1e6
      : 30_000;
    const every = options.extendEveryMs ?? Math.max(leaseMs / 2, 10);
    const timer = setInterval(() => {
      outbox.push({ msg: { case: "extend", value: { jobs: [{ jobId: job.id, leaseToken: token }] } } });
    }, every);
    const ctx: JobContext = {
      signal: abort.signal,
      leaseToken: token,
      progress: (progress) =>
        outbox.push({ msg: { case: "progress", value: { jobId: job.id, leaseToken: token, progress } } }),
    };
    const task = (async () => {
      let outcome: LeaseRequestInit;
      try {
        const result = await handler(job, ctx);
        outcome = {
          msg: { case: "complete", value: { jobs: [{ jobId: job.id, leaseToken: token, result: result ?? undefined }] } },
        };
      } catch (err) {
        outcome = failure(job.id, token, err, abort.signal);
      } finally {
        clearInterval(timer);
      }
      outbox.push(outcome);
      running.delete(job.id);
      maybeFinish();
    })();
    tasks.add(task);
    void task.finally(() => tasks.delete(task));
  };

  try {
    for await (const res of client.lease(outbox)) {
      switch (res.msg.case) {
        case "jobs":
          for (const lj of res.msg.value.jobs) start(lj);
          break;
        case "cancel":
          running.get(res.msg.value.jobId)?.abort(new Error(CANCEL_REQUESTED));
          break;
        case "rejected":
          options.onRejected?.(res.msg.value.jobId, res.msg.value.reason);
          break;
        case "draining":
          drain(false);
          break;
        default: // heartbeat, extended
      }
    }
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    outbox.end();
    for (const a of running.values()) a.abort(new Error("jobqueue: lease stream ended"));
    await Promise.allSettled([...tasks]);
  }
}

function failure(jobId: string, leaseToken: string, err: unknown, signal: AbortSignal): LeaseRequestInit {
  if (signal.aborted && signal.reason instanceof Error && signal.reason.message === CANCEL_REQUESTED) {
    return { msg: { case: "cancelled", value: { jobs: [{ jobId, leaseToken }] } } };
  }
  const message = err instanceof Error ? err.message : String(err);
  let failureClass = FailureClass.RETRY;
  let retryAfter;
  if (err instanceof PermanentError) {
    failureClass = FailureClass.DO_NOT_RETRY;
  } else if (err instanceof RetryAfterError) {
    failureClass = FailureClass.RETRY_AFTER;
    retryAfter = durationFromMs(err.afterMs);
  }
  return {
    msg: { case: "fail", value: { jobs: [{ jobId, leaseToken, error: { message }, failureClass, retryAfter }] } },
  };
}

