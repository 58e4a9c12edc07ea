// Enqueues jobs: npm run build && node dist/examples/producer.js 127.0.0.1:50051 3 [RUN] [--wait]
//
// Each run uses fresh idempotency keys (ts-producer-<RUN>-<i>); pass the same RUN again to see
// the idempotency keys at work: the same jobs come back, "already there".
// With --wait it then waits for each to finish (waitForJob: the server pushes, nothing polls).
import { connect, JobState, waitForJob } from "../src/index.js";

const args = process.argv.slice(2);
const wait = args.includes("--wait");
const [
  address = "127.0.0.1:50051",
  n = "3",
  run = Date.now().toString(36) + Math.random().toString(36).slice(2, 6),
] = args.filter((a) => a !== "--wait");
const { jobs } = connect(address);
const ids: string[] = [];
for (let i = 0; i < Number(n); i++) {
  const { job, created } = await jobs.enqueue({
    queue: "default",
    kind: "send_email",
    payload: { to: `user${i}@example.com` },
    idempotencyKey: `ts-producer-${run}-${i}`, // same key twice: one job
  });
  console.log(job?.id, created ? "created" : "already there");
  if (job) ids.push(job.id);
}
if (wait) {
  for (const id of ids) {
    const job = await waitForJob(jobs, id, { signal: AbortSignal.timeout(300_000) });
    console.log(id, JobState[job.state], JSON.stringify(job.result ?? {}));
  }
}
