"""The domain DB on SQLite and PostgreSQL: schema, idempotent init, one-transaction loads."""

from __future__ import annotations

import sqlalchemy as sa
from pathlib import Path

import pytest

from lora_assets.errors import StoreSetupError
from lora_assets.store import db as dbq
from lora_assets.store import tables as t
from lora_assets.store.scaffolding_files import load_bundle


def test_sql_file_matches_table_definitions() -> None:
    """sql/001_schema.sql is generated from tables.py; they must never drift."""
    assert dbq.migration_files()[0].read_text() == dbq.render_postgres_ddl()


def test_init_is_idempotent(db_url: str) -> None:
    engine = dbq.make_engine(db_url)
    bundle = load_bundle()
    assert dbq.init_schema(engine) == [p.stem for p in dbq.migration_files()]
    first = dbq.load_scaffolding(engine, bundle)
    with engine.connect() as conn:
        before = {tb.name: conn.execute(sa.select(tb)).mappings().all() for tb in t.SCAFFOLDING_TABLES}
    assert dbq.init_schema(engine) == []
    second = dbq.load_scaffolding(engine, bundle)
    with engine.connect() as conn:
        after = {tb.name: conn.execute(sa.select(tb)).mappings().all() for tb in t.SCAFFOLDING_TABLES}
    assert first["personas"]["inserted"] == len(bundle.personas)
    assert all(c["inserted"] == 0 and c["updated"] == 0 for c in second.values())
    assert before == after
    engine.dispose()


def test_schema_from_sql_files_equals_metadata_on_postgres(pg_url: str) -> None:
    """What a DBA applies from sql/ is exactly what the code expects."""
    engine = dbq.make_engine(pg_url)
    dbq.init_schema(engine)
    inspector = sa.inspect(engine)
    for table in t.metadata.sorted_tables:
        cols = {c["name"] for c in inspector.get_columns(table.name)}
        assert cols == {c.name for c in table.columns}, table.name
    engine.dispose()


