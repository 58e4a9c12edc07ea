// The dashboard: the generated TypeScript client (clients/typescript/src/gen, copied into
// src/gen by `node build.mjs gen`) over the Connect
// web transport, against the same origin's HTTP port. No API of its own: every number and every
// action is an RPC of JobService, QueueService, DeadLetterService or ScheduleService.
//
// Live: one WatchJobs stream feeds the job list and the queue counts; the open job's detail has
// its own WatchJob stream. Auth: a call refused UNAUTHENTICATED asks for a token, kept in
// sessionStorage (this tab only) and sent as `Authorization: Bearer`.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { JsonObject } from "@bufbuild/protobuf";
import { JobState, type AttemptError, type Job } from "./gen/jobqueue/v1/job_pb.js";
import { JobService } from "./gen/jobqueue/v1/job_service_pb.js";
import { QueueService, type Queue } from "./gen/jobqueue/v1/queue_service_pb.js";
import {
  DeadLetterService,
  type DeadLetter,
  type DeadLetterFilter,
} from "./gen/jobqueue/v1/dead_letter_service_pb.js";
import { ScheduleService, type Schedule } from "./gen/jobqueue/v1/schedule_service_pb.js";

const TOKEN_KEY = "jobqueue.token";
const STATES = [
  JobState.QUEUED,
  JobState.SCHEDULED,
  JobState.RUNNING,
  JobState.RETRYING,
  JobState.SUCCEEDED,
  JobState.FAILED,
  JobState.CANCELLED,
];
const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]);

const bearer: Interceptor = (next) => async (req) => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) req.header.set("Authorization", `Bearer ${token}`);
  return next(req);
};
const transport = createConnectTransport({ baseUrl: location.origin, interceptors: [bearer] });
const jobsApi = createClient(JobService, transport);
const queuesApi = createClient(QueueService, transport);
const deadApi = createClient(DeadLetterService, transport);
const schedulesApi = createClient(ScheduleService, transport);

// -- little DOM helpers -----------------------------------------------------------------------
type Child = Node | string | null | undefined | false;
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | ((ev: Event) => void)> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false) el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}
const $ = (id: string) => document.getElementById(id)!;
const stateName = (s: JobState) => JobState[s] ?? String(s);
const stateTag = (s: JobState) => h("span", { class: `state ${stateName(s)}`, "data-field": "state" }, stateName(s));
const time = (t?: Timestamp) => (t ? timestampDate(t).toISOString().replace("T", " ").slice(0, 19) : "");
const json = (v?: JsonObject) => (v === undefined ? "" : JSON.stringify(v, null, 2));

function banner(text: string): void {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

// -- auth: ask for a token when the server wants one ------------------------------------------
let asking: Promise<void> | null = null;
function askToken(why: string): Promise<void> {
  if (!asking) {
    asking = new Promise<void>((resolve) => {
      const dialog = $("login") as HTMLDialogElement;
      $("login-why").textContent = why;
      const form = $("login-form") as HTMLFormElement;
      form.onsubmit = () => {
        sessionStorage.setItem(TOKEN_KEY, ($("token") as HTMLInputElement).value.trim());
        ($("token") as HTMLInputElement).value = "";
        $("forget-token").hidden = false;
        asking = null;
        resolve();
      };
      dialog.showModal();
    });
  }
  return asking;
}

/** Runs an RPC; UNAUTHENTICATED asks for a token and tries again, other errors show a banner. */
async function rpc<T>(call: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      const out = await call();
      banner("");
      return out;
    } catch (err) {
      const e = ConnectError.from(err);
      if (e.code === Code.Unauthenticated) {
        await askToken(sessionStorage.getItem(TOKEN_KEY) ? "That token was refused; try another." : "This server needs a bearer token. It is kept for this tab only.");
        continue;
      }
      banner(`${Code[e.code]}: ${e.rawMessage}`);
      throw e;
    }
  }
}

