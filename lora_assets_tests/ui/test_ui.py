"""The Dagster UI of this code location, driven like a user would: real webserver + daemon on a
Postgres-backed instance, runs launched through GraphQL, eager automation fired by the daemon,
and the asset graph and checks looked at in a real (headless) chromium.

Screenshots go to test-artifacts/ui/; with LORA_UPDATE_SCREENSHOT=1 the README's docs/ui.png is
rewritten too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lora_assets.defs.scaffolding import SCAFFOLDING_KEYS
from lora_assets.schemas import ItemStatus
from lora_assets.store import tables as t
from lora_assets_tests import check_names
from lora_assets_tests.ui.conftest import batch_of, ARTIFACTS, REPO, DagsterServers

pytestmark = pytest.mark.timeout(900)  # a loaded 2-CPU box can take minutes; normally ~3 min

BATCH_ASSETS = ["raw_conversations", "parsed_conversations", "enriched_conversations"]
CHECKS = {asset: [c for c, a in check_names.CHECK_ASSET.items() if a == asset] for asset in BATCH_ASSETS}
AUTOMATION_SENSOR = "default_automation_condition_sensor"
RUN_DEADLINE_S = 420.0
#: Automation ticks are ~30 s apart, then a run with a process per step: allow several minutes.
AUTOMATION_DEADLINE_S = 480.0


def test_repo_dagster_yaml_loads(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repo's dagster.yaml, copied verbatim into a DAGSTER_HOME, gives a working Postgres
    instance (Dagster 1.13 refused it while max_concurrent_runs sat under run_coordinator.config
    next to a `concurrency` block; fixed in f8dfe56). An empty DAGSTER_PG_PASSWORD (trust auth)
    is accepted."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    url = sa.engine.make_url(pg_url)
    for k, v in {"DAGSTER_PG_HOST": url.host, "DAGSTER_PG_PORT": str(url.port or 5432),
                 "DAGSTER_PG_USER": url.username, "DAGSTER_PG_PASSWORD": url.password or "",
                 "DAGSTER_PG_DB": url.database}.items():
        monkeypatch.setenv(k, v or "")
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_runs_count() == 0
    finally:
        instance.dispose()


# --- the end-to-end UI test ---------------------------------------------------------------------


def _batch_counts(engine: sa.Engine, batch_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        items = conn.execute(sa.select(t.batch_items.c.status, sa.func.count()).where(
            t.batch_items.c.batch_job_id == batch_of(batch_id)).group_by(t.batch_items.c.status)).all()
        conv = conn.execute(sa.select(t.conversations.c.batch_item_id, t.conversations.c.enrichment_status).where(
            t.conversations.c.batch_job_id == batch_of(batch_id))).all()
    return {
        "items": {str(s): n for s, n in items},
        "conversations": len(conv),
        "distinct_items": len({c[0] for c in conv}),
        "enrichment": sorted({str(c[1]) for c in conv}),
    }


def _create_batch(ui: DagsterServers, *, persona: str, arc: str, topics: list[str], name: str) -> str:
    args = ["batch", "create", "--persona", persona, "--arc", arc, "--name", name]
    for topic in topics:
        args += ["--topic", topic]
    out = ui.cli(*args).stdout
    assert f"{len(topics)} item(s) planned" in out, out
    return out.split()[1].rstrip(":")


def _ticked_since(ui: DagsterServers, since: float) -> bool:
    """Whether the automation sensor has a finished tick that started after `since` (epoch s)."""
    data = ui.graphql(
        """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename
             ... on Sensor { sensorState { ticks(limit: 5) { timestamp status } } } } }""",
        {"s": {"repositoryLocationName": "lora_assets", "repositoryName": "__repository__",
               "sensorName": AUTOMATION_SENSOR}},
    )["sensorOrError"]
    assert data["__typename"] == "Sensor", data
    return any(t["timestamp"] > since and t["status"] != "STARTED" for t in data["sensorState"]["ticks"])


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _open(page: Any, ui: DagsterServers, path: str, *texts: str) -> str:
    """Open `path`, wait until every text is visible (generous deadline), return the page text."""
    page.goto(ui.base_url + path)
    for text in texts:
        page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=60_000)
    return page.inner_text("body")


@pytest.fixture
def ui_init() -> bool:
    return True


def test_batch_run_automation_and_ui(dagster_ui: DagsterServers, browser: Any) -> None:
    ui = dagster_ui
    engine = sa.create_engine(ui.env["LORA_DATABASE_URL"])
    try:
        _run_everything(ui, engine, browser)
    finally:
        engine.dispose()


def _run_everything(ui: DagsterServers, engine: sa.Engine, browser: Any) -> None:
    # Sensors are on by default: both must be RUNNING in the UI.
    # queued_batches_sensor would ALSO start a run for every `queued` batch within ~30 s — and a
    # batch made by `lora-assets batch create` stays `queued` until a run starts it — so a batch
    # launched from the UI can get a second run from the sensor (seen while writing this test:
    # two batch_pipeline runs for one partition). This test launches its runs itself, so it
    # stops that sensor first; the automation-condition sensor stays on.
    ui.stop_sensor("queued_batches_sensor")

    init = ui.init_output  # `lora-assets init`, run while the servers started (ui_init below)
    assert "001_schema" in init and "personas" in init

    # 1) scaffolding assets, through the UI's GraphQL (the multi-asset and its completeness check)
    scaffolding_run = ui.launch("__ASSET_JOB", assets=SCAFFOLDING_KEYS)

    # 2) two small batches (each registers its partition); batch 1 runs the whole batch_pipeline,
    #    batch 2 only raw_conversations — the daemon's eager automation must do the rest.
    batch1 = _create_batch(ui, persona="pragmatic_optimist", arc="confusion_to_clarity",
                           topics=["mortgage_payoff_strategy", "estate_planning_basics"], name="ui-full-run")
    batch2 = _create_batch(ui, persona="anxious_planner", arc="fear_to_confidence",
                           topics=["retirement_catch_up"], name="ui-automation")
    partitions = ui.graphql(
        """{ partitionSetsOrError(repositorySelector: {repositoryLocationName: "lora_assets",
             repositoryName: "__repository__"}, pipelineName: "batch_pipeline") { __typename
             ... on PartitionSets { results { partitionsOrError { ... on Partitions { results { name } } } } } } }"""
    )["partitionSetsOrError"]["results"][0]["partitionsOrError"]["results"]
    assert {batch1, batch2} <= {p["name"] for p in partitions}

    batch_run = ui.launch("batch_pipeline", partition=batch1)
    for run_id, what in ((scaffolding_run, "scaffolding"), (batch_run, "batch_pipeline")):
        run = ui.wait_run(run_id, RUN_DEADLINE_S)
        assert run["status"] == "SUCCESS", f"{what} run {run_id}: {run['status']}\n{ui.failure_summary(run_id)}"
    # Batch 2's raw-only run starts once an automation tick has passed batch 1's run. A tick that
    # sees batch 1's run mid-way or unseen while batch 2's untagged raw materialisation is the
    # latest re-requests batch 1's stages: the known Dagster gap pinned by the strict xfail in
    # defs/test_automation.py (executed_with_tags reads the latest materialisation of any
    # partition). With both runs launched at once that race was lost now and then (a full run on
    # 2026-12-07); this test is about automation finishing batch 2 and batch 1's run arming nothing.
    batch1_end = ui.graphql("""query($id: ID!) { runOrError(runId: $id) { ... on Run { endTime } } }""",
                            {"id": batch_run})["runOrError"]["endTime"]
    ui.wait_for("an automation tick after batch 1's run", lambda: _ticked_since(ui, batch1_end), AUTOMATION_DEADLINE_S)
    raw_only_run = ui.launch("__ASSET_JOB", partition=batch2, assets=["raw_conversations"])
    run = ui.wait_run(raw_only_run, RUN_DEADLINE_S)
    assert run["status"] == "SUCCESS", f"raw only run {raw_only_run}: {run['status']}\n{ui.failure_summary(raw_only_run)}"
    assert ui.run(batch_run)["tags"]["dagster/partition"] == batch1

    counts1 = _batch_counts(engine, batch1)
    assert counts1 == {"items": {ItemStatus.GENERATED: 2}, "conversations": 2, "distinct_items": 2,
                       "enrichment": ["completed"]}, counts1
    assert ui.check_executions("personas", "scaffolding_completeness", "")[0]["evaluation"]["success"]

    # 3) automation: parsed + enriched of batch 2 materialised by the daemon on its own
    def automated() -> bool:
        return all(batch2 in ui.materialized_partitions(a) for a in ("parsed_conversations", "enriched_conversations"))

    try:
        ui.wait_for(f"eager automation to materialise parsed/enriched for {batch2}", automated, AUTOMATION_DEADLINE_S, 1.0)
    except AssertionError as exc:
        daemon_log = ui.log_text()
        relevant = [line for line in daemon_log.splitlines() if "AssetDaemon" in line or "automation" in line.lower()]
        raise AssertionError(f"{exc}\ndaemon statuses: {ui.daemon_statuses()}\n"
                             "daemon log (automation lines):\n" + "\n".join(relevant[-40:])) from None
    auto_runs = {m["runId"] for a in ("parsed_conversations", "enriched_conversations")
                 for m in ui.materializations(a, batch2)}
    for run_id in auto_runs:
        run = ui.wait_run(run_id, RUN_DEADLINE_S)
        assert run["tags"].get("dagster/sensor_name") == AUTOMATION_SENSOR, run["tags"]
        assert run["status"] == "SUCCESS", f"automation run {run_id}: {run['status']}\n{ui.failure_summary(run_id)}"
    assert raw_only_run not in auto_runs
    # ...and the whole-job run of batch 1 (launched without an asset selection) armed nothing:
    # by now the sensor has ticked past it, and its stages were materialised by that run alone.
    assert {m["runId"] for a in ("parsed_conversations", "enriched_conversations")
            for m in ui.materializations(a, batch1)} == {batch_run}
    counts2 = _batch_counts(engine, batch2)
    assert counts2 == {"items": {ItemStatus.GENERATED: 1}, "conversations": 1, "distinct_items": 1,
                       "enrichment": ["completed"]}, counts2

    # every check of every batch asset passed, for both partitions (the daemon's run included checks)
    for partition in (batch1, batch2):
        for asset, names in CHECKS.items():
            for name in names:
                execs = ui.check_executions(asset, name, partition)
                assert execs, f"{asset}:{name} never ran for {partition}"
                assert execs[0]["status"] == "SUCCEEDED" and execs[0]["evaluation"]["success"], (asset, name, execs[0])

    # batch 1 ran once: one batch_pipeline run, and automation did not redo what it materialised
    batch1_runs = [r for r in ui.runs() if r["tags"].get("dagster/partition") == batch1]
    assert [r["runId"] for r in batch1_runs if r["jobName"] == "batch_pipeline"] == [batch_run], batch1_runs
    for asset in BATCH_ASSETS:
        assert {m["runId"] for m in ui.materializations(asset, batch1)} == {batch_run}, asset

    _look_at_the_ui(ui, browser, batch1, batch2)


def _look_at_the_ui(ui: DagsterServers, browser: Any, batch1: str, batch2: str) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        # Catalog: every asset of the location by name
        text = _open(page, ui, "/assets", "enriched_conversations", "raw_conversations")
        for name in [*SCAFFOLDING_KEYS, *BATCH_ASSETS, "training_files"]:
            assert name in text, f"{name} missing from /assets"
        _shot(page, "assets")

        # Global asset lineage: the three groups
        text = _open(page, ui, "/asset-groups", "Global asset lineage", "training_files")
        for group in ("scaffolding", "generation", "training_files"):
            assert group in text
        _shot(page, "global-lineage")

        # The generation group's graph: the batch assets, their checks all passing, both partitions
        # (a shorter viewport: the graph is centred, this is the README's picture)
        page.set_viewport_size({"width": 1440, "height": 720})
        text = _open(page, ui, "/locations/lora_assets/asset-groups/generation",
                     "enriched_conversations", "4 / 4 Passed", "2 / 2 Passed", "1 / 1 Passed")
        for name in [*BATCH_ASSETS, *SCAFFOLDING_KEYS, "training_files"]:
            assert name in text
        assert "100% filled" in text and "2 partitions" in text, text
        graph_png = _shot(page, "generation-lineage")
        if os.environ.get("LORA_UPDATE_SCREENSHOT") == "1":
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copy(graph_png, REPO / "docs" / "ui.png")
        page.set_viewport_size({"width": 1600, "height": 1000})

        # Checks of enriched_conversations: all four succeeded; each one's history shows a
        # passing evaluation for the automated partition and the partitions view has no failure.
        _open(page, ui, "/assets/enriched_conversations?view=checks", "Checks (4)")
        # The check list renders progressively: wait for every name, then read the page.
        for name in CHECKS["enriched_conversations"]:
            page.get_by_text(name, exact=True).first.wait_for(state="visible", timeout=60_000)
        text = page.inner_text("body")
        for name in CHECKS["enriched_conversations"]:
            assert name in text
        page.get_by_text("Succeeded", exact=True).nth(3).wait_for(state="visible")  # one per check
        _shot(page, "enriched-checks")
        for name in CHECKS["enriched_conversations"]:
            page.get_by_text(name, exact=True).first.click()
            page.get_by_role("tab", name="Execution history").click()
            page.get_by_text(batch2, exact=True).first.wait_for(state="visible")
            history = page.inner_text("body")
            assert "Passed" in history and batch1 in history, f"{name}: {history[-1500:]}"
            if name == "all_conversations_enriched":
                _shot(page, "enriched-check-history")
            page.get_by_role("tab", name="Partitions").last.click()
            page.get_by_text("Passed (2)").first.wait_for(state="visible")
            parts = page.inner_text("body")
            assert "Failed (0)" in parts and "Missing (0)" in parts, f"{name}: {parts[-1500:]}"
        _shot(page, "enriched-check-partitions")
    finally:
        page.close()