def test_scaffolding_load_is_one_transaction(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure mid-load leaves nothing partial behind."""
    engine = dbq.make_engine(db_url)
    dbq.init_schema(engine)
    bundle = load_bundle()
    upsert = dbq._upsert

    def failing_on_topics(conn, table, key_col, rows):
        if table is t.training_topics:  # after personas and arcs were written in this transaction
            conn.execute(sa.insert(table).values(**rows[0]))
            conn.execute(sa.insert(table).values(**rows[0]))  # the primary key is violated
        return upsert(conn, table, key_col, rows)

    monkeypatch.setattr(dbq, "_upsert", failing_on_topics)
    with pytest.raises(sa.exc.IntegrityError):
        dbq.load_scaffolding(engine, bundle)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.personas)).scalar() == 0
    engine.dispose()


def test_an_explicit_id_never_changes_or_takes_a_primary_key(db_url: str) -> None:
    """Ids are immutable (items and conversations point at them): a record whose explicit id
    differs from its row's, or is another record's, is refused with its key, and nothing is written."""
    engine = dbq.make_engine(db_url)
    dbq.init_schema(engine)
    bundle = load_bundle()
    dbq.load_scaffolding(engine, bundle)
    moved = bundle.model_copy(deep=True)
    moved.personas[0].id = "11111111-2222-3333-4444-555555555555"
    moved.personas[1].communication_style = "Changed style"
    with pytest.raises(dbq.ScaffoldingIdError, match=f"persona {bundle.personas[0].persona_key!r}: id .* would change"):
        dbq.load_scaffolding(engine, moved)
    newcomer = bundle.training_topics[1].model_copy(update={"topic_key": "brand_new_topic", "id": bundle.training_topics[0].id})
    taken = bundle.model_copy(update={"training_topics": [*bundle.training_topics, newcomer]})
    with pytest.raises(dbq.ScaffoldingIdError, match="is already the id of training topic"):
        dbq.load_scaffolding(engine, taken)
    with engine.connect() as conn:
        by_key = {p.persona_key: p for p in dbq.read_personas(conn)}
    assert by_key[bundle.personas[0].persona_key].id == bundle.personas[0].id
    assert by_key[bundle.personas[1].persona_key].communication_style == bundle.personas[1].communication_style
    engine.dispose()


def test_init_refuses_a_database_with_unrelated_tables_of_our_names(db_url: str) -> None:
    engine = dbq.make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE personas (id INTEGER PRIMARY KEY, nickname TEXT)")
        conn.exec_driver_sql("INSERT INTO personas (id, nickname) VALUES (1, 'theirs')")
    with pytest.raises(StoreSetupError, match="already has table.* personas .*did not create"):
        dbq.init_schema(engine)
    inspector = sa.inspect(engine)
    assert {c["name"] for c in inspector.get_columns("personas")} == {"id", "nickname"}
    assert not inspector.has_table("batch_jobs")
    engine.dispose()


def test_updates_by_key_keep_ids(db_url: str) -> None:
    engine = dbq.make_engine(db_url)
    dbq.init_schema(engine)
    bundle = load_bundle()
    dbq.load_scaffolding(engine, bundle)
    changed = bundle.model_copy(deep=True)
    changed.personas[0].communication_style = "Changed style"
    counts = dbq.load_scaffolding(engine, changed)
    assert counts["personas"] == {"inserted": 0, "updated": 1, "unchanged": len(bundle.personas) - 1}
    with engine.connect() as conn:
        personas = dbq.read_personas(conn)
    by_key = {p.persona_key: p for p in personas}
    assert by_key[bundle.personas[0].persona_key].communication_style == "Changed style"
    assert by_key[bundle.personas[0].persona_key].id == bundle.personas[0].id
    engine.dispose()


def test_a_database_created_before_002_is_upgraded_to_the_current_schema(pg_url: str) -> None:
    """002 brings a database made by the first 001 (kept as test data) to exactly the columns
    the code expects, and keys its old provider batches by their provider id."""
    engine = dbq.make_engine(pg_url)
    old = (Path(__file__).parent / "data" / "001_schema_before_002.sql").read_text()
    with engine.begin() as conn:
        conn.exec_driver_sql(old)
        t.schema_migrations.create(conn, checkfirst=True)
        conn.execute(sa.insert(t.schema_migrations).values(version="001_schema"))
        conn.exec_driver_sql("INSERT INTO batch_jobs (id, name, tier, model, selection, created_by) "
                             "VALUES ('b1', 'old', 'template_a', 'm', '{}', 'u')")
        conn.exec_driver_sql("INSERT INTO provider_batches (id, batch_job_id, item_ids) VALUES ('msgbatch_old', 'b1', '[]')")
    assert dbq.init_schema(engine) == [p.stem for p in dbq.migration_files()[1:]]
    inspector = sa.inspect(engine)
    for table in t.metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == {c.name for c in table.columns}, table.name
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.provider_batches.c.provider_batch_id)).scalar() == "msgbatch_old"
    engine.dispose()


def test_an_embedded_sqlite_database_from_before_002_is_upgraded_at_init(tmp_path: Path) -> None:
    """SQLite has no migration files: `init` adds the missing columns and tables in place."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = dbq.make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE batch_jobs (id VARCHAR(36) PRIMARY KEY, name TEXT NOT NULL, "
                             "status VARCHAR(16) NOT NULL DEFAULT 'queued', tier VARCHAR(16) NOT NULL, model TEXT NOT NULL, "
                             "mode VARCHAR(16) NOT NULL DEFAULT 'messages', selection JSON NOT NULL, "
                             "total_items INTEGER NOT NULL DEFAULT 0, created_by VARCHAR(36) NOT NULL, error TEXT, "
                             "created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "
                             "updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        conn.exec_driver_sql("CREATE TABLE provider_batches (id VARCHAR(64) PRIMARY KEY, batch_job_id VARCHAR(36) NOT NULL "
                             "REFERENCES batch_jobs(id), status VARCHAR(16) NOT NULL DEFAULT 'in_progress', "
                             "item_ids JSON NOT NULL, created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "
                             "updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO batch_jobs (id, name, tier, model, selection, created_by) "
                             "VALUES ('b1', 'old', 'template_a', 'm', '{}', 'u')")
        conn.exec_driver_sql("INSERT INTO provider_batches (id, batch_job_id, item_ids) VALUES ('msgbatch_old', 'b1', '[]')")
    dbq.init_schema(engine)
    inspector = sa.inspect(engine)
    for table in t.metadata.sorted_tables:
        assert {c.name for c in table.columns} <= {c["name"] for c in inspector.get_columns(table.name)}, table.name
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.provider_batches.c.provider_batch_id)).scalar() == "msgbatch_old"
    engine.dispose()


def test_scaffolding_loads_at_once_run_one_after_the_other(db_url: str, tmp_path: Path) -> None:
    """Two processes load the scaffolding into a fresh schema at once (two `init`s on other
    machines, or `init` and the scaffolding assets): one inserts, the other finds the rows
    unchanged; neither fails on a unique key."""
    import json
    import subprocess
    import sys
    import time

    engine = dbq.make_engine(db_url)
    dbq.init_schema(engine)
    engine.dispose()
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-m", "lora_assets_tests.store.race_worker", "scaffolding", db_url, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    counts = sorted((json.loads(o.strip().splitlines()[-1]) for o in outputs), key=lambda c: c["inserted"])
    n = len(load_bundle().personas)
    assert counts == [{"inserted": 0, "updated": 0, "unchanged": n}, {"inserted": n, "updated": 0, "unchanged": 0}]
