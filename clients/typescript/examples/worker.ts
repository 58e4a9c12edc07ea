// Works jobs until Ctrl-C: npm run build && node dist/examples/worker.js 127.0.0.1:50051
import { PermanentError, grpcTransport, runWorker } from "../src/index.js";

const [address = "127.0.0.1:50051"] = process.argv.slice(2);
// SIGINT/SIGTERM: stop taking jobs, finish and report the running ones, then exit.
const stop = new AbortController();
for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => stop.abort());

await runWorker(
  grpcTransport(address),
  { workerId: "ts-example", queues: ["default"], maxInFlight: 8, signal: stop.signal },
  async (job) => {
    const to = job.payload?.to;
    if (typeof to !== "string") throw new PermanentError("payload has no 'to'"); // straight to the DLQ
    // The producer's W3C trace context and labels come with every lease. With OpenTelemetry
    // (@opentelemetry/api), run the work in a child of the producer's span:
    //   const parent = propagation.extract(context.active(),
    //     { traceparent: job.traceparent, tracestate: job.tracestate });
    //   await tracer.startActiveSpan(`process ${job.kind}`, { kind: SpanKind.CONSUMER }, parent, ...)
    if (job.traceparent) {
      console.log(`job ${job.id} continues trace ${job.traceparent}`, job.metadata);
    }
    console.log(`job ${job.id} (${job.kind}, attempt ${job.attempt}): sending to ${to}`);
    return { deliveredTo: to };
  },
);