function confirmDialog(text: string): Promise<boolean> {
  const dialog = $("confirm") as HTMLDialogElement;
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === "ok");
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// -- state --------------------------------------------------------------------------------------
const ui = {
  view: "queues",
  queues: [] as Queue[],
  jobs: new Map<string, Job>(),
  jobFilter: { queue: "", kind: "", state: JobState.UNSPECIFIED as JobState },
  selected: "",
  selectedJob: null as Job | null,
  dead: [] as DeadLetter[],
  deadFilter: { queue: "", kind: "" },
  schedules: null as Schedule[] | null, // null: not loaded yet
};

function matches(j: Job): boolean {
  const f = ui.jobFilter;
  return (!f.queue || j.queue === f.queue) && (!f.kind || j.kind === f.kind) && (!f.state || j.state === f.state);
}

// Bumped by every change this page makes to the queues: a ListQueues that started before it
// may answer after it with the old state, and must not overwrite the newer one.
let queuesVersion = 0;

async function loadQueues(): Promise<void> {
  const version = queuesVersion;
  const queues = (await rpc(() => queuesApi.listQueues({}))).queues;
  if (version !== queuesVersion) return; // a pause or resume since: its own reload follows
  ui.queues = queues;
  if (ui.view === "queues") render();
}

async function loadJobs(): Promise<void> {
  const f = ui.jobFilter;
  const page = await rpc(() => jobsApi.listJobs({ queue: f.queue, kind: f.kind, state: f.state, pageSize: 100 }));
  ui.jobs = new Map(page.jobs.map((j) => [j.id, j]));
  if (ui.view === "jobs") render();
}

let deadStats: Awaited<ReturnType<typeof deadApi.getDeadLetterStats>> | null = null;
function deadFilter(): DeadLetterFilter {
  return { $typeName: "jobqueue.v1.DeadLetterFilter", queue: ui.deadFilter.queue, kind: ui.deadFilter.kind };
}
async function loadDead(): Promise<void> {
  const [list, stats] = await Promise.all([
    rpc(() => deadApi.listDeadLetters({ filter: deadFilter(), pageSize: 100 })),
    rpc(() => deadApi.getDeadLetterStats({ filter: deadFilter() })),
  ]);
  ui.dead = list.deadLetters;
  deadStats = stats;
  if (ui.view === "dead") render();
}

async function loadSchedules(): Promise<void> {
  const all: Schedule[] = [];
  let pageToken = "";
  do {
    const page = await rpc(() => schedulesApi.listSchedules({ pageSize: 500, pageToken }));
    all.push(...page.schedules);
    pageToken = page.nextPageToken;
  } while (pageToken);
  ui.schedules = all;
  if (ui.view === "schedules") render();
}

// -- live: one WatchJobs stream for the list and the counts -------------------------------------
let countsTimer: number | undefined;
function countsSoon(): void {
  if (countsTimer === undefined) {
    countsTimer = window.setTimeout(() => {
      countsTimer = undefined;
      void loadQueues().catch(() => undefined);
    }, 250);
  }
}

