"""`lora-assets review export | import` and `lora-assets enrich --batch KEY --re-enrich` as a user
meets them (click CliRunner) on SQLite + local files: a batch generated with `batch create --run`
against a loopback simulator, exported, decided, imported; a tampered file exits 2 naming the row
with nothing written; re-enrichment makes no Claude request."""

from __future__ import annotations

import re

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from lora_assets.cli import main
from lora_assets.defs.resources import _ENGINES, build_resources
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import db as dbq
from lora_assets.store import tables as t
from lora_assets.store.db import make_engine


@dataclass
class Cli:
    root: Path
    db_url: str
    batch_id: str
    sim: ClaudeSimulator
    runner: CliRunner

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(main, list(args))

    def review_columns(self) -> dict[str, tuple[Any, ...]]:
        engine = make_engine(self.db_url)
        try:
            c, b = t.conversations, t.batch_jobs
            # The key `batch create` prints is the batch's partition key (its slug) or its id.
            batch = sa.select(b.c.id).where(sa.or_(b.c.id == self.batch_id, b.c.slug == self.batch_id))
            with engine.connect() as conn:
                rows = conn.execute(sa.select(c.c.id, c.c.review_decision, c.c.human_reviewed, c.c.reviewer_notes)
                                    .where(c.c.batch_job_id.in_(batch))).all()
                assert len(rows) == 2
                return {r[0]: tuple(r[1:]) for r in rows}
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """The environment a user sets (SQLite, local files, a simulator), `init` and a 1 × 1 × 2 batch."""
    import lora_assets.definitions as definitions

    root = tmp_path_factory.mktemp("cli_review")
    (root / "dh").mkdir()
    (root / "dh" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    db_url = f"sqlite:///{root / 'data' / 'lora.db'}"
    with ClaudeSimulator() as sim, pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_DATA_DIR", str(root / "data"))
        mp.setenv("DAGSTER_HOME", str(root / "dh"))
        mp.setenv("ANTHROPIC_BASE_URL", sim.base_url)
        mp.setenv("LORA_DATABASE_URL", db_url)
        mp.delenv("ANTHROPIC_API_KEY", raising=False)
        for var in ("LORA_S3_BUCKET", "LORA_S3_ENDPOINT_URL", "LORA_S3_PREFIX"):
            mp.delenv(var, raising=False)
        mp.setattr(definitions, "defs", definitions.build_defs(build_resources()))
        runner = CliRunner()
        assert runner.invoke(main, ["init"]).exit_code == 0
        engine = make_engine(db_url)
        with engine.connect() as conn:
            persona = dbq.read_personas(conn)[0].persona_key
            arc = dbq.read_emotional_arcs(conn)[0].arc_key
            topics = [x.topic_key for x in dbq.read_training_topics(conn)][:2]
        engine.dispose()
        created = runner.invoke(main, ["batch", "create", "--persona", persona, "--arc", arc, "--topic", topics[0],
                                       "--topic", topics[1], "--name", "cli-review", "--run"])
        assert created.exit_code == 0, created.output
        batch_id = re.search(r"; id ([0-9a-f-]{36})", created.output).group(1)  # the line starts with its key (slug)
        yield Cli(root, db_url, batch_id, sim, runner)
    _ENGINES.pop(db_url, None)


def set_decisions(text: str, decision: str, notes: str) -> str:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    for row in rows[1:]:
        row[rows[0].index("decision")], row[rows[0].index("notes")] = decision, notes
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def test_export_edit_import(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "review.csv"
    exported = cli("review", "export", "--batch", cli.batch_id, "--out", str(out))
    assert exported.exit_code == 0, exported.output
    assert f"{out}: 2 conversation(s) of batch {cli.batch_id}" in exported.output
    again = cli("review", "export", "--batch", cli.batch_id, "--out", str(out))
    assert again.exit_code == 2 and "use --force" in again.output  # a reviewer's edits are never overwritten

    text = out.read_text(encoding="utf-8-sig")
    tampered = tmp_path / "tampered.csv"
    rows = list(csv.reader(io.StringIO(set_decisions(text, "approve", "ok"), newline="")))
    rows[1][rows[0].index("persona")] = "someone_else"
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    tampered.write_text(buf.getvalue(), encoding="utf-8-sig", newline="")
    refused = cli("review", "import", str(tampered))
    assert refused.exit_code == 2
    assert f"error: {tampered}: refused, nothing was written (1 problem(s)):" in refused.output
    assert "line 2: read-only column 'persona' was edited" in refused.output
    assert {v[0] for v in cli.review_columns().values()} == {None}

    out.write_text(set_decisions(text, "approve", "good advice"), encoding="utf-8-sig", newline="")
    imported = cli("review", "import", str(out))
    assert imported.exit_code == 0, imported.output
    assert "2 approved, 0 rejected, 0 undecided" in imported.output
    assert set(cli.review_columns().values()) == {("approve", True, "good advice")}


def test_export_needs_exactly_one_target(cli: Cli, tmp_path: Path) -> None:
    neither = cli("review", "export", "--out", str(tmp_path / "x.csv"))
    assert neither.exit_code == 2 and "exactly one of --batch KEY or --training-file NAME" in neither.output
    unknown = cli("review", "export", "--training-file", "nope", "--out", str(tmp_path / "x.csv"))
    assert unknown.exit_code == 2 and "no training file named 'nope'" in unknown.output
    assert not (tmp_path / "x.csv").exists()


def test_enrich_batch_re_enrich_makes_no_claude_request(cli: Cli) -> None:
    cli.sim.reset_stats()
    plain = cli("enrich", "--batch", cli.batch_id)
    assert plain.exit_code == 0, plain.output
    assert "enriched 0, failed 0" in plain.output  # already enriched: nothing to do
    re_enriched = cli("enrich", "--batch", cli.batch_id, "--re-enrich")
    assert re_enriched.exit_code == 0, re_enriched.output
    assert "enriched 2, failed 0" in re_enriched.output and "check FAIL" not in re_enriched.output
    assert re_enriched.output.strip().splitlines()[-1].endswith(": success")
    assert cli.sim.stats.snapshot()["requests_total"] == 0
    lone = cli("enrich", "--re-enrich")
    assert lone.exit_code == 2 and "give either PARSED_FILE or --batch KEY" in lone.output


def test_review_round_trip_reaches_the_next_training_file_version(cli: Cli, tmp_path: Path) -> None:
    """Export → approve one, reject the other → import → build: the rejected conversation is not in
    the file and human_reviewed_count is 1 in the version (and its JSONL, which the checks audit)."""
    from lora_assets.store.training_files import get_version

    out = tmp_path / "round-trip.csv"
    assert cli("review", "export", "--batch", cli.batch_id, "--out", str(out)).exit_code == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"), newline="")))
    head = rows[0]
    (approved, rejected) = (rows[1][head.index("conversation_id")], rows[2][head.index("conversation_id")])
    rows[1][head.index("decision")], rows[1][head.index("notes")] = "approve", "keep: clear steps"
    rows[2][head.index("decision")] = "reject"
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    out.write_text(buf.getvalue(), encoding="utf-8-sig", newline="")
    assert cli("review", "import", str(out)).exit_code == 0

    built = cli("training-file", "create", "reviewed", "--batch", cli.batch_id, "--build")
    assert built.exit_code == 0, built.output
    engine = make_engine(cli.db_url)
    try:
        with engine.connect() as conn:
            version = get_version(conn, "reviewed")
    finally:
        engine.dispose()
    assert version["conversation_ids"] == [approved] and rejected not in version["conversation_ids"]
    assert version["human_reviewed_count"] == 1
    assert version["stats"]["review_rejected_out"] == 1
    assert "FAIL" not in built.output


def _appended(text: str, rows: int, decision: str = "") -> str:
    """The export with `rows` junk rows appended (each names a conversation that does not exist)."""
    header = next(csv.reader(io.StringIO(text, newline="")))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    for i in range(rows):
        row = [""] * len(header)
        row[0], row[header.index("decision")] = f"junk-{i}", decision
        writer.writerow(row)
    return text + out.getvalue()


def test_hostile_review_csvs_are_refused_within_the_limits_and_change_nothing(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Size and row limits (settings) stop reading early; the problem list is capped with a count
    of the rest; each refusal is exit 2 with its reason, and no conversation changes."""
    import os

    out = tmp_path / "review.csv"
    assert cli("review", "export", "--batch", cli.batch_id, "--out", str(out), "--force").exit_code == 0
    text = out.read_text(encoding="utf-8-sig")
    before = cli.review_columns()

    def refused(path: Path, *fragments: str) -> str:
        result = cli("review", "import", str(path))
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and "Traceback" not in result.output, result.output
        for fragment in fragments:
            assert fragment in result.output, (fragment, result.output)
        assert cli.review_columns() == before
        return result.output

    many = tmp_path / "many.csv"
    many.write_text(_appended(text, 300), encoding="utf-8-sig", newline="")
    monkeypatch.setenv("LORA_MAX_REVIEW_ROWS", "100")
    # the line is a physical one: transcripts span lines
    refused(many, f"error: {many}: more than 100 rows (line ", "), over the limit of 100 rows", "LORA_MAX_REVIEW_ROWS")
    monkeypatch.delenv("LORA_MAX_REVIEW_ROWS")

    monkeypatch.setenv("LORA_MAX_REVIEW_FILE_BYTES", "2048")
    refused(many, f"error: {many}: {many.stat().st_size:,} bytes, over the limit of 2,048 bytes",
            "LORA_MAX_REVIEW_FILE_BYTES")
    monkeypatch.delenv("LORA_MAX_REVIEW_FILE_BYTES")

    bad = tmp_path / "bad.csv"
    bad.write_text(_appended(text, 300, decision="maybe"), encoding="utf-8-sig", newline="")
    monkeypatch.setenv("LORA_MAX_VALIDATION_LINES", "5")
    output = refused(bad, "refused, nothing was written (", "… and ", "more problem(s) not shown: only the first 5",
                     "LORA_MAX_VALIDATION_LINES")
    assert len(output.splitlines()) == 7, output  # the error line, 5 problems, the count of the rest
    monkeypatch.delenv("LORA_MAX_VALIDATION_LINES")

    fifo = tmp_path / "review.fifo"
    os.mkfifo(fifo)  # opening it to read would wait for a writer
    refused(fifo, f"error: {fifo}: is not a regular file")
