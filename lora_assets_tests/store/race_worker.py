"""Processes that write the same training-file rows at once (run several against one database;
see test_training_files_store.py). Each waits for GO_FILE to appear, so they start together.

    python -m lora_assets_tests.store.race_worker versions URL FILE_ID NAME ROUNDS GO_FILE SEED
        claim and record versions in a loop, as builds do, checking after each record that
        `current_version` is the highest recorded version (one statement, so one snapshot);
        prints `ok N` / `violation …`, exits 1 on a violation
    python -m lora_assets_tests.store.race_worker members URL NAME[,NAME…] GO_FILE ID ID2
        create each training file with ID, then add ID2 to each, in order (every worker walks the
        same names, so each step is a race); prints `create NAME done` / `add NAME done` or
        `… refused: <message>` (a TrainingFileError) per step; anything else is a traceback (exit 1)

    python -m lora_assets_tests.store.race_worker scaffolding URL GO_FILE
        load the bundled scaffolding (store.db.load_scaffolding, as `init` does) once; prints the
        personas' counts as JSON; anything else is a traceback (exit 1)

A worker touches GO_FILE.ready.<pid> once it is imported and connected; the caller releases all
of them together by creating GO_FILE after every worker is ready.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from lora_assets.store import tables as t
from lora_assets.store import training_files as tfq
from lora_assets.store.db import make_engine


def values(version: int, name: str) -> dict[str, object]:
    """A recorded version's columns (content does not matter here, only the number)."""
    key = f"training-files/{name}/v{version}"
    return {
        "version": version, "status": "active", "json_file_path": f"{key}/{name}.json",
        "jsonl_file_path": f"{key}/{name}.jsonl", "conversation_count": version, "total_training_pairs": version,
        "json_file_size": 1, "jsonl_file_size": 1, "avg_quality_score": 3.5, "min_quality_score": 3.0,
        "max_quality_score": 4.0, "human_reviewed_count": 0,
        "scaffolding_distribution": {"personas": {}, "emotional_arcs": {}, "training_topics": {}},
        "outputs": {}, "stats": {}, "conversation_ids": [], "split": {},
    }


def current_and_highest(conn: sa.Connection, file_id: str) -> tuple[int, int]:
    """(training_files.current_version, highest active version), from one snapshot."""
    v, f = t.training_file_versions, t.training_files
    highest = (sa.select(sa.func.coalesce(sa.func.max(v.c.version), 0))
               .where(v.c.training_file_id == file_id, v.c.status == "active").scalar_subquery())
    row = conn.execute(sa.select(f.c.current_version, highest).where(f.c.id == file_id)).one()
    return int(row[0]), int(row[1])


def _wait(go: Path, engine: sa.Engine) -> None:
    with engine.connect():
        pass  # connected before the start: the race is over the rows, not the connection
    go.with_name(f"{go.name}.ready.{os.getpid()}").touch()
    while not go.exists():  # start together with the other workers
        time.sleep(0.002)


def versions(url: str, file_id: str, name: str, rounds: int, go: Path, seed: int) -> int:
    """Claim, pause a random moment (a build's work), record; check the invariant each round."""
    rng = random.Random(seed)
    engine = make_engine(url)
    _wait(go, engine)
    bad = 0
    for _ in range(rounds):
        row_id, version = tfq.claim_version(engine, file_id, name)
        time.sleep(rng.random() * 0.03)
        with engine.begin() as conn:
            tfq.record_version(conn, file_id, row_id, values(version, name))
        with engine.connect() as conn:
            current, highest = current_and_highest(conn, file_id)
        if current != highest:
            bad += 1
            print(f"violation: current_version {current}, highest recorded {highest}", flush=True)
    print(f"ok {rounds - bad}", flush=True)
    return 1 if bad else 0


def members(url: str, names: list[str], go: Path, first: str, second: str) -> int:
    """`create` with `first`, then `add` `second`, for each name, as `training-file create` /
    `add` do."""
    engine = make_engine(url)
    _wait(go, engine)
    for step in ("create", "add"):
        for name in names:
            try:
                if step == "create":
                    tfq.create_training_file(engine, name=name, conversation_ids=[first], created_by="race")
                else:
                    tfq.add_members(engine, name=name, conversation_ids=[second], added_by="race")
            except tfq.TrainingFileError as exc:
                print(f"{step} {name} refused: {' '.join(str(exc).split())}", flush=True)
                continue
            print(f"{step} {name} done", flush=True)
    return 0


def scaffolding(url: str, go: Path) -> int:
    """Upsert the bundled scaffolding once, as `init` does."""
    import json

    from lora_assets.store.db import load_scaffolding
    from lora_assets.store.scaffolding_files import load_bundle

    engine = make_engine(url)
    bundle = load_bundle()
    _wait(go, engine)
    print(json.dumps(load_scaffolding(engine, bundle)["personas"]), flush=True)
    return 0


if __name__ == "__main__":
    mode_, args = sys.argv[1], sys.argv[2:]
    if mode_ == "scaffolding":
        sys.exit(scaffolding(args[0], Path(args[1])))
    if mode_ == "versions":
        sys.exit(versions(args[0], args[1], args[2], int(args[3]), Path(args[4]), int(args[5])))
    sys.exit(members(args[0], args[1].split(","), Path(args[2]), args[3], args[4]))
