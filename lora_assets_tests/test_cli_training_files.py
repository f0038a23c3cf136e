"""`lora-assets training-file …` as a user meets it (click CliRunner), on SQLite + local files AND
on PostgreSQL + moto S3: a batch generated with `batch create --run` through the real SDK against
a loopback simulator (ANTHROPIC_BASE_URL), then create / add / build / list / show / download, and
errors that exit non-zero naming the thing and the reason, with nothing written."""

from __future__ import annotations

import re

import os
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from dagster import DagsterInstance

from lora_assets.cli import main
from lora_assets.defs.resources import _ENGINES, build_resources
from lora_assets.defs.training_files import OUTPUTS
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import db as dbq
from lora_assets.store.conversations import batch_conversations, update_conversation
from lora_assets.store import tables as t
from lora_assets.store import training_files as tfq
from lora_assets.store.blobs import BlobStore
from lora_assets.store.db import make_engine

TF_CHECKS = (
    "training_file_schema_valid",
    "training_file_metadata_matches",
    "training_file_members_valid",
    "training_file_exports_consistent",
    "training_file_lengths",
)


@dataclass
class Cli:
    backend: str
    root: Path
    db_url: str
    batch_id: str
    conversation_ids: list[str]
    runner: CliRunner

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(main, list(args))

    def engine(self) -> Any:
        return make_engine(self.db_url)

    def store(self) -> BlobStore:
        return build_resources()["blobs"].store()

    def partitions(self) -> list[str]:
        with DagsterInstance.get() as instance:
            return list(instance.get_dynamic_partitions("training_files"))

    def training_file(self, name: str) -> dict[str, Any] | None:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return tfq.get_training_file(conn, name)
        finally:
            engine.dispose()

    def version(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return tfq.get_version(conn, name, version)
        finally:
            engine.dispose()

    def set_status(self, cid: str, status: str) -> None:
        engine = self.engine()
        try:
            with engine.begin() as conn:
                update_conversation(conn, cid, enrichment_status=status)
        finally:
            engine.dispose()

    def row_counts(self) -> dict[str, int]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return {
                    tbl.name: conn.execute(sa.select(sa.func.count()).select_from(tbl)).scalar_one()
                    for tbl in (t.training_files, t.training_file_conversations, t.training_file_versions)
                }
        finally:
            engine.dispose()


@pytest.fixture(scope="module", params=["sqlite+local", "postgresql+s3"])
def cli(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """The environment a user would set (LORA_DATA_DIR, DAGSTER_HOME, LORA_DATABASE_URL, S3 for the
    second backend, ANTHROPIC_BASE_URL at a simulator started here, no API key), `lora-assets init`
    and `lora-assets batch create … --run` for a 2 × 1 × 2 batch."""
    import lora_assets.definitions as definitions

    root = tmp_path_factory.mktemp("cli_" + request.param.replace("+", "_"))
    (root / "dh").mkdir()
    (root / "dh" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with ClaudeSimulator() as sim, pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_DATA_DIR", str(root / "data"))
        mp.setenv("DAGSTER_HOME", str(root / "dh"))
        mp.setenv("ANTHROPIC_BASE_URL", sim.base_url)
        mp.delenv("ANTHROPIC_API_KEY", raising=False)
        for var in ("LORA_S3_BUCKET", "LORA_S3_ENDPOINT_URL", "LORA_S3_PREFIX"):
            mp.delenv(var, raising=False)
        if request.param == "sqlite+local":
            db_url = f"sqlite:///{root / 'data' / 'lora.db'}"
        else:
            db_url = request.getfixturevalue("module_pg_url")
            endpoint, bucket = request.getfixturevalue("module_s3_bucket")
            mp.setenv("LORA_S3_BUCKET", bucket)
            mp.setenv("LORA_S3_ENDPOINT_URL", endpoint)
            mp.setenv("LORA_S3_PREFIX", "lora")
        mp.setenv("LORA_DATABASE_URL", db_url)
        # `lora_assets.definitions.defs` is built from the environment when first imported; a real
        # `lora-assets` process imports it under the environment above, so build it the same way.
        mp.setattr(definitions, "defs", definitions.build_defs(build_resources()))

        runner = CliRunner()
        init = runner.invoke(main, ["init"])
        assert init.exit_code == 0, init.output
        engine = make_engine(db_url)
        with engine.connect() as conn:
            personas = [p.persona_key for p in dbq.read_personas(conn)][:2]
            arc = dbq.read_emotional_arcs(conn)[0].arc_key
            topics = [x.topic_key for x in dbq.read_training_topics(conn)][:2]
        created = runner.invoke(main, [
            "batch", "create", "--persona", personas[0], "--persona", personas[1], "--arc", arc,
            "--topic", topics[0], "--topic", topics[1], "--name", "cli-batch", "--run",
        ])
        assert created.exit_code == 0, created.output
        assert "success" in created.output.splitlines()[-1], created.output
        batch_id = re.search(r"; id ([0-9a-f-]{36})", created.output).group(1)  # the line starts with its key (slug)
        with engine.connect() as conn:
            rows = batch_conversations(conn, batch_id)
        engine.dispose()
        assert len(rows) == 4 and {r["enrichment_status"] for r in rows} == {"completed"}
        assert {r["generator"] for r in rows} == {"simulator"}
        assert sim.stats.snapshot()  # the simulator really was called
        yield Cli(request.param, root, db_url, batch_id, [r["id"] for r in rows], runner)
    if request.param == "sqlite+local":
        _ENGINES.pop(db_url, None)


def unique(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_build_output_ok(cli: Cli, output: str) -> None:
    """Every check PASS — the leakage check PASS or WARN (the simulator's canned sentences recur
    across conversations), never FAIL — and the run succeeded."""
    for check in TF_CHECKS:
        assert f"check PASS  training_files:{check}" in output, output
    assert ("check PASS  training_files:training_file_leakage" in output
            or "check WARN  training_files:training_file_leakage" in output), output
    assert "check FAIL" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("run ") and last.endswith(": success"), output


# --- the happy path -------------------------------------------------------------------------------


def test_create_build_list_show_download(cli: Cli, tmp_path: Path) -> None:
    name = unique()
    created = cli("training-file", "create", name, "--batch", cli.batch_id, "--build", "--description", "from the CLI")
    assert created.exit_code == 0, created.output
    assert f"training file {name!r}: 4 conversation(s)" in created.output
    assert_build_output_ok(cli, created.output)
    v = cli.version(name)
    assert v is not None and v["version"] == 1 and v["conversation_count"] == 4
    assert name in cli.partitions()

    listed = cli("training-file", "list")
    assert listed.exit_code == 0
    [line] = [ln for ln in listed.output.splitlines() if ln.startswith(name + " ")]
    assert " v1 " in line and "4 conversations" in line and f"{v['total_training_pairs']} pairs" in line
    assert f"avg quality {v['avg_quality_score']}" in line

    for args in ([], ["--version", "1"]):
        shown = cli("training-file", "show", name, *args)
        assert shown.exit_code == 0, shown.output
        assert f"{name} v1 (versions: [1])  from the CLI" in shown.output
        assert f"conversations 4  pairs {v['total_training_pairs']}" in shown.output
        assert f"min/avg/max {v['min_quality_score']}/{v['avg_quality_score']}/{v['max_quality_score']}" in shown.output
        for fmt, o in v["outputs"].items():
            assert f"{o['path']}  ({o['bytes']} bytes)" in shown.output and fmt in shown.output
    assert set(v["outputs"]) == set(OUTPUTS)

    # download: a local path (or presigned URL) that serves exactly the stored JSONL
    store = cli.store()
    stored = store.get_bytes(v["jsonl_file_path"])
    assert stored.count(b"\n") == v["total_training_pairs"]
    got = cli("training-file", "download", name, "--format", "jsonl")
    assert got.exit_code == 0, got.output
    where = got.output.strip()
    if cli.backend == "sqlite+local":
        path = Path(where)
        assert path.is_file() and path.read_bytes() == stored
        assert path == cli.root / "data" / "blobs" / v["jsonl_file_path"]
    else:
        assert where.startswith(os.environ["LORA_S3_ENDPOINT_URL"]) and "Signature" in where
        with urllib.request.urlopen(where) as response:  # noqa: S310 - loopback moto
            assert response.read() == stored

    dest = tmp_path / "downloads"
    copied = cli("training-file", "download", name, "--format", "parquet", "--dest", str(dest))
    assert copied.exit_code == 0, copied.output
    assert Path(copied.output.strip()) == dest / "pairs.parquet"
    assert (dest / "pairs.parquet").read_bytes() == store.get_bytes(v["outputs"]["parquet"]["path"])
    card = cli("training-file", "download", name, "--version", "1", "--format", "card", "--dest", str(dest))
    assert card.exit_code == 0 and "simulator" in (dest / "README.md").read_text()


def test_add_then_build_makes_the_next_version(cli: Cli) -> None:
    name = unique()
    first, second, third = cli.conversation_ids[:3]
    created = cli("training-file", "create", name, "--conversation", first, "--conversation", second)
    assert created.exit_code == 0 and f"training file {name!r}: 2 conversation(s)" in created.output
    assert cli.version(name) is None  # not built
    added = cli("training-file", "add", name, "--conversation", third)
    assert added.exit_code == 0 and f"training file {name!r}: 1 conversation(s) added" in added.output
    built = cli("training-file", "build", name)
    assert_build_output_ok(cli, built.output)
    v = cli.version(name)
    assert v["version"] == 1 and sorted(v["conversation_ids"]) == sorted([first, second, third])
    again = cli("training-file", "add", name, "--conversation", third)
    assert again.exit_code != 0
    assert f"{third}: already a member of this training file" in again.output


# --- errors: non-zero, the reason, nothing written ----------------------------------------------


def test_download_dest_keeps_an_existing_file_and_refuses_unwritable_places(cli: Cli, tmp_path: Path) -> None:
    name = unique()
    assert cli("training-file", "create", name, "--conversation", cli.conversation_ids[0], "--build").exit_code == 0
    key = cli.version(name)["jsonl_file_path"]
    stored, file_name = cli.store().get_bytes(key), key.rsplit("/", 1)[1]
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / file_name).write_bytes(b"mine, keep it")
    kept = cli("training-file", "download", name, "--dest", str(dest))
    assert kept.exit_code == 2 and "already exists; pass --force to replace it" in kept.output, kept.output
    assert (dest / file_name).read_bytes() == b"mine, keep it"
    forced = cli("training-file", "download", name, "--dest", str(dest), "--force")
    assert forced.exit_code == 0, forced.output
    assert (dest / file_name).read_bytes() == stored
    assert [p.name for p in dest.iterdir()] == [file_name]  # no temporary file left behind
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for where, reason in ((blocker, "is a file"), (blocker / "sub", "cannot write there: Not a directory")):
        refused = cli("training-file", "download", name, "--dest", str(where))
        assert refused.exit_code == 2, refused.output
        assert str(where) in refused.output and reason in refused.output, refused.output
        assert "Traceback" not in refused.output
    assert blocker.read_text() == "x"



def test_unknown_name_and_unknown_format(cli: Cli) -> None:
    for args, reason in (
        (["show", "no-such-file"], "no training file named 'no-such-file'"),
        (["download", "no-such-file"], "training file 'no-such-file' has no built version"),
        (["add", "no-such-file", "--conversation", cli.conversation_ids[0]], "no training file named 'no-such-file'"),
    ):
        result = cli("training-file", *args)
        assert result.exit_code != 0 and reason in result.output, (args, result.output)

    name = unique()
    assert cli("training-file", "create", name, "--conversation", cli.conversation_ids[0], "--build").exit_code == 0
    bad = cli("training-file", "download", name, "--format", "xlsx")
    assert bad.exit_code != 0
    assert "error: unknown format 'xlsx'; available: " in bad.output
    available = bad.output.split("available: ", 1)[1].strip().split(", ")
    assert sorted(available) == sorted(OUTPUTS)  # (in jsonb key order on PostgreSQL)
    missing = cli("training-file", "show", name, "--version", "2")
    assert missing.exit_code != 0 and f"training file {name!r} has no version 2; versions: [1]" in missing.output


@pytest.mark.parametrize("hostile, reason", [
    ("../x", "contains a path separator"),
    ("a/b", "contains a path separator"),
    (".hidden", "starts with a dot (hidden file)"),
    ("x" * 200, "is 200 characters long (at most 128)"),
    ("new\nline", "contains control character U+000A"),
    ("", "is empty"),
])
def test_hostile_name_is_refused_and_nothing_is_written(cli: Cli, hostile: str, reason: str) -> None:
    before, partitions = cli.row_counts(), cli.partitions()
    result = cli("training-file", "create", hostile, "--batch", cli.batch_id, "--build")
    assert result.exit_code != 0
    assert f"error: training file name {hostile!r} {reason}" in result.output
    assert cli.row_counts() == before
    assert cli.partitions() == partitions
    assert "run " not in result.output  # no build was attempted


def test_unenriched_conversation_is_refused_with_its_reason(cli: Cli) -> None:
    good, victim = cli.conversation_ids[0], cli.conversation_ids[3]
    unknown = str(uuid.uuid4())
    before = cli.row_counts()
    cli.set_status(victim, "failed")
    try:
        name = unique()
        result = cli("training-file", "create", name, "--conversation", good, "--conversation", victim,
                     "--conversation", unknown, "--conversation", good)
        skipped = cli("training-file", "create", unique(), "--batch", cli.batch_id, "--skip-ineligible")
    finally:
        cli.set_status(victim, "completed")
    assert result.exit_code != 0
    assert f"training file {name!r}: 3 conversation(s) refused, nothing was added" in result.output
    assert f"{victim}: not enriched (parse_status=parsed, enrichment_status=failed)" in result.output
    assert f"{unknown}: no such conversation" in result.output
    assert f"{good}: listed twice in this request" in result.output
    assert cli.training_file(name) is None and name not in cli.partitions()
    # --skip-ineligible lists what it leaves out instead of hiding it
    assert skipped.exit_code == 0, skipped.output
    assert f"skipped {victim}: not enriched" in skipped.output and "3 conversation(s)" in skipped.output
    after = cli.row_counts()
    assert after["training_files"] == before["training_files"] + 1


def test_selection_errors(cli: Cli) -> None:
    before = cli.row_counts()
    for args, reason in (
        (["--batch", cli.batch_id, "--conversation", cli.conversation_ids[0]], "give either --batch or --conversation"),
        ([], "give either --batch or --conversation"),
        (["--batch", "no-such-batch"], "unknown batch job id(s): ['no-such-batch']"),
        (["--conversation", cli.conversation_ids[0], "--min-quality", "9"], "must be between 0 and 5"),
    ):
        result = cli("training-file", "create", unique(), *args)
        assert result.exit_code != 0 and reason in result.output, (args, result.output)
    assert cli.row_counts() == before


def test_create_with_build_exits_non_zero_when_the_build_fails(cli: Cli) -> None:
    name = unique()
    result = cli("training-file", "create", name, "--conversation", cli.conversation_ids[0], "--min-quality", "5", "--build")
    assert "FAILED" in result.output and "no conversation left after quality filter" in result.output
    assert cli.version(name) is None
    assert result.exit_code != 0


def test_build_of_unknown_or_hostile_name_fails_without_registering_a_partition(cli: Cli) -> None:
    for name, reason in (("no-such-file", "no training file named 'no-such-file'"),
                         ("../x", "training file name '../x' contains a path separator")):
        result = cli("training-file", "build", name)
        assert result.exit_code != 0
        assert reason in result.output
        assert name not in cli.partitions()


# --- build options: --tokenizer / --max-length -----------------------------------------------------


def test_build_with_a_tokenizer_counts_with_it_and_a_bad_path_is_refused(cli: Cli, tmp_path: Path) -> None:
    from lora_assets_tests.test_training_build import tiny_tokenizer

    before, partitions = cli.row_counts(), cli.partitions()
    missing = tmp_path / "nope" / "tokenizer.json"
    name = unique()
    refused = cli("training-file", "create", name, "--batch", cli.batch_id, "--build", "--tokenizer", str(missing))
    assert refused.exit_code == 2, refused.output
    assert f"--tokenizer: tokenizer {str(missing)!r} does not exist" in refused.output
    assert cli.row_counts() == before and cli.partitions() == partitions  # checked before anything is written

    path = tiny_tokenizer(tmp_path / "tok" / "tokenizer.json")
    created = cli("training-file", "create", name, "--batch", cli.batch_id)
    assert created.exit_code == 0, created.output
    built = cli("training-file", "build", name, "--tokenizer", str(path.parent), "--max-length", "4096")
    assert_build_output_ok(cli, built.output)
    stats = cli.version(name)["stats"]
    assert stats["tokenizer"] == stats["lengths"]["method"] == str(path) and stats["max_length"] == 4096
    bad = cli("training-file", "build", name, "--tokenizer", str(missing))
    assert bad.exit_code == 2 and str(missing) in bad.output and cli.version(name)["version"] == 1
