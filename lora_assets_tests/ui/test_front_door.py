"""The Dagster UI front door (issue 11): everything a user does after `make ui`, in a browser.

Real dagster-webserver + dagster-daemon on PostgreSQL, the blob store on S3 (moto), headless
chromium through Playwright, and no CLI call anywhere:

1. scaffolding materialised from its asset page (Materialize → confirm the multi-asset);
2. the `plan_batch` launchpad: mistyped config is refused there (each field named, Launch
   disabled); a bad persona key fails the run with a readable message in the run page; a good
   config (2 conversations, messages mode) succeeds and shows its cost estimate;
3. the queued-batches sensor starts `batch_pipeline` for the new partition once; its run page and
   the checks page show it passed;
4. the `training_files` asset: "Add a partition" (a new training-file name) and run config in the
   launch dialog, launched; the `members_table` and `outputs` metadata tables read in the page;
5. the training file's outputs exist in the bucket, and its download link (from the metadata)
   serves the JSONL.

GraphQL is used only to wait (run status, check executions) and to find what a click launched.
Screenshots go to test-artifacts/ui/front-door-*.png; with LORA_UPDATE_SCREENSHOT=1 they are
copied to docs/ui-*.png.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lora_assets.defs.scaffolding import SCAFFOLDING_KEYS
from lora_assets.store import tables as t
from lora_assets.store import training_files as tfq
from lora_assets_tests import check_names
from lora_assets_tests.ui.conftest import ARTIFACTS, REPO, DagsterServers, idle

pytestmark = pytest.mark.timeout(900)  # generous: a loaded 2-CPU box; see the report for timings

#: Deadlines for conditions (never asserted as durations).
RUN_DEADLINE_S = 420.0
UI_TIMEOUT_MS = 60_000
#: The sensor ticks every ~30 s; its run then starts through the run queue.
SENSOR_DEADLINE_S = 240.0

BATCH_NAME = "ui demo"
BATCH_KEY = "ui-demo"  # the slug of BATCH_NAME: the batch's partition key
TRAINING_FILE = "ui-front-door"
BAD_PERSONA = "no_such_persona"

#: Run config a user types into the launchpad. in_process: one process for the run's steps
#: (a process per step costs seconds each on a small box); any user may set it the same way.
IN_PROCESS = "execution:\n  config:\n    in_process: {}\n"
BAD_PLAN = ("ops:\n  plan_batch_op:\n    config:\n      name: ui bad keys\n"
            f"      personas: [{BAD_PERSONA}]\n      arcs: ['*']\n      topics: ['*']\n      mode: messages\n"
            + IN_PROCESS)
GOOD_PLAN = ("ops:\n  plan_batch_op:\n    config:\n"
             f"      name: {BATCH_NAME}\n"
             "      personas: [pragmatic_optimist]\n"
             "      arcs: [confusion_to_clarity]\n"
             "      topics: [mortgage_payoff_strategy, estate_planning_basics]\n"
             "      mode: messages\n"
             "      max_cost_usd: 1.0\n" + IN_PROCESS)
#: Wrong types: the launchpad refuses these before any run, naming each field.
MISTYPED_PLAN = ("ops:\n  plan_batch_op:\n    config:\n      name: ui typo\n      tier: gold\n"
                 "      per_combination: two\n")
TRAINING_CONFIG = ("ops:\n  training_files:\n    config:\n"
                   f"      batches: [{BATCH_KEY}]\n"
                   "      description: Built from the Dagster UI by the front-door test\n" + IN_PROCESS)


@pytest.fixture
def ui_extra_env(s3_bucket: tuple[str, str]) -> dict[str, str]:
    """The deployment's blob store is a fresh moto bucket (test credentials)."""
    endpoint, bucket = s3_bucket
    return {"LORA_S3_BUCKET": bucket, "LORA_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# --- helpers ------------------------------------------------------------------------------------


def _shot(page: Any, name: str) -> Path:
    """Screenshot to test-artifacts/ui/front-door-NAME.png (and docs/ui-NAME.png on request)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"front-door-{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("LORA_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(path, REPO / "docs" / f"ui-{name}.png")
    return path


def _see(page: Any, *texts: str) -> None:
    """Wait until every text is visible on the page."""
    for text in texts:
        page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=UI_TIMEOUT_MS)


def _type_config(page: Any, editor: Any, text: str) -> None:
    """Replace a CodeMirror config editor's content with `text`, typed through the keyboard
    (insert_text: no auto-indent of each line), and wait until the editor holds exactly it."""
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)
    page.wait_for_function("([el, want]) => el.CodeMirror.getValue() === want", arg=[editor.element_handle(), text],
                           timeout=UI_TIMEOUT_MS)


def _run_ids(ui: DagsterServers) -> set[str]:
    return {r["runId"] for r in ui.runs()}


def _new_run(ui: DagsterServers, before: set[str], job: str, partition: str | None = None) -> dict[str, Any]:
    """The one run of `job` (and partition) that did not exist in `before`: what a click launched."""
    def launched() -> dict[str, Any] | None:
        new = [r for r in ui.runs() if r["runId"] not in before and r["jobName"] == job
               and (partition is None or r["tags"].get("dagster/partition") == partition)]
        assert len(new) <= 1, f"more than one new {job} run: {new}"
        return new[0] if new else None

    return ui.wait_for(f"a new {job} run {partition or ''}", launched, RUN_DEADLINE_S, 0.5)


def _succeeded(ui: DagsterServers, run_id: str, what: str) -> dict[str, Any]:
    run = ui.wait_run(run_id, RUN_DEADLINE_S)
    assert run["status"] == "SUCCESS", f"{what} run {run_id}: {run['status']}\n{ui.failure_summary(run_id)}"
    return run


def _sensor_tick_failures(ui: DagsterServers, sensor: str) -> list[str]:
    """Error messages of the sensor's failed ticks (e.g. a sensor that breaks before init)."""
    data = ui.graphql(
        """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename
             ... on Sensor { sensorState { ticks(limit: 100) { status error { message } } } } } }""",
        {"s": {"repositoryLocationName": "lora_assets", "repositoryName": "__repository__", "sensorName": sensor}},
    )["sensorOrError"]
    assert data["__typename"] == "Sensor", data
    return [(tick["error"] or {}).get("message", "") for tick in data["sensorState"]["ticks"]
            if tick["status"] == "FAILURE"]


def _open_materialize_dialog(page: Any, ui: DagsterServers, asset: str) -> Any:
    """Open the asset's page and click Materialize; confirm the "upstream not materialized yet"
    warning when the UI shows it. Returns the launch dialog."""
    page.goto(f"{ui.base_url}/assets/{asset}")
    page.get_by_role("button", name="Materialize").first.click()
    launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    warning = page.get_by_role("dialog").filter(has_text="Are you sure?")
    launch.or_(warning).first.wait_for(timeout=UI_TIMEOUT_MS)
    if warning.count():
        warning.get_by_role("button", name="Confirm").click()
    launch.wait_for(timeout=UI_TIMEOUT_MS)
    return launch


# --- the test -----------------------------------------------------------------------------------


def test_front_door(browser: Any, dagster_ui: DagsterServers, s3_bucket: tuple[str, str]) -> None:
    """Plan, estimate, run, check and build a training file from the UI; find its files.
    (`browser` first: without chromium the test skips, or fails in CI, before the servers start.)"""
    ui = dagster_ui
    engine = sa.create_engine(ui.env["LORA_DATABASE_URL"])
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        _materialize_scaffolding(ui, page)
        batch_run = _plan_batches(ui, page)
        sensor_run = _watch_batch(ui, page, batch_run)
        version = _build_training_file(ui, page, engine)
        _find_outputs(ui, s3_bucket, version)
        # Ticks later still: the batch's stages were materialised by the sensor's run alone.
        for asset in ("parsed_conversations", "enriched_conversations"):
            assert {m["runId"] for m in ui.materializations(asset, BATCH_KEY)} == {sensor_run}, asset
    finally:
        page.close()
        engine.dispose()


def _materialize_scaffolding(ui: DagsterServers, page: Any) -> None:
    """1. personas → Materialize: the UI says the whole (non-subsettable) multi-asset runs; confirm."""
    before = _run_ids(ui)
    page.goto(f"{ui.base_url}/assets/personas")
    page.get_by_role("button", name="Materialize").first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Additional assets will be materialized")
    dialog.wait_for()
    for key in SCAFFOLDING_KEYS[1:]:
        assert key in dialog.inner_text(), f"{key} not named in the multi-asset dialog"
    _shot(page, "01-scaffolding-materialize")
    dialog.get_by_role("button", name="Confirm").click()
    _see(page, "Launched run")
    idle(page)
    run = _new_run(ui, before, "__ASSET_JOB")
    _succeeded(ui, run["runId"], "scaffolding")
    # On a fresh domain DB the sensors skipped (no schema yet) instead of failing their ticks.
    for sensor in ("queued_batches_sensor", "default_automation_condition_sensor"):
        assert not _sensor_tick_failures(ui, sensor), (sensor, _sensor_tick_failures(ui, sensor))
    execs = ui.check_executions("personas", "scaffolding_completeness", "")
    assert execs and execs[0]["evaluation"]["success"], execs

    page.goto(f"{ui.base_url}/assets/personas")
    _see(page, "Latest materialization", "records", "bundled data")
    _shot(page, "02-scaffolding-done")


def _open_plan_launchpad(ui: DagsterServers, page: Any, config: str) -> None:
    """Open the plan_batch launchpad and type `config` into it."""
    page.goto(f"{ui.base_url}/locations/lora_assets/jobs/plan_batch/playground")
    editor = page.locator(".CodeMirror").first
    # The launchpad fills the editor with its scaffold first: replace it only once it is there.
    page.wait_for_function("el => el.CodeMirror && el.CodeMirror.getValue().includes('plan_batch_op')",
                           arg=editor.element_handle())
    _type_config(page, editor, config)


def _launch_plan(ui: DagsterServers, page: Any, config: str, shot: str | None = None) -> str:
    """Type `config` into the plan_batch launchpad and launch; returns the run id (from the run
    page the launchpad navigates to)."""
    _open_plan_launchpad(ui, page, config)
    _see(page, "No errors")  # the launchpad validated the typed config
    if shot:
        _shot(page, shot)
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/*")
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    idle(page)
    return run_id


def _plan_batches(ui: DagsterServers, page: Any) -> str:
    """2. plan_batch from the launchpad: config of the wrong type is refused there (each field
    named, Launch disabled); a bad persona key fails its run with a readable message; a good plan
    shows its estimate in the run's logs and output metadata. Returns the good run's id."""
    _open_plan_launchpad(ui, page, MISTYPED_PLAN)
    _see(page, 'path root:ops:plan_batch_op:config:per_combination. Value "two"',
         "path root:ops:plan_batch_op:config:tier not in enum type Literal['template', 'scenario', 'edge_case'] got gold")
    assert page.get_by_role("button", name="Launch Run").is_disabled()
    _shot(page, "03-plan-batch-config-error")

    bad = _launch_plan(ui, page, BAD_PLAN)
    good = _launch_plan(ui, page, GOOD_PLAN, shot="04-plan-batch-launchpad")

    assert ui.wait_run(bad, RUN_DEADLINE_S)["status"] == "FAILURE"
    page.goto(f"{ui.base_url}/runs/{bad}")
    _see(page, "Failure", f"unknown persona key(s) ['{BAD_PERSONA}']", "known persona keys: ['anxious_planner'")
    _shot(page, "05-plan-batch-bad-config")

    _succeeded(ui, good, "plan_batch")
    page.goto(f"{ui.base_url}/runs/{good}")
    _see(page, "Success", f"planned batch '{BATCH_KEY}': 2 item(s), estimated $", "estimated_cost_usd",
         "estimated_output_usd")
    page.get_by_text(f"planned batch '{BATCH_KEY}'").first.evaluate("el => el.scrollIntoView({block: 'start'})")
    _shot(page, "06-plan-batch-estimate")
    # The `estimate` entry (markdown): the one line a person reads before spending, and why.
    # The log cell is truncated and its "View full message" overlay covers the link's centre, so
    # the click goes to the link itself.
    page.get_by_text("[Show Markdown]").first.dispatch_event("click")
    estimate = page.get_by_role("dialog").filter(has_text="item(s) on")
    estimate.get_by_text("2 item(s) on").wait_for()
    assert "(messages): ≈ $" in estimate.inner_text(), estimate.inner_text()
    _shot(page, "07-plan-batch-estimate-detail")
    page.keyboard.press("Escape")
    return good


def _watch_batch(ui: DagsterServers, page: Any, plan_run: str) -> str:
    """3. The queued-batches sensor starts batch_pipeline for the new partition, once; it and
    every check of the batch assets pass; the run page and the checks page say so. Returns the
    run's id."""
    def sensor_run() -> dict[str, Any] | None:
        runs = [r for r in ui.runs() if r["jobName"] == "batch_pipeline"
                and r["tags"].get("dagster/partition") == BATCH_KEY]
        return runs[0] if runs else None

    run = ui.wait_for(f"the sensor's batch_pipeline run of {BATCH_KEY}", sensor_run, SENSOR_DEADLINE_S, 0.5)
    assert run["tags"].get("dagster/sensor_name") == "queued_batches_sensor", run["tags"]
    _succeeded(ui, run["runId"], "batch_pipeline")
    for name, asset in check_names.CHECK_ASSET.items():
        execs = ui.check_executions(asset, name, BATCH_KEY)
        # Only the sensor's run: automation must not re-run parse/enrich of the partition the
        # pipeline run just materialised (it did under load while eager() armed them on the run's
        # own updates; see defs/conditions.py).
        assert [e["runId"] for e in execs] == [run["runId"]], f"{asset}:{name}: {execs}"
        assert all(e["status"] == "SUCCEEDED" and e["evaluation"]["success"] for e in execs), (asset, name, execs)
    batch_runs = [r["runId"] for r in ui.runs() if r["jobName"] == "batch_pipeline"]
    assert batch_runs == [run["runId"]], f"the sensor started the batch more than once: {batch_runs}"
    assert plan_run not in batch_runs

    page.goto(f"{ui.base_url}/runs/{run['runId']}")
    _see(page, "Success", "queued_batches_sensor", "enriched_conversations")
    _shot(page, "08-batch-pipeline-run")

    enriched_checks = [c for c, a in check_names.CHECK_ASSET.items() if a == "enriched_conversations"]
    page.goto(f"{ui.base_url}/assets/enriched_conversations?view=checks")
    _see(page, f"Checks ({len(enriched_checks)})", *enriched_checks)
    page.get_by_text("Succeeded", exact=True).nth(len(enriched_checks) - 1).wait_for(state="visible")
    _shot(page, "09-batch-checks")
    return str(run["runId"])


def _build_training_file(ui: DagsterServers, page: Any, engine: sa.Engine) -> dict[str, Any]:
    """4. training_files → Materialize: "Add a partition" names the new file, the Config section
    takes the launch config, "Launch 1 run"; then the metadata tables in the asset's events view.
    Returns the built version's row."""
    dialog = _open_materialize_dialog(page, ui, "training_files")
    dialog.get_by_text("Add a partition").click()
    add = page.get_by_role("dialog").filter(has_text="Add a partition for")
    add.get_by_placeholder("name").fill(TRAINING_FILE)
    add.get_by_role("button", name="Save").click()
    add.wait_for(state="detached")
    dialog.get_by_text("1 partition", exact=True).wait_for()
    assert TRAINING_FILE in dialog.inner_text()

    dialog.get_by_text("Config", exact=True).click()
    dialog.get_by_role("button", name="Add config").click()
    editor_dialog = page.get_by_role("dialog").filter(has_text="Config Editor")
    _type_config(page, editor_dialog.locator(".CodeMirror").first, TRAINING_CONFIG)
    editor_dialog.get_by_text("No errors").wait_for()
    editor_dialog.get_by_role("button", name="Save config").click()
    dialog.get_by_text("Config saved").wait_for()
    dialog.get_by_text(f"batches: [{BATCH_KEY}]").wait_for()
    _shot(page, "10-training-file-launch")

    before = _run_ids(ui)
    dialog.get_by_role("button", name="Launch 1 run").click()
    _see(page, "Launched run")
    idle(page)
    run = _new_run(ui, before, "__ASSET_JOB", TRAINING_FILE)
    _succeeded(ui, run["runId"], "training_files")
    for name in sorted(check_names.TRAINING_FILE_CHECKS):
        execs = ui.check_executions("training_files", name, TRAINING_FILE)
        assert execs and execs[0]["runId"] == run["runId"], f"{name} did not run in {run['runId']}: {execs}"
    for name in ("training_file_schema_valid", "training_file_metadata_matches", "training_file_members_valid",
                 "training_file_exports_consistent"):
        assert ui.check_executions("training_files", name, TRAINING_FILE)[0]["evaluation"]["success"], name

    with engine.connect() as conn:
        batch_id = conn.scalar(sa.select(t.batch_jobs.c.id).where(t.batch_jobs.c.slug == BATCH_KEY))
        members = sorted(conn.scalars(sa.select(t.conversations.c.id).where(t.conversations.c.batch_job_id == batch_id)))
        version = tfq.get_version(conn, TRAINING_FILE)
        tf = tfq.get_training_file(conn, TRAINING_FILE)
    assert len(members) == 2, members
    assert tf is not None and tf["description"] == "Built from the Dagster UI by the front-door test", tf
    assert version is not None and version["version"] == 1 and sorted(version["conversation_ids"]) == members, version

    page.set_viewport_size({"width": 2000, "height": 1100})  # the tables are wide
    page.goto(f"{ui.base_url}/assets/training_files?view=events&partition={TRAINING_FILE}")
    _see(page, f"Partition {TRAINING_FILE} materialized in run {run['runId'][:8]}", "members_table", *members)
    text = page.inner_text("body")
    assert "pragmatic_optimist" in text and "confusion_to_clarity" in text and "estate_planning_basics" in text
    page.get_by_text("members_table", exact=True).first.evaluate("el => el.scrollIntoView({block: 'start'})")
    _shot(page, "11-training-file-members")

    outputs_label = page.get_by_text("outputs", exact=True).first
    outputs_label.evaluate("el => el.scrollIntoView({block: 'start'})")
    formats = sorted(version["outputs"])
    assert {"json", "jsonl", "parquet", "messages-train", "openai-train", "sharegpt-train"} <= set(formats), formats
    for fmt in formats:
        page.get_by_text(f"output/{fmt}", exact=True).first.wait_for(state="attached")
        assert version["outputs"][fmt]["path"].rsplit("/", 1)[-1] in text, f"{fmt} file missing from the outputs table"
    _shot(page, "12-training-file-outputs")
    return version


def _find_outputs(ui: DagsterServers, s3_bucket: tuple[str, str], version: dict[str, Any]) -> None:
    """5. Every recorded output is an object in the bucket; the `output/jsonl` link from the
    materialization metadata (what a user clicks) downloads the JSONL."""
    import boto3

    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for fmt, out in version["outputs"].items():
        head = s3.head_object(Bucket=bucket, Key=out["path"])
        assert head["ContentLength"] == out["bytes"], (fmt, out, head["ContentLength"])
    entries = ui.graphql(
        """query($a: AssetKeyInput!, $p: [String!]) { assetNodeOrError(assetKey: $a) { ... on AssetNode {
             assetMaterializations(partitions: $p) { metadataEntries { label ... on UrlMetadataEntry { url } } } } } }""",
        {"a": {"path": ["training_files"]}, "p": [TRAINING_FILE]},
    )["assetNodeOrError"]["assetMaterializations"][0]["metadataEntries"]
    urls = {e["label"]: e.get("url") for e in entries if e["label"].startswith("output/")}
    assert set(urls) == {f"output/{fmt}" for fmt in version["outputs"]}, urls
    assert all(u and u.startswith(f"{endpoint}/{bucket}/") for u in urls.values()), urls
    with urllib.request.urlopen(urls["output/jsonl"], timeout=30) as r:
        lines = [line for line in r.read().splitlines() if line.strip()]
    assert len(lines) == version["total_training_pairs"], (len(lines), version["total_training_pairs"])
