"""The dashboard in a real browser: Playwright (Python) driving Debian's Chromium against a real
server, with a real worker. Screenshots go to .artifacts/dashboard/ (gitignored; the path is
printed). Without /usr/bin/chromium these skip, unless JOBQUEUE_REQUIRE_CLIENTS is set (CI),
which makes them fail instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from jobqueue_grpc import AsyncClient, DoNotRetry, JobContext, Worker
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2 as dls
from jobqueue_grpc.gen.jobqueue.v1 import dead_letter_service_pb2_grpc as dlsg
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qs
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qsg
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2 as ss
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2_grpc as ssg
from jobqueue_grpc.server import JobQueueServer
from tests import conftest
from tests.support import running, wait_for_value, wait_until
from tests.test_http import free_port

CHROMIUM = os.environ.get("JOBQUEUE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = (
    Path(
        os.environ.get("JOBQUEUE_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts")
    )
    / "dashboard"
)
TIMEOUT_MS = 15_000

try:
    from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extra pins it
    async_playwright = None  # type: ignore[assignment]


def _unavailable() -> str | None:
    if async_playwright is None:
        return "playwright is not installed (the dev extra has it)"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    why = _unavailable()
    if why:
        if os.environ.get("JOBQUEUE_REQUIRE_CLIENTS"):
            pytest.fail(f"JOBQUEUE_REQUIRE_CLIENTS is set but {why}")
        pytest.skip(why)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {ARTIFACTS}")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield b
        await b.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    p = await context.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    yield p
    await context.close()


async def shot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


async def dead_letters(srv: JobQueueServer, n: int) -> list[str]:
    """`n` dead letters in queue "dead", made by a real worker."""
    worker = Worker(f"127.0.0.1:{srv.port}", queues=["dead"])

    @worker.handler("charge")
    async def charge(ctx: JobContext) -> None:
        raise DoNotRetry("card declined")

    async with AsyncClient(f"127.0.0.1:{srv.port}") as client:
        ids = [(await client.enqueue("charge", {"n": i}, queue="dead")).job.id for i in range(n)]

        async def failed() -> bool:
            jobs = [await client.get_job(i) for i in ids]
            return all(j.state == job_pb2.JOB_STATE_FAILED for j in jobs)

        async with running(worker):
            await wait_until(failed, within=15)
    return ids


async def test_dashboard_counts_pause_requeue_and_a_job_going_live(
    make_server: conftest.ServerFactory, page: Page
) -> None:
    srv = await make_server(http_port=free_port())
    console = Console(page)
    base = f"http://127.0.0.1:{srv.http_port}"
    dead = await dead_letters(srv, 2)
    async with AsyncClient(f"127.0.0.1:{srv.port}") as client:
        for i in range(3):
            await client.enqueue("resize", {"image": f"{i}.png"}, queue="images")
        await client.enqueue("send", {"to": "ada@example.com"}, queue="email")

        # -- queues: the counts ListQueues gives ---------------------------------------------
        await page.goto(base + "/")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            queues = (await qsg.QueueServiceStub(ch).ListQueues(qs.ListQueuesRequest())).queues
        assert {q.name for q in queues} == {"dead", "email", "images"}
        for q in queues:
            row = page.locator(f'tr[data-queue="{q.name}"]')
            for state in ("queued", "running", "succeeded", "failed"):
                want = str(getattr(q.counts, state))
                await expect(row.locator(f'td[data-state="{state}"]')).to_have_text(want)
        await expect(page.locator("#live")).to_have_text("live")
        await shot(page, "queues")

        # -- pause a queue ---------------------------------------------------------------------
        await page.locator('tr[data-queue="email"] button[data-action="pause"]').click()
        await expect(page.locator('tr[data-queue="email"] td[data-field="paused"]')).to_have_text(
            "paused"
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got = await qsg.QueueServiceStub(ch).GetQueue(qs.GetQueueRequest(name="email"))
        assert got.queue.paused

        # -- dead letters: stats, the purge's dry-run count, requeue one -----------------------
        await page.goto(base + "/#dead")
        await expect(page.locator("#dead-total")).to_have_text("2")
        await expect(page.locator("tr[data-dead-letter]")).to_have_count(2)
        await page.locator("#dead-purge").click()
        await expect(page.locator("#confirm-text")).to_contain_text("delete 2 dead letter(s)")
        await shot(page, "purge-confirmation")
        await page.locator("#confirm-cancel").click()
        row = page.locator(f'tr[data-dead-letter="{dead[0]}"]')
        await row.locator('button[data-action="requeue"]').click()
        await expect(row).to_have_count(0)
        await expect(page.locator("#dead-total")).to_have_text("1")
        job = await client.get_job(dead[0])
        assert job.state == job_pb2.JOB_STATE_QUEUED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stats = await dlsg.DeadLetterServiceStub(ch).GetDeadLetterStats(
                dls.GetDeadLetterStatsRequest()
            )
        assert stats.total == 1

        # -- a job going QUEUED -> RUNNING -> SUCCEEDED live, while a real worker runs it --------
        await page.goto(base + "/#jobs")
        await page.evaluate("window.__notReloaded = true")
        await expect(page.locator("#live")).to_have_text("live")
        r = await client.enqueue("thumbnail", {"image": "cat.png"}, queue="live")
        row = page.locator(f'tr[data-job="{r.job.id}"]')
        await expect(row.locator('[data-field="state"]')).to_have_text("QUEUED")  # via WatchJobs
        await row.click()
        detail = page.locator(f'[data-detail="{r.job.id}"]')
        await expect(detail.locator('dd[data-field="state"]')).to_have_text("QUEUED")
        await expect(page.locator("#job-payload")).to_contain_text('"cat.png"')

        release = asyncio.Event()
        worker = Worker(f"127.0.0.1:{srv.port}", queues=["live"])

        @worker.handler("thumbnail")
        async def thumbnail(ctx: JobContext) -> dict[str, Any]:
            await ctx.progress({"done": 50})
            await release.wait()
            return {"thumbnail": "cat-128.png"}

        async with running(worker):
            await expect(detail.locator('dd[data-field="state"]')).to_have_text("RUNNING")
            await expect(page.locator("#job-progress")).to_contain_text('"done": 50')
            release.set()
            await expect(detail.locator('dd[data-field="state"]')).to_have_text("SUCCEEDED")
            await expect(row.locator('[data-field="state"]')).to_have_text("SUCCEEDED")
        await expect(page.locator("#job-result")).to_contain_text("cat-128.png")
        assert await page.evaluate("window.__notReloaded") is True  # no reload happened
        await shot(page, "job-live")

    assert console.errors == []


async def test_dashboard_asks_for_a_token_and_keeps_it_for_the_tab(
    make_server: conftest.ServerFactory, page: Page
) -> None:
    srv = await make_server(http_port=free_port(), auth_tokens="admin:dash-secret")
    async with AsyncClient(f"127.0.0.1:{srv.port}", token="dash-secret") as client:
        await client.enqueue("k", queue="private")
    await page.goto(f"http://127.0.0.1:{srv.http_port}/")
    await expect(page.locator("#login")).to_be_visible()
    await shot(page, "token")
    await page.locator("#token").fill("dash-secret")
    await page.locator("#login-ok").click()
    await expect(page.locator('tr[data-queue="private"] td[data-state="queued"]')).to_have_text("1")
    assert await page.evaluate("sessionStorage.getItem('jobqueue.token')") == "dash-secret"
    await page.reload()  # the same tab keeps it: no question this time
    await expect(page.locator('tr[data-queue="private"]')).to_have_count(1)
    await expect(page.locator("#login")).not_to_be_visible()


async def test_the_schedules_tab_lists_pauses_and_triggers(
    make_server: conftest.ServerFactory, page: Page
) -> None:
    srv = await make_server(http_port=free_port())
    console = Console(page)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = ssg.ScheduleServiceStub(ch)
        job = js.EnqueueRequest(queue="reports", kind="digest")
        every = ss.Schedule(id="hourly", job=job)
        every.every.FromSeconds(3600)
        cron = ss.Schedule(id="nightly", cron="0 3 * * *", timezone="Europe/Berlin", job=job)
        for sc in (every, cron):
            await stub.CreateSchedule(ss.CreateScheduleRequest(schedule=sc))

        await page.goto(f"http://127.0.0.1:{srv.http_port}/#schedules")
        await expect(page.locator("tr[data-schedule]")).to_have_count(2)
        nightly = page.locator('tr[data-schedule="nightly"]')
        await expect(nightly.locator('[data-field="timing"]')).to_have_text(
            "0 3 * * * (Europe/Berlin)"
        )
        hourly = page.locator('tr[data-schedule="hourly"]')
        await expect(hourly.locator('[data-field="timing"]')).to_have_text("every 3600s")

        await hourly.locator('button[data-action="pause"]').click()
        await expect(hourly.locator('[data-field="paused"]')).to_have_text("paused")
        got = await stub.GetSchedule(ss.GetScheduleRequest(id="hourly"))
        assert got.schedule.paused

        await nightly.locator('button[data-action="trigger"]').click()
        got = await wait_for_value(
            lambda: stub.GetSchedule(ss.GetScheduleRequest(id="nightly")),
            lambda r: bool(r.schedule.last_job_id),
            what="the triggered job recorded",
        )
        await expect(nightly.locator('[data-field="last-job"]')).to_have_text(
            got.schedule.last_job_id[-12:]
        )
        await shot(page, "schedules")
    assert console.errors == []


async def test_queue_limits_and_why_a_job_waits_are_shown(
    make_server: conftest.ServerFactory, page: Page
) -> None:
    srv = await make_server(http_port=free_port())
    console = Console(page)
    async with AsyncClient(f"127.0.0.1:{srv.port}") as client:
        held = await client.enqueue("export", queue="exports", concurrency_key="tenant-a")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        limits = qs.QueueLimits(max_running=2, key_max_running=1, rate=5)
        await qsg.QueueServiceStub(ch).SetQueueLimits(
            qs.SetQueueLimitsRequest(name="exports", limits=limits)
        )
    await page.goto(f"http://127.0.0.1:{srv.http_port}/")
    await expect(page.locator('tr[data-queue="exports"] td[data-field="limits"]')).to_have_text(
        "≤2 running, ≤1 per key, 5/s"
    )
    await page.goto(f"http://127.0.0.1:{srv.http_port}/#jobs")
    await page.locator(f'tr[data-job="{held.job.id}"]').click()
    await expect(page.locator('dd[data-field="concurrency key"]')).to_have_text("tenant-a")
    await shot(page, "limits")
    assert console.errors == []