async function watchAll(): Promise<void> {
  const live = $("live");
  for (;;) {
    try {
      for await (const msg of jobsApi.watchJobs({})) {
        if (!live.classList.contains("on")) {
          // the first message: watching from now on, so (re)load what the lists show
          live.classList.add("on");
          live.textContent = "live";
          await Promise.all([loadQueues(), ui.view === "jobs" ? loadJobs() : null]);
        }
        if (msg.resync) {
          await Promise.all([loadQueues(), loadJobs()]);
          continue;
        }
        let changed = false;
        for (const j of msg.jobs) {
          if (matches(j)) {
            ui.jobs.set(j.id, j);
            changed = true;
          } else if (ui.jobs.delete(j.id)) {
            changed = true;
          }
        }
        if (changed && ui.view === "jobs") renderJobsTable();
        countsSoon();
      }
    } catch (err) {
      const e = ConnectError.from(err);
      if (e.code === Code.Unauthenticated) {
        await askToken("This server needs a bearer token. It is kept for this tab only.");
        continue;
      }
    }
    live.classList.remove("on");
    live.textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// -- the open job: its own WatchJob stream ------------------------------------------------------
let detailAbort: AbortController | null = null;
async function openJob(id: string): Promise<void> {
  detailAbort?.abort();
  const abort = (detailAbort = new AbortController());
  ui.selected = id;
  ui.selectedJob = ui.jobs.get(id) ?? null;
  render();
  try {
    for await (const msg of jobsApi.watchJob({ id }, { signal: abort.signal })) {
      if (abort.signal.aborted) return;
      ui.selectedJob = msg.job ?? null;
      if (msg.job && matches(msg.job)) ui.jobs.set(msg.job.id, msg.job);
      if (ui.view === "jobs") {
        renderDetail();
        renderJobsTable();
      }
    }
  } catch (err) {
    if (!abort.signal.aborted) banner(`WatchJob: ${ConnectError.from(err).rawMessage}`);
  }
}

// -- views ----------------------------------------------------------------------------------------
function render(): void {
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    a.classList.toggle("active", a.dataset.view === ui.view);
  }
  const main = $("main");
  main.replaceChildren();
  if (ui.view === "queues") main.append(queuesView());
  else if (ui.view === "jobs") {
    main.append(jobsView());
    renderJobsTable();
    renderDetail();
  }
  else if (ui.view === "dead") main.append(deadView());
  else main.append(schedulesView());
}

function queuesView(): HTMLElement {
  const rows = ui.queues.map((q) =>
    h(
      "tr",
      { "data-queue": q.name },
      h("td", {}, h("a", { href: "#jobs", onclick: () => filterJobsBy(q.name) }, q.name)),
      h("td", { "data-field": "paused" }, q.paused ? h("span", { class: "paused" }, "paused") : "running"),
      h("td", { "data-field": "limits" }, limitsText(q.limits)),
      ...STATES.map((s) => {
        const key = stateName(s).toLowerCase() as keyof NonNullable<Queue["counts"]>;
        return h("td", { class: "num", "data-state": stateName(s).toLowerCase() }, String(q.counts?.[key] ?? 0n));
      }),
      h(
        "td",
        {},
        q.paused
          ? h("button", { "data-action": "resume", onclick: () => setPaused(q.name, false) }, "Resume")
          : h("button", { "data-action": "pause", onclick: () => setPaused(q.name, true) }, "Pause"),
      ),
    ),
  );
  return h(
    "section",
    { id: "queues" },
    h("h2", {}, "Queues"),
    rows.length
      ? h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "queue"), h("th", {}, "dispatch"), h("th", {}, "limits"), ...STATES.map((s) => h("th", { class: "num" }, stateName(s).toLowerCase())), h("th", {}, ""))),
          h("tbody", {}, ...rows),
        )
      : h("p", { class: "muted" }, "No queues yet: enqueue a job."),
  );
}

// A queue's flow control in a few words ("—" when it has none): set with SetQueueLimits or
// `jobqueue-grpc queues limit`.
function limitsText(l: Queue["limits"]): string {
  if (!l) return "—";
  const parts: string[] = [];
  if (l.maxRunning) parts.push(`≤${l.maxRunning} running`);
  if (l.keyMaxRunning) parts.push(`≤${l.keyMaxRunning} per key`);
  if (l.rate) parts.push(`${l.rate}/s`);
  if (l.keyRate) parts.push(`${l.keyRate}/s per key`);
  if (l.fairShare) parts.push("fair share");
  return parts.join(", ") || "—";
}

async function setPaused(name: string, paused: boolean): Promise<void> {
  queuesVersion++;
  const r = paused ? await rpc(() => queuesApi.pauseQueue({ name })) : await rpc(() => queuesApi.resumeQueue({ name }));
  queuesVersion++; // a ListQueues that started while the change ran may hold the old state
  ui.queues = ui.queues.map((q) => (q.name === name && r.queue ? r.queue : q));
  render();
  await loadQueues();
}

function filterJobsBy(queue: string): void {
  ui.jobFilter = { queue, kind: "", state: JobState.UNSPECIFIED };
}

