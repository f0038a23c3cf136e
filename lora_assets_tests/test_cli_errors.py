"""Hostile and careless input at the CLI: every refusal is one `error:` line naming the thing and
the reason, with its documented exit code (1 failed work, 2 bad input), no traceback unless
--debug, and nothing changed in the domain DB, the blob store or the Dagster instance."""

from __future__ import annotations

import re

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lora_assets.cli import main
from lora_assets.store.scaffolding_files import BUNDLED_DIR
from lora_assets_tests.core.factories import make_parsed

PERSONA, ARC, TOPIC = "pragmatic_optimist", "confusion_to_clarity", "mortgage_payoff_strategy"
SECRET = "root:$6$s3cr3t-hash-do-not-print:19000:0:99999:7:::"


def _invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _assert_refused(result: Result, code: int, *fragments: str) -> None:
    output = result.output
    assert result.exit_code == code, (result.exit_code, output)
    assert "Traceback" not in output, output
    # Ours: `error: …`; click's own usage errors (exit 2 too): `Error: …` after the usage line.
    errors = [line for line in output.splitlines() if line.startswith(("error: ", "Error: "))]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in output, (fragment, output)


def _environment(root: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("LORA_DATA_DIR", str(root / "data"))
    mp.setenv("DAGSTER_HOME", str(root / "dh"))
    (root / "dh").mkdir(parents=True, exist_ok=True)
    (root / "dh" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for var in ("LORA_DATABASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "LORA_S3_BUCKET", "LORA_DEBUG",
                "LORA_SCAFFOLDING_DIR"):
        mp.delenv(var, raising=False)


def _dump(db: Path) -> str | None:
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


def _state(root: Path) -> dict[str, Any]:
    """What a refused command must not change: the domain DB's rows, the Dagster instance's
    databases (runs, event log, dynamic partitions), and every other file of the data dir."""
    databases = [root / "data" / "lora.db", *sorted((root / "dh").rglob("*.db"))]
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for base in (root / "data", root / "dh")
        if base.exists()
        for p in base.rglob("*")
        if p.is_file() and not p.name.endswith((".db", ".db-wal", ".db-shm", ".lock"))
    )
    return {"databases": {str(db.relative_to(root)): _dump(db) for db in databases}, "files": files}


# --- an initialised store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data dir after `lora-assets init`, plus hostile files next to it."""
    root = tmp_path_factory.mktemp("cli_errors")
    with pytest.MonkeyPatch.context() as mp:
        _environment(root, mp)
        result = _invoke("init")
        assert result.exit_code == 0, result.output
        files = root / "files"
        files.mkdir()
        (files / "binary.json").write_bytes(bytes(range(256)) * 8)
        (files / "latin1.json").write_bytes('{"turns": "caf\xe9"}'.encode("latin-1"))
        (files / "nul.json").write_text('{"turns": []}\x00\x00')
        (files / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        (files / "shadow").write_text(SECRET + "\n")
        (files / "link.json").symlink_to(files / "shadow")
        (files / "large.json").write_text(json.dumps({"turns": ["x" * 4000]}))
        (files / "empty.json").write_text("")
        os.mkfifo(files / "fifo.json")  # opening it to read would wait for a writer
        parsed = json.loads(make_parsed(turn_count=12).model_dump_json())
        (files / "parsed_12_turns.json").write_text(json.dumps(parsed))
        raw = {"conversation_metadata": parsed["conversation_metadata"], "turns": parsed["turns"]}
        (files / "raw_12_turns.json").write_text(json.dumps(raw))
        invalid = {"training_pairs": [{"id": i} for i in range(50)]}
        (files / "many_problems.json").write_text(json.dumps(invalid))
        yield root


def _files(store: Path) -> Path:
    return store / "files"


F = "{files}"  # replaced by the hostile files' directory

#: (case id, environment, arguments, exit code, fragments the output must contain)
HOSTILE: list[tuple[str, dict[str, str], list[str], int, list[str]]] = [
    ("run-unknown-batch", {}, ["run", "no-such-batch"], 2, ["batch job 'no-such-batch' not found"]),
    ("run-empty-batch-id", {}, ["run", ""], 2, ["the batch id is empty"]),
    ("run-blank-batch-id", {}, ["run", "   "], 2, ["the batch id is empty"]),
    ("judge-unknown-batch", {}, ["judge", "no-such-batch"], 2, ["batch job 'no-such-batch' not found"]),
    ("judge-empty-batch-id", {}, ["judge", ""], 2, ["the batch id is empty"]),
    ("status-unknown-batch", {}, ["batch", "status", "nope"], 2, ["batch job 'nope' not found"]),
    ("unknown-model", {}, ["batch", "create", "--model", "claude-nope-9"], 2,
     ["--model 'claude-nope-9'", "no price known", "claude-haiku-5-5"]),
    ("unknown-model-from-env", {"LORA_CLAUDE_MODEL": "gpt-4"}, ["batch", "create"], 2, ["no price known for model 'gpt-4'"]),
    ("per-combination-too-large", {}, ["batch", "create", "--per-combination", "1000"], 2,
     ["1,568,000 items", "14 personas × 8 arcs × 14 topics × 1000 per combination", "limit of 10,000",
      "LORA_MAX_ITEMS_PER_BATCH"]),
    ("items-limit-from-env", {"LORA_MAX_ITEMS_PER_BATCH": "3"}, ["batch", "create", "--persona", PERSONA, "--arc", ARC], 2,
     ["14 items", "limit of 3 items per batch", "LORA_MAX_ITEMS_PER_BATCH"]),
    ("per-combination-zero", {}, ["batch", "create", "--per-combination", "0"], 2, ["--per-combination"]),
    ("unknown-persona", {}, ["batch", "create", "--persona", "nobody", "--arc", "*", "--topic", "*"], 2,
     ["unknown persona key(s) ['nobody']"]),
    # No implicit "all" (issue 21): an empty key list is refused, naming it and the explicit choice.
    ("no-implicit-all", {}, ["batch", "create", "--persona", PERSONA, "--arc", ARC], 2,
     ['topics: no training topic keys given; name them, or give ["*"]']),
    ("validate-binary", {}, ["validate", f"{F}/binary.json"], 2, ["binary.json: is not UTF-8 text"]),
    ("parse-binary", {}, ["parse", f"{F}/binary.json", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC], 2,
     ["binary.json: is not UTF-8 text"]),
    ("enrich-non-utf8", {}, ["enrich", f"{F}/latin1.json"], 2, ["latin1.json: is not UTF-8 text", "offset"]),
    ("validate-nul", {}, ["validate", f"{F}/nul.json"], 2, ["nul.json: contains NUL characters"]),
    ("validate-deep", {}, ["validate", f"{F}/deep.json"], 2,
     ["deep.json: JSON nested 100,000 levels deep", "limit of 64 levels", "LORA_MAX_JSON_DEPTH"]),
    ("parse-deep", {}, ["parse", f"{F}/deep.json", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC], 2,
     ["nested 100,000 levels deep"]),
    ("enrich-deep", {}, ["enrich", f"{F}/deep.json"], 2, ["nested 100,000 levels deep"]),
    ("validate-over-size", {"LORA_MAX_INPUT_FILE_BYTES": "2048"}, ["validate", f"{F}/large.json"], 2,
     ["large.json: 4,015 bytes", "limit of 2,048 bytes", "LORA_MAX_INPUT_FILE_BYTES"]),
    ("enrich-over-size", {"LORA_MAX_INPUT_FILE_BYTES": "2048"}, ["enrich", f"{F}/large.json"], 2,
     ["LORA_MAX_INPUT_FILE_BYTES"]),
    ("validate-too-many-turns", {"LORA_MAX_TURNS": "10"}, ["validate", f"{F}/raw_12_turns.json"], 2,
     ["turns has 12 turns", "limit of 10 turns per conversation", "LORA_MAX_TURNS"]),
    ("enrich-too-many-turns", {"LORA_MAX_TURNS": "10"}, ["enrich", f"{F}/parsed_12_turns.json"], 2,
     ["has 12 turns", "LORA_MAX_TURNS"]),
    ("parse-too-many-turns", {"LORA_MAX_TURNS": "10"},
     ["parse", f"{F}/raw_12_turns.json", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC], 2,
     ["has 12 turns", "LORA_MAX_TURNS"]),
    ("validate-device", {}, ["validate", "/dev/zero"], 2, ["/dev/zero: is not a regular file"]),
    ("parse-fifo", {}, ["parse", f"{F}/fifo.json", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC], 2,
     ["fifo.json: is not a regular file"]),
    ("validate-empty", {}, ["validate", f"{F}/empty.json"], 2, ["empty.json: the document is empty"]),
    ("parse-secret-via-symlink", {}, ["parse", f"{F}/link.json", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC],
     1, ["link.json", "no JSON object"]),
    ("validate-secret-via-symlink", {}, ["validate", f"{F}/link.json"], 2, ["link.json: not JSON"]),
    ("enrich-secret-via-symlink", {}, ["enrich", f"{F}/link.json"], 2, ["link.json: not JSON"]),
    ("validate-output-capped", {"LORA_MAX_VALIDATION_LINES": "5"}, ["validate", "--kind", "training_file",
     f"{F}/many_problems.json"], 1, ["more problems not shown", "only the first 5 are listed", "LORA_MAX_VALIDATION_LINES", "more than 5 problem(s)"]),
    ("concurrency-not-a-number", {"LORA_MAX_CONCURRENCY": "abc"}, ["batch", "list"], 2,
     ["LORA_MAX_CONCURRENCY: 'abc' is not a whole number"]),
    ("concurrency-zero", {"LORA_MAX_CONCURRENCY": "0"}, ["batch", "list"], 2,
     ["LORA_MAX_CONCURRENCY: must be greater than or equal to 1"]),
    ("claim-ttl-negative", {"LORA_CLAIM_TTL_S": "-5"}, ["run", "x"], 2, ["LORA_CLAIM_TTL_S: must be greater than 0"]),
    ("claim-ttl-nan", {"LORA_CLAIM_TTL_S": "nan"}, ["batch", "list"], 2, ["LORA_CLAIM_TTL_S: 'nan' is not a finite number"]),
    ("blob-concurrency-too-high", {"LORA_BLOB_CONCURRENCY": "100000"}, ["batch", "list"], 2,
     ["LORA_BLOB_CONCURRENCY: must be less than or equal to 256"]),
    ("items-limit-not-a-number", {"LORA_MAX_ITEMS_PER_BATCH": "lots"}, ["batch", "create"], 2,
     ["LORA_MAX_ITEMS_PER_BATCH: 'lots' is not a whole number"]),
    ("turn-limit-too-small", {"LORA_MAX_TURNS": "1"}, ["validate", f"{F}/raw_12_turns.json"], 2, ["LORA_MAX_TURNS: must be"]),
    ("base-url-with-credentials", {"ANTHROPIC_BASE_URL": "https://someone:hunter2-pass@api.example.com"},
     ["batch", "list"], 2, ["ANTHROPIC_BASE_URL: has a user name or password in it"]),
    ("base-url-not-http", {"ANTHROPIC_BASE_URL": "file:///etc/passwd"}, ["batch", "list"], 2,
     ["ANTHROPIC_BASE_URL: must be an http:// or https:// URL"]),
    ("database-url-unusable", {"LORA_DATABASE_URL": "nosuchdb://someone:hunter2-pass@host/db"}, ["batch", "list"], 2,
     ["LORA_DATABASE_URL: is not a SQLAlchemy URL", "the value is not shown"]),
    ("database-url-garbage", {"LORA_DATABASE_URL": "someone:hunter2-pass"}, ["batch", "list"], 2,
     ["LORA_DATABASE_URL: is not a SQLAlchemy URL"]),
    ("data-dir-is-a-file", {"LORA_DATA_DIR": "{files}/shadow"}, ["batch", "list"], 2,
     ["LORA_DATA_DIR: ", "shadow is a file, not a directory"]),
    ("spool-dir-under-a-file", {"LORA_SPOOL_DIR": "{files}/shadow/spool"}, ["run", "x"], 2,
     ["LORA_SPOOL_DIR: ", "/spool cannot be created: ", "shadow is a file, not a directory"]),
    ("dagster-home-missing", {"DAGSTER_HOME": "/nonexistent/dagster-home"}, ["run", "x"], 2,
     ["DAGSTER_HOME: /nonexistent/dagster-home is not an existing directory given as an absolute path"]),
    ("dagster-home-relative", {"DAGSTER_HOME": "relative/dh"}, ["training-file", "create", "x", "--batch", "b"], 2,
     ["DAGSTER_HOME: relative/dh is not an existing directory given as an absolute path"]),
    ("review-csv-not-a-review-export", {}, ["review", "import", f"{F}/link.json"], 2,
     ["link.json: refused, nothing was written", "not a review export"]),
    ("unknown-schema", {}, ["schema", "nope"], 2, ["unknown schema 'nope'"]),
    ("tf-show-unknown", {}, ["training-file", "show", "nope"], 2, ["no training file named 'nope'"]),
    ("tf-download-unknown", {}, ["training-file", "download", "nope", "--dest", "/tmp"], 2,
     ["training file 'nope' has no built version"]),
    ("tf-create-no-selection", {}, ["training-file", "create", "x"], 2, ["give either --batch or --conversation"]),
]


@pytest.mark.parametrize("env, args, code, fragments", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_refused_with_its_reason_and_changes_nothing(
    store: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], code: int, fragments: list[str]
) -> None:
    _environment(store, monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace(F, str(_files(store))))
    before = _state(store)
    result = _invoke(*[a.replace(F, str(_files(store))) for a in args])
    _assert_refused(result, code, *fragments)
    # Never echoed: the content of a file that could not be parsed, a credential in a URL.
    for secret in ("s3cr3t-hash", "hunter2", "someone", "root:$6$"):
        assert secret not in result.output
    assert _state(store) == before


def test_an_unexpected_exception_is_one_line_unless_debug(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_assets.store import batches

    _environment(store, monkeypatch)

    def broken(conn: Any, **_: Any) -> list[Any]:
        raise RuntimeError("the disk is on fire\nsecond line")

    monkeypatch.setattr(batches, "list_batches", broken)
    result = _invoke("batch", "list")
    _assert_refused(result, 1, "error: RuntimeError: the disk is on fire", "run with --debug for the traceback")
    assert "second line" not in result.output
    debug = _invoke("--debug", "batch", "list")
    assert isinstance(debug.exception, RuntimeError) and debug.exit_code == 1


def _fake_run(monkeypatch: pytest.MonkeyPatch, *, success: bool, blocking_passed: bool) -> None:
    """`run` without Dagster: a job whose result carries one blocking check evaluation."""
    from types import SimpleNamespace

    from dagster import AssetKey

    import lora_assets.definitions as definitions

    evaluation = SimpleNamespace(asset_key=AssetKey("enriched_conversations"), check_name="all_conversations_enriched",
                                 passed=blocking_passed, blocking=True, description="fake")
    result = SimpleNamespace(success=success, run_id="fake-run", get_asset_check_evaluations=lambda: [evaluation],
                             all_events=[])
    job = SimpleNamespace(execute_in_process=lambda **_: result)
    monkeypatch.setattr(definitions, "defs", SimpleNamespace(resolve_job_def=lambda name: job))


@pytest.mark.parametrize(
    "success, blocking_passed, code, fragment",
    [
        (True, True, 0, "run fake-run: success"),
        (True, False, 1, "blocking check(s) failed: enriched_conversations:all_conversations_enriched"),
        (False, True, 1, "the run failed"),
    ],
)
def test_run_exit_code_follows_the_run_and_its_blocking_checks(
    store: Path, monkeypatch: pytest.MonkeyPatch, success: bool, blocking_passed: bool, code: int, fragment: str
) -> None:
    _environment(store, monkeypatch)
    created = _invoke("batch", "create", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC)
    assert created.exit_code == 0, created.output
    batch_id = re.search(r"; id ([0-9a-f-]{36})", created.output).group(1)  # the line starts with its key (slug)
    _fake_run(monkeypatch, success=success, blocking_passed=blocking_passed)
    result = _invoke("run", batch_id)
    assert result.exit_code == code, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_run_exits_1_when_every_item_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run against a simulator that refuses everything: the run itself succeeds, the
    command does not (it used to exit 0)."""
    import lora_assets.definitions as definitions
    from lora_assets.defs.resources import build_resources
    from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig

    _environment(tmp_path, monkeypatch)
    with ClaudeSimulator(FaultConfig(refusal_rate=1.0)) as sim:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
        monkeypatch.setattr(definitions, "defs", definitions.build_defs(build_resources()))
        assert _invoke("init").exit_code == 0
        result = _invoke("batch", "create", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC, "--run")
    _assert_refused(result, 1, "every item failed (1 of 1", "FAIL")


def test_a_run_that_aborts_says_why_in_its_last_line_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run whose generation aborts (its spool cannot be written, as when claims lapse in a
    database outage: RunAbortedError ends the step). No Dagster STEP_FAILURE / RUN_FAILURE stack
    trace is printed; the last line is the one `error:` line, with the step and the reason; no
    conversation is stored and the item is left for a re-run."""
    import lora_assets.definitions as definitions
    from lora_assets.defs.resources import build_resources

    _environment(tmp_path, monkeypatch)
    spool = tmp_path / "spool"
    monkeypatch.setenv("LORA_SPOOL_DIR", str(spool))
    monkeypatch.setattr(definitions, "defs", definitions.build_defs(build_resources()))
    assert _invoke("init").exit_code == 0
    created = _invoke("batch", "create", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC, "--name", "abort")
    assert created.exit_code == 0, created.output
    batch_id = re.search(r"; id ([0-9a-f-]{36})", created.output).group(1)
    spool.mkdir()
    (spool / batch_id).write_text("")  # where this batch's answers would be spooled: a file
    result = _invoke("run", "abort")
    _assert_refused(result, 1, "could not write the answer to the local spool", "left unrecorded for a re-run")
    last = result.output.rstrip().splitlines()[-1]
    assert last.startswith("error: batch abort: the run failed: raw_conversations: generation run aborted (at item "), \
        result.output
    for marker in ("Traceback", "Stack Trace", "STEP_FAILURE", "RUN_FAILURE", "dagster - ERROR", 'File "'):
        assert marker not in result.output, (marker, result.output)
    with sqlite3.connect(tmp_path / "data" / "lora.db") as conn:
        assert conn.execute("SELECT count(*) FROM conversations").fetchone()[0] == 0
        assert conn.execute("SELECT status FROM batch_items").fetchall() == [("pending",)]


def test_our_log_records_are_one_line_each_and_repeats_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    """What our modules log reaches the terminal as one line per kind of warning (an outage's
    retries do not flood it), and a logged exception's traceback only with --debug."""
    import logging

    from lora_assets.cli import _OneLineLog

    log = logging.getLogger("lora_assets.tests.one_line")
    log.propagate = False
    for debug in (False, True):
        handler = _OneLineLog(debug=debug)
        log.addHandler(handler)
        try:
            for i in range(5):
                log.warning("retry %d failed\nsecond line", i)
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log.exception("unexpected error on item %s", "x")
        finally:
            log.removeHandler(handler)
        err = capsys.readouterr().err
        if not debug:
            assert err.splitlines() == ["warning: retry 0 failed",
                                        "warning: retry 1 failed (more like this are not shown; --debug shows them)"]
        else:
            assert err.count("warning: retry") == 5 and "logged error: unexpected error on item x" in err
            assert "Traceback" in err and "RuntimeError: boom" in err


# --- before `init` -------------------------------------------------------------------------------

BEFORE_INIT = [
    ["batch", "list"],
    ["batch", "status", "x"],
    ["batch", "create"],
    ["run", "x"],
    ["judge", "x"],
    ["training-file", "list"],
    ["training-file", "show", "x"],
    ["training-file", "create", "x", "--batch", "b"],
    ["training-file", "download", "x", "--dest", "somewhere"],
    ["enrich", "{parsed}"],
    ["parse", "{parsed}", "--persona", PERSONA, "--arc", ARC, "--topic", TOPIC],
]


@pytest.mark.parametrize("args", BEFORE_INIT, ids=[" ".join(a[:2]) for a in BEFORE_INIT])
def test_every_command_before_init_says_run_init_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    _environment(tmp_path, monkeypatch)
    parsed = tmp_path / "parsed.json"
    parsed.write_text(make_parsed().model_dump_json())
    result = _invoke(*[a.replace("{parsed}", str(parsed)) for a in args])
    _assert_refused(result, 2, "the domain database is not initialised", "run `lora-assets init`")
    assert not (tmp_path / "data").exists()


# --- init refuses what a run would fail on -------------------------------------------------------


def _scaffolding(tmp_path: Path, name: str, change: Any) -> Path:
    directory = tmp_path / "scaffolding"
    if not directory.exists():
        shutil.copytree(BUNDLED_DIR, directory)
    path = directory / name
    changed = change(path.read_text(encoding="utf-8"))
    path.write_bytes(changed if isinstance(changed, bytes) else changed.encode("utf-8"))
    return directory


def _edit_json(edit: Any) -> Any:
    def change(text: str) -> str:
        data = json.loads(text)
        edit(data)
        return json.dumps(data, ensure_ascii=False)

    return change


def _duplicate_name_key(text: str) -> str:
    return text.replace('"name":', '"name": "first", "name":', 1)


INIT_CASES: list[tuple[str, dict[str, str], str, Any, list[str]]] = [
    ("duplicate-json-key", {}, "personas.json", _duplicate_name_key,
     ["personas.json: record 0", "key 'name' appears more than once"]),
    ("nul-character", {}, "emotional_arcs.json", _edit_json(lambda d: d[1].update(description="calm\u0000down")),
     ["emotional_arcs.json: record 1", "field 'description': contains a NUL character"]),
    ("record-too-large", {"LORA_MAX_SCAFFOLDING_RECORD_BYTES": "2000"}, "personas.json",
     _edit_json(lambda d: d[3].update(communication_style="chatty " * 400)),
     ["personas.json: record 3", "over the limit of 2,000 bytes per record", "LORA_MAX_SCAFFOLDING_RECORD_BYTES"]),
    ("template-too-long", {"LORA_MAX_TEMPLATE_CHARS": "500"}, "prompt_templates.json", lambda text: text,
     ["field 'body'", "over the limit of 500", "LORA_MAX_TEMPLATE_CHARS"]),
    ("unresolvable-placeholder", {}, "prompt_templates.json",
     _edit_json(lambda d: d[0].update(body=d[0]["body"] + " {{no_such_placeholder}}")),
     ["not usable by a run", "unknown placeholder {{no_such_placeholder}}"]),
    ("placeholder-missing-a-closing-brace", {}, "prompt_templates.json",
     _edit_json(lambda d: d[0].update(body=d[0]["body"] + " Hello {{persona_name}.")),
     ["prompt_templates.json: 'standard_conversation': field 'body': malformed placeholder '{{persona_name}'"]),
    ("placeholder-not-closed", {}, "prompt_templates.json",
     _edit_json(lambda d: d[1].update(body=d[1]["body"] + " Ask {{consultant_name about it.")),
     ["prompt_templates.json: 'scenario_conversation': field 'body': malformed placeholder '{{consultant_name'"]),
    ("placeholder-with-a-hyphen", {}, "prompt_templates.json",
     _edit_json(lambda d: d[2].update(body=d[2]["body"] + " Key {{persona-key}}.")),
     ["prompt_templates.json: 'edge_case_conversation': field 'body': malformed placeholder '{{persona-key}}'"]),
    ("two-templates-for-one-tier", {}, "prompt_templates.json", _edit_json(lambda d: d[1].update(tier=d[0]["tier"])),
     ["2 templates for tier 'template'"]),
    ("invalid-json", {}, "training_topics.json", lambda text: text[:-5], ["training_topics.json: invalid JSON"]),
    ("not-utf8", {}, "personas.json", lambda text: b"\xff" + text.encode(), ["personas.json: not UTF-8 text"]),
]


@pytest.mark.parametrize("env, name, change, fragments", [c[1:] for c in INIT_CASES], ids=[c[0] for c in INIT_CASES])
def test_init_refuses_scaffolding_a_run_would_fail_on_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str, change: Any, fragments: list[str]
) -> None:
    _environment(tmp_path, monkeypatch)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    directory = _scaffolding(tmp_path, name, change)
    result = _invoke("init", "--scaffolding-dir", str(directory))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    assert not (tmp_path / "data").exists()


def test_init_loads_lora_scaffolding_dir_and_says_where_its_scaffolding_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`init` reads LORA_SCAFFOLDING_DIR as the scaffolding assets do (it used to restore the
    bundled persona over the user's), and each init names its source."""
    _environment(tmp_path, monkeypatch)
    monkeypatch.delenv("LORA_SCAFFOLDING_DIR", raising=False)
    directory = _scaffolding(tmp_path, "personas.json", _edit_json(lambda d: d[0].update(name="Zed Changed")))
    first = _invoke("init", "--scaffolding-dir", str(directory))
    assert first.exit_code == 0 and f"scaffolding: {directory} (--scaffolding-dir)" in first.output, first.output
    monkeypatch.setenv("LORA_SCAFFOLDING_DIR", str(directory))
    again = _invoke("init")
    assert again.exit_code == 0, again.output
    assert f"scaffolding: {directory} (LORA_SCAFFOLDING_DIR)" in again.output
    assert "updated   0  unchanged  14" in again.output, again.output
    with sqlite3.connect(tmp_path / "data" / "lora.db") as conn:
        names = {n for (n,) in conn.execute("SELECT name FROM personas")}
    assert "Zed Changed" in names and "David Chen" not in names
    monkeypatch.delenv("LORA_SCAFFOLDING_DIR")
    bundled = _invoke("init")
    assert bundled.exit_code == 0 and f"scaffolding: {BUNDLED_DIR} (bundled data)" in bundled.output, bundled.output


def test_init_loads_an_s3_lora_scaffolding_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: tuple[str, str]
) -> None:
    import boto3

    _environment(tmp_path, monkeypatch)
    endpoint, bucket = s3_bucket
    directory = _scaffolding(tmp_path, "personas.json", _edit_json(lambda d: d[0].update(name="Zed From S3")))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in directory.iterdir():
        client.upload_file(str(path), bucket, f"team/{path.name}")
    monkeypatch.setenv("LORA_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("LORA_SCAFFOLDING_DIR", f"s3://{bucket}/team")
    result = _invoke("init")
    assert result.exit_code == 0, result.output
    assert f"scaffolding: s3://{bucket}/team (LORA_SCAFFOLDING_DIR)" in result.output
    with sqlite3.connect(tmp_path / "data" / "lora.db") as conn:
        assert "Zed From S3" in {n for (n,) in conn.execute("SELECT name FROM personas")}


def test_init_refuses_a_lora_scaffolding_dir_that_is_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(tmp_path, monkeypatch)
    assert _invoke("init").exit_code == 0
    before = _state(tmp_path)
    monkeypatch.setenv("LORA_SCAFFOLDING_DIR", str(tmp_path / "nowhere"))
    result = _invoke("init")
    _assert_refused(result, 2, f"error: LORA_SCAFFOLDING_DIR: scaffolding directory not found: {tmp_path / 'nowhere'}")
    assert _state(tmp_path) == before


def test_init_refuses_an_id_that_would_change_a_primary_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(tmp_path, monkeypatch)
    assert _invoke("init").exit_code == 0
    before = _state(tmp_path)
    directory = _scaffolding(tmp_path, "personas.json",
                             _edit_json(lambda d: d[0].update(id="11111111-2222-3333-4444-555555555555")))
    result = _invoke("init", "--scaffolding-dir", str(directory))
    _assert_refused(result, 2, "would change its existing id", "ids are immutable")
    assert _state(tmp_path) == before


def test_init_refuses_a_database_with_unrelated_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(tmp_path, monkeypatch)
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "lora.db") as conn:
        conn.execute("CREATE TABLE personas (id INTEGER PRIMARY KEY, nickname TEXT)")
        conn.execute("CREATE TABLE batch_jobs (job TEXT)")
    before = _state(tmp_path)
    result = _invoke("init")
    _assert_refused(result, 2, "already has table(s) batch_jobs, personas that lora-assets did not create")
    assert _state(tmp_path) == before


def test_three_inits_at_once_on_a_fresh_data_dir(tmp_path: Path) -> None:
    """Real processes, started together: each exits 0, and the store is initialised once."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LORA_DATABASE_URL", "ANTHROPIC_BASE_URL")}
    env["LORA_DATA_DIR"] = str(tmp_path / "data")
    procs = [subprocess.Popen([sys.executable, "-m", "lora_assets.cli", "init"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
        assert "Traceback" not in output
    assert sum("inserted  14" in out for out in outputs) == 1, outputs
    with sqlite3.connect(tmp_path / "data" / "lora.db") as conn:
        assert conn.execute("SELECT count(*) FROM personas").fetchone()[0] == 14
