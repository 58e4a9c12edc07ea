// A periodic job: npm run build && node dist/examples/schedule.js 127.0.0.1:50051
// Creates (or replaces) the schedule "nightly-report": 03:00 in Berlin, one job per tick, never
// two unfinished at once (unique), and the missed ticks of a long outage run once.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { connect, MissedTickPolicy, ScheduleSchema } from "../src/index.js";

const [address = "127.0.0.1:50051"] = process.argv.slice(2);
const { schedules } = connect(address);
const schedule = create(ScheduleSchema, {
  id: "nightly-report",
  cron: "0 3 * * *",
  timezone: "Europe/Berlin",
  missedTickPolicy: MissedTickPolicy.RUN_ONCE,
  job: { queue: "reports", kind: "nightly_report", payload: { full: true }, unique: { key: "nightly-report" } },
});
try {
  await schedules.createSchedule({ schedule });
} catch (err) {
  if (ConnectError.from(err).code !== Code.AlreadyExists) throw err;
  await schedules.updateSchedule({ schedule });
}
const { schedule: got } = await schedules.getSchedule({ id: schedule.id });
console.log(got?.id, "next run", got?.nextRunAt ? new Date(Number(got.nextRunAt.seconds) * 1000).toISOString() : "-");
const { job } = await schedules.triggerSchedule({ id: schedule.id }); // one run now
console.log("triggered", job?.id);