function jobsView(): HTMLElement {
  const f = ui.jobFilter;
  const queueInput = h("input", { id: "filter-queue", value: f.queue, placeholder: "any" });
  const kindInput = h("input", { id: "filter-kind", value: f.kind, placeholder: "any" });
  const stateSelect = h(
    "select",
    { id: "filter-state" },
    h("option", { value: "0" }, "any"),
    ...STATES.map((s) => h("option", { value: String(s), selected: s === f.state }, stateName(s))),
  );
  const apply = () => {
    ui.jobFilter = { queue: queueInput.value.trim(), kind: kindInput.value.trim(), state: Number(stateSelect.value) as JobState };
    void loadJobs();
  };
  return h(
    "section",
    { id: "jobs" },
    h("h2", {}, "Jobs"),
    h(
      "form",
      { class: "filters", onsubmit: (ev: Event) => { ev.preventDefault(); apply(); } },
      h("label", {}, "queue", queueInput),
      h("label", {}, "kind", kindInput),
      h("label", {}, "state", stateSelect),
      h("button", { type: "submit", id: "filter-apply" }, "Filter"),
    ),
    h("div", { class: "split" }, h("div", { id: "jobs-table" }), h("div", { id: "job-detail" })),
  );
}

function renderJobsTable(): void {
  const box = document.getElementById("jobs-table");
  if (!box) return;
  const list = [...ui.jobs.values()].sort((a, b) => (a.id < b.id ? 1 : -1)).slice(0, 200);
  box.replaceChildren(
    list.length
      ? h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "queue"), h("th", {}, "kind"), h("th", {}, "state"), h("th", { class: "num" }, "attempt"), h("th", {}, "created"))),
          h(
            "tbody",
            {},
            ...list.map((j) =>
              h(
                "tr",
                { class: `clickable${j.id === ui.selected ? " selected" : ""}`, "data-job": j.id, onclick: () => void openJob(j.id) },
                h("td", { title: j.id }, j.id.slice(-12)),
                h("td", {}, j.queue),
                h("td", {}, j.kind),
                h("td", {}, stateTag(j.state)),
                h("td", { class: "num" }, `${j.attempt}/${j.maxAttempts}`),
                h("td", {}, time(j.createdAt)),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No jobs match."),
  );
}

function errorList(errors: AttemptError[]): HTMLElement {
  if (!errors.length) return h("p", { class: "muted" }, "none");
  return h(
    "ol",
    { id: "job-errors" },
    ...errors.map((e) => h("li", {}, `attempt ${e.attempt} (${e.source}, ${time(e.failedAt)}): ${e.message}`, e.details ? h("pre", {}, json(e.details)) : null)),
  );
}

function renderDetail(): void {
  const box = document.getElementById("job-detail");
  if (!box) return;
  const j = ui.selectedJob;
  if (!j) {
    box.replaceChildren(h("p", { class: "muted" }, "Select a job to see it here, live."));
    return;
  }
  const row = (k: string, v: Child) => [h("dt", {}, k), h("dd", { "data-field": k }, v)];
  box.replaceChildren(
    h(
      "div",
      { class: "panel", "data-detail": j.id },
      h("h2", {}, `Job ${j.id}`),
      h(
        "dl",
        {},
        ...row("state", stateTag(j.state)),
        ...row("queue", j.queue),
        ...row("kind", j.kind),
        ...row("attempt", `${j.attempt} of ${j.maxAttempts}`),
        ...row("priority", String(j.priority)),
        ...row("worker", j.workerId || "—"),
        ...row("concurrency key", j.concurrencyKey || "—"),
        ...row("held back", j.heldReason || "—"),
        ...row("metadata", Object.entries(j.metadata).map(([k, v]) => `${k}=${v}`).join(", ") || "—"),
        ...row("cancel requested", j.cancelRequested ? "yes" : "no"),
        ...row("created", time(j.createdAt)),
        ...row("run at", time(j.runAt)),
        ...row("started", time(j.startedAt)),
        ...row("updated", time(j.updatedAt)),
        ...row("finished", time(j.finishedAt)),
        ...row("lease expires", time(j.leaseExpiresAt)),
        ...row("idempotency key", j.idempotencyKey || "—"),
      ),
      h("h3", {}, "payload"),
      h("pre", { id: "job-payload" }, json(j.payload) || "{}"),
      h("h3", {}, "progress"),
      h("pre", { id: "job-progress" }, json(j.progress) || "—"),
      h("h3", {}, "result"),
      h("pre", { id: "job-result" }, json(j.result) || "—"),
      h("h3", {}, "errors"),
      errorList(j.errors),
      TERMINAL.has(j.state)
        ? null
        : h("button", { class: "danger", "data-action": "cancel", onclick: () => void cancelJob(j.id) }, j.state === JobState.RUNNING ? "Request cancel" : "Cancel"),
    ),
  );
}

async function cancelJob(id: string): Promise<void> {
  const r = await rpc(() => jobsApi.cancelJob({ id }));
  if (r.job) {
    ui.selectedJob = r.job;
    renderDetail();
  }
}

function deadView(): HTMLElement {
  const f = ui.deadFilter;
  const queueInput = h("input", { id: "dead-queue", value: f.queue, placeholder: "any" });
  const kindInput = h("input", { id: "dead-kind", value: f.kind, placeholder: "any" });
  const apply = () => {
    ui.deadFilter = { queue: queueInput.value.trim(), kind: kindInput.value.trim() };
    void loadDead();
  };
  const s = deadStats;
  const rows = ui.dead.map((d) =>
    h(
      "tr",
      { "data-dead-letter": d.jobId },
      h("td", { title: d.jobId }, d.jobId.slice(-12)),
      h("td", {}, d.queue),
      h("td", {}, d.kind),
      h("td", { class: "num" }, `${d.attempts}/${d.maxAttempts}`),
      h("td", {}, d.lastError?.message ?? ""),
      h("td", {}, time(d.failedAt)),
      h(
        "td",
        {},
        h("button", { "data-action": "requeue", onclick: () => void requeueOne(d.jobId) }, "Requeue"),
        " ",
        h("button", { class: "danger", "data-action": "delete", onclick: () => void deleteOne(d.jobId) }, "Delete"),
      ),
    ),
  );
  return h(
    "section",
    { id: "dead" },
    h("h2", {}, "Dead letters"),
    h(
      "div",
      { class: "stats" },
      h("div", {}, "total ", h("strong", { id: "dead-total" }, String(s?.total ?? 0n))),
      h("div", {}, "by queue: ", (s?.byQueue ?? []).map((n) => `${n.name} ${n.count}`).join(", ") || "—"),
      h("div", {}, "by kind: ", (s?.byKind ?? []).map((n) => `${n.name} ${n.count}`).join(", ") || "—"),
      h("div", {}, "oldest ", time(s?.oldestFailedAt) || "—"),
    ),
    h(
      "form",
      { class: "filters", onsubmit: (ev: Event) => { ev.preventDefault(); apply(); } },
      h("label", {}, "queue", queueInput),
      h("label", {}, "kind", kindInput),
      h("button", { type: "submit", id: "dead-apply" }, "Filter"),
      h("button", { type: "button", id: "dead-requeue-all", onclick: () => void requeueMatching() }, "Requeue matching…"),
      h("button", { type: "button", class: "danger", id: "dead-purge", onclick: () => void purgeMatching() }, "Purge matching…"),
    ),
    rows.length
      ? h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "job"), h("th", {}, "queue"), h("th", {}, "kind"), h("th", { class: "num" }, "attempts"), h("th", {}, "last error"), h("th", {}, "failed"), h("th", {}, ""))),
          h("tbody", {}, ...rows),
        )
      : h("p", { class: "muted" }, "No dead letters match."),
  );
}

