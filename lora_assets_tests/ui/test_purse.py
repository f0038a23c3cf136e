"""Money under the user's control, and the data in plain sight, in a browser (issue 21).

Real dagster-webserver + dagster-daemon on PostgreSQL, the local blob store served by
`serve_directory` (what `make ui` runs as `lora-assets serve-files`), and a loopback Claude
simulator this test owns (latency 1 s, requests counted at its HTTP layer); headless chromium:

1. a plan with only a `name` is refused by the launchpad (the key lists are required);
2. a plan over LORA_AUTO_APPROVE_USD with `pilot_items: 3`: the sensor runs the pilot only, whose
   metadata shows 3 conversations with their cost and the re-estimate; the batch then waits
   (a sensor tick passes without a run) and starts only after `approve_batch`;
3. progress observations appear on `raw_conversations` while the approved run generates;
4. a cancel from the `cancel_batch` launchpad mid-run: at most LORA_MAX_CONCURRENCY requests reach
   the simulator after the batch's status turned `cancelled`; the run ends with the one-line
   "cancelled" message first, and the partition has a materialization with what it kept;
5. the documented action (batch_pipeline for the partition again) parses what was kept, asking
   the simulator for nothing;
6. a sample conversation is readable on the asset page, and a training-file output opens from
   its metadata link in the browser.

Screenshots go to test-artifacts/ui/purse-*.png (docs/ui-13…ui-20 with LORA_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.store import tables as t
from lora_assets.store.file_server import serve_directory
from lora_assets.store import training_files as tfq
from lora_assets_tests.ui.conftest import ARTIFACTS, REPO, DagsterServers, dagster_deployment, idle

pytestmark = pytest.mark.timeout(900)

UI_TIMEOUT_MS = 60_000
RUN_DEADLINE_S = 420.0
SENSOR_DEADLINE_S = 240.0
KEY = "purse"
CONCURRENCY = 2
IN_PROCESS = "execution:\n  config:\n    in_process: {}\n"
NAME_ONLY = "ops:\n  plan_batch_op:\n    config:\n      name: everything\n" + IN_PROCESS
# 1 persona × 2 arcs × 14 topics = 28 items, ≈ $0.03 estimated: above the $0.01 threshold; its
# 3-item pilot (≈ $0.003) is not, so the pilot starts on its own.
PILOT_PLAN = ("ops:\n  plan_batch_op:\n    config:\n      name: purse\n"
              "      personas: [pragmatic_optimist]\n      arcs: [confusion_to_clarity, fear_to_confidence]\n"
              "      topics: ['*']\n      max_cost_usd: 1.0\n      pilot_items: 3\n" + IN_PROCESS)
APPROVE = f"ops:\n  approve_batch_op:\n    config:\n      batch: {KEY}\n" + IN_PROCESS
CANCEL = f"ops:\n  cancel_batch_op:\n    config:\n      batch: {KEY}\n" + IN_PROCESS


@pytest.fixture
def sim() -> Iterator[ClaudeSimulator]:
    with ClaudeSimulator(FaultConfig(latency_s=1.0)) as s:
        yield s


@pytest.fixture
def purse_ui(tmp_path: Path, pg_admin_engine: sa.Engine, sim: ClaudeSimulator, browser: Any) -> Iterator[Any]:
    """The deployment on the local store, its files served on 127.0.0.1, runs at `sim`."""
    blobs = tmp_path / "lora_data" / "blobs"
    blobs.mkdir(parents=True)
    files = serve_directory(blobs, port=0)
    env = {"ANTHROPIC_BASE_URL": sim.base_url, "LORA_MAX_CONCURRENCY": str(CONCURRENCY),
           "LORA_AUTO_APPROVE_USD": "0.01", "LORA_FILES_URL": f"http://127.0.0.1:{files.server_address[1]}"}
    try:
        # `lora-assets init` (the scaffolding in the domain DB; the front-door test does it from the
        # UI) runs while the servers start.
        with dagster_deployment("purse", tmp_path, pg_admin_engine, env, init=True) as servers:
            yield servers
    finally:
        files.shutdown()
        files.server_close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"purse-{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("LORA_UPDATE_SCREENSHOT") == "1":
        shutil.copy(path, REPO / "docs" / f"ui-{name}.png")


def _see(page: Any, *texts: str) -> None:
    for text in texts:
        page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)


def _launchpad(ui: DagsterServers, page: Any, job: str, config: str) -> None:
    page.goto(f"{ui.base_url}/locations/lora_assets/jobs/{job}/playground")
    editor = page.locator(".CodeMirror").first
    # The launchpad fills the editor with its scaffold (or the job's last config) first.
    page.wait_for_function("el => el.CodeMirror && el.CodeMirror.getValue().trim().length > 0",
                           arg=editor.element_handle())
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(config)
    page.wait_for_function("([el, want]) => el.CodeMirror.getValue() === want", arg=[editor.element_handle(), config])


def _launch(ui: DagsterServers, page: Any, job: str, config: str) -> str:
    _launchpad(ui, page, job, config)
    _see(page, "No errors")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/*")
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    idle(page)
    return run_id


def _succeeded(ui: DagsterServers, run_id: str, what: str) -> None:
    run = ui.wait_run(run_id, RUN_DEADLINE_S)
    assert run["status"] == "SUCCESS", f"{what} run {run_id}: {run['status']}\n{ui.failure_summary(run_id)}"


def _batch_runs(ui: DagsterServers) -> list[dict[str, Any]]:
    return [r for r in ui.runs() if r["jobName"] == "batch_pipeline" and r["tags"].get("dagster/partition") == KEY]


def _observations(ui: DagsterServers) -> list[dict[str, Any]]:
    data = ui.graphql(
        """query($a: AssetKeyInput!, $p: [String!]) { assetNodeOrError(assetKey: $a) { ... on AssetNode {
             assetObservations(partitions: $p) { runId metadataEntries { label
               ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue } } } } } }""",
        {"a": {"path": ["raw_conversations"]}, "p": [KEY]})["assetNodeOrError"]
    return data["assetObservations"]


def _attempts(sim: ClaudeSimulator) -> int:
    return sum(sim.stats.snapshot()["attempts_by_key"].values())


def _status(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return conn.scalar(sa.select(t.batch_jobs.c.status).where(t.batch_jobs.c.slug == KEY))


def _wait(what: str, predicate: Any, deadline_s: float = RUN_DEADLINE_S, interval_s: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy (the deadline only guards against a hang)."""
    end = time.monotonic() + deadline_s
    while not (value := predicate()):
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(interval_s)
    return value


