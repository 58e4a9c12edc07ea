// waitForJob: the job once it is terminal, on the server's WatchJob stream (pushed changes,
// nothing polls). watchJob yields every change on the way.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { JobState, type Job } from "./gen/jobqueue/v1/job_pb.js";
import type { JobService } from "./gen/jobqueue/v1/job_service_pb.js";

const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]);

/** Whether a job in `state` will change no more. */
export function isTerminal(state: JobState): boolean {
  return TERMINAL.has(state);
}

export interface WaitOptions {
  /** Ends the wait (an AbortError) when aborted; e.g. AbortSignal.timeout(60_000). */
  signal?: AbortSignal;
}

/**
 * The job now, then again on every change (state, attempt, progress, result), ending with its
 * terminal state. A stream that ends UNAVAILABLE (a server draining) is opened again.
 */
export async function* watchJob(jobs: Client<typeof JobService>, id: string, opts: WaitOptions = {}): AsyncGenerator<Job> {
  for (;;) {
    let last: Job | undefined;
    try {
      for await (const resp of jobs.watchJob({ id }, { signal: opts.signal })) {
        if (resp.job) {
          last = resp.job;
          yield resp.job;
        }
      }
      if (last && isTerminal(last.state)) return;
    } catch (err) {
      if (ConnectError.from(err).code !== Code.Unavailable || opts.signal?.aborted) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, 500)); // then try again
  }
}

/** The job once it is SUCCEEDED, FAILED or CANCELLED. */
export async function waitForJob(jobs: Client<typeof JobService>, id: string, opts: WaitOptions = {}): Promise<Job> {
  let last: Job | undefined;
  for await (const job of watchJob(jobs, id, opts)) last = job;
  return last!;
}