async function requeueOne(jobId: string): Promise<void> {
  await rpc(() => deadApi.requeueDeadLetter({ jobId }));
  await loadDead();
}

async function deleteOne(jobId: string): Promise<void> {
  if (await confirmDialog(`Delete dead letter ${jobId}? Its job stays FAILED.`)) {
    await rpc(() => deadApi.deleteDeadLetter({ jobId }));
    await loadDead();
  }
}

async function requeueMatching(): Promise<void> {
  const dry = await rpc(() => deadApi.requeueDeadLetters({ filter: deadFilter(), dryRun: true }));
  if (await confirmDialog(`Requeue ${dry.count} dead letter(s) matching this filter?`)) {
    await rpc(() => deadApi.requeueDeadLetters({ filter: deadFilter() }));
    await loadDead();
  }
}

async function purgeMatching(): Promise<void> {
  const dry = await rpc(() => deadApi.purgeDeadLetters({ filter: deadFilter(), dryRun: true }));
  if (await confirmDialog(`Permanently delete ${dry.count} dead letter(s) matching this filter?`)) {
    await rpc(() => deadApi.purgeDeadLetters({ filter: deadFilter() }));
    await loadDead();
  }
}

const seconds = (d?: Duration) => (d ? Number(d.seconds) + d.nanos / 1e9 : 0);
function timing(sc: Schedule): string {
  return sc.cron ? `${sc.cron} (${sc.timezone || "UTC"})` : `every ${seconds(sc.every)}s`;
}

