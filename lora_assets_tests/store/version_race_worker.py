"""A process that claims and records versions of one training file in a loop, as a build does,
checking after each record that `current_version` is the highest recorded version (read in one
statement, so one snapshot). Run several at once against one database (see
test_training_files_store.py); prints `ok N` or `violation …` lines and exits 1 on a violation.

    python -m lora_assets_tests.store.version_race_worker URL FILE_ID NAME ROUNDS GO_FILE SEED
"""

from __future__ import annotations

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


def main(url: str, file_id: str, name: str, rounds: int, go: Path, seed: int) -> int:
    """Claim, pause a random moment (a build's work), record; check the invariant each round."""
    rng = random.Random(seed)
    engine = make_engine(url)
    while not go.exists():  # start together with the other workers
        time.sleep(0.005)
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


if __name__ == "__main__":
    url_, file_id_, name_, rounds_, go_, seed_ = sys.argv[1:7]
    sys.exit(main(url_, file_id_, name_, int(rounds_), Path(go_), int(seed_)))
