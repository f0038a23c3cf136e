"""The CLI as a user meets it: exit codes and messages that name the thing and the reason."""

from __future__ import annotations

import re

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from lora_assets.cli import main
from lora_assets.store import tables as t
from lora_assets.store.db import make_engine
from lora_assets.store.scaffolding_files import BUNDLED_DIR


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LORA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    (tmp_path / "dh").mkdir()
    (tmp_path / "dh" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.delenv("LORA_DATABASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return tmp_path


def _count(url: str, table: sa.Table) -> int:
    with make_engine(url).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_init_twice_same_rows(env: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["init"])
    assert first.exit_code == 0, first.output
    assert "001_schema" in first.output
    second = runner.invoke(main, ["init"])
    assert second.exit_code == 0 and "up to date" in second.output
    url = f"sqlite:///{env / 'data' / 'lora.db'}"
    assert _count(url, t.personas) >= 8


def test_init_on_postgres(env: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_DATABASE_URL", pg_url)
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    assert runner.invoke(main, ["init"]).exit_code == 0
    assert _count(pg_url, t.emotional_arcs) >= 6


def _broken_copy(env: Path, mutate) -> Path:
    d = env / "scaffolding"
    shutil.copytree(BUNDLED_DIR, d)
    data = json.loads((d / "personas.json").read_text())
    mutate(data)
    (d / "personas.json").write_text(json.dumps(data))
    return d


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d[2].pop("name"), "record 2"),
        (lambda d: d.append(dict(d[0])), "duplicate persona_key"),
        (lambda d: d[1].update(demographics="Age 40"), "demographics"),
    ],
)
def test_init_rejects_bad_scaffolding_and_writes_nothing(env: Path, mutate, expected: str) -> None:
    bad = _broken_copy(env, mutate)
    result = CliRunner().invoke(main, ["init", "--scaffolding-dir", str(bad)])
    assert result.exit_code != 0
    assert "personas.json" in result.output and expected in result.output
    db_file = env / "data" / "lora.db"
    assert not db_file.exists() or _count(f"sqlite:///{db_file}", t.personas) == 0


def test_schema_command(env: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["schema", "parsed-conversation"])
    assert out.exit_code == 0 and "input_parameters" in json.loads(out.output)["properties"]
    bad = runner.invoke(main, ["schema", "nope"])
    assert bad.exit_code != 0 and "unknown schema 'nope'" in bad.output


def test_sql_check(env: Path) -> None:
    assert CliRunner().invoke(main, ["sql", "--check"]).exit_code == 0


def test_batch_create_refuses_unknown_persona_key(env: Path) -> None:
    runner = CliRunner()
    runner.invoke(main, ["init"])
    result = runner.invoke(main, ["batch", "create", "--persona", "no_such_persona", "--arc", "*", "--topic", "*"])
    assert result.exit_code != 0
    assert "unknown persona key(s) ['no_such_persona']" in result.output


def test_batch_create_list_status(env: Path) -> None:
    runner = CliRunner()
    runner.invoke(main, ["init"])
    created = runner.invoke(main, ["batch", "create", "--persona", "pragmatic_optimist", "--per-combination", "1",
                                   "--arc", "confusion_to_clarity", "--topic", "mortgage_payoff_strategy"])
    assert created.exit_code == 0, created.output
    batch_id = re.search(r"; id ([0-9a-f-]{36})", created.output).group(1)  # the line starts with its key (slug)
    assert batch_id in runner.invoke(main, ["batch", "list"]).output
    status = runner.invoke(main, ["batch", "status", batch_id])
    assert status.exit_code == 0 and "pending=1" in status.output
    from dagster import DagsterInstance

    key = created.output.split()[1].rstrip(":")
    assert key.startswith("batch-") and runner.invoke(main, ["batch", "status", key]).output == status.output
    with DagsterInstance.get() as instance:
        # The partition key is the batch's readable slug; the id stays the row id.
        assert instance.get_dynamic_partitions("batch_jobs") == [key]