def test_purse_and_plain_sight(browser: Any, purse_ui: DagsterServers, sim: ClaudeSimulator) -> None:
    ui = purse_ui
    assert "personas" in ui.init_output, ui.init_output  # the scaffolding, loaded while the servers started
    # The batch runs parse and enrich themselves; eager re-runs would only compete for the CPU.
    ui.stop_sensor("default_automation_condition_sensor")
    engine = sa.create_engine(ui.env["LORA_DATABASE_URL"])
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        # 1. No implicit "all": a name-only plan cannot be launched.
        _launchpad(ui, page, "plan_batch", NAME_ONLY)
        _see(page, "personas", "arcs", "topics")
        _see(page, "Missing required config entr")
        assert page.get_by_role("button", name="Launch Run").is_disabled()
        _shot(page, "13-plan-name-only-refused")

        # 2. Over the threshold, with a pilot: the pilot runs on its own, the rest waits.
        plan = _launch(ui, page, "plan_batch", PILOT_PLAN)
        _succeeded(ui, plan, "plan_batch")
        page.goto(f"{ui.base_url}/runs/{plan}")
        _see(page, f"planned batch '{KEY}': 28 item(s), estimated $", "pilot of 3 item(s) starts now",
             "cost_cap_source")
        pilot = ui.wait_for("the pilot run", lambda: _batch_runs(ui), SENSOR_DEADLINE_S, 0.5)[0]
        _succeeded(ui, pilot["runId"], "pilot")
        assert _status(engine) == "planned"
        with engine.connect() as conn:
            stored = conn.scalar(sa.select(sa.func.count()).select_from(t.conversations))
        assert stored == 3 and len(sim.stats.snapshot()["delivered_by_key"]) == 3
        page.goto(f"{ui.base_url}/assets/raw_conversations?view=events&partition={KEY}")
        _see(page, "Pilot done: 3 of 3 item(s) stored for $", "Re-estimate for the 25 item(s) left",
             "sample_conversations")
        _shot(page, "14-pilot-cost-and-reestimate")
        page.get_by_text("sample_conversations", exact=True).first.evaluate("el => el.scrollIntoView({block: 'center'})")
        page.locator("tr", has_text="sample_conversations").get_by_text("[Show Markdown]").first.dispatch_event("click")
        sample = page.get_by_role("dialog").filter(has_text="Sample 1")
        sample.get_by_text("Sample 3").wait_for()
        text = sample.inner_text()
        assert "Persona: " in text and "Client: " in text and "Advisor: " in text and "Cost: $" in text, text
        assert "**" not in text  # rendered markdown, not its source
        _shot(page, "15-sample-conversation")
        page.keyboard.press("Escape")

        # The batch waits (`planned`: the sensor starts only queued batches; test_planning.py shows a
        # tick skipping it) and starts after approve_batch.
        assert len(_batch_runs(ui)) == 1 and _status(engine) == "planned"
        approve = _launch(ui, page, "approve_batch", APPROVE)
        _succeeded(ui, approve, "approve_batch")
        rest = ui.wait_for("the approved run", lambda: [r for r in _batch_runs(ui) if r["runId"] != pilot["runId"]],
                           SENSOR_DEADLINE_S, 0.5)[0]
        assert rest["tags"].get("dagster/sensor_name") == "queued_batches_sensor"

        # 3. Progress while it generates (1 s per request, 2 at a time: 25 items take ~13 s).
        progress = ui.wait_for("a progress observation", lambda: [
            o for o in _observations(ui) if o["runId"] == rest["runId"]], RUN_DEADLINE_S, 0.5)
        labels = {e["label"] for e in progress[0]["metadataEntries"]}
        assert {"items_done", "items_failed", "cost_usd_so_far", "eta_s", "progress"} <= labels, labels

        # 4. Cancel from the launchpad, mid-run: answers are held so the run cannot end first.
        sim.hold()
        try:
            page.goto(f"{ui.base_url}/assets/raw_conversations?view=events&partition={KEY}")
            _see(page, "items done")
            _shot(page, "16-progress-observation")
            cancel = _launch(ui, page, "cancel_batch", CANCEL)
            _wait("the batch's status to be cancelled", lambda: _status(engine) == "cancelled", interval_s=0.02)
            at_cancel = _attempts(sim)
            ui.wait_for("the run to see the cancel", lambda: any(
                "was cancelled: no new request starts" in (e.get("message") or "") for e in ui.run_events(rest["runId"])),
                RUN_DEADLINE_S, 0.5)
        finally:
            sim.release()
        _succeeded(ui, cancel, "cancel_batch")
        done = ui.wait_run(rest["runId"], RUN_DEADLINE_S)
        after = _attempts(sim) - at_cancel
        assert after <= CONCURRENCY, f"{after} request(s) after the cancel"
        assert done["status"] == "FAILURE" and _status(engine) == "cancelled"
        with engine.connect() as conn:
            kept = conn.scalar(sa.select(sa.func.count()).select_from(t.conversations))
        assert 3 < kept < 28
        page.goto(f"{ui.base_url}/runs/{rest['runId']}")
        _see(page, f"batch '{KEY}' cancelled: {kept} conversation(s) stored, 0 failed, {28 - kept} not generated, $")
        _shot(page, "17-cancelled-run")
        assert KEY in ui.materialized_partitions("raw_conversations")

        # 5. The documented action: batch_pipeline for the partition again; nothing is requested.
        sim.reset_stats()
        again = ui.launch("batch_pipeline", partition=KEY)
        _succeeded(ui, again, "parse what was kept")
        assert sim.stats.snapshot()["requests_total"] == 0
        with engine.connect() as conn:
            parsed = conn.scalar(sa.select(sa.func.count()).select_from(t.conversations)
                                 .where(t.conversations.c.parse_status == "parsed"))
        assert parsed == kept and _status(engine) == "cancelled"
        page.goto(f"{ui.base_url}/assets/raw_conversations?view=events&partition={KEY}")
        _see(page, f"{kept} conversation(s) stored", "To parse and enrich what it kept")
        _shot(page, "18-cancelled-partition-kept")

        # 6. A training file from what was kept; its output opens from the metadata link.
        ui.cli("training-file", "create", "purse-file", "--batch", KEY, "--build")
        with engine.connect() as conn:
            version = tfq.get_version(conn, "purse-file")
        page.set_viewport_size({"width": 2000, "height": 1100})
        page.goto(f"{ui.base_url}/assets/training_files?view=events&partition=purse-file")
        _see(page, "output/jsonl", "members_table", "dataset_card")
        text = page.inner_text("body")
        assert KEY in text  # the members table shows the batch's key
        page.get_by_text("output/jsonl", exact=True).first.evaluate("el => el.scrollIntoView({block: 'center'})")
        _shot(page, "19-training-file-links")
        link = page.locator("tr", has_text="output/jsonl").get_by_role("link").first
        href = link.get_attribute("href")
        assert href and href.startswith(ui.env["LORA_FILES_URL"]), href
        with page.context.expect_page() as opened:
            link.click()
        tab = opened.value
        tab.wait_for_load_state()
        body = tab.inner_text("body")
        jsonl = Path(ui.env["LORA_DATA_DIR"]) / "blobs" / version["outputs"]["jsonl"]["path"]
        assert body.strip() == jsonl.read_text().strip()
        _shot(tab, "20-training-file-opened")
        tab.close()
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "purse-failure.png"))
        raise
    finally:
        page.close()
        engine.dispose()
