// Enqueues jobs: npm run build && node dist/examples/producer.js 127.0.0.1:50051 3
import { connect } from "../src/index.js";

const [address = "127.0.0.1:50051", n = "3"] = process.argv.slice(2);
const { jobs } = connect(address);
for (let i = 0; i < Number(n); i++) {
  const { job, created } = await jobs.enqueue({
    queue: "default",
    kind: "send_email",
    payload: { to: `user${i}@example.com` },
    idempotencyKey: `welcome-${i}`, // enqueue twice, get one job
  });
  console.log(job?.id, created ? "created" : "already there");
}
