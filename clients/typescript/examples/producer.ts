// Enqueues jobs: npm run build && node dist/examples/producer.js 127.0.0.1:50051 3 [RUN]
//
// Each run uses fresh idempotency keys (ts-producer-<RUN>-<i>); pass the same RUN again to see
// the idempotency keys at work: the same jobs come back, "already there".
import { connect } from "../src/index.js";

const [
  address = "127.0.0.1:50051",
  n = "3",
  run = Date.now().toString(36) + Math.random().toString(36).slice(2, 6),
] = process.argv.slice(2);
const { jobs } = connect(address);
for (let i = 0; i < Number(n); i++) {
  const { job, created } = await jobs.enqueue({
    queue: "default",
    kind: "send_email",
    payload: { to: `user${i}@example.com` },
    idempotencyKey: `ts-producer-${run}-${i}`, // same key twice: one job
  });
  console.log(job?.id, created ? "created" : "already there");
}