function schedulesView(): HTMLElement {
  const list = ui.schedules;
  const rows = (list ?? []).map((sc) =>
    h(
      "tr",
      { "data-schedule": sc.id },
      h("td", {}, sc.id),
      h("td", { "data-field": "timing" }, timing(sc)),
      h("td", {}, `${sc.job?.queue ?? ""} / ${sc.job?.kind ?? ""}`),
      h("td", { "data-field": "paused" }, sc.paused ? h("span", { class: "paused" }, "paused") : "active"),
      h("td", { "data-field": "next" }, sc.paused ? "—" : time(sc.nextRunAt)),
      h("td", { "data-field": "last" }, time(sc.lastRunAt) || "—"),
      h(
        "td",
        { "data-field": "last-job" },
        sc.lastJobId ? h("a", { href: "#jobs", title: sc.lastJobId, onclick: () => void openFromSchedule(sc.lastJobId) }, sc.lastJobId.slice(-12)) : "—",
      ),
      h(
        "td",
        {},
        sc.paused
          ? h("button", { "data-action": "resume", onclick: () => void setSchedulePaused(sc.id, false) }, "Resume")
          : h("button", { "data-action": "pause", onclick: () => void setSchedulePaused(sc.id, true) }, "Pause"),
        " ",
        h("button", { "data-action": "trigger", onclick: () => void triggerSchedule(sc.id) }, "Run now"),
      ),
    ),
  );
  return h(
    "section",
    { id: "schedules" },
    h("h2", {}, "Schedules"),
    list === null
      ? h("p", { class: "muted" }, "Loading…")
      : rows.length
        ? h(
            "table",
            {},
            h("thead", {}, h("tr", {}, h("th", {}, "schedule"), h("th", {}, "timing"), h("th", {}, "queue / kind"), h("th", {}, "state"), h("th", {}, "next run"), h("th", {}, "last run"), h("th", {}, "last job"), h("th", {}, ""))),
            h("tbody", {}, ...rows),
          )
        : h("p", { class: "muted", id: "schedules-none" }, "No schedules: create one with ScheduleService/CreateSchedule or `jobqueue-grpc schedules create`."),
  );
}

function replaceSchedule(sc?: Schedule): void {
  if (sc && ui.schedules) ui.schedules = ui.schedules.map((o) => (o.id === sc.id ? sc : o));
}

async function setSchedulePaused(id: string, paused: boolean): Promise<void> {
  const r = paused ? await rpc(() => schedulesApi.pauseSchedule({ id })) : await rpc(() => schedulesApi.resumeSchedule({ id }));
  replaceSchedule(r.schedule);
  render();
}

async function triggerSchedule(id: string): Promise<void> {
  await rpc(() => schedulesApi.triggerSchedule({ id }));
  await loadSchedules(); // last run and last job changed
}

function openFromSchedule(jobId: string): void {
  ui.jobFilter = { queue: "", kind: "", state: JobState.UNSPECIFIED };
  void openJob(jobId);
}

// -- start ----------------------------------------------------------------------------------------
async function show(view: string): Promise<void> {
  ui.view = ["queues", "jobs", "dead", "schedules"].includes(view) ? view : "queues";
  render();
  if (ui.view === "queues") await loadQueues();
  if (ui.view === "jobs") await loadJobs();
  if (ui.view === "dead") await loadDead();
  if (ui.view === "schedules") await loadSchedules();
}

window.addEventListener("hashchange", () => void show(location.hash.slice(1)).catch(() => undefined));
$("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});
void show(location.hash.slice(1)).catch(() => undefined);
void watchAll();
